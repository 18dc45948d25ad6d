"""Decoder versus encoder genericity (paper Sec. 4.2, Fig. 5; DESIGN §10).

The encoder implements convolutions of the same dimensions as the decoder in reverse order, so
the k-th convolution of the decoder is compared with the k-th from the end of the encoder. Per
pair of layers: both log10-SDR distributions, a two-sample Kolmogorov–Smirnov test (are the
distributions different?) and a Brown–Forsythe/Levene test (is the spread different?), with the
ratio of standard deviations (encoder / decoder; > 1 means the encoder is less generic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import NothingToAnalyseError
from .sdr import LayerSDR, SDRResult, Summary


@dataclass(frozen=True)
class LevelComparison:
    """One decoder layer and its mirror-image encoder layer."""

    level: str
    decoder_layer: str
    encoder_layer: str
    decoder: Summary
    encoder: Summary
    ks_statistic: float
    ks_pvalue: float
    levene_statistic: float
    levene_pvalue: float
    sd_ratio: float
    decoder_values: np.ndarray
    encoder_values: np.ndarray

    @property
    def decoder_more_generic(self) -> bool:
        """The decoder's log10 SDR is less spread out than the encoder's."""
        return self.sd_ratio > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "decoder_layer": self.decoder_layer,
            "encoder_layer": self.encoder_layer,
            "decoder": self.decoder.to_dict(),
            "encoder": self.encoder.to_dict(),
            "ks_statistic": self.ks_statistic,
            "ks_pvalue": self.ks_pvalue,
            "levene_statistic": self.levene_statistic,
            "levene_pvalue": self.levene_pvalue,
            "sd_ratio_encoder_over_decoder": self.sd_ratio,
            "decoder_more_generic": self.decoder_more_generic,
        }


@dataclass(frozen=True)
class Comparison:
    levels: tuple[LevelComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        more = sum(lv.decoder_more_generic for lv in self.levels)
        return {
            "levels": [lv.to_dict() for lv in self.levels],
            "decoder_more_generic_levels": more,
            "compared_levels": len(self.levels),
        }


def mirror_pairs(
    decoder: Sequence[LayerSDR], encoder: Sequence[LayerSDR]
) -> list[tuple[LayerSDR, LayerSDR]]:
    """Pair the decoder's SDR layers in run order with the encoder's in reverse run order."""
    dec = [x for x in decoder if x.analysis == "sdr"]
    enc = [x for x in encoder if x.analysis == "sdr"][::-1]
    return list(zip(dec, enc, strict=False))


def compare_results(decoder: SDRResult, encoder: SDRResult) -> Comparison:
    """Side-by-side distributions and two-sample tests for each mirrored pair of layers."""
    from scipy import stats  # imported here: it costs about a second at start-up

    out = []
    for d, e in mirror_pairs(decoder.layers, encoder.layers):
        dv = d.log10().ravel()
        ev = e.log10().ravel()
        dv, ev = dv[np.isfinite(dv)], ev[np.isfinite(ev)]
        if dv.size < 2 or ev.size < 2:
            continue
        ks = stats.ks_2samp(dv, ev)
        lev = stats.levene(dv, ev, center="median")
        sd_d, sd_e = float(np.std(dv)), float(np.std(ev))
        assert d.summary is not None and e.summary is not None
        out.append(
            LevelComparison(
                level=d.record.level,
                decoder_layer=d.record.name,
                encoder_layer=e.record.name,
                decoder=d.summary,
                encoder=e.summary,
                ks_statistic=float(ks.statistic),
                ks_pvalue=float(ks.pvalue),
                levene_statistic=float(lev.statistic),
                levene_pvalue=float(lev.pvalue),
                sd_ratio=sd_e / sd_d if sd_d > 0 else math.inf,
                decoder_values=dv,
                encoder_values=ev,
            )
        )
    if not out:
        raise NothingToAnalyseError(
            "no pair of decoder and encoder convolution layers could be compared",
            "both models need convolution layers with SDR values (see genaudit sdr on each)",
        )
    return Comparison(tuple(out))

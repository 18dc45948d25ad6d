"""Decoder versus encoder genericity (paper Sec. 4.2, Fig. 5).

An encoder undoes its decoder layer by layer in reverse order: the encoder layer that *mirrors*
a decoder layer takes the decoder layer's output shape as its input and returns the decoder
layer's input shape (channels and grid, ``C×H×W``). Per pair of layers: both log10-SDR
distributions, a two-sample Kolmogorov–Smirnov test (are the distributions different?) and a
Brown–Forsythe/Levene test (is the spread different?), with the ratio of standard deviations
(encoder / decoder; > 1 means the encoder is less generic).

Only layers with SDR values (analysis ``sdr``) are paired; trace-method and skipped layers never
are. Two ways to pair:

- **Automatic** (:func:`mirror_pairs`), from the image end, where the two models meet (the
  decoder's output is what the encoder reads): the decoder's last SDR layer with the encoder's
  first, the decoder's last but one with the encoder's second, and so on until one of the two
  runs out of SDR layers. Every one of these pairs must mirror; the first that does not is
  refused with a :class:`~genaudit.errors.UsageError` naming both layers and their shapes. The
  far end is where the two models may differ: the SDR layers left over there, on the side with
  more of them, are not compared and are listed as unpaired in the result. For example a DCGAN
  generator starts with a projection fed a 1×1 latent (trace method, never paired) while its
  discriminator ends with a readout 128×4×4 → 1×1×1 (an SDR layer with no mirror): the four
  hidden and image layers pair, the readout is reported unpaired.
- **Explicit** (``pairs``: ``(decoder_selector, encoder_selector)`` strings, parsed from
  ``--pair DECODER_LAYER=ENCODER_LAYER`` by :func:`parse_pairs`): each selector is a dotted
  name, a glob, an execution index or a level name that must resolve to exactly one SDR layer
  of its model. Explicit pairs are compared in the order given, even when their shapes do not
  mirror (the user chose them); whether each one mirrors is recorded.

This module imports neither torch nor the SDR analysis: :func:`parse_pairs` can check the
command line before anything is loaded, and :func:`plan_pairs` can check a pairing on the layer
records of a dry run, before the SDR analysis runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import NothingToAnalyseError, UsageError, option
from ..model.levels import ALL_LEVELS, READOUT_LEVEL, matches_layer, split_selectors

if TYPE_CHECKING:  # the pairing functions are usable without torch
    from ..model.layers import LayerRecord
    from .sdr import SDRResult, Summary

PAIR_HINT = (
    f"pair layers by hand with {option('pair')} DECODER_LAYER=ENCODER_LAYER (repeatable; each "
    "side a dotted name, a glob, an index or a level naming one SDR layer)"
)
_PAIR_EXAMPLE = (
    f"for example {option('pair')} main.3=main.8 (a dotted name, a glob, an index or a level on "
    "each side)"
)
# How many layer names an error message lists before it abbreviates.
_LIST_AT_MOST = 12


@dataclass(frozen=True)
class LevelComparison:
    """One decoder layer and the encoder layer it is compared with.

    ``mirrored``: the encoder layer's input shape is the decoder layer's output shape and its
    output shape the decoder layer's input shape (always true for automatic pairs).
    """

    level: str
    decoder_layer: str
    encoder_layer: str
    mirrored: bool
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
            "mirrored": self.mirrored,
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
    """The compared pairs in pairing order, how they were paired, and what was left out.

    ``pairing`` is ``"automatic"`` or ``"explicit"``; ``unpaired_decoder`` and
    ``unpaired_encoder`` name the SDR layers of each model that are in no pair; ``notes`` say
    which pairs could not be compared (fewer than two defined SDR values on a side).
    """

    levels: tuple[LevelComparison, ...]
    pairing: str = "automatic"
    unpaired_decoder: tuple[str, ...] = ()
    unpaired_encoder: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        more = sum(lv.decoder_more_generic for lv in self.levels)
        return {
            "pairing": self.pairing,
            "levels": [lv.to_dict() for lv in self.levels],
            "decoder_more_generic_levels": more,
            "compared_levels": len(self.levels),
            "unpaired": {
                "decoder": list(self.unpaired_decoder),
                "encoder": list(self.unpaired_encoder),
            },
            "notes": list(self.notes),
        }

    CSV_HEADER = (
        "level", "decoder_layer", "encoder_layer", "mirrored",
        "decoder_defined", "encoder_defined", "decoder_mean_log10_sdr", "encoder_mean_log10_sdr",
        "decoder_sd_log10_sdr", "encoder_sd_log10_sdr", "sd_ratio_encoder_over_decoder",
        "decoder_generic_fraction", "encoder_generic_fraction",
        "ks_statistic", "ks_pvalue", "levene_statistic", "levene_pvalue", "decoder_more_generic",
    )  # fmt: skip

    def csv_rows(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """:data:`CSV_HEADER` and one row per compared pair, in pairing order."""
        rows = [
            (lv.level, lv.decoder_layer, lv.encoder_layer, lv.mirrored,
             lv.decoder.defined, lv.encoder.defined, lv.decoder.mean_log10, lv.encoder.mean_log10,
             lv.decoder.sd_log10, lv.encoder.sd_log10, lv.sd_ratio,
             lv.decoder.generic_fraction, lv.encoder.generic_fraction,
             lv.ks_statistic, lv.ks_pvalue, lv.levene_statistic, lv.levene_pvalue,
             lv.decoder_more_generic)
            for lv in self.levels
        ]  # fmt: skip
        return self.CSV_HEADER, rows


# --------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class LayerPair:
    """A decoder layer, the encoder layer it is compared with, and whether they mirror."""

    decoder: LayerRecord
    encoder: LayerRecord
    mirrored: bool


@dataclass(frozen=True)
class PairPlan:
    """Which layers are compared: the pairs in order and the SDR layers in none of them."""

    pairs: tuple[LayerPair, ...]
    explicit: bool = False
    unpaired_decoder: tuple[str, ...] = ()
    unpaired_encoder: tuple[str, ...] = ()

    @property
    def pairing(self) -> str:
        return "explicit" if self.explicit else "automatic"


def parse_pairs(values: Sequence[str] | None) -> list[tuple[str, str]]:
    """``--pair DECODER_LAYER=ENCODER_LAYER`` values → ``(decoder, encoder)`` selector pairs.

    Repeatable, and each value may also hold a comma-separated list
    (``main.3=main.8,main.6=main.5``). Whitespace around either side is dropped. A value
    without exactly one ``=`` or with an empty side is a :class:`UsageError`. Nothing is looked
    up: the selectors are resolved against the models' layers by :func:`plan_pairs`.
    """
    out: list[tuple[str, str]] = []
    for value in split_selectors(list(values or ())):
        if value.count("=") != 1:
            raise UsageError(
                f"{option('pair')} {value!r}: expected DECODER_LAYER=ENCODER_LAYER with one '='",
                _PAIR_EXAMPLE,
            )
        dec, enc = (side.strip() for side in value.split("="))
        if not dec or not enc:
            missing = "decoder" if not dec else "encoder"
            raise UsageError(
                f"{option('pair')} {value!r}: the {missing} layer is missing",
                _PAIR_EXAMPLE,
            )
        out.append((dec, enc))
    return out


def format_shape(shape: Sequence[int]) -> str:
    """``(128, 4, 4)`` → ``128×4×4``."""
    return "×".join(str(int(n)) for n in shape)


def describe_layer(record: LayerRecord) -> str:
    """``main.3 (128×4×4 → 64×8×8)``."""
    shapes = f"{format_shape(record.input_shape)} → {format_shape(record.output_shape)}"
    return f"{record.name} ({shapes})"


def is_mirror(decoder: LayerRecord, encoder: LayerRecord) -> bool:
    """The encoder layer maps the decoder layer's output shape back to its input shape."""
    into = tuple(decoder.input_shape) == tuple(encoder.output_shape)
    back = tuple(decoder.output_shape) == tuple(encoder.input_shape)
    return into and back


def _sdr(records: Sequence[LayerRecord]) -> list[LayerRecord]:
    return [r for r in records if r.analysis == "sdr"]


def _last_conv_level(records: Sequence[LayerRecord]) -> str | None:
    convs = [r for r in records if r.is_conv]
    return max(convs, key=lambda r: r.index).level if convs else None


def mirror_pairs(decoder: Sequence[LayerRecord], encoder: Sequence[LayerRecord]) -> PairPlan:
    """Automatic pairing from the image end (see the module docstring).

    ``decoder`` and ``encoder`` are each model's layer records in execution order; only those
    with analysis ``sdr`` take part. Raises :class:`UsageError` at the first pair that does not
    mirror. The plan may be empty (a model without SDR layers).
    """
    dec = _sdr(decoder)[::-1]  # from the decoder's image layer backwards
    enc = _sdr(encoder)  # from the encoder's first layer (it reads the image) forwards
    n = min(len(dec), len(enc))
    pairs = []
    for d, e in zip(dec[:n], enc[:n], strict=True):
        if not is_mirror(d, e):
            hint = PAIR_HINT
            if _last_conv_level(decoder) == READOUT_LEVEL and _last_conv_level(encoder) == "image":
                hint = (
                    "DECODER ends in a readout layer and ENCODER in an image layer: are the two "
                    "swapped? Otherwise " + PAIR_HINT
                )
            raise UsageError(
                f"decoder {describe_layer(d)} does not mirror encoder {describe_layer(e)}", hint
            )
        pairs.append(LayerPair(d, e, True))
    pairs.reverse()  # the decoder's run order: coarse → image
    return PairPlan(
        tuple(pairs),
        explicit=False,
        unpaired_decoder=tuple(r.name for r in dec[n:][::-1]),
        unpaired_encoder=tuple(r.name for r in enc[n:]),
    )


def _listing(records: Sequence[LayerRecord]) -> str:
    names = [f"{r.name} [{r.index}, {r.level}]" for r in records]
    if len(names) > _LIST_AT_MOST:
        names = [*names[:_LIST_AT_MOST], f"… ({len(records) - _LIST_AT_MOST} more)"]
    return ", ".join(names) if names else "none"


def resolve_layer(records: Sequence[LayerRecord], selector: str, side: str) -> LayerRecord:
    """The one SDR layer of a model that ``selector`` names (``side``: decoder or encoder).

    A level name selects the layers of that level, anything else what
    :func:`~genaudit.model.levels.matches_layer` matches (a dotted name, a glob, an index). Layers
    without SDR values do not count, so a glob may also match trace-method or skipped layers;
    no SDR layer, or more than one, is a :class:`UsageError` that lists the choices.
    """
    sel = selector.strip()
    if sel in ALL_LEVELS:
        hits = [r for r in records if r.level == sel]
    else:
        hits = [r for r in records if matches_layer(r, sel)]
    sdr = _sdr(hits)
    if len(sdr) == 1:
        return sdr[0]
    choices = f"{side} layers with SDR values: {_listing(_sdr(records))}"
    if not hits:
        raise UsageError(f"{option('pair')}: no {side} layer matches {sel!r}", choices)
    if not sdr:
        without = "; ".join(
            f"{r.name} ({r.analysis}{': ' + r.reason if r.reason else ''})" for r in hits
        )
        raise UsageError(
            f"{option('pair')}: {sel!r} names no {side} layer with SDR values: {without}", choices
        )
    raise UsageError(
        f"{option('pair')}: {sel!r} matches {len(sdr)} {side} layers with SDR values: "
        f"{_listing(sdr)}",
        "name one of them (a dotted name or an index)",
    )


def explicit_pairs(
    decoder: Sequence[LayerRecord],
    encoder: Sequence[LayerRecord],
    pairs: Sequence[tuple[str, str]],
) -> PairPlan:
    """Pairs chosen by the user, in the order given, each side resolved by :func:`resolve_layer`.

    Shapes are not required to mirror; each pair records whether they do. The same pair of
    layers twice is a :class:`UsageError`.
    """
    out: list[LayerPair] = []
    seen: dict[tuple[int, int], str] = {}
    for dec_sel, enc_sel in pairs:
        d = resolve_layer(decoder, dec_sel, "decoder")
        e = resolve_layer(encoder, enc_sel, "encoder")
        key = (d.index, e.index)
        if key in seen:
            raise UsageError(
                f"{option('pair')} {dec_sel}={enc_sel}: decoder {d.name} and encoder {e.name} are "
                f"already paired by {option('pair')} {seen[key]}",
                "give each pair of layers once",
            )
        seen[key] = f"{dec_sel}={enc_sel}"
        out.append(LayerPair(d, e, is_mirror(d, e)))
    paired_dec = {p.decoder.index for p in out}
    paired_enc = {p.encoder.index for p in out}
    return PairPlan(
        tuple(out),
        explicit=True,
        unpaired_decoder=tuple(r.name for r in _sdr(decoder) if r.index not in paired_dec),
        unpaired_encoder=tuple(r.name for r in _sdr(encoder) if r.index not in paired_enc),
    )


def plan_pairs(
    decoder: Sequence[LayerRecord],
    encoder: Sequence[LayerRecord],
    pairs: Sequence[tuple[str, str]] | None = None,
) -> PairPlan:
    """The layers to compare: ``pairs`` (explicit) when given and not empty, else automatic.

    ``decoder`` and ``encoder`` are the layer records of each model (``walk_layers``). Raises
    :class:`UsageError` for a pairing that cannot be used and :class:`NothingToAnalyseError`
    when nothing can be paired.
    """
    if pairs:
        return explicit_pairs(decoder, encoder, pairs)
    plan = mirror_pairs(decoder, encoder)
    if not plan.pairs:
        raise NothingToAnalyseError(
            "no pair of decoder and encoder convolution layers could be compared",
            "both models need convolution layers with SDR values (see genaudit sdr on each)",
        )
    return plan


# --------------------------------------------------------------------------- comparing


def compare_results(
    decoder: SDRResult,
    encoder: SDRResult,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> Comparison:
    """Side-by-side distributions and two-sample tests for each pair of layers.

    ``pairs``: explicit ``(decoder_selector, encoder_selector)`` pairs (see :func:`parse_pairs`),
    or None / empty for the automatic pairing; both as in :func:`plan_pairs`, on the layers whose
    SDR values were computed. A pair with fewer than two defined values on a side is left out
    with a note.
    """
    from scipy import stats  # imported here: it costs about a second at start-up

    # what the analysis found overrides the dry run's expectation (a layer may have been skipped)
    dec_layers = {x.record.index: x for x in decoder.layers}
    enc_layers = {x.record.index: x for x in encoder.layers}
    dec_records = [replace(x.record, analysis=x.analysis, reason=x.reason) for x in decoder.layers]
    enc_records = [replace(x.record, analysis=x.analysis, reason=x.reason) for x in encoder.layers]
    plan = plan_pairs(dec_records, enc_records, pairs)

    out = []
    notes = []
    for pair in plan.pairs:
        d, e = dec_layers[pair.decoder.index], enc_layers[pair.encoder.index]
        dv = d.log10().ravel()
        ev = e.log10().ravel()
        dv, ev = dv[np.isfinite(dv)], ev[np.isfinite(ev)]
        if dv.size < 2 or ev.size < 2:
            notes.append(
                f"decoder {d.record.name} / encoder {e.record.name} not compared: "
                f"{dv.size} and {ev.size} defined SDR values (at least 2 each needed)"
            )
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
                mirrored=pair.mirrored,
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
            "; ".join(notes)
            or "both models need convolution layers with SDR values (see genaudit sdr on each)",
        )
    return Comparison(
        tuple(out),
        pairing=plan.pairing,
        unpaired_decoder=plan.unpaired_decoder,
        unpaired_encoder=plan.unpaired_encoder,
        notes=tuple(notes),
    )

"""SDR analysis of a model: stream activations into spectra, then every pair's ratio.

One pass over the samples (:mod:`genaudit.analysis.statistics`) adds every chosen layer's
actual input to a streaming accumulator (a spectrum for SDR layers, a covariance for
trace-method layers), so memory does not grow with the number of samples. The ratios are
computed once at the end from the accumulators and the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import DEFAULT_TOLERANCE
from ..errors import NothingToAnalyseError, option
from ..model.layers import ALL_LEVELS, AnalysisKind, LayerRecord
from ..model.levels import Level
from .accumulators import CovarianceAccumulator
from .distributed import Accumulator, DistributedRun
from .finite import NONFINITE_REASON, finite_sums, nonfinite_failure
from .frames import data_frame
from .spectral import GridTooSmallError, spectral_density_ratio
from .statistics import Samples, Statistics, collect_statistics
from .trace_method import mechanism_matrix, trace_ratio

__all__ = [
    "NONFINITE_REASON",
    "LayerSDR",
    "LevelSDR",
    "SDRResult",
    "Samples",
    "Statistics",
    "Summary",
    "collect_statistics",
    "histogram",
    "layer_sdr",
    "pool_levels",
    "run_sdr",
]

# Fixed log10-SDR histogram bins: 20 bins of width 0.1 on [-1, 1] plus one open bin each side.
HIST_EDGES: tuple[float, ...] = tuple(round(-1.0 + 0.1 * k, 10) for k in range(21))
PERCENTILES = (5, 25, 75, 95)


def histogram(log10_values: np.ndarray) -> list[int]:
    """Counts on :data:`HIST_EDGES`: ``[< -1, [-1, -0.9), …, [0.9, 1], > 1]`` (22 bins)."""
    edges = np.asarray(HIST_EDGES)
    inner, _ = np.histogram(np.clip(log10_values, -1.0, 1.0), bins=edges)
    below = int(np.sum(log10_values < -1.0))
    above = int(np.sum(log10_values > 1.0))
    inner = inner.astype(int)
    # values clipped to the outer edges were counted in the first/last inner bin: move them out
    inner[0] -= below
    inner[-1] -= above
    return [below, *(int(c) for c in inner), above]


@dataclass(frozen=True)
class Summary:
    """Distribution of log10 SDR over the defined pairs of a layer or level."""

    pairs: int
    defined: int
    undefined: int
    median_sdr: float
    mean_log10: float
    sd_log10: float
    percentiles_log10: dict[str, float]
    generic_fraction: float
    histogram: list[int]

    @classmethod
    def of(cls, log10_values: np.ndarray, total_pairs: int, tolerance: float) -> Summary:
        """Summarise finite ``log10 SDR`` values; ``total_pairs`` counts undefined ones too."""
        v = log10_values[np.isfinite(log10_values)]
        n = int(v.size)
        nan = math.nan
        pct = {f"p{q}": float(np.percentile(v, q)) if n else nan for q in PERCENTILES}
        return cls(
            pairs=total_pairs,
            defined=n,
            undefined=total_pairs - n,
            median_sdr=float(np.median(np.power(10.0, v))) if n else nan,
            mean_log10=float(v.mean()) if n else nan,
            sd_log10=float(v.std()) if n else nan,
            percentiles_log10=pct,
            generic_fraction=float(np.mean(np.abs(v) <= tolerance)) if n else nan,
            histogram=histogram(v),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "defined": self.defined,
            "undefined": self.undefined,
            "median_sdr": self.median_sdr,
            "mean_log10_sdr": self.mean_log10,
            "sd_log10_sdr": self.sd_log10,
            "percentiles_log10_sdr": dict(self.percentiles_log10),
            "generic_fraction": self.generic_fraction,
            "histogram": list(self.histogram),
        }


@dataclass(frozen=True)
class LayerSDR:
    """Result for one layer: per-pair SDR values, a trace-method ratio, or a skip reason."""

    record: LayerRecord
    analysis: AnalysisKind
    reason: str | None = None
    values: np.ndarray | None = None  # (C_out, C_in/g) float64, NaN where undefined
    input_index: np.ndarray | None = None  # (C_out, C_in/g) absolute input channel
    ratio: float | None = None  # trace method
    summary: Summary | None = None
    samples: int = 0

    def log10(self) -> np.ndarray:
        if self.values is None:
            return np.empty(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(self.values)

    def pair_rows(self) -> list[tuple[int, int, float, float]]:
        """``(out_channel, in_channel, sdr, log10_sdr)`` for every existing pair."""
        if self.values is None or self.input_index is None:
            return []
        outs = np.repeat(np.arange(self.values.shape[0]), self.values.shape[1])
        return list(
            zip(
                outs.tolist(),
                self.input_index.ravel().tolist(),
                self.values.ravel().tolist(),
                self.log10().ravel().tolist(),
                strict=True,
            )
        )

    def to_dict(self, pairs: bool = False) -> dict[str, Any]:
        r = self.record
        out: dict[str, Any] = {
            "index": r.index,
            "name": r.name,
            "type": r.type,
            "level": r.level,
            "analysis": self.analysis,
            "grid": list(r.grid),
            "input_shape": list(r.input_shape),
            "output_shape": list(r.output_shape),
            "samples": self.samples,
        }
        if self.analysis == "skipped":
            out["reason"] = self.reason
        elif self.analysis == "trace":
            out["trace_ratio"] = self.ratio
            out["log10_trace_ratio"] = (
                math.log10(self.ratio) if self.ratio and self.ratio > 0 else None
            )
            if self.reason:
                out["reason"] = self.reason
        else:
            assert self.summary is not None
            out["summary"] = self.summary.to_dict()
            if pairs and self.values is not None and self.input_index is not None:
                out["pairs"] = {
                    "sdr": self.values.tolist(),
                    "in_channel": self.input_index.tolist(),
                }
        return out


@dataclass(frozen=True)
class LevelSDR:
    """Pairs of every SDR layer of one level pooled, plus the level's trace-method ratios."""

    level: Level
    layers: tuple[str, ...]
    summary: Summary | None
    trace_ratios: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "layers": list(self.layers),
            "summary": self.summary.to_dict() if self.summary else None,
            "trace_ratios": list(self.trace_ratios),
        }


@dataclass(frozen=True)
class SDRResult:
    """Every analysed layer in execution order and the per-level pooling."""

    layers: tuple[LayerSDR, ...]
    levels: tuple[LevelSDR, ...]
    num_samples: int
    tolerance: float
    hist_edges: tuple[float, ...] = field(default=HIST_EDGES)
    batch_size: int = 0  # as asked; 0 when unknown
    batch_size_final: int = 0  # after out-of-memory halvings
    oom_halvings: int = 0
    world_size: int = 1  # processes that shared the samples (torchrun)
    notes: tuple[str, ...] = ()  # e.g. how many functional convolutions were not analysed

    def to_dict(self, pairs: bool = False) -> dict[str, Any]:
        notes = {"notes": list(self.notes)} if self.notes else {}
        return {
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "batch_size_final": self.batch_size_final,
            "oom_halvings": self.oom_halvings,
            "world_size": self.world_size,
            "generic_tolerance_log10": self.tolerance,
            "histogram_edges_log10": [-math.inf, *self.hist_edges, math.inf],
            "layers": [layer.to_dict(pairs) for layer in self.layers],
            "levels": [level.to_dict() for level in self.levels],
            **notes,
        }

    def csv_rows(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for layer in self.layers:
            for o, i, v, lv in layer.pair_rows():
                rows.append((layer.record.name, layer.record.level, o, i, v, lv))
        return rows

    CSV_HEADER = ("layer", "level", "out_channel", "in_channel", "sdr", "log10_sdr")

    def to_rows(self, pairs: bool = False) -> list[dict[str, Any]]:
        """One flat dict per layer (analysis, the summary's statistics or the trace ratio, the
        skip reason), or with ``pairs`` one per (layer, output channel, input channel)."""
        if pairs:
            return [dict(zip(self.CSV_HEADER, row, strict=True)) for row in self.csv_rows()]
        return [layer_row(layer) for layer in self.layers]

    def to_pandas(self, pairs: bool = False) -> Any:
        """:meth:`to_rows` as a ``pandas.DataFrame`` (pandas is optional: a UsageError
        without it)."""
        return data_frame(self.to_rows(pairs))


def layer_row(layer: LayerSDR) -> dict[str, Any]:
    """A layer's result as one flat row (NaN where a statistic does not apply)."""
    r, s, nan = layer.record, layer.summary, math.nan
    return {
        "index": r.index, "layer": r.name, "type": r.type, "level": r.level,
        "analysis": layer.analysis, "pairs": s.pairs if s else 0,
        "undefined": s.undefined if s else 0, "median_sdr": s.median_sdr if s else nan,
        "mean_log10_sdr": s.mean_log10 if s else nan, "sd_log10_sdr": s.sd_log10 if s else nan,
        "generic_fraction": s.generic_fraction if s else nan,
        "trace_ratio": layer.ratio if layer.ratio is not None else nan,
        "reason": layer.reason, "samples": layer.samples,
    }  # fmt: skip


def layer_sdr(
    record: LayerRecord,
    accumulator: Accumulator | None,
    weight: torch.Tensor | None,
    tolerance: float,
    *,
    finite: bool = True,
) -> LayerSDR:
    """Turn one layer's accumulated statistics into its result.

    ``finite=False`` (the accumulated sums hold NaN or infinity, see :func:`run_sdr`) skips the
    layer with the reason :data:`NONFINITE_REASON`, never "undefined" like a dead kernel.
    """
    if record.analysis == "skipped" or accumulator is None or weight is None:
        return LayerSDR(record, "skipped", reason=record.reason or "the layer did not run")
    if not finite:
        return LayerSDR(record, "skipped", reason=NONFINITE_REASON, samples=accumulator.count)
    if isinstance(accumulator, CovarianceAccumulator):
        a = mechanism_matrix(weight, transposed=record.transposed, groups=record.groups)
        ratio = trace_ratio(a, accumulator.covariance())
        reason = None if math.isfinite(ratio) else "undefined: zero input variance or zero weights"
        return LayerSDR(record, "trace", reason=reason, ratio=ratio, samples=accumulator.count)
    try:
        pair = spectral_density_ratio(
            accumulator,
            weight,
            transposed=record.transposed,
            stride=record.stride,
            dilation=record.dilation,
            groups=record.groups,
        )
    except GridTooSmallError as exc:
        return LayerSDR(record, "skipped", reason=str(exc))
    values = pair.values.cpu().numpy()
    index = pair.input_index.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(values)
    summary = Summary.of(logs.ravel(), int(values.size), tolerance)
    return LayerSDR(
        record, "sdr", values=values, input_index=index, summary=summary, samples=accumulator.count
    )


def pool_levels(layers: Sequence[LayerSDR], tolerance: float) -> tuple[LevelSDR, ...]:
    """One entry per level present, in the order of :data:`ALL_LEVELS`."""
    out = []
    for level in ALL_LEVELS:
        members = [x for x in layers if x.record.level == level and x.analysis != "skipped"]
        if not members:
            continue
        sdr_members = [x for x in members if x.analysis == "sdr"]
        summary = None
        if sdr_members:
            logs = np.concatenate([x.log10().ravel() for x in sdr_members])
            summary = Summary.of(
                logs,
                int(sum(x.values.size for x in sdr_members if x.values is not None)),
                tolerance,
            )
        ratios = tuple(
            float(x.ratio) for x in members if x.analysis == "trace" and x.ratio is not None
        )
        out.append(LevelSDR(level, tuple(x.record.name for x in members), summary, ratios))
    return tuple(out)


def _require_finite(layers: Sequence[LayerSDR]) -> None:
    """Exit 4 (:class:`NumericalError`) when non-finite activations leave no layer analysed."""
    bad = [x.record.name for x in layers if x.reason == NONFINITE_REASON]
    if bad and all(x.analysis == "skipped" for x in layers):
        raise nonfinite_failure(bad)


def run_sdr(
    model: nn.Module,
    records: Sequence[LayerRecord],
    source: Samples,
    *,
    num_samples: int,
    batch_size: int,
    device: torch.device,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Callable[[int], None] | None = None,
    group: DistributedRun | None = None,
) -> SDRResult:
    """SDR of every pair of every chosen layer (``records``), trace ratios, per-level pooling.

    ``model`` is any module already on ``device``, ``records`` its layers to analyse (from
    :func:`~genaudit.model.layers.walk_layers`) and ``source`` its inputs (:class:`Samples`).
    ``group``: this process's place in a torchrun job (see
    :mod:`genaudit.analysis.distributed`); the samples are shared out and the statistics
    summed, so every rank returns the same result.
    Out-of-memory batches are retried at half the size (see :func:`collect_statistics`); the
    result records the final batch size and the number of halvings.
    """
    if not any(r.analysis != "skipped" for r in records):
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in records)
        raise NothingToAnalyseError(
            f"none of the chosen layers can be analysed ({reasons})",
            f"choose other layers with {option('layers')}",
        )
    stats = collect_statistics(
        model, records, source, num_samples=num_samples, batch_size=batch_size, device=device,
        progress=progress, group=group,
    )  # fmt: skip
    acc, weights = stats.accumulators, stats.weights
    finite = dict(zip(acc, finite_sums(list(acc.values())), strict=True))
    layers = tuple(
        layer_sdr(r, acc.get(r.index), weights.get(r.index), tolerance,
                  finite=finite.get(r.index, True))
        for r in records
    )  # fmt: skip
    _require_finite(layers)
    return SDRResult(
        layers,
        pool_levels(layers, tolerance),
        num_samples,
        tolerance,
        batch_size=stats.batch_size,
        batch_size_final=stats.batch_size_final,
        oom_halvings=stats.oom_halvings,
        world_size=stats.world_size,
        notes=functional_notes(records),
    )


def functional_notes(records: Sequence[LayerRecord]) -> tuple[str, ...]:
    """``N functional convolutions were not analysed …`` for the chosen records, if any."""
    left = [r for r in records if r.is_functional and r.analysis == "skipped"]
    if not left:
        return ()
    n = len(left)
    return (
        f"{n} functional convolution{'s' * (n > 1)} {'were' if n > 1 else 'was'} not analysed "
        f"({', '.join(r.name for r in left)}): see each layer's reason",
    )

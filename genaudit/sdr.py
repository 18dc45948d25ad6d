"""SDR analysis of a model: stream activations into spectra, then every pair's ratio (DESIGN §2–§3).

One pass over the samples: a forward pre-hook on every chosen layer adds the layer's actual
input to a streaming accumulator (a spectrum for SDR layers, a covariance for trace-method
layers), so memory does not grow with the number of samples. The ratios are computed once at
the end from the accumulators and the weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import NothingToAnalyseError
from .hooks import eval_mode, forward_hooks
from .layers import ALL_LEVELS, LayerRecord
from .model import InputSource
from .spectral import (
    CovarianceAccumulator,
    GridTooSmallError,
    SpectrumAccumulator,
    mechanism_matrix,
    spectral_density_ratio,
    trace_ratio,
)

DEFAULT_TOLERANCE = 0.1
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
    analysis: str  # "sdr", "trace" or "skipped"
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
        logs = self.log10()
        rows = []
        for o in range(self.values.shape[0]):
            for j in range(self.values.shape[1]):
                rows.append(
                    (o, int(self.input_index[o, j]), float(self.values[o, j]), float(logs[o, j]))
                )
        return rows

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

    level: str
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

    def to_dict(self, pairs: bool = False) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "generic_tolerance_log10": self.tolerance,
            "histogram_edges_log10": [-math.inf, *self.hist_edges, math.inf],
            "layers": [layer.to_dict(pairs) for layer in self.layers],
            "levels": [level.to_dict() for level in self.levels],
        }

    def csv_rows(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for layer in self.layers:
            for o, i, v, lv in layer.pair_rows():
                rows.append((layer.record.name, layer.record.level, o, i, v, lv))
        return rows

    CSV_HEADER = ("layer", "level", "out_channel", "in_channel", "sdr", "log10_sdr")


class _StopForward(Exception):
    """Raised from a hook once every chosen layer has seen its input: the rest is not needed."""


def _weight(module: nn.Module) -> torch.Tensor:
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return w.detach()


def collect_statistics(
    model: nn.Module,
    records: Sequence[LayerRecord],
    source: InputSource,
    *,
    num_samples: int,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[int, SpectrumAccumulator | CovarianceAccumulator], dict[int, torch.Tensor]]:
    """Stream ``num_samples`` samples through ``model`` and accumulate each layer's input.

    Returns accumulators and the weights as they were when the layers ran (weight norm and
    other parametrisations are evaluated by then), keyed by layer index.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    acc: dict[int, SpectrumAccumulator | CovarianceAccumulator] = {}
    weights: dict[int, torch.Tensor] = {}
    active = [r for r in records if r.analysis != "skipped"]
    for r in active:
        acc[r.index] = (
            SpectrumAccumulator(r.dims) if r.analysis == "sdr" else CovarianceAccumulator()
        )
    # Stop the forward pass after the last chosen layer has taken its input, unless a layer
    # runs several times per pass (all its calls count).
    can_stop = all(r.calls == 1 for r in active)
    last = max((r.index for r in active), default=-1)

    def make_hook(r: LayerRecord) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        a = acc[r.index]

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if r.index not in weights:
                weights[r.index] = _weight(module).clone()
            if isinstance(a, SpectrumAccumulator):
                a.add(x.detach())
            elif r.type == "Linear":
                a.add(x.detach().reshape(-1, x.shape[-1]))
            else:
                a.add(x.detach().reshape(x.shape[0], -1))
            if can_stop and r.index == last:
                raise _StopForward

        return hook

    hooks = [(modules[r.name], make_hook(r)) for r in active]
    with eval_mode(model), forward_hooks(hooks, pre=True), torch.no_grad():
        for inputs in source.batches(num_samples, batch_size, device):
            with contextlib.suppress(_StopForward):
                model(*inputs)
            if progress is not None:
                progress(int(inputs[0].shape[0]))
    return acc, weights


def layer_sdr(
    record: LayerRecord,
    accumulator: SpectrumAccumulator | CovarianceAccumulator | None,
    weight: torch.Tensor | None,
    tolerance: float,
) -> LayerSDR:
    """Turn one layer's accumulated statistics into its result."""
    if record.analysis == "skipped" or accumulator is None or weight is None:
        return LayerSDR(record, "skipped", reason=record.reason or "the layer did not run")
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


def run_sdr(
    model: nn.Module,
    records: Sequence[LayerRecord],
    source: InputSource,
    *,
    num_samples: int,
    batch_size: int,
    device: torch.device,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Callable[[int], None] | None = None,
) -> SDRResult:
    """SDR of every pair of every chosen layer (``records``), trace ratios, per-level pooling."""
    if not any(r.analysis != "skipped" for r in records):
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in records)
        raise NothingToAnalyseError(
            f"none of the chosen layers can be analysed ({reasons})",
            "choose other layers with --layers",
        )
    acc, weights = collect_statistics(
        model, records, source, num_samples=num_samples, batch_size=batch_size, device=device,
        progress=progress,
    )  # fmt: skip
    layers = tuple(layer_sdr(r, acc.get(r.index), weights.get(r.index), tolerance) for r in records)
    return SDRResult(layers, pool_levels(layers, tolerance), num_samples, tolerance)

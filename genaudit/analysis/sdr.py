"""SDR analysis of a model: stream activations into spectra, then every pair's ratio.

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
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..config import DEFAULT_TOLERANCE
from ..errors import ModelInputError, NothingToAnalyseError, option
from ..model.hooks import eval_mode, forward_hooks
from ..model.inputs import check_fixed_batch
from ..model.layers import ALL_LEVELS, AnalysisKind, LayerRecord
from ..model.levels import Level
from .accumulators import CovarianceAccumulator, SpectrumAccumulator
from .distributed import Accumulator, DistributedRun, all_reduce_accumulators, shard_ranges
from .finite import NONFINITE_REASON, check_finite_weights, finite_sums, nonfinite_failure
from .spectral import GridTooSmallError, spectral_density_ratio
from .trace_method import mechanism_matrix, trace_ratio


class Samples(Protocol):
    """The model's inputs by sample index: ``batch(start, stop)`` gives the positional inputs of
    samples ``start … stop-1``, the same values whichever batch a sample is asked in (so a batch
    can be rerun at half the size, and samples shared among processes); ``available`` is how
    many samples there are (None: no limit). A source may also have ``fixed_batch``, the only
    batch size the model accepts (:class:`~genaudit.model.inputs.InputSource`): it is then used
    whatever ``batch_size`` is asked, and ``num_samples`` must be a multiple of it."""

    @property
    def available(self) -> int | None: ...

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, ...]: ...


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

    def to_dict(self, pairs: bool = False) -> dict[str, Any]:
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


@dataclass(frozen=True, eq=False)
class Statistics:
    """What :func:`collect_statistics` gathered: per-layer sums, weights, how the batches went.

    ``accumulators`` and ``weights`` are keyed by layer index. ``batch_size_final`` is the batch
    size the run ended with (smaller than asked after out-of-memory halvings; over all ranks of
    a distributed run, the smallest), ``oom_halvings`` how often it was halved (the most on
    any rank), ``world_size`` the number of processes that shared the samples.
    """

    accumulators: dict[int, Accumulator]
    weights: dict[int, torch.Tensor]
    batch_size: int
    batch_size_final: int
    oom_halvings: int = 0
    world_size: int = 1


def _weight(module: nn.Module) -> torch.Tensor:
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return w.detach()


def _new_accumulator(record: LayerRecord) -> Accumulator:
    if record.analysis == "sdr":
        return SpectrumAccumulator(record.dims)
    return CovarianceAccumulator()


def _zero_accumulator(record: LayerRecord, device: torch.device) -> Accumulator:
    """An empty accumulator with allocated zero sums of the record's shapes (for all-reduce)."""
    f64 = torch.float64
    if record.analysis == "sdr":
        grid = tuple(int(m) for m in record.grid)
        shape = (int(record.input_shape[0]), *grid[:-1], grid[-1] // 2 + 1)
        return SpectrumAccumulator.from_sums(torch.zeros(shape, dtype=f64, device=device), 0, grid)
    n = int(record.input_shape[-1]) if record.type == "Linear" else math.prod(record.input_shape)
    acc = CovarianceAccumulator()
    acc.total = torch.zeros(n, dtype=f64, device=device)
    acc.outer = torch.zeros(n, n, dtype=f64, device=device)
    return acc


def _merge(into: Accumulator, batch: Accumulator) -> Accumulator:
    """Add one batch's sums; the first batch's accumulator is adopted as it is (no copy)."""
    if into.count == 0 and into is not batch and _is_unallocated(into):
        return batch
    if isinstance(into, SpectrumAccumulator) and isinstance(batch, SpectrumAccumulator):
        return into.merge(batch)
    if isinstance(into, CovarianceAccumulator) and isinstance(batch, CovarianceAccumulator):
        return into.merge(batch)
    raise TypeError("cannot merge accumulators of different kinds")


def _is_unallocated(acc: Accumulator) -> bool:
    if isinstance(acc, SpectrumAccumulator):
        return acc.power_sum is None
    return acc.total is None


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device without stalling the host: pinned memory and an asynchronous copy."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _halved(batch_size: int) -> int:
    return max(1, batch_size // 2)


def collect_statistics(
    model: nn.Module,
    records: Sequence[LayerRecord],
    source: Samples,
    *,
    num_samples: int,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    group: DistributedRun | None = None,
) -> Statistics:
    """Stream ``num_samples`` samples through ``model`` and accumulate each layer's input.

    Returns the accumulators and the weights as they were when the layers ran (weight norm and
    other parametrisations are evaluated by then), keyed by layer index.

    Transactional batches: the hooks add into per-batch accumulators that are merged into the
    run's totals only once the batch's forward pass has finished. When a batch runs out of
    device memory (``torch.OutOfMemoryError``, CUDA's included), nothing of it has been
    counted: the batch size is halved and the run continues from the same sample, so the
    result equals a run with the smaller batch size from that sample on (exactly, when the
    first batch is the one that failed). Out of memory at batch size 1 raises
    :class:`NothingToAnalyseError`.

    With ``group`` (a torchrun job) this process runs only its shard of the samples
    (:func:`~genaudit.analysis.distributed.shard_ranges`, blocks of ``batch_size``) and the sums are
    all-reduced at the end, so every rank returns the statistics of all ``num_samples``.

    The loop makes no host synchronisation on CUDA: inputs are copied asynchronously from
    pinned memory, accumulators stay on the device, and progress counts come from shapes.
    """
    if source.available is not None and num_samples > source.available:
        raise ModelInputError(
            f"{num_samples} samples asked for, but the input files hold {source.available}",
            f"pass {option('num_samples')} {source.available} or fewer",
        )
    fixed: int | None = getattr(source, "fixed_batch", None)
    if fixed is not None:  # a program exported for one batch size takes no other
        check_fixed_batch(fixed, num_samples)
        batch_size = int(fixed)
    check_finite_weights(model, records)
    modules = dict(model.named_modules(remove_duplicate=False))
    weights: dict[int, torch.Tensor] = {}
    active = [r for r in records if r.analysis != "skipped"]
    acc: dict[int, Accumulator] = {
        r.index: _zero_accumulator(r, device) if group is not None else _new_accumulator(r)
        for r in active
    }
    staging: dict[int, Accumulator] = {}
    # Stop the forward pass after the last chosen layer has taken its input, unless a layer
    # runs several times per pass (all its calls count).
    can_stop = all(r.calls == 1 for r in active)
    last = max((r.index for r in active), default=-1)

    def make_hook(r: LayerRecord) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if r.index not in weights:
                weights[r.index] = _weight(module).clone()
            a = staging[r.index]
            if isinstance(a, SpectrumAccumulator):
                a.add(x.detach())
            elif r.type == "Linear":
                a.add(x.detach().reshape(-1, x.shape[-1]))
            else:
                a.add(x.detach().reshape(x.shape[0], -1))
            if can_stop and r.index == last:
                raise _StopForward

        return hook

    def run_batch(start: int, stop: int) -> None:
        staging.clear()
        staging.update((r.index, _new_accumulator(r)) for r in active)
        inputs = tuple(_to_device(t, device) for t in source.batch(start, stop))
        with contextlib.suppress(_StopForward):
            model(*inputs)

    rank, world = (group.rank, group.world_size) if group is not None else (0, 1)
    ranges = shard_ranges(num_samples, batch_size, rank, world)
    size, halvings = batch_size, 0
    hooks = [(modules[r.name], make_hook(r)) for r in active]
    with eval_mode(model), forward_hooks(hooks, pre=True), torch.no_grad():
        if not ranges:
            # No samples for this rank: one throwaway sample shows the weights as they run.
            run_batch(0, 1)
        for lo, hi in ranges:
            start = lo
            while start < hi:
                stop = min(start + size, hi)
                try:
                    run_batch(start, stop)
                except torch.OutOfMemoryError:
                    failed = True  # handled below, once the traceback's tensors are released
                else:
                    failed = False
                if failed:
                    staging.clear()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    if size == 1 or fixed is not None:
                        raise NothingToAnalyseError(
                            f"out of memory on {device} even with a batch of {size} "
                            f"sample{'s' * (size > 1)}"
                            + (" (the exported model takes no other)" if fixed else ""),
                            f"free device memory, analyse fewer layers ({option('layers')}) "
                            f"or use {option('device')} cpu",
                        )
                    size, halvings = _halved(size), halvings + 1
                    continue
                for index, batch in staging.items():
                    acc[index] = _merge(acc[index], batch)
                staging.clear()
                if progress is not None:
                    progress(stop - start)
                start = stop
        staging.clear()
    if group is not None:
        all_reduce_accumulators(group, [acc[r.index] for r in active])
        worst = group.all_reduce_max(torch.tensor([halvings, -size], dtype=torch.int64))
        halvings, size = int(worst[0]), -int(worst[1])
    return Statistics(acc, weights, batch_size, size, halvings, world)


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
    )

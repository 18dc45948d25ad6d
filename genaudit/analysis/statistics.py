"""Streaming statistics of a model's layers: each chosen layer's input summed batch by batch.

A forward pre-hook on every chosen module layer (and, only when a chosen layer is a convolution
called functionally, a torch-function mode) adds the layer's actual input to a streaming
accumulator, so memory does not grow with the number of samples.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ModelInputError, NothingToAnalyseError, option
from ..model.functional import ConvTap
from ..model.hooks import eval_mode, forward_hooks
from ..model.inputs import check_fixed_batch
from ..model.layers import LayerRecord
from .accumulators import CovarianceAccumulator, SpectrumAccumulator
from .distributed import Accumulator, DistributedRun, all_reduce_accumulators, shard_ranges
from .finite import check_finite_weights
from .precision import full_float32


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

    def make_take(r: LayerRecord) -> Callable[[torch.Tensor, torch.Tensor], None]:
        """Adds a functional convolution's input (its weight as the op receives it)."""

        def take(x: torch.Tensor, w: torch.Tensor) -> None:
            if r.index not in weights:
                weights[r.index] = w.detach().clone()
            add(r, x)

        return take

    def make_hook(r: LayerRecord) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if r.index not in weights:
                weights[r.index] = _weight(module).clone()
            add(r, args[0])

        return hook

    def add(r: LayerRecord, x: torch.Tensor) -> None:
        a = staging[r.index]
        if isinstance(a, SpectrumAccumulator):
            a.add(x.detach())
        elif r.type == "Linear":
            a.add(x.detach().reshape(-1, x.shape[-1]))
        else:
            a.add(x.detach().reshape(x.shape[0], -1))
        if can_stop and r.index == last:
            raise _StopForward

    # A torch-function mode only when a chosen layer is a functional convolution: it costs
    # every op of the forward pass a Python call.
    tap = ConvTap({k: make_take(r) for r in active if r.is_functional for k in r.op_keys})
    watch = tap if tap.before else contextlib.nullcontext()

    def run_batch(start: int, stop: int) -> None:
        tap.reset()
        staging.clear()
        staging.update((r.index, _new_accumulator(r)) for r in active)
        inputs = tuple(_to_device(t, device) for t in source.batch(start, stop))
        with contextlib.suppress(_StopForward):
            model(*inputs)

    rank, world = (group.rank, group.world_size) if group is not None else (0, 1)
    ranges = shard_ranges(num_samples, batch_size, rank, world)
    size, halvings = batch_size, 0
    hooks = [(modules[r.name], make_hook(r)) for r in active if not r.is_functional]
    with (
        eval_mode(model), forward_hooks(hooks, pre=True), torch.no_grad(), watch,
        full_float32(device),
    ):  # fmt: skip
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

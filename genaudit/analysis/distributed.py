"""One analysis over several processes: torchrun detection, sample sharding, all-reduce.

``torchrun --nproc-per-node K -m genaudit sdr …`` (or ``python -m torch.distributed.run``, with
the usual ``--nnodes``/``--node-rank``/``--master-addr``/``--master-port`` flags across machines)
starts K processes with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set. Each process:

1. binds ``cuda`` to ``cuda:LOCAL_RANK`` (:func:`bind_local_device`), before the model is loaded;
2. joins the process group (:func:`process_group`: NCCL for CUDA devices, gloo on the CPU, or
   the backend named by ``GENAUDIT_DIST_BACKEND``);
3. runs the samples of its shard (:func:`shard_ranges`: blocks of ``batch_size`` consecutive
   samples dealt round robin, so every sample is run exactly once and every batch holds the same
   samples as in a single-process run);
4. adds its spectral and covariance sums to everyone else's (:func:`all_reduce_accumulators`,
   one collective), after which every rank holds the sums of all N samples.

The sums are float64 totals of per-batch partial sums, so a K-process run equals a
single-process run with the same batch size up to the order of the float64 additions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UsageError
from .accumulators import CovarianceAccumulator, SpectrumAccumulator

__all__ = [
    "BACKEND_ENV",
    "Accumulator",
    "DistributedRun",
    "LaunchEnv",
    "all_reduce_accumulators",
    "bind_local_device",
    "choose_backend",
    "launch_env",
    "process_group",
    "shard_ranges",
]

#: Environment variable naming the backend to use instead of the default (``gloo`` or ``nccl``).
BACKEND_ENV = "GENAUDIT_DIST_BACKEND"
_BACKENDS = ("gloo", "nccl")

#: The per-layer sums that ranks add together: a spectrum (SDR) or a covariance (trace method).
Accumulator = SpectrumAccumulator | CovarianceAccumulator


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in a torchrun job, read from its environment."""

    world_size: int
    rank: int
    local_rank: int


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` as set by torchrun; ``None`` for a single process.

    A job of one process (``WORLD_SIZE`` 1 or unset) is not distributed.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    values = {}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = env.get(key, "0")
        try:
            values[key] = int(raw)
        except ValueError:
            raise UsageError(
                f"environment variable {key}={raw!r} is not an integer",
                "launch with torchrun, which sets WORLD_SIZE, RANK and LOCAL_RANK",
            ) from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"inconsistent torchrun environment: WORLD_SIZE={world}, RANK={rank}")
    if world == 1:
        return None
    return LaunchEnv(world, rank, local)


def bind_local_device(env: LaunchEnv) -> None:
    """Make ``cuda`` (and ``--device auto``) mean ``cuda:LOCAL_RANK`` in this process.

    Called before the model is loaded, so each process of a node uses its own GPU. Nothing
    happens without CUDA or when LOCAL_RANK has no GPU of its own (e.g. CPU-only jobs).
    """
    if torch.cuda.is_available() and env.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(env.local_rank)


def choose_backend(device: torch.device, environ: Mapping[str, str] | None = None) -> str:
    """``GENAUDIT_DIST_BACKEND`` when set, else NCCL for CUDA devices and gloo otherwise."""
    env = os.environ if environ is None else environ
    forced = env.get(BACKEND_ENV, "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise UsageError(
                f"{BACKEND_ENV}={forced!r} is not a supported backend", "use gloo or nccl"
            )
        if forced == "nccl" and device.type != "cuda":
            raise UsageError(
                f"{BACKEND_ENV}=nccl needs a CUDA device, but the run is on {device}",
                "use gloo on the CPU",
            )
        return forced
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True)
class DistributedRun:
    """A joined process group: this process's rank and the sum/max collectives it takes part in.

    Every rank must call the collectives in the same order with tensors of the same shapes.
    """

    world_size: int
    rank: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the outputs; the other ranks stay silent."""
        return self.rank == 0

    def _reduce(self, tensor: Tensor, op: str) -> Tensor:
        import torch.distributed as dist

        # gloo reduces CPU tensors; NCCL reduces on the GPU without a host round trip.
        work = tensor.cpu() if self.backend == "gloo" else tensor.cuda()
        dist.all_reduce(work, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return work.to(tensor.device)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Element-wise sum over all ranks (a new tensor on ``tensor``'s device)."""
        return self._reduce(tensor.clone(), "sum")

    def all_reduce_max(self, tensor: Tensor) -> Tensor:
        """Element-wise maximum over all ranks (a new tensor on ``tensor``'s device)."""
        return self._reduce(tensor.clone(), "max")


@contextmanager
def process_group(env: LaunchEnv | None, device: torch.device) -> Iterator[DistributedRun | None]:
    """Join torchrun's process group for the duration of the block; ``None`` for one process.

    ``init_process_group`` reads ``MASTER_ADDR``/``MASTER_PORT`` from the environment that
    torchrun sets; the group is destroyed on exit, also when the block raises.
    """
    if env is None:
        yield None
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed", "run a single process")
    backend = choose_backend(device)
    dist.init_process_group(backend=backend, world_size=env.world_size, rank=env.rank)
    try:
        yield DistributedRun(env.world_size, env.rank, env.local_rank, backend)
    finally:
        dist.destroy_process_group()


def shard_ranges(
    num_samples: int, block: int, rank: int = 0, world_size: int = 1
) -> list[tuple[int, int]]:
    """The sample ranges ``[start, stop)`` of ``rank``: blocks of ``block`` samples, round robin.

    Block b holds samples ``b·block … min((b+1)·block, N) − 1`` and goes to rank ``b mod K``;
    adjacent ranges are merged, so one process (K = 1) gets ``[(0, N)]``. Every sample belongs
    to exactly one rank, and a rank may get nothing when there are fewer blocks than ranks.
    """
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    out: list[tuple[int, int]] = []
    for start in range(rank * block, num_samples, world_size * block):
        stop = min(start + block, num_samples)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return out


def _sums(acc: Accumulator) -> Sequence[Tensor]:
    if isinstance(acc, SpectrumAccumulator):
        if acc.power_sum is None:
            raise ValueError("all-reduce needs accumulators with allocated sums on every rank")
        return (acc.power_sum,)
    if acc.total is None or acc.outer is None:
        raise ValueError("all-reduce needs accumulators with allocated sums on every rank")
    return (acc.total, acc.outer)


def all_reduce_accumulators(run: DistributedRun, accumulators: Iterable[Accumulator]) -> None:
    """Replace every accumulator's sums and count by their totals over all ranks, in place.

    Spectra (``power_sum``) and covariances (``total``, ``outer``) are packed with the counts
    into one float64 buffer and summed in a single collective (counts stay exact below 2^53).
    Every rank must hold the same accumulators, in the same order and with allocated sums of
    the same shapes (zeros where it saw no samples).
    """
    accs = list(accumulators)
    if not accs:
        return
    parts = [t for a in accs for t in _sums(a)]
    device = parts[0].device
    flat = torch.cat(
        [t.reshape(-1).to(device=device, dtype=torch.float64) for t in parts]
        + [torch.tensor([float(a.count) for a in accs], dtype=torch.float64, device=device)]
    )
    total = run.all_reduce_sum(flat)
    offset = 0
    for a in accs:
        for t in _sums(a):
            n = t.numel()
            t.copy_(total[offset : offset + n].view_as(t))
            offset += n
    counts = total[offset:].cpu().tolist()
    for a, c in zip(accs, counts, strict=True):
        a.count = round(c)

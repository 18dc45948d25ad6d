"""Streaming sums over batches of a layer's input: power spectra (SDR) and covariance (trace).

Both accumulators keep float64 running totals whose size does not depend on the number of
samples N, make no host synchronisation per batch, and expose their totals as plain attributes
so that a distributed run can all-reduce them (``genaudit.analysis.distributed``):

- :class:`SpectrumAccumulator`: ``power_sum[c] = Σ_n |rfftn(V[n, c])|²`` per input channel on
  the rfft half-grid (:mod:`genaudit.analysis.dft_grid`), and ``count``; its mean periodogram
  ``S_c`` is what the spectral density ratio weighs the kernel power with (docs/method.md).
- :class:`CovarianceAccumulator`: ``Σ v``, ``Σ v vᵀ`` and ``count`` of causes ``v`` ``(N, n)``;
  its covariance is the ``Σ`` of the trace method (:mod:`genaudit.analysis.trace_method`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .dft_grid import check_grid

__all__ = ["CovarianceAccumulator", "SpectrumAccumulator"]

# On CPU a batch is transformed in chunks of about this many input values, so that the FFT
# output and its squares stay in cache and no large buffer is allocated per batch; on a GPU
# the whole batch goes in one call.
_CPU_CHUNK_VALUES = 1 << 22


class SpectrumAccumulator:
    """Streaming sum of input power spectra, one per channel (docs/method.md).

    Accumulates ``power_sum[c] = Σ_n |rfftn(V[n, c])|²`` over batches ``V`` of shape
    ``(N, C, M_1, …, M_d)`` (d = ``spatial_dims``), together with the sample count ``count``.
    The mean periodogram of docs/method.md is ``S_c = power_sum[c] / (count · |Ω|)``
    (:meth:`input_spectrum`), on the rfft half-grid ``(M_1, …, M_{d-1}, M_d // 2 + 1)``.

    Precision: the FFT runs in the batch's dtype (float16/bfloat16 are raised to float32) or
    in ``fft_dtype`` when given (``torch.float64`` for reference computations); ``|·|²`` is
    summed over the batch (on CPU: over chunks of about 2^22 input values) in that dtype
    (pairwise summation, relative error ~ eps·log2 N, the same order as the FFT's own) and
    added to a float64 running total, so memory does not grow with N and rounding does not
    grow with the number of batches.

    The per-batch path (:meth:`add`) makes no host synchronisation and no Python loop over
    channels: it works on CUDA tensors as they are. Shapes are fixed by the first batch.
    ``power_sum`` (a float64 tensor on the batches' device) and ``count`` (an int) are plain
    attributes so a distributed run can all-reduce them; :meth:`from_sums` rebuilds an
    accumulator from reduced sums, :meth:`merge` adds another accumulator in place.
    """

    def __init__(self, spatial_dims: int, *, fft_dtype: torch.dtype | None = None) -> None:
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if fft_dtype is not None and fft_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"fft_dtype must be torch.float32 or torch.float64, got {fft_dtype}")
        self.spatial_dims = spatial_dims
        self.fft_dtype = fft_dtype
        self.power_sum: Tensor | None = None
        self.count = 0
        self.grid: tuple[int, ...] | None = None

    @classmethod
    def from_sums(cls, power_sum: Tensor, count: int, grid: Sequence[int]) -> SpectrumAccumulator:
        """An accumulator holding already reduced sums (e.g. after a distributed all-reduce).

        ``power_sum``: ``(C, M_1, …, M_{d-1}, M_d // 2 + 1)``; ``grid``: ``(M_1, …, M_d)``.
        """
        g = check_grid(grid)
        expected = (*g[:-1], g[-1] // 2 + 1)
        if power_sum.dim() != len(g) + 1 or tuple(power_sum.shape[1:]) != expected:
            raise ValueError(
                f"power_sum of shape {tuple(power_sum.shape)} does not fit grid {g} "
                f"(expected (C, {', '.join(map(str, expected))}))"
            )
        acc = cls(len(g))
        acc.power_sum = power_sum.to(torch.float64)
        acc.count = int(count)
        acc.grid = g
        return acc

    @property
    def channels(self) -> int | None:
        """Number of channels C, or ``None`` before the first batch."""
        return None if self.power_sum is None else int(self.power_sum.shape[0])

    def add(self, v: Tensor) -> None:
        """Add one batch ``v`` of shape ``(N, C, M_1, …, M_d)``; no host synchronisation."""
        d = self.spatial_dims
        if v.dim() != d + 2:
            raise ValueError(
                f"expected a batch of shape (N, C, {d} spatial dims), got {tuple(v.shape)}"
            )
        grid = tuple(int(m) for m in v.shape[2:])
        if self.grid is not None and (grid != self.grid or v.shape[1] != self.channels):
            raise ValueError(
                f"batch of shape {tuple(v.shape)} does not match the accumulated "
                f"(C={self.channels}, grid={self.grid})"
            )
        if v.shape[0] == 0:
            return
        v = v.detach()
        if self.fft_dtype is not None:
            v = v.to(self.fft_dtype)
        elif v.dtype not in (torch.float32, torch.float64):
            v = v.float()
        dims = tuple(range(-d, 0))
        per_sample = max(1, math.prod(int(n) for n in v.shape[1:]))
        chunk = max(1, _CPU_CHUNK_VALUES // per_sample) if v.device.type == "cpu" else v.shape[0]
        for part in v.split(chunk):
            x = torch.fft.rfftn(part, dim=dims)
            # Squares of the real and imaginary parts, summed over the chunk in the FFT dtype:
            # a float64 copy of the whole spectrum would double the memory traffic.
            power = x.real.square().addcmul_(x.imag, x.imag).sum(0)
            if self.power_sum is None:
                self.power_sum = power.to(torch.float64)
                self.grid = grid
            else:
                self.power_sum.add_(power)
        self.count += int(v.shape[0])

    def merge(self, other: SpectrumAccumulator) -> SpectrumAccumulator:
        """Add ``other``'s sums to this accumulator in place and return ``self``."""
        if other.spatial_dims != self.spatial_dims:
            raise ValueError("cannot merge accumulators with different spatial dimensions")
        if other.power_sum is None:
            return self
        if self.power_sum is None:
            self.power_sum = other.power_sum.clone()
            self.grid = other.grid
            self.count = other.count
            return self
        if other.grid != self.grid or other.power_sum.shape != self.power_sum.shape:
            raise ValueError(
                f"cannot merge spectra of grid {other.grid} and C={other.channels} into "
                f"grid {self.grid} and C={self.channels}"
            )
        self.power_sum.add_(other.power_sum.to(self.power_sum.device))
        self.count += other.count
        return self

    def input_spectrum(self) -> Tensor:
        """Mean periodogram ``S_c(ν) = power_sum[c] / (count · |Ω|)``, float64, rfft half-grid."""
        power_sum, grid = self.checked_sums()
        return power_sum / (self.count * math.prod(grid))

    def checked_sums(self) -> tuple[Tensor, tuple[int, ...]]:
        """``(power_sum, grid)``; ValueError while the accumulator holds no samples."""
        if self.power_sum is None or self.grid is None or self.count == 0:
            raise ValueError("the spectrum accumulator holds no samples yet")
        return self.power_sum, self.grid


class CovarianceAccumulator:
    """Streaming covariance of causes ``v`` ``(N, n)`` in float64 (docs/method.md).

    Keeps ``total`` ``(n,)`` = Σ v, ``outer`` ``(n, n)`` = Σ v vᵀ and ``count``; memory does not
    grow with N and :meth:`add` makes no host synchronisation. :meth:`covariance` removes the
    mean at the end: ``Σ = outer/N − mean meanᵀ`` (population covariance, ``ddof=0``).
    ``total``, ``outer``, ``count`` are plain attributes for a distributed all-reduce.
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.outer: Tensor | None = None
        self.count = 0

    def add(self, v: Tensor) -> None:
        """Add a batch ``(N, n)`` (any trailing dims are flattened into n)."""
        if v.dim() < 2:
            raise ValueError(f"expected a batch of shape (N, n), got {tuple(v.shape)}")
        x = v.detach().reshape(v.shape[0], -1).to(torch.float64)
        if self.total is not None and self.outer is not None:
            if x.shape[1] != self.total.shape[0]:
                raise ValueError(f"batch has {x.shape[1]} features, expected {self.total.shape[0]}")
            self.total.add_(x.sum(0))
            self.outer.addmm_(x.T, x)
        else:
            self.total = x.sum(0)
            self.outer = x.T @ x
        self.count += int(x.shape[0])

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Add ``other``'s sums in place and return ``self``."""
        if other.total is None or other.outer is None:
            return self
        if self.total is None or self.outer is None:
            self.total, self.outer = other.total.clone(), other.outer.clone()
        else:
            if other.total.shape != self.total.shape:
                raise ValueError("cannot merge covariances of different dimensions")
            self.total.add_(other.total.to(self.total.device))
            self.outer.add_(other.outer.to(self.outer.device))
        self.count += other.count
        return self

    def mean(self) -> Tensor:
        """Sample mean ``(n,)``."""
        if self.total is None or self.count == 0:
            raise ValueError("the covariance accumulator holds no samples yet")
        return self.total / self.count

    def covariance(self) -> Tensor:
        """Population covariance ``(n, n)`` float64 (mean removed, ``ddof=0``)."""
        mu = self.mean()
        if self.outer is None:
            raise ValueError("the covariance accumulator holds no samples yet")
        cov = self.outer / self.count - torch.outer(mu, mu)
        return (cov + cov.T) / 2

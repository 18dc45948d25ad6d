"""Pure tensor math: input spectra, (folded) kernel power, the SDR and the trace method.

Nothing here knows about models or hooks. Every function takes tensors and plain numbers and
returns float64 tensors on the device it was given (docs/method.md).

Spectral density ratio (Besserve et al. 2021, eq. (8))::

    SDR_oi = <P_oi · S_i> / (<P_oi> · <S_i>)

with ``S_i(ν) = (1/N) Σ_n |DFT_Ω(V[n, i])(ν)|² / |Ω|`` the mean periodogram of input channel i on
the input grid Ω, ``P_oi(ν) = |DFT_Ω(w[o, i])(ν)|²`` the kernel power (folded onto the input grid
for strided transposed convolutions) and ``<·>`` the average over the full d-dimensional DFT grid
excluding ν = 0.

How the pieces fit:

1. :class:`SpectrumAccumulator` streams batches ``(N, C, *grid)`` into ``Σ_n |rfftn(V[n, c])|²``
   per channel (float64 running total, memory independent of N, no host synchronisation).
2. :func:`spectral_density_ratio` turns one accumulator and one layer's weight into all of the
   layer's pair ratios at once, as a :class:`PairSDR`. Its default route never forms a kernel
   spectrum: by Wiener–Khinchin ``Σ_ν P(ν) S(ν) = Σ_τ a(τ) r(τ)`` over the kernel autocorrelation
   lags τ (:func:`kernel_lag_autocorrelation`), so all pairs cost one contraction
   ``einsum('goil,gil->goi')``. The dense route (:func:`kernel_power`) gives the same numbers.
3. Grids with fewer than two non-zero frequencies have no SDR: :func:`sdr_skip_reason` says why,
   and :func:`spectral_density_ratio` raises :class:`GridTooSmallError` (carrying that reason)
   instead of returning a number. The caller reports the layer as ``skipped``.
4. :func:`trace_ratio`, :class:`CovarianceAccumulator` and :func:`mechanism_matrix` implement the
   trace method for Linear layers and convolutions fed 1×1 maps (docs/method.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import NothingToAnalyseError

__all__ = [
    "DEFAULT_RTOL",
    "CovarianceAccumulator",
    "GridTooSmallError",
    "KernelLags",
    "PairSDR",
    "SpectrumAccumulator",
    "input_lag_autocorrelation",
    "kernel_lag_autocorrelation",
    "kernel_power",
    "mechanism_matrix",
    "pair_input_index",
    "rfft_bin_weights",
    "sdr_skip_reason",
    "spectral_density_ratio",
    "trace_ratio",
]

#: Relative threshold below which a mean power over the non-zero frequencies counts as zero.
#: ``<P> <= DEFAULT_RTOL * mean_all(P)`` (``mean_all`` includes ν = 0) marks a pair undefined;
#: it catches dead kernels/channels and kernels whose power sits only at ν = 0, where rounding
#: would otherwise leave a meaningless ratio of two round-off residues.
DEFAULT_RTOL = 1e-12

Method = Literal["auto", "lag", "fft"]

# On CPU a batch is transformed in chunks of about this many input values, so that the FFT
# output and its squares stay in cache and no large buffer is allocated per batch; on a GPU
# the whole batch goes in one call.
_CPU_CHUNK_VALUES = 1 << 22


# --------------------------------------------------------------------------------------------
# Skipped layers
# --------------------------------------------------------------------------------------------


class GridTooSmallError(NothingToAnalyseError):
    """The input grid has fewer than two non-zero frequencies, so no SDR exists (docs/method.md).

    Raised by :func:`spectral_density_ratio` instead of returning a number; ``reason`` is the
    line to show when the layer is reported as ``skipped`` (the same text
    :func:`sdr_skip_reason` returns). Layers fed 1×1 maps use the trace method (docs/method.md).
    """

    def __init__(self, grid: Sequence[int]) -> None:
        self.grid = tuple(int(m) for m in grid)
        reason = sdr_skip_reason(self.grid) or "grid too small"
        super().__init__(reason, "such layers are analysed with the trace method")
        self.reason = reason


def sdr_skip_reason(grid: Sequence[int]) -> str | None:
    """Why a layer with input grid ``grid`` has no SDR, or ``None`` when it has one.

    The SDR needs at least two non-zero frequencies, i.e. ``|Ω| − 1 >= 2``: a 1×1 or 1×2 grid
    is skipped (with a single non-zero frequency the ratio is identically 1).
    """
    size = math.prod(int(m) for m in grid)
    if size - 1 >= 2:
        return None
    shape = "×".join(str(int(m)) for m in grid)
    return (
        f"input grid {shape} has {max(size - 1, 0)} non-zero frequenc"
        f"{'y' if size - 1 == 1 else 'ies'}; the SDR needs at least 2"
    )


def _origin(lead: int, d: int) -> tuple[slice | int, ...]:
    """Index of the zero frequency ν = 0 behind ``lead`` full leading axes."""
    return (slice(None),) * lead + (0,) * d


def _check_grid(grid: Sequence[int]) -> tuple[int, ...]:
    g = tuple(int(m) for m in grid)
    if not 1 <= len(g) <= 3 or any(m < 1 for m in g):
        raise ValueError(f"grid must have 1 to 3 positive sizes, got {tuple(grid)}")
    return g


# --------------------------------------------------------------------------------------------
# Input spectra
# --------------------------------------------------------------------------------------------


def rfft_bin_weights(grid: Sequence[int], *, device: torch.device | str | None = None) -> Tensor:
    """Multiplicities of the rfft bins on the last axis, so rfft sums equal full-grid sums.

    Shape ``(M_d // 2 + 1,)``, float64: 1 for bin 0 and (``M_d`` even) bin ``M_d / 2``, 2 for
    every other bin (which stands for itself and its mirror image −ν).
    """
    m = int(grid[-1])
    w = torch.full((m // 2 + 1,), 2.0, dtype=torch.float64, device=device)
    w[0] = 1.0
    if m % 2 == 0:
        w[-1] = 1.0
    return w


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
        g = _check_grid(grid)
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
        power_sum, grid = self._require()
        return power_sum / (self.count * math.prod(grid))

    def _require(self) -> tuple[Tensor, tuple[int, ...]]:
        if self.power_sum is None or self.grid is None or self.count == 0:
            raise ValueError("the spectrum accumulator holds no samples yet")
        return self.power_sum, self.grid


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


def _as_tuple(value: int | Sequence[int], d: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        t = (value,) * d
    else:
        t = tuple(int(x) for x in value)
        if len(t) == 1:
            t = t * d
    if len(t) != d or any(x < 1 for x in t):
        raise ValueError(f"{name} must be a positive int or {d} positive ints, got {value}")
    return t


def _pair_kernels(weight: Tensor, *, transposed: bool, groups: int) -> Tensor:
    """Per-pair kernels ``(C_out, C_in // groups, k_1, …, k_d)`` in float64.

    Conv weights are stored ``(C_out, C_in/g, k…)`` already; ConvTranspose weights are stored
    ``(C_in, C_out/g, k…)`` and are regrouped so that row o, column j is the kernel from input
    channel ``(o // (C_out/g)) · (C_in/g) + j`` to output channel o.
    """
    if weight.dim() not in (3, 4, 5):
        raise ValueError(
            f"expected a conv weight with 1 to 3 spatial dims, got {tuple(weight.shape)}"
        )
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    w = weight.detach().to(torch.float64)
    if not transposed:
        if w.shape[0] % groups:
            raise ValueError(f"C_out={w.shape[0]} is not divisible by groups={groups}")
        return w
    c_in, c_out_g = int(w.shape[0]), int(w.shape[1])
    if c_in % groups:
        raise ValueError(f"C_in={c_in} is not divisible by groups={groups}")
    k = tuple(w.shape[2:])
    w = w.reshape(groups, c_in // groups, c_out_g, *k).transpose(1, 2)
    return w.reshape(groups * c_out_g, c_in // groups, *k)


def pair_input_index(out_channels: int, in_channels: int, groups: int = 1) -> Tensor:
    """Absolute input channel of every existing pair, shape ``(C_out, C_in // groups)``, int64.

    Entry ``[o, j]`` is ``(o // (C_out/groups)) · (C_in/groups) + j``: the input channel whose
    kernel slice to output channel o sits in column j of :attr:`PairSDR.values`.
    """
    if out_channels % groups or in_channels % groups:
        raise ValueError(
            f"C_out={out_channels} and C_in={in_channels} must be divisible by groups={groups}"
        )
    c_out_g, c_in_g = out_channels // groups, in_channels // groups
    o = torch.arange(out_channels).unsqueeze(1)
    j = torch.arange(c_in_g).unsqueeze(0)
    return (o // c_out_g) * c_in_g + j


def _apply_axis_maps(x: Tensor, maps: Sequence[Tensor], first_axis: int) -> Tensor:
    """Multiply axis ``first_axis + a`` of ``x`` by the matrix ``maps[a]`` (rows: old index)."""
    for a, m in enumerate(maps):
        ax = first_axis + a
        x = (x.movedim(ax, -1) @ m).movedim(-1, ax)
    return x


def _wrap_onto_grid(w: Tensor, grid: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """Place taps ``t`` at positions ``t · dilation mod grid`` (summing collisions).

    ``w``: ``(A, B, k_1, …, k_d)`` → ``(A, B, G_1, …, G_d)``: the zero-padded, dilated kernel of a
    circular convolution on the grid; a kernel larger than the grid wraps around.
    """
    maps = []
    for k, g, dil in zip(w.shape[2:], grid, dilation, strict=True):
        m = torch.zeros(int(k), int(g), dtype=w.dtype, device=w.device)
        t = torch.arange(int(k), device=w.device)
        m.index_put_(
            (t, (t * dil) % g), torch.ones(int(k), dtype=w.dtype, device=w.device), accumulate=True
        )
        maps.append(m)
    return _apply_axis_maps(w, maps, 2)


def kernel_power(
    weight: Tensor,
    grid: Sequence[int],
    *,
    transposed: bool = False,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """Kernel power of every existing pair on the input grid, the dense route (docs/method.md).

    ``P_oi(ν) = |DFT_Ω(w[o, i] dilated, zero-padded and wrapped onto Ω)(ν)|²``. For a
    transposed convolution with stride ``s`` (per axis) the layer is ``w ∗ (zero-insertion of
    V)`` on the upsampled grid ``sM``, and the power is folded onto the input grid::

        P̃_oi(ν) = Σ_{j ∈ {0..s−1}^d} P_oi^{(sM)}(ν + jM)

    Since ``S^{(sM)}(ν + jM) ∝ S(ν)`` for the zero-inserted input, the SDR with ``P̃`` on Ω equals
    the SDR on the upsampled grid with every bin that aliases the input's zero frequency
    (all ν ≡ 0 mod M) excluded. Strided ordinary convolutions ignore the decimation.

    Parameters
    ----------
    weight : Tensor
        Conv weight ``(C_out, C_in/g, k_1, …, k_d)`` or, with ``transposed``, ConvTranspose
        weight ``(C_in, C_out/g, k_1, …, k_d)``; d = 1, 2 or 3.
    grid : sequence of int
        Input grid ``(M_1, …, M_d)``.

    Returns
    -------
    Tensor
        float64, ``(C_out, C_in/g, M_1, …, M_{d-1}, M_d // 2 + 1)`` (rfft half-grid; use
        :func:`rfft_bin_weights` for full-grid sums), on ``weight``'s device. Column j of row o
        is the pair with input channel :func:`pair_input_index` ``[o, j]``.

    Notes
    -----
    Memory and time are ``C_out · C_in/g · |sM| · log|sM|``; :func:`spectral_density_ratio`
    uses the lag route (:func:`kernel_lag_autocorrelation`) unless this is cheaper.
    """
    g = _check_grid(grid)
    d = len(g)
    w = _pair_kernels(weight, transposed=transposed, groups=groups)
    if w.dim() - 2 != d:
        raise ValueError(f"weight has {w.dim() - 2} spatial dims but grid {g} has {d}")
    dil = _as_tuple(dilation, d, "dilation")
    s = _as_tuple(stride, d, "stride") if transposed else (1,) * d
    big = tuple(si * mi for si, mi in zip(s, g, strict=True))
    wg = _wrap_onto_grid(w, big, dil)
    dims = tuple(range(2, 2 + d))
    if all(si == 1 for si in s):
        x = torch.fft.rfftn(wg, dim=dims)
        return x.real.square() + x.imag.square()
    x = torch.fft.fftn(wg, dim=dims)
    p = x.real.square() + x.imag.square()
    # Bin j·M + ν of the upsampled axis lands on bin ν of the input axis: view each axis as
    # (s, M) and sum over the s aliases.
    lead = tuple(p.shape[:2])
    split = [n for si, mi in zip(s, g, strict=True) for n in (si, mi)]
    p = p.reshape(*lead, *split).sum(dim=tuple(2 + 2 * a for a in range(d)))
    return p[..., : g[-1] // 2 + 1].contiguous()


@dataclass(frozen=True, eq=False)
class KernelLags:
    """Kernel autocorrelations of all pairs at the lags they occupy on the input grid.

    ``values[o, j, l]`` is ``ã_oj(τ_l)``, the (folded, wrapped) autocorrelation of the kernel
    of pair ``(o, j)`` at lag ``lags[l]``; its DFT on the input grid is the kernel power
    (folded for transposed strided convs): ``P_oj(ν) = Σ_l values[o, j, l] e^{−2πi ν·τ_l / M}``.

    values : ``(C_out, C_in/g, L)`` float64
    lags : ``(L, d)`` int64, lag residues in ``[0, M_a)`` per axis, distinct, containing 0
    grid : the input grid ``(M_1, …, M_d)``
    zero_lag : index l of the lag ``(0, …, 0)``
    """

    values: Tensor
    lags: Tensor
    grid: tuple[int, ...]
    zero_lag: int


def _axis_lags(k: int, dil: int, s: int, m: int) -> tuple[dict[int, int], list[int]]:
    """The tap lags of one axis that survive, and the grid lag residue each one lands on.

    Tap lag ``t ∈ [−(k−1), k−1]`` is a grid lag ``t·dil`` on the (upsampled) grid. With
    transposed stride ``s`` only lags divisible by ``s`` survive the folding, at input-grid lag
    ``t·dil/s``; lags are then wrapped modulo ``m``. Returns ``{t: column}`` and the residues
    (``residues[column]``).
    """
    residues: dict[int, int] = {}
    columns: dict[int, int] = {}
    for t in range(-(k - 1), k):
        lag = t * dil
        if lag % s == 0:
            columns[t] = residues.setdefault((lag // s) % m, len(residues))
    return columns, list(residues)


def _lag_product(taps_first: Tensor, shift: Sequence[int], out: Tensor) -> Tensor:
    """``out = Σ_t w[t] · w[t + shift]`` over the overlap, for ``taps_first`` ``(k…, A, B)``.

    The taps lead, so ``taps_first[t]`` is one contiguous ``(A, B)`` plane: the products are
    accumulated plane by plane into ``out`` ``(A, B)``, with no temporary of all taps.
    """
    overlap = [
        range(max(0, -t), int(k) - max(0, t))
        for t, k in zip(shift, taps_first.shape[: len(shift)], strict=True)
    ]
    out.zero_()
    for tap in itertools.product(*overlap):
        other = tuple(x + t for x, t in zip(tap, shift, strict=True))
        out.addcmul_(taps_first[tap], taps_first[other])
    return out


def kernel_lag_autocorrelation(
    weight: Tensor,
    grid: Sequence[int],
    *,
    transposed: bool = False,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> KernelLags:
    """Lag-domain kernel power of every existing pair: the Wiener–Khinchin route (docs/method.md).

    With ``a_oi(τ) = Σ_t w_oi(t) w_oi(t + τ)`` the linear autocorrelation of the dilated kernel
    (at most ``(2k−1)^d`` lags, computed directly, only at the lags that survive, using
    ``a(τ) = a(−τ)``), the kernel power on a grid is its DFT after wrapping the lags
    modulo the grid. For a transposed convolution with stride s the folded power
    ``P̃(ν) = Σ_j P^{(sM)}(ν + jM)`` keeps only the lags divisible by s (polyphase
    decomposition)::

        P̃(ν) = Σ_τ s^d · a(s·τ) · e^{−2πi ν·τ / M}

    so ``ã(τ) = s^d · a(s·τ)`` wrapped modulo M is returned. Parameters as :func:`kernel_power`.

    Returns
    -------
    KernelLags
        ``values`` ``(C_out, C_in/g, L)`` float64 with ``L <= min(Π(2k−1), |Ω|)``.
    """
    g = _check_grid(grid)
    d = len(g)
    # shapes and checks only (a meta tensor: no copy); the values come from ``weight`` below
    w = _pair_kernels(weight.detach().to("meta"), transposed=transposed, groups=groups)
    if w.dim() - 2 != d:
        raise ValueError(f"weight has {w.dim() - 2} spatial dims but grid {g} has {d}")
    dil = _as_tuple(dilation, d, "dilation")
    s = _as_tuple(stride, d, "stride") if transposed else (1,) * d
    k = tuple(int(x) for x in w.shape[2:])
    columns, residues = [], []
    for ki, di, si, mi in zip(k, dil, s, g, strict=True):
        c, r = _axis_lags(ki, di, si, mi)
        columns.append(c)
        residues.append(r)
    shape = tuple(len(r) for r in residues)
    # One contiguous (X, Y) plane per lag, lags wrapped onto the grid (collisions add up), with
    # (X, Y) = (C_out, C_in/g), or (C_in, C_out/g) for transposed convs (regrouped below).
    x_rows, y_cols = int(weight.shape[0]), int(weight.shape[1])
    planes = torch.zeros(
        (math.prod(shape), x_rows, y_cols), dtype=torch.float64, device=weight.device
    )
    # The weight upcast with its taps leading, (k…, X, Y): a 2-D transpose of the stored
    # (X·Y, taps) layout, after which every tap is one contiguous plane and each lag is a
    # sum of plane products accumulated in place (a(τ) = a(−τ): only the lexicographically
    # non-negative half is computed, and filed under both lags).
    flat = weight.detach().reshape(x_rows * y_cols, -1).t()
    taps_first = flat.to(torch.float64, memory_format=torch.contiguous_format).contiguous()
    taps_first = taps_first.view(*k, x_rows, y_cols)
    value = taps_first.new_empty((x_rows, y_cols))
    for shift in itertools.product(*(sorted(c) for c in columns)):
        if next((t for t in shift if t), 0) < 0:
            continue
        _lag_product(taps_first, shift, value)
        mirror = tuple(-t for t in shift)
        for lag in (shift,) if shift == mirror else (shift, mirror):
            index = tuple(c[t] for c, t in zip(columns, lag, strict=True))
            planes[int(np.ravel_multi_index(index, shape))].add_(value)
    if math.prod(s) != 1:
        planes.mul_(float(math.prod(s)))
    # (C_out, C_in/g, L) as a view of the planes where the layout allows (lags stay contiguous
    # planes; ConvTranspose planes are (C_in, C_out/g), regrouped like _pair_kernels does)
    n_lags = int(planes.shape[0])
    if transposed:
        c_in_g = x_rows // groups
        grouped = planes.reshape(n_lags, groups, c_in_g, y_cols).permute(1, 3, 2, 0)
        values = grouped.reshape(groups * y_cols, c_in_g, n_lags)
    else:
        values = planes.movedim(0, -1)
    grids = torch.meshgrid(*[torch.tensor(r, dtype=torch.int64) for r in residues], indexing="ij")
    lags = torch.stack([gg.reshape(-1) for gg in grids], dim=1).to(weight.device)
    zero_lag = int(
        np.ravel_multi_index(tuple(r.index(0) for r in residues), tuple(len(r) for r in residues))
    )
    return KernelLags(values=values, lags=lags, grid=g, zero_lag=zero_lag)


def input_lag_autocorrelation(spectrum: SpectrumAccumulator, lags: Tensor) -> Tensor:
    """Circular autocorrelation of every input channel, mean removed, at the given lags.

    ``r_i(τ) = Σ_{ν ≠ 0} S_i(ν) e^{2πi ν·τ / M}`` (S as in docs/method.md; the zero frequency is
    dropped, which is the same as removing each map's spatial mean), computed as
    ``|Ω| · irfftn(S_i with S_i(0) = 0)`` and gathered at ``lags`` ``(L, d)``.
    Returns ``(C_in, L)`` float64. ``r_i(0) = Σ_{ν≠0} S_i(ν)``.
    """
    _, grid = spectrum._require()
    s = spectrum.input_spectrum().clone()
    s[_origin(1, len(grid))] = 0.0
    dims = tuple(range(1, 1 + len(grid)))
    r = torch.fft.irfftn(s, s=grid, dim=dims) * float(math.prod(grid))
    lags = lags.to(r.device)
    key = (slice(None), *(lags[:, a] for a in range(len(grid))))
    return r[key]


# --------------------------------------------------------------------------------------------
# Spectral density ratio
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PairSDR:
    """SDR of every existing (output, input) pair of one layer (docs/method.md).

    values : ``(C_out, C_in/g)`` float64
        ``SDR_oi``; column j of row o is input channel ``input_index[o, j]`` (with groups=1
        simply ``(C_out, C_in)``). NaN where the pair is undefined.
    defined : ``(C_out, C_in/g)`` bool
        False where ``<P_oi>`` or ``<S_i>`` is zero (relative to ``rtol``) or a value is not
        finite: a dead kernel, a dead (constant) channel. Excluded from statistics, counted.
    mean_kernel_power : ``(C_out, C_in/g)`` float64
        ``<P_oi>`` over the non-zero frequencies (folded power for transposed strided convs).
    mean_input_power : ``(C_in,)`` float64
        ``<S_i>`` over the non-zero frequencies.
    groups, in_channels : the layer's grouping and total input channels.
    """

    values: Tensor
    defined: Tensor
    mean_kernel_power: Tensor
    mean_input_power: Tensor
    groups: int
    in_channels: int

    @property
    def input_index(self) -> Tensor:
        """``(C_out, C_in/g)`` absolute input channel of each entry of :attr:`values`."""
        return pair_input_index(int(self.values.shape[0]), self.in_channels, self.groups).to(
            self.values.device
        )

    @property
    def undefined_count(self) -> int:
        """Number of undefined pairs (a host synchronisation on CUDA)."""
        return int((~self.defined).sum().item())

    def log10(self) -> Tensor:
        """``log10 SDR`` (0 means generic), NaN where undefined."""
        return torch.log10(self.values)

    def to_dense(self) -> Tensor:
        """``(C_out, C_in)`` matrix of values, NaN for undefined and non-existing pairs."""
        c_out = int(self.values.shape[0])
        out = torch.full(
            (c_out, self.in_channels), math.nan, dtype=self.values.dtype, device=self.values.device
        )
        out.scatter_(1, self.input_index, self.values)
        return out


def _choose_method(
    kernel_shape: Sequence[int],
    grid: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> Literal["lag", "fft"]:
    """The cheaper route: ``L/2 · Πk`` multiply-adds per pair (lags) vs ``|sM| log2 |sM|`` (FFT)."""
    lags = math.prod(
        sum(1 for t in range(-(k - 1), k) if (t * dil) % s == 0)
        for k, s, dil in zip(kernel_shape, stride, dilation, strict=True)
    )
    lag_cost = (lags + 1) / 2 * math.prod(kernel_shape)
    points = math.prod(s * m for s, m in zip(stride, grid, strict=True))
    return "lag" if lag_cost <= points * max(math.log2(points), 1.0) else "fft"


def spectral_density_ratio(
    spectrum: SpectrumAccumulator,
    weight: Tensor,
    *,
    transposed: bool = False,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    method: Method = "auto",
    rtol: float = DEFAULT_RTOL,
) -> PairSDR:
    """Spectral density ratio of all pairs of one convolution layer (paper eq. (8)).

    ::

        SDR_oi = <P_oi · S_i> / (<P_oi> · <S_i>)

    ``<·>`` averages over the full d-dimensional DFT grid Ω of the layer's input excluding ν = 0.
    ``S_i`` is the mean periodogram of input channel i (``spectrum``), ``P_oi`` the kernel power
    on Ω (folded onto Ω for transposed convs with stride > 1, see :func:`kernel_power`; the
    decimation of strided ordinary convs is ignored). Scale-invariant in P and S.

    Routes (they agree to rounding, ~1e-12 relative):

    - ``"lag"`` (Wiener–Khinchin): ``Σ_{ν≠0} P S = Σ_l ã_oi(τ_l) r_i(τ_l)`` with ã from
      :func:`kernel_lag_autocorrelation` and r from :func:`input_lag_autocorrelation`: one
      contraction over at most ``(2k−1)^d`` lags for all pairs. The zero frequency never
      enters: r is computed with ``S(0) = 0``, and by Parseval
      ``Σ_{ν≠0} P = |Ω| ã(0) − Σ_l ã(τ_l)`` (total power minus ``P(0) = (Σ w)²``).
    - ``"fft"``: :func:`kernel_power` on the rfft half-grid, summed with
      :func:`rfft_bin_weights`.
    - ``"auto"``: the cheaper of the two by operation count; ``"lag"`` for every usual layer,
      ``"fft"`` when the kernel is much larger than the grid.

    Parameters
    ----------
    spectrum : SpectrumAccumulator
        Input spectra of the layer, C_in channels on grid ``(M_1, …, M_d)``.
    weight : Tensor
        Conv ``(C_out, C_in/g, k…)`` or, with ``transposed``, ConvTranspose ``(C_in, C_out/g, k…)``.
    stride, dilation, groups : as in the torch layer (int or one int per axis).
    rtol : float
        A pair is undefined when ``<P_oi> <= rtol · mean_all(P_oi)`` or
        ``<S_i> <= rtol · mean_all(S_i)`` (``mean_all`` over all of Ω, ν = 0 included), or a
        value is not finite.

    Returns
    -------
    PairSDR
        ``values`` ``(C_out, C_in/g)`` float64 with NaN where undefined and a ``defined`` mask;
        on the spectrum's device. Never raises for undefined pairs.

    Raises
    ------
    GridTooSmallError
        When ``|Ω| − 1 < 2`` (see :func:`sdr_skip_reason`); report the layer as skipped.
    ValueError
        When shapes of weight and spectrum do not fit together.
    """
    power_sum, grid = spectrum._require()
    if sdr_skip_reason(grid) is not None:
        raise GridTooSmallError(grid)
    d = len(grid)
    if weight.dim() - 2 != d:
        raise ValueError(
            f"weight has {weight.dim() - 2} spatial dims but the input grid {grid} has {d}"
        )
    c_in = int(power_sum.shape[0])
    w_in = int(weight.shape[0]) if transposed else int(weight.shape[1]) * groups
    if w_in != c_in:
        raise ValueError(
            f"weight {tuple(weight.shape)} (groups={groups}, transposed={transposed}) expects "
            f"{w_in} input channels, the spectrum has {c_in}"
        )
    device = power_sum.device
    weight = weight.to(device)
    s_eff = _as_tuple(stride, d, "stride") if transposed else (1,) * d
    if method == "auto":
        dil = _as_tuple(dilation, d, "dilation")
        method = _choose_method(tuple(int(k) for k in weight.shape[2:]), grid, s_eff, dil)
    n_all = math.prod(grid)
    n_nonzero = n_all - 1
    spec = spectrum.input_spectrum()  # (C_in, *rfft)
    dc = _origin(1, d)
    bin_w = rfft_bin_weights(grid, device=device)
    total_s = (spec * bin_w).flatten(1).sum(1)  # Σ_ν S over all of Ω
    sum_s = total_s - spec[dc]  # Σ_{ν≠0} S
    c_in_g = c_in // groups

    if method == "lag":
        kl = kernel_lag_autocorrelation(
            weight, grid, transposed=transposed, stride=stride, dilation=dilation, groups=groups
        )
        a = kl.values
        r = input_lag_autocorrelation(spectrum, kl.lags)  # (C_in, L)
        c_out = int(a.shape[0])
        # products summed lag by lag: ``a`` keeps its lags in contiguous planes (see
        # kernel_lag_autocorrelation), which a batched matmul would first transpose
        r_pair = r.reshape(groups, 1, c_in_g, -1)
        a_pair = a.reshape(groups, c_out // groups, c_in_g, -1)
        num = a_pair[..., 0] * r_pair[..., 0]
        sum_a = a_pair[..., 0].clone()
        for lag in range(1, int(a.shape[-1])):
            num.addcmul_(a_pair[..., lag], r_pair[..., lag])
            sum_a.add_(a_pair[..., lag])
        num = num.reshape(c_out, c_in_g).contiguous()
        total_p = a[..., kl.zero_lag] * float(n_all)
        sum_p = total_p - sum_a.reshape(c_out, c_in_g)
    elif method == "fft":
        p = kernel_power(
            weight, grid, transposed=transposed, stride=stride, dilation=dilation, groups=groups
        )
        c_out = int(p.shape[0])
        s_nz = spec.clone()
        s_nz[dc] = 0.0
        pw = p * bin_w
        num = torch.einsum(
            "goib,gib->goi",
            pw.reshape(groups, c_out // groups, c_in_g, -1),
            s_nz.reshape(groups, c_in_g, -1),
        ).reshape(c_out, c_in_g)
        total_p = pw.flatten(2).sum(-1)
        sum_p = total_p - p[_origin(2, d)]
    else:
        raise ValueError(f"method must be 'auto', 'lag' or 'fft', got {method!r}")

    index = pair_input_index(c_out, c_in, groups).to(device)
    mean_p = sum_p / n_nonzero
    mean_s = sum_s / n_nonzero
    mean_s_pair = mean_s[index]
    values = num / n_nonzero / (mean_p * mean_s_pair)
    ok_p = torch.isfinite(mean_p) & (mean_p > rtol * total_p / n_all)
    ok_s = torch.isfinite(mean_s) & (mean_s > rtol * total_s / n_all)
    defined = ok_p & ok_s[index] & torch.isfinite(values)
    values = torch.where(defined, values, torch.full_like(values, math.nan))
    return PairSDR(
        values=values,
        defined=defined,
        mean_kernel_power=mean_p,
        mean_input_power=mean_s,
        groups=groups,
        in_channels=c_in,
    )


# --------------------------------------------------------------------------------------------
# Trace method
# --------------------------------------------------------------------------------------------


def trace_ratio(a: Tensor | np.ndarray, cov: Tensor | np.ndarray) -> float:
    """Trace-method genericity ratio of a matrix mechanism (paper Prop. 5).

    ::

        ρ = τ(A Σ Aᵀ) / (τ(A Aᵀ) · τ(Σ)),   τ(X) = trace(X) / dim(X)

    Parameters
    ----------
    a : ``(m, n)`` mechanism matrix (see :func:`mechanism_matrix`).
    cov : ``(n, n)`` covariance of the cause (mean removed; :class:`CovarianceAccumulator`).

    Returns
    -------
    float
        ρ (1 means generic), computed in float64; NaN when ``τ(Σ)`` or ``τ(A Aᵀ)`` is zero or a
        value is not finite. For diagonal ``A = diag(a)``, ``Σ = diag(b²)`` this is the paper's
        ``<a² ⊙ b²> / (<a²> <b²>)``.
    """
    am = torch.as_tensor(a).detach().to(torch.float64)
    cm = torch.as_tensor(cov).detach().to(device=am.device, dtype=torch.float64)
    if am.dim() != 2 or cm.dim() != 2 or cm.shape != (am.shape[1], am.shape[1]):
        raise ValueError(
            f"expected A (m, n) and cov (n, n), got {tuple(am.shape)} and {tuple(cm.shape)}"
        )
    m, n = int(am.shape[0]), int(am.shape[1])
    if m == 0 or n == 0:
        return math.nan
    t_aca = float(((am @ cm) * am).sum()) / m
    t_aa = float(am.square().sum()) / m
    t_c = float(torch.diagonal(cm).sum()) / n
    if not (t_aa > 0 and t_c > 0) or not all(map(math.isfinite, (t_aca, t_aa, t_c))):
        return math.nan
    return t_aca / (t_aa * t_c)


def mechanism_matrix(weight: Tensor, *, transposed: bool = False, groups: int = 1) -> Tensor:
    """The matrix A of a Linear layer or of a convolution fed a 1×1 map (docs/method.md).

    - Linear ``(out, in)``: A is the weight.
    - ConvTranspose ``(C_in, C_out/g, k…)`` on a 1×1 input: the output at tap position p of
      channel o is ``Σ_i w[i, o, p] v_i``, so ``A[(o, p), i] = w[i, o, p]``, shape
      ``(C_out · Πk, C_in)``.
    - Conv ``(C_out, C_in/g, k…)`` fed a 1×1 map: A is defined the same way,
      ``A[(o, p), i] = w[o, i, p]``, shape ``(C_out · Πk, C_in)``, i.e. all taps count (which
      taps actually touch a 1×1 input depends on the padding; using all of them keeps A a
      property of the weights alone).

    With groups, entries across groups are zero (block structure). Returns float64 on the
    weight's device; rows are ordered output channel major, taps minor.
    """
    w = weight.detach().to(torch.float64)
    if w.dim() == 2:
        if groups != 1:
            raise ValueError("a Linear weight has no groups")
        return w
    k = math.prod(int(x) for x in w.shape[2:])
    pairs = _pair_kernels(w, transposed=transposed, groups=groups)  # (C_out, C_in/g, k…)
    c_out, c_in_g = int(pairs.shape[0]), int(pairs.shape[1])
    c_in = c_in_g * groups
    blocks = pairs.reshape(groups, c_out // groups, c_in_g, k).permute(0, 1, 3, 2)
    out = torch.zeros(groups, c_out // groups, k, groups, c_in_g, dtype=w.dtype, device=w.device)
    idx = torch.arange(groups, device=w.device)
    out[idx, :, :, idx, :] = blocks
    return out.reshape(c_out * k, c_in)


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

"""Kernel power in the lag domain: the Wiener–Khinchin route to ``Σ_ν P(ν) S(ν)``.

By Wiener–Khinchin ``Σ_ν P_oi(ν) S_i(ν) = Σ_τ a_oi(τ) r_i(τ)``: the kernel power P of a pair
is the DFT of its kernel's autocorrelation a, the input spectrum S that of the input's circular
autocorrelation r. A kernel of k taps per axis has at most ``(2k−1)^d`` lags, far fewer than the
grid has frequencies, so :func:`kernel_lag_autocorrelation` (a, folded for strided transposed
convolutions) and :func:`input_lag_autocorrelation` (r, at those lags) give the SDR of all pairs
in one contraction over lags, without ever forming a kernel spectrum. The dense route
(:func:`genaudit.analysis.kernel_power.kernel_power`) gives the same numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .accumulators import SpectrumAccumulator
from .dft_grid import check_grid, zero_frequency_index
from .kernel_power import axis_tuple, pair_kernels

__all__ = ["KernelLags", "input_lag_autocorrelation", "kernel_lag_autocorrelation"]


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

    so ``ã(τ) = s^d · a(s·τ)`` wrapped modulo M is returned. Parameters as
    :func:`~genaudit.analysis.kernel_power.kernel_power`.

    Returns
    -------
    KernelLags
        ``values`` ``(C_out, C_in/g, L)`` float64 with ``L <= min(Π(2k−1), |Ω|)``.
    """
    g = check_grid(grid)
    d = len(g)
    # shapes and checks only (a meta tensor: no copy); the values come from ``weight`` below
    w = pair_kernels(weight.detach().to("meta"), transposed=transposed, groups=groups)
    if w.dim() - 2 != d:
        raise ValueError(f"weight has {w.dim() - 2} spatial dims but grid {g} has {d}")
    dil = axis_tuple(dilation, d, "dilation")
    s = axis_tuple(stride, d, "stride") if transposed else (1,) * d
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
    # planes; ConvTranspose planes are (C_in, C_out/g), regrouped like pair_kernels does)
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
    _, grid = spectrum.checked_sums()
    s = spectrum.input_spectrum().clone()
    s[zero_frequency_index(1, len(grid))] = 0.0
    dims = tuple(range(1, 1 + len(grid)))
    r = torch.fft.irfftn(s, s=grid, dim=dims) * float(math.prod(grid))
    lags = lags.to(r.device)
    key = (slice(None), *(lags[:, a] for a in range(len(grid))))
    return r[key]

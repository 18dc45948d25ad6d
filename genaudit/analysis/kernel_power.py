"""Kernel power of every (output, input) pair on the input grid: the dense route.

A layer's weight holds one kernel per existing pair (:func:`pair_kernels` lays them out as
``(C_out, C_in/g, k…)`` for ordinary and transposed convolutions alike, with
:func:`pair_input_index` naming each column's input channel). :func:`kernel_power` zero-pads,
dilates and wraps each kernel onto the input grid and takes one FFT per pair; for a transposed
convolution with stride > 1 it computes the power on the upsampled grid and folds it back onto
the input grid (docs/method.md). The cheaper lag-domain route to the same sums is
:mod:`genaudit.analysis.kernel_lags`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .dft_grid import check_grid

__all__ = ["axis_tuple", "kernel_power", "pair_input_index", "pair_kernels"]


def axis_tuple(value: int | Sequence[int], d: int, name: str) -> tuple[int, ...]:
    """``value`` (stride, dilation) as ``d`` positive ints: an int or a single int is repeated.

    ValueError, naming the parameter ``name``, otherwise.
    """
    if isinstance(value, int):
        t = (value,) * d
    else:
        t = tuple(int(x) for x in value)
        if len(t) == 1:
            t = t * d
    if len(t) != d or any(x < 1 for x in t):
        raise ValueError(f"{name} must be a positive int or {d} positive ints, got {value}")
    return t


def pair_kernels(
    weight: Tensor, *, transposed: bool, groups: int, differentiable: bool = False
) -> Tensor:
    """Per-pair kernels ``(C_out, C_in // groups, k_1, …, k_d)`` in float64.

    Conv weights are stored ``(C_out, C_in/g, k…)`` already; ConvTranspose weights are stored
    ``(C_in, C_out/g, k…)`` and are regrouped so that row o, column j is the kernel from input
    channel ``(o // (C_out/g)) · (C_in/g) + j`` to output channel o. The result is detached
    from ``weight`` unless ``differentiable`` (the penalty of :mod:`genaudit.analysis.penalty`).
    """
    if weight.dim() not in (3, 4, 5):
        raise ValueError(
            f"expected a conv weight with 1 to 3 spatial dims, got {tuple(weight.shape)}"
        )
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    w = (weight if differentiable else weight.detach()).to(torch.float64)
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
    kernel slice to output channel o sits in column j of
    :attr:`~genaudit.analysis.spectral.PairSDR.values`.
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
    differentiable: bool = False,
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
    differentiable : bool
        Keep the result attached to ``weight``'s autograd graph (default: detached).

    Returns
    -------
    Tensor
        float64, ``(C_out, C_in/g, M_1, …, M_{d-1}, M_d // 2 + 1)`` (rfft half-grid; use
        :func:`~genaudit.analysis.dft_grid.rfft_bin_weights` for full-grid sums), on
        ``weight``'s device. Column j of row o is the pair with input channel
        :func:`pair_input_index` ``[o, j]``.

    Notes
    -----
    Memory and time are ``C_out · C_in/g · |sM| · log|sM|``;
    :func:`~genaudit.analysis.spectral.spectral_density_ratio` uses the lag route
    (:func:`~genaudit.analysis.kernel_lags.kernel_lag_autocorrelation`) unless this is cheaper.
    """
    g = check_grid(grid)
    d = len(g)
    w = pair_kernels(weight, transposed=transposed, groups=groups, differentiable=differentiable)
    if w.dim() - 2 != d:
        raise ValueError(f"weight has {w.dim() - 2} spatial dims but grid {g} has {d}")
    dil = axis_tuple(dilation, d, "dilation")
    s = axis_tuple(stride, d, "stride") if transposed else (1,) * d
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

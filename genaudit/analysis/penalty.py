"""The spectral dependence of a layer on its input, differentiable in the weight (paper eq. (13)).

A layer whose kernel power is ``P_oi`` and whose input channel i has the mean periodogram
``S_i`` is generic for the pair (o, i) when ``P_oi`` and ``S_i`` are not aligned: the spectral
density ratio ``ρ_oi = <P_oi S_i> / (<P_oi> <S_i>)`` is 1. The paper's repair minimises, during
training, the spectral dependence::

    D_oi = < P_oi ⊙ (S_i / <S_i> − 1) >²  =  (ρ_oi − 1)² · <P_oi>²

which is zero exactly when ``ρ_oi = 1`` and is differentiable in the kernel (the input
spectrum is estimated from the current batch and treated as a constant). Grid, zero-frequency
exclusion and folded kernel power of strided transposed convolutions are those of the SDR
(docs/method.md), so :func:`spectral_dependence` and
:func:`~genaudit.analysis.spectral.spectral_density_ratio` agree on the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .accumulators import SpectrumAccumulator
from .dft_grid import rfft_bin_weights, zero_frequency_index
from .kernel_power import kernel_power, pair_input_index
from .spectral import GridTooSmallError, sdr_skip_reason

__all__ = ["input_spectrum", "spectral_dependence"]

Reduction = Literal["mean", "sum", "none"]


def input_spectrum(maps: Tensor | SpectrumAccumulator) -> tuple[Tensor, tuple[int, ...]]:
    """The mean periodogram ``S_i`` of a layer's input and its grid, as constants.

    Parameters
    ----------
    maps : Tensor or SpectrumAccumulator
        A batch of input maps ``(N, C, M_1, …, M_d)`` (detached here), or an accumulator of
        many batches.

    Returns
    -------
    (Tensor, tuple of int)
        ``S`` float64 ``(C, M_1, …, M_{d-1}, M_d // 2 + 1)`` on the rfft half-grid, and the
        grid ``(M_1, …, M_d)``.
    """
    if isinstance(maps, SpectrumAccumulator):
        acc = maps
    else:
        if maps.dim() not in (3, 4, 5):
            raise ValueError(f"expected maps (N, C, 1 to 3 spatial dims), got {tuple(maps.shape)}")
        acc = SpectrumAccumulator(maps.dim() - 2, fft_dtype=torch.float64)
        acc.add(maps.detach())
    _, grid = acc.checked_sums()
    return acc.input_spectrum(), grid


def spectral_dependence(
    weight: Tensor,
    maps: Tensor | SpectrumAccumulator,
    *,
    transposed: bool = False,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    normalised: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Spectral dependence of a convolution's kernels on their input (paper eq. (13)).

    ::

        D_oi = < P_oi ⊙ (S_i / <S_i> − 1) >²  =  (SDR_oi − 1)² · <P_oi>²

    ``<·>`` averages over the DFT grid Ω of the layer's input without ν = 0; ``P_oi`` is the
    kernel power on Ω (folded for a transposed convolution with stride > 1), ``S_i`` the mean
    periodogram of input channel i. Differentiable in ``weight``; the spectrum is a constant.

    Parameters
    ----------
    weight : Tensor
        Conv weight ``(C_out, C_in/g, k…)`` or, with ``transposed``, ConvTranspose weight
        ``(C_in, C_out/g, k…)``, usually the layer's parameter itself.
    maps : Tensor or SpectrumAccumulator
        The layer's input maps ``(N, C_in, M_1, …, M_d)`` (e.g. captured by a forward
        pre-hook from the current batch), or their accumulated spectrum.
    transposed, stride, dilation, groups : as in the torch layer.
    normalised : bool
        Divide each pair's value by ``<P_oi>²``, giving ``(SDR_oi − 1)²``: the same minimum,
        but invariant to the kernel's scale, so minimising it cannot shrink the kernel instead
        of decorrelating it from the input (pairs with ``<P_oi> = 0`` count 0).
    reduction : {"mean", "sum", "none"}
        Mean or sum over the existing pairs, or the ``(C_out, C_in/g)`` values.

    Returns
    -------
    Tensor
        float64 scalar (or ``(C_out, C_in/g)``), on ``weight``'s device, attached to
        ``weight``'s autograd graph. Pairs with a dead input channel (``<S_i> = 0``) count 0.

    Raises
    ------
    GridTooSmallError
        When the input grid has fewer than two non-zero frequencies.
    """
    spectrum, grid = input_spectrum(maps)
    if sdr_skip_reason(grid) is not None:
        raise GridTooSmallError(grid)
    d = len(grid)
    w_in = int(weight.shape[0]) if transposed else int(weight.shape[1]) * groups
    if weight.dim() - 2 != d or w_in != int(spectrum.shape[0]):
        raise ValueError(
            f"weight {tuple(weight.shape)} (groups={groups}, transposed={transposed}) does not "
            f"fit input maps of {int(spectrum.shape[0])} channels on the grid {grid}"
        )
    spectrum = spectrum.to(weight.device)
    p = kernel_power(
        weight, grid, transposed=transposed, stride=stride, dilation=dilation, groups=groups,
        differentiable=True,
    )  # fmt: skip
    c_out, c_in = int(p.shape[0]), int(spectrum.shape[0])
    bins = rfft_bin_weights(grid, device=weight.device)
    s = spectrum.clone()
    s[zero_frequency_index(1, d)] = 0.0
    n_nonzero = math.prod(grid) - 1
    mean_s = (s * bins).flatten(1).sum(1) / n_nonzero  # <S_i>, ν = 0 excluded
    alive = mean_s > 0
    contrast = torch.where(
        alive.view(-1, *([1] * d)), s / mean_s.clamp_min(1e-300).view(-1, *([1] * d)) - 1.0,
        torch.zeros_like(s),
    )  # fmt: skip
    contrast[zero_frequency_index(1, d)] = 0.0  # ν = 0 is not averaged over
    index = pair_input_index(c_out, c_in, groups).to(weight.device)
    weighted = (p * bins) * contrast[index]  # (C_out, C_in/g, *half-grid)
    values = (weighted.flatten(2).sum(-1) / n_nonzero).square()
    if normalised:
        pw = (p * bins).flatten(2).sum(-1) - p[zero_frequency_index(2, d)]
        mean_p = pw / n_nonzero
        values = torch.where(mean_p > 0, values / mean_p.clamp_min(1e-300).square(), 0.0)
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")

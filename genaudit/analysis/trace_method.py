"""The trace method: genericity of a matrix mechanism, for layers without a spatial grid.

A Linear layer, or a convolution fed 1×1 maps, has no input grid with two non-zero
frequencies, so it has no spectral density ratio. Its weight is instead read as a matrix A
(:func:`mechanism_matrix`) acting on a cause with covariance Σ (streamed by
:class:`genaudit.analysis.accumulators.CovarianceAccumulator`), and :func:`trace_ratio` gives
``τ(A Σ Aᵀ) / (τ(A Aᵀ) · τ(Σ))``, 1 for a generic mechanism (docs/method.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .kernel_power import pair_kernels

__all__ = ["mechanism_matrix", "trace_ratio"]


def trace_ratio(a: Tensor | np.ndarray, cov: Tensor | np.ndarray) -> float:
    """Trace-method genericity ratio of a matrix mechanism (paper Prop. 5).

    ::

        ρ = τ(A Σ Aᵀ) / (τ(A Aᵀ) · τ(Σ)),   τ(X) = trace(X) / dim(X)

    Parameters
    ----------
    a : ``(m, n)`` mechanism matrix (see :func:`mechanism_matrix`).
    cov : ``(n, n)`` covariance of the cause (mean removed;
        :class:`~genaudit.analysis.accumulators.CovarianceAccumulator`).

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
    pairs = pair_kernels(w, transposed=transposed, groups=groups)  # (C_out, C_in/g, k…)
    c_out, c_in_g = int(pairs.shape[0]), int(pairs.shape[1])
    c_in = c_in_g * groups
    blocks = pairs.reshape(groups, c_out // groups, c_in_g, k).permute(0, 1, 3, 2)
    out = torch.zeros(groups, c_out // groups, k, groups, c_in_g, dtype=w.dtype, device=w.device)
    idx = torch.arange(groups, device=w.device)
    out[idx, :, :, idx, :] = blocks
    return out.reshape(c_out * k, c_in)

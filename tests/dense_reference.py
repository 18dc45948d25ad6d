"""Dense reference SDR (docs/method.md): straightforward numpy float64, one FFT per pair.

Independent of genaudit's spectral modules on purpose (``genaudit.analysis.spectral``,
``kernel_power``, ``kernel_lags``, …): no lags, no rfft, no folding. A transposed
convolution with stride s is handled on the upsampled grid sM itself: the input is
zero-inserted, every kernel is zero-padded onto sM and every bin that aliases the input's zero
frequency (all ν ≡ 0 mod M) is excluded from the averages.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def _tuple(value: int | Sequence[int], d: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * d
    t = tuple(int(x) for x in value)
    return t * d if len(t) == 1 else t


def pair_kernel(
    weight: np.ndarray, o: int, i: int, *, transposed: bool, groups: int
) -> np.ndarray | None:
    """Kernel from input channel i to output channel o, or None if the pair does not exist."""
    if transposed:
        c_in, c_out_g = weight.shape[0], weight.shape[1]
        c_out = c_out_g * groups
    else:
        c_out, c_in_g = weight.shape[0], weight.shape[1]
        c_in = c_in_g * groups
    c_in_g, c_out_g = c_in // groups, c_out // groups
    group = o // c_out_g
    if i // c_in_g != group:
        return None
    if transposed:
        return weight[i, o - group * c_out_g]
    return weight[o, i - group * c_in_g]


def place_kernel(kernel: np.ndarray, grid: Sequence[int], dilation: Sequence[int]) -> np.ndarray:
    """Zero-pad a dilated kernel onto ``grid`` with circular wrap-around (collisions add)."""
    out = np.zeros(tuple(grid))
    for t in itertools.product(*(range(k) for k in kernel.shape)):
        pos = tuple((ta * da) % ga for ta, da, ga in zip(t, dilation, grid, strict=True))
        np.add.at(out, pos, kernel[t])
    return out


def zero_insert(v: np.ndarray, stride: Sequence[int]) -> np.ndarray:
    """Upsample ``(N, C, *M)`` to ``(N, C, *(s·M))`` by inserting zeros."""
    grid = v.shape[2:]
    up = np.zeros(v.shape[:2] + tuple(s * m for s, m in zip(stride, grid, strict=True)))
    up[(slice(None), slice(None), *(slice(None, None, s) for s in stride))] = v
    return up


def dense_sdr(
    v: np.ndarray,
    weight: np.ndarray,
    *,
    transposed: bool = False,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> np.ndarray:
    """SDR of every pair, ``(C_out, C_in)``; NaN for non-existing or undefined pairs.

    ``v``: inputs ``(N, C_in, *M)``; ``weight`` in torch layout (Conv or ConvTranspose).
    """
    v = np.asarray(v, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    d = v.ndim - 2
    grid = v.shape[2:]
    dil = _tuple(dilation, d)
    s = _tuple(stride, d) if transposed else (1,) * d
    up = zero_insert(v, s)
    big = up.shape[2:]
    axes = tuple(range(2, 2 + d))
    spec = np.mean(np.abs(np.fft.fftn(up, axes=axes)) ** 2, axis=0) / np.prod(big)
    aliases_dc = np.ones(big, dtype=bool)
    for a in range(d):
        idx = np.arange(big[a]) % grid[a] == 0
        shape = [1] * d
        shape[a] = big[a]
        aliases_dc &= idx.reshape(shape)
    keep = ~aliases_dc
    c_in = v.shape[1]
    c_out = weight.shape[1] * groups if transposed else weight.shape[0]
    out = np.full((c_out, c_in), np.nan)
    for o in range(c_out):
        for i in range(c_in):
            k = pair_kernel(weight, o, i, transposed=transposed, groups=groups)
            if k is None:
                continue
            p = np.abs(np.fft.fftn(place_kernel(k, big, dil))) ** 2
            s_i = spec[i]
            mean_p = p[keep].mean()
            mean_s = s_i[keep].mean()
            if mean_p == 0 or mean_s == 0:
                continue
            out[o, i] = (p * s_i)[keep].mean() / (mean_p * mean_s)
    return out


def dense_folded_power(
    kernel: np.ndarray,
    grid: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> np.ndarray:
    """Folded kernel power on the full input grid: ``Σ_j P^{(sM)}(ν + jM)`` by explicit loops."""
    d = kernel.ndim
    s = _tuple(stride, d)
    dil = _tuple(dilation, d)
    big = tuple(si * mi for si, mi in zip(s, grid, strict=True))
    p = np.abs(np.fft.fftn(place_kernel(kernel, big, dil))) ** 2
    out = np.zeros(tuple(grid))
    for nu in itertools.product(*(range(m) for m in grid)):
        for j in itertools.product(*(range(si) for si in s)):
            out[nu] += p[tuple(n + ja * m for n, ja, m in zip(nu, j, grid, strict=True))]
    return out

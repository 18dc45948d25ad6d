"""The spectral density ratio (SDR) of every (output, input) pair of a convolution layer.

Spectral density ratio (Besserve et al. 2021, eq. (8))::

    SDR_oi = <P_oi · S_i> / (<P_oi> · <S_i>)

with ``S_i(ν) = (1/N) Σ_n |DFT_Ω(V[n, i])(ν)|² / |Ω|`` the mean periodogram of input channel i on
the input grid Ω, ``P_oi(ν) = |DFT_Ω(w[o, i])(ν)|²`` the kernel power (folded onto the input grid
for strided transposed convolutions) and ``<·>`` the average over the full d-dimensional DFT grid
excluding ν = 0. Nothing here knows about models or hooks: every function takes tensors and plain
numbers and returns float64 tensors on the device it was given (docs/method.md).

How the pieces fit:

1. :class:`~genaudit.analysis.accumulators.SpectrumAccumulator` streams batches
   ``(N, C, *grid)`` into ``Σ_n |rfftn(V[n, c])|²`` per channel (float64 running total, memory
   independent of N, no host synchronisation).
2. :func:`spectral_density_ratio` turns one accumulator and one layer's weight into all of the
   layer's pair ratios at once, as a :class:`PairSDR`. Its default route never forms a kernel
   spectrum: by Wiener–Khinchin ``Σ_ν P(ν) S(ν) = Σ_τ a(τ) r(τ)`` over the kernel autocorrelation
   lags τ (:mod:`genaudit.analysis.kernel_lags`), so all pairs cost one contraction over lags.
   The dense route (:mod:`genaudit.analysis.kernel_power`) gives the same numbers.
3. Grids with fewer than two non-zero frequencies have no SDR: :func:`sdr_skip_reason` says why,
   and :func:`spectral_density_ratio` raises :class:`GridTooSmallError` (carrying that reason)
   instead of returning a number. The caller reports the layer as ``skipped``; such layers use
   the trace method (:mod:`genaudit.analysis.trace_method`).

The accumulators, the kernel power of both routes and the trace method live in their own
modules (named above).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import NothingToAnalyseError
from .accumulators import SpectrumAccumulator
from .dft_grid import rfft_bin_weights, zero_frequency_index
from .kernel_lags import input_lag_autocorrelation, kernel_lag_autocorrelation
from .kernel_power import axis_tuple, kernel_power, pair_input_index

__all__ = [
    "DEFAULT_RTOL",
    "GridTooSmallError",
    "PairSDR",
    "sdr_skip_reason",
    "spectral_density_ratio",
]

#: Relative threshold below which a mean power over the non-zero frequencies counts as zero.
#: ``<P> <= DEFAULT_RTOL * mean_all(P)`` (``mean_all`` includes ν = 0) marks a pair undefined;
#: it catches dead kernels/channels and kernels whose power sits only at ν = 0, where rounding
#: would otherwise leave a meaningless ratio of two round-off residues.
DEFAULT_RTOL = 1e-12

Method = Literal["auto", "lag", "fft"]


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
    power_sum, grid = spectrum.checked_sums()
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
    s_eff = axis_tuple(stride, d, "stride") if transposed else (1,) * d
    if method == "auto":
        dil = axis_tuple(dilation, d, "dilation")
        method = _choose_method(tuple(int(k) for k in weight.shape[2:]), grid, s_eff, dil)
    n_all = math.prod(grid)
    n_nonzero = n_all - 1
    spec = spectrum.input_spectrum()  # (C_in, *rfft)
    dc = zero_frequency_index(1, d)
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
        sum_p = total_p - p[zero_frequency_index(2, d)]
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

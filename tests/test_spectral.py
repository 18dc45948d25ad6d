"""Numerics of the SDR and trace maths against a dense reference, closed forms and invariances.

The maths lives in genaudit.analysis.spectral (the SDR) and the modules beside it: accumulators,
dft_grid, kernel_power, kernel_lags, trace_method. docs/method.md (SDR, trace method, known
answers). Tolerances are stated per test.
"""

from __future__ import annotations

import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from dense_reference import dense_folded_power, dense_sdr

from genaudit.analysis import accumulators
from genaudit.analysis.accumulators import CovarianceAccumulator, SpectrumAccumulator
from genaudit.analysis.dft_grid import rfft_bin_weights
from genaudit.analysis.kernel_lags import kernel_lag_autocorrelation
from genaudit.analysis.kernel_power import kernel_power, pair_input_index
from genaudit.analysis.spectral import (
    GridTooSmallError,
    PairSDR,
    sdr_skip_reason,
    spectral_density_ratio,
)
from genaudit.analysis.trace_method import mechanism_matrix, trace_ratio
from genaudit.errors import NothingToAnalyseError

F64 = torch.float64


def accumulate(v: torch.Tensor, *, batch: int | None = None, fft_dtype=F64) -> SpectrumAccumulator:
    acc = SpectrumAccumulator(v.dim() - 2, fft_dtype=fft_dtype)
    for chunk in v.split(batch or v.shape[0]):
        acc.add(chunk)
    return acc


def sdr_of(v: torch.Tensor, w: torch.Tensor, method: str = "auto", **layer) -> PairSDR:
    return spectral_density_ratio(accumulate(v), w, method=method, **layer)  # type: ignore[arg-type]


def relu_inputs(rng: np.random.Generator, n: int, c: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Nonnegative inputs with a per-channel offset, so the zero frequency dominates."""
    x = np.maximum(rng.standard_normal((n, c, *grid)), 0) + rng.uniform(
        0, 1, (1, c) + (1,) * len(grid)
    )
    return torch.tensor(x, dtype=F64)


def conv_weight(rng, c_in, c_out, k, *, transposed, groups):
    shape = (c_in, c_out // groups, *k) if transposed else (c_out, c_in // groups, *k)
    return torch.tensor(rng.standard_normal(shape) + 0.3, dtype=F64)


def embed(kernel: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(grid)
    out[tuple(slice(0, k) for k in kernel.shape)] = kernel
    return out


def nonzero_mean(x: np.ndarray) -> float:
    """Mean over the full grid excluding the zero frequency."""
    flat = x.reshape(-1)
    return float(flat[1:].mean())


# --------------------------------------------------------------------------------------------
# Dense reference: every kind of layer
# --------------------------------------------------------------------------------------------

# (id, transposed, c_in, c_out, kernel, grid, stride, dilation, groups)
LAYERS = [
    ("conv1d", False, 3, 4, (5,), (16,), 1, 1, 1),
    ("conv1d-s2-d2", False, 3, 2, (3,), (15,), 2, 2, 1),
    ("conv2d-12x20", False, 3, 5, (3, 3), (12, 20), 1, 1, 1),
    ("conv2d-s21-d2", False, 2, 3, (3, 4), (12, 20), (2, 1), 2, 1),
    ("conv2d-groups2", False, 4, 6, (3, 3), (8, 9), 1, 1, 2),
    ("conv2d-depthwise", False, 4, 8, (3, 3), (7, 8), 2, 1, 4),
    ("conv2d-k7-on-4x4", False, 2, 3, (7, 7), (4, 4), 1, 1, 1),
    ("conv2d-k5-d2-on-5x6", False, 2, 2, (5, 3), (5, 6), 1, (2, 3), 1),
    ("conv3d", False, 2, 3, (3, 3, 2), (4, 6, 5), 1, 1, 1),
    ("convT1d-s1", True, 3, 2, (3,), (11,), 1, 1, 1),
    ("convT1d-s2", True, 3, 4, (4,), (9,), 2, 1, 1),
    ("convT1d-s3", True, 2, 3, (5,), (7,), 3, 1, 1),
    ("convT2d-s2-4x4", True, 5, 3, (4, 4), (4, 4), 2, 1, 1),
    ("convT2d-s21", True, 3, 2, (4, 3), (6, 10), (2, 1), 1, 1),
    ("convT2d-s3-d2", True, 2, 3, (4, 4), (5, 7), 3, 2, 1),
    ("convT2d-groups2", True, 4, 6, (4, 4), (4, 5), 2, 1, 2),
    ("convT2d-depthwise", True, 4, 4, (4, 4), (5, 4), 2, 1, 4),
    ("convT2d-k7-on-3x3", True, 2, 2, (7, 7), (3, 3), 2, 1, 1),
    ("convT3d-s2", True, 2, 3, (4, 4, 3), (3, 4, 5), 2, 1, 1),
    ("convT2d-s2-odd", True, 2, 2, (5, 5), (5, 3), 2, 1, 1),
]


@pytest.mark.parametrize(
    "name,transposed,c_in,c_out,k,grid,stride,dilation,groups", LAYERS, ids=[c[0] for c in LAYERS]
)
def test_fast_routes_match_dense_reference(
    name, transposed, c_in, c_out, k, grid, stride, dilation, groups
):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    v = relu_inputs(rng, 6, c_in, grid)
    w = conv_weight(rng, c_in, c_out, k, transposed=transposed, groups=groups)
    layer = dict(transposed=transposed, stride=stride, dilation=dilation, groups=groups)
    expected = dense_sdr(v.numpy(), w.numpy(), **layer)
    lag = sdr_of(v, w, "lag", **layer)
    fft = sdr_of(v, w, "fft", **layer)
    auto = sdr_of(v, w, **layer)
    assert lag.values.shape == (c_out, c_in // groups)
    assert bool(lag.defined.all())
    np.testing.assert_allclose(lag.to_dense().numpy(), expected, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(fft.values.numpy(), lag.values.numpy(), rtol=1e-10)
    np.testing.assert_allclose(auto.values.numpy(), lag.values.numpy(), rtol=1e-10)
    # Non-existing pairs are exactly the NaNs of the dense matrix.
    assert np.isnan(lag.to_dense().numpy()).sum() == c_out * c_in - c_out * (c_in // groups)


@pytest.mark.parametrize(
    "kernel,grid,stride,dilation",
    [
        ((4, 4), (4, 4), 2, 1),
        ((4, 3), (6, 10), (2, 1), 1),
        ((5,), (7,), 3, 2),
        ((7, 7), (3, 3), 2, 1),
    ],
)
def test_kernel_power_is_the_folded_dense_power(kernel, grid, stride, dilation):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((1, 1, *kernel))  # ConvTranspose layout (C_in, C_out, k…)
    p = kernel_power(torch.tensor(w), grid, transposed=True, stride=stride, dilation=dilation)
    folded = dense_folded_power(w[0, 0], grid, stride=stride, dilation=dilation)
    np.testing.assert_allclose(p[0, 0].numpy(), folded[..., : grid[-1] // 2 + 1], rtol=1e-10)
    # The lag representation is the DFT pair of the same folded power.
    kl = kernel_lag_autocorrelation(
        torch.tensor(w), grid, transposed=True, stride=stride, dilation=dilation
    )
    nu = np.stack(np.meshgrid(*(np.arange(m) for m in grid), indexing="ij"), -1)
    phase = np.exp(-2j * np.pi * (nu[..., None, :] * kl.lags.numpy() / np.array(grid)).sum(-1))
    from_lags = (phase * kl.values[0, 0].numpy()).sum(-1)
    np.testing.assert_allclose(from_lags.real, folded, rtol=1e-10, atol=1e-10 * folded.max())
    assert kl.lags[kl.zero_lag].abs().sum() == 0


def test_folded_power_keeps_the_aliased_dc_bins_out():
    """Excluding only the single zero bin on the upsampled grid gives a different (wrong) value."""
    rng = np.random.default_rng(5)
    v = relu_inputs(rng, 4, 2, (6, 6))
    w = conv_weight(rng, 2, 2, (4, 4), transposed=True, groups=1)
    fast = sdr_of(v, w, transposed=True, stride=2).values.numpy()
    up = np.zeros((4, 2, 12, 12))
    up[..., ::2, ::2] = v.numpy()
    naive = dense_sdr(up, np.flip(w.numpy().transpose(1, 0, 2, 3), (2, 3)).copy())
    assert np.abs(np.log10(naive / fast)).max() > 0.01


def test_pair_input_index_and_dense_layout():
    idx = pair_input_index(6, 4, 2)
    assert idx.tolist() == [[0, 1]] * 3 + [[2, 3]] * 3
    assert pair_input_index(8, 4, 4)[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        pair_input_index(5, 4, 2)


# --------------------------------------------------------------------------------------------
# Invariances (docs/method.md)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transposed,stride", [(False, 1), (True, 2)])
def test_scaling_p_or_s_leaves_sdr_unchanged(transposed, stride):
    rng = np.random.default_rng(7)
    v = relu_inputs(rng, 5, 3, (8, 10))
    w = conv_weight(rng, 3, 4, (4, 4), transposed=transposed, groups=1)
    base = sdr_of(v, w, transposed=transposed, stride=stride).values
    scaled = sdr_of(v * 1e-3, w * 37.0, transposed=transposed, stride=stride).values
    torch.testing.assert_close(scaled, base, rtol=1e-12, atol=0)


def test_circular_shifts_of_input_and_kernel_leave_sdr_unchanged():
    rng = np.random.default_rng(8)
    v = relu_inputs(rng, 5, 3, (8, 10))
    w = torch.tensor(rng.standard_normal((2, 3, 8, 10)))  # kernel as large as the grid
    base = sdr_of(v, w).values
    shifted_v = sdr_of(torch.roll(v, (3, -4), (2, 3)), w).values
    shifted_w = sdr_of(v, torch.roll(w, (5, 7), (2, 3))).values
    torch.testing.assert_close(shifted_v, base, rtol=1e-12, atol=0)
    torch.testing.assert_close(shifted_w, base, rtol=1e-10, atol=0)


def white_input(grid: tuple[int, ...], channels: int, offset: float = 3.0) -> torch.Tensor:
    """Maps whose |DFT|² is 1 at every non-zero frequency (a delta plus a constant)."""
    v = torch.full((1, channels, *grid), offset, dtype=F64)
    v[(0, slice(None), *(0,) * len(grid))] += 1.0
    return v


@pytest.mark.parametrize("transposed,stride", [(False, 1), (False, 2), (True, 2), (True, 3)])
def test_sdr_is_one_for_white_input(transposed, stride):
    rng = np.random.default_rng(9)
    w = conv_weight(rng, 3, 4, (4, 3), transposed=transposed, groups=1)
    r = sdr_of(white_input((7, 8), 3), w, transposed=transposed, stride=stride)
    torch.testing.assert_close(r.values, torch.ones_like(r.values), rtol=1e-12, atol=0)


@pytest.mark.parametrize("transposed,stride", [(False, 1), (True, 2), (True, (2, 1))])
def test_sdr_is_one_for_a_delta_kernel(transposed, stride):
    rng = np.random.default_rng(10)
    v = relu_inputs(rng, 4, 3, (6, 9))
    shape = (3, 2) if transposed else (2, 3)
    w = torch.zeros(*shape, 4, 4, dtype=F64)
    w[..., 1, 2] = torch.tensor(rng.uniform(0.5, 2.0, shape))
    r = sdr_of(v, w, transposed=transposed, stride=stride)
    torch.testing.assert_close(r.values, torch.ones_like(r.values), rtol=1e-12, atol=0)


def test_stretch_group_average_of_sdr_is_one():
    """Averaging the numerator over the stretches ν → gν (d prime) gives <P><S> (paper Prop. 4)."""
    d = 31
    rng = np.random.default_rng(11)
    v = relu_inputs(rng, 8, 2, (d,))
    w = torch.tensor(rng.standard_normal((3, 2, 5)))
    x = np.arange(d)
    values = []
    for g in range(1, d):
        g_inv = pow(g, -1, d)
        # V_g(x) = V(g⁻¹ x) has DFT V̂(g ν): the input spectrum stretched by g.
        values.append(sdr_of(v[..., (g_inv * x) % d], w).values)
    mean = torch.stack(values).mean(0)
    torch.testing.assert_close(mean, torch.ones_like(mean), rtol=1e-12, atol=0)
    assert torch.stack(values).std(0).min() > 1e-3  # the individual stretches do differ


def test_batch_size_invariance_and_merge():
    rng = np.random.default_rng(12)
    v = relu_inputs(rng, 15, 3, (6, 7))
    w = conv_weight(rng, 3, 2, (3, 3), transposed=True, groups=1)
    accs = [accumulate(v, batch=b) for b in (1, 7, 15)]
    for acc in accs[1:]:
        torch.testing.assert_close(acc.power_sum, accs[0].power_sum, rtol=1e-12, atol=0)
        assert acc.count == 15
    merged = accumulate(v[:4]).merge(accumulate(v[4:]))
    torch.testing.assert_close(merged.power_sum, accs[0].power_sum, rtol=1e-12, atol=0)
    rebuilt = SpectrumAccumulator.from_sums(merged.power_sum * 1.0, merged.count, (6, 7))
    expected = spectral_density_ratio(accs[0], w, transposed=True, stride=2).values
    for acc in (*accs, merged, rebuilt):
        got = spectral_density_ratio(acc, w, transposed=True, stride=2).values
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    empty = SpectrumAccumulator(2)
    assert empty.merge(SpectrumAccumulator(2)).power_sum is None
    assert SpectrumAccumulator(2).merge(merged).count == 15


def test_cpu_chunking_does_not_change_the_sums(monkeypatch):
    rng = np.random.default_rng(25)
    v = relu_inputs(rng, 9, 3, (6, 7))
    whole = accumulate(v)
    monkeypatch.setattr(accumulators, "_CPU_CHUNK_VALUES", 2 * 3 * 6 * 7)  # chunks of 2 samples
    chunked = accumulate(v)
    assert chunked.power_sum is not None and whole.power_sum is not None
    torch.testing.assert_close(chunked.power_sum, whole.power_sum, rtol=1e-12, atol=0)
    assert chunked.count == 9


def test_input_spectrum_normalisation():
    rng = np.random.default_rng(13)
    v = relu_inputs(rng, 4, 2, (5, 6))
    s = accumulate(v).input_spectrum().numpy()
    full = (np.abs(np.fft.fftn(v.numpy(), axes=(2, 3))) ** 2).mean(0) / 30
    np.testing.assert_allclose(s, full[..., :4], rtol=1e-12)
    weights = rfft_bin_weights((5, 6)).numpy()
    np.testing.assert_allclose((s * weights).sum((1, 2)), full.sum((1, 2)), rtol=1e-12)
    assert rfft_bin_weights((7,)).tolist() == [1.0, 2.0, 2.0, 2.0]


def test_float32_accumulation_matches_float64():
    rng = np.random.default_rng(14)
    v = relu_inputs(rng, 32, 4, (16, 16))
    w = conv_weight(rng, 4, 3, (4, 4), transposed=True, groups=1)
    single = SpectrumAccumulator(2)
    for chunk in v.float().split(8):
        single.add(chunk)
    assert single.power_sum is not None and single.power_sum.dtype == F64
    r32 = spectral_density_ratio(single, w.float(), transposed=True, stride=2).values
    r64 = sdr_of(v, w, transposed=True, stride=2).values
    torch.testing.assert_close(r32, r64, rtol=1e-5, atol=0)
    half = SpectrumAccumulator(2)
    half.add(v.to(torch.bfloat16))  # raised to float32 for the FFT
    assert half.power_sum is not None and half.power_sum.dtype == F64


def test_accumulator_rejects_mismatched_batches():
    acc = SpectrumAccumulator(2)
    acc.add(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="does not match"):
        acc.add(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="spatial dims"):
        acc.add(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="no samples"):
        SpectrumAccumulator(1).input_spectrum()
    with pytest.raises(ValueError, match="input channels"):
        spectral_density_ratio(acc, torch.zeros(2, 4, 3, 3))


# --------------------------------------------------------------------------------------------
# Known answers (docs/method.md)
# --------------------------------------------------------------------------------------------


def shaped_inputs(g: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """One 'sample' per channel whose periodogram is |ĝ|²: white noise shaped by g, exactly."""
    return torch.tensor(np.stack([embed(gi, grid) for gi in g])[None], dtype=F64)


def test_independent_random_kernels_are_generic():
    rng = np.random.default_rng(15)
    g = rng.standard_normal((30, 5, 5))
    w = torch.tensor(rng.standard_normal((30, 30, 5, 5)))
    log_sdr = sdr_of(shaped_inputs(g, (32, 32)), w).log10()
    assert abs(float(log_sdr.mean())) < 0.03
    assert 0.03 < float(log_sdr.std()) < 0.15


def test_matched_and_inverse_kernels():
    rng = np.random.default_rng(16)
    g = rng.standard_normal((5, 5))
    grid = (32, 32)
    v = shaped_inputs(g[None], grid)
    g_hat = np.fft.fft2(embed(g, grid))
    p = np.abs(g_hat) ** 2
    matched = sdr_of(v, torch.tensor(g[None, None])).values.item()
    assert matched == pytest.approx(nonzero_mean(p**2) / nonzero_mean(p) ** 2, rel=1e-10)
    assert matched > 1
    inverse_kernel = torch.tensor(np.real(np.fft.ifft2(1 / g_hat))[None, None])
    expected_inverse = 1 / (nonzero_mean(p) * nonzero_mean(1 / p))
    for method in ("lag", "fft"):
        inverse = sdr_of(v, inverse_kernel, method).values.item()
        assert inverse == pytest.approx(expected_inverse, rel=1e-10)
    assert expected_inverse < 1


def test_forward_times_backward_sdr():
    """ρ_f · ρ_b = 1 / (<P><1/P>) ≤ 1 for a white input (equality iff P is constant)."""
    rng = np.random.default_rng(17)
    grid = (16, 16)
    k = rng.standard_normal((3, 3))
    p = np.abs(np.fft.fft2(embed(k, grid))) ** 2
    v = white_input(grid, 1)
    rho_f = sdr_of(v, torch.tensor(k[None, None])).values.item()
    # Backward: the forward output (spectrum P·S) fed through the inverse filter (power 1/P).
    forward_out = np.real(np.fft.ifft2(np.fft.fft2(v[0, 0].numpy()) * np.fft.fft2(embed(k, grid))))
    inverse = np.real(np.fft.ifft2(1 / np.fft.fft2(embed(k, grid))))
    rho_b = sdr_of(torch.tensor(forward_out[None, None]), torch.tensor(inverse[None, None])).values
    expected = 1 / (nonzero_mean(p) * nonzero_mean(1 / p))
    assert rho_f == pytest.approx(1.0, rel=1e-12)
    assert rho_f * rho_b.item() == pytest.approx(expected, rel=1e-10)
    assert expected < 1


# --------------------------------------------------------------------------------------------
# Paper Model 2 / Prop. 6: SGD drifts to the balanced square-root solution
# --------------------------------------------------------------------------------------------


def diagonal_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """ρ'(B, A) = <a² b²> / (<a²><b²>) via the trace method with A = diag(a), Σ = diag(b²)."""
    return trace_ratio(np.diag(a), np.diag(b**2))


def test_model2_sgd_identity_drift_and_genericity():
    rng = np.random.default_rng(18)
    dim, steps, noise = 2000, 3000, 0.5
    a_true = rng.uniform(0.5, 1.5, dim)
    b_true = rng.uniform(0.5, 1.5, dim)
    c0 = a_true * b_true
    a_init = rng.uniform(0.05, 0.3, dim)
    b_init = rng.uniform(0.05, 0.3, dim)

    def train(stochastic: bool, lr: float) -> tuple[np.ndarray, np.ndarray]:
        a, b = a_init.copy(), b_init.copy()
        worst = 0.0
        for _ in range(steps):
            c = c0 + noise * rng.standard_normal(dim) if stochastic else c0
            r = c - a * b
            a_new, b_new = a + lr * r * b, b + lr * r * a  # SGD on ½(c − ab)²
            identity = (a_new**2 - b_new**2) - (a**2 - b**2) * (1 - lr**2 * r**2)
            worst = max(worst, float(np.abs(identity).max()))
            a, b = a_new, b_new
        assert worst < 1e-12  # a'² − b'² = (a² − b²)(1 − η² r²) at every step
        return a, b

    gap0 = np.abs(a_init**2 - b_init**2)
    a_sgd, b_sgd = train(stochastic=True, lr=0.1)
    # Gradient flow conserves a² − b² exactly; small full-batch steps nearly do.
    a_gd, b_gd = train(stochastic=False, lr=0.02)
    assert np.all(np.abs(a_sgd**2 - b_sgd**2) < 1e-3 * gap0)  # SGD balances every entry
    gd_kept = np.abs(a_gd**2 - b_gd**2) / gap0
    assert gd_kept.min() > 0.85 and gd_kept.max() <= 1.0
    np.testing.assert_allclose(a_gd * b_gd, c0, rtol=1e-6)

    limit = np.mean((a_true * b_true) ** 2) / np.mean(a_true * b_true) ** 2
    balanced = np.sqrt(c0)
    assert diagonal_ratio(balanced, balanced) == pytest.approx(
        np.mean(c0**2) / np.mean(c0) ** 2, rel=1e-12
    )
    expected_limit = (13 / 12) ** 2  # E[c²]/E[c]² for independent U(0.5, 1.5) factors
    assert limit == pytest.approx(expected_limit, rel=0.03)
    assert diagonal_ratio(a_sgd, b_sgd) == pytest.approx(expected_limit, rel=0.05)
    assert diagonal_ratio(a_sgd, b_sgd) > 1.1
    assert diagonal_ratio(a_true, b_true) == pytest.approx(1.0, abs=0.02)


# --------------------------------------------------------------------------------------------
# Trace method (docs/method.md)
# --------------------------------------------------------------------------------------------


def test_trace_ratio_generic_cases_and_scale_invariance():
    rng = np.random.default_rng(19)
    a = rng.standard_normal((7, 5))
    x = rng.standard_normal((5, 5))
    cov = x @ x.T
    assert trace_ratio(a, 2.5 * np.eye(5)) == pytest.approx(1.0, rel=1e-12)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    assert trace_ratio(3 * q, cov) == pytest.approx(1.0, rel=1e-12)
    tall, _ = np.linalg.qr(rng.standard_normal((9, 5)))  # orthonormal columns
    assert trace_ratio(tall, cov) == pytest.approx(1.0, rel=1e-12)
    rho = trace_ratio(a, cov)
    assert trace_ratio(-4 * a, 0.1 * cov) == pytest.approx(rho, rel=1e-12)
    assert trace_ratio(torch.tensor(a), torch.tensor(cov)) == pytest.approx(rho, rel=1e-12)
    expected = np.trace(a @ cov @ a.T) / 7 / (np.trace(a @ a.T) / 7 * np.trace(cov) / 5)
    assert rho == pytest.approx(expected, rel=1e-12)


def test_trace_ratio_undefined_is_nan():
    assert math.isnan(trace_ratio(np.zeros((3, 2)), np.eye(2)))
    assert math.isnan(trace_ratio(np.ones((3, 2)), np.zeros((2, 2))))
    assert math.isnan(trace_ratio(np.ones((3, 2)), np.full((2, 2), np.inf)))
    with pytest.raises(ValueError):
        trace_ratio(np.ones((3, 2)), np.eye(3))


def test_streaming_covariance_matches_numpy():
    rng = np.random.default_rng(20)
    x = rng.standard_normal((50, 6)) * rng.uniform(0.1, 3, 6) + 5.0
    acc = CovarianceAccumulator()
    for chunk in np.array_split(x, [1, 8, 30]):
        acc.add(torch.tensor(chunk, dtype=torch.float32 if len(chunk) == 1 else F64))
    expected = np.cov(np.vstack([x[:1].astype(np.float32), x[1:]]).T, ddof=0)
    np.testing.assert_allclose(acc.covariance().numpy(), expected, rtol=1e-10, atol=1e-12)
    assert acc.count == 50
    left, right = CovarianceAccumulator(), CovarianceAccumulator()
    left.add(torch.tensor(x[:20]))
    right.add(torch.tensor(x[20:]))
    merged = CovarianceAccumulator().merge(left).merge(right)
    np.testing.assert_allclose(merged.covariance().numpy(), np.cov(x.T, ddof=0), rtol=1e-10)
    latent = CovarianceAccumulator()
    latent.add(torch.tensor(x[:, :, None, None]))  # (N, n, 1, 1) latents are flattened
    assert latent.covariance().shape == (6, 6)


@pytest.mark.parametrize("groups", [1, 2])
def test_mechanism_matrix_of_convtranspose_on_a_1x1_input(groups):
    rng = np.random.default_rng(21)
    w = torch.tensor(rng.standard_normal((4, 6 // groups, 3, 2)))
    z = torch.tensor(rng.standard_normal((5, 4)))
    a = mechanism_matrix(w, transposed=True, groups=groups)
    assert a.shape == (6 * 6, 4)
    out = F.conv_transpose2d(z[:, :, None, None], w, groups=groups)  # (5, 6, 3, 2)
    torch.testing.assert_close(z @ a.T, out.reshape(5, -1), rtol=1e-12, atol=1e-12)
    lin = torch.tensor(rng.standard_normal((3, 4)))
    assert torch.equal(mechanism_matrix(lin), lin)
    conv = torch.tensor(rng.standard_normal((6, 4 // groups, 3, 3)))
    a_conv = mechanism_matrix(conv, groups=groups)
    assert a_conv.shape == (6 * 9, 4)
    assert float(a_conv.square().sum()) == pytest.approx(float(conv.square().sum()))


# --------------------------------------------------------------------------------------------
# Skipped and undefined
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(1, 1), (1, 2), (2,), (1,), (1, 1, 1)])
def test_grid_too_small_is_skipped(grid):
    reason = sdr_skip_reason(grid)
    assert reason is not None and "non-zero frequenc" in reason
    acc = accumulate(torch.rand(3, 2, *grid, dtype=F64))
    w = torch.ones(2, 2, *(3,) * len(grid), dtype=F64)
    with pytest.raises(GridTooSmallError) as info:
        spectral_density_ratio(acc, w, transposed=True, stride=2)
    assert info.value.reason == reason
    assert isinstance(info.value, NothingToAnalyseError)


@pytest.mark.parametrize("grid", [(1, 3), (3,), (2, 2)])
def test_smallest_grids_with_an_sdr(grid):
    assert sdr_skip_reason(grid) is None
    rng = np.random.default_rng(22)
    v = relu_inputs(rng, 3, 2, grid)
    w = conv_weight(rng, 2, 2, (2,) * len(grid), transposed=False, groups=1)
    np.testing.assert_allclose(
        sdr_of(v, w).to_dense().numpy(), dense_sdr(v.numpy(), w.numpy()), rtol=1e-10
    )


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_dead_kernels_and_dead_channels_are_undefined(dtype):
    rng = np.random.default_rng(23)
    v = relu_inputs(rng, 6, 4, (12, 20)).to(dtype)
    v[:, 1] = 0.0  # dead ReLU channel
    v[:, 2] = 0.7  # constant channel: power only at ν = 0
    w = conv_weight(rng, 4, 3, (4, 4), transposed=True, groups=1)
    w[3, 1] = 0.0  # dead kernel: input 3 → output 1
    acc = SpectrumAccumulator(2)
    acc.add(v)
    for method in ("lag", "fft"):
        r = spectral_density_ratio(acc, w, transposed=True, stride=2, method=method)  # type: ignore[arg-type]
        expected_defined = torch.ones(3, 4, dtype=torch.bool)
        expected_defined[:, 1:3] = False
        expected_defined[1, 3] = False
        assert torch.equal(r.defined, expected_defined)
        assert torch.isnan(r.values[~expected_defined]).all()
        assert torch.isfinite(r.values[expected_defined]).all()
        assert r.undefined_count == 7


def test_kernel_with_power_only_at_zero_frequency_is_undefined():
    """A constant 4×4 kernel on a 4×4 grid has P = 0 off ν = 0; rounding must not fake a ratio."""
    rng = np.random.default_rng(24)
    v = relu_inputs(rng, 3, 2, (4, 4))
    w = torch.tensor(rng.standard_normal((2, 2, 4, 4)))
    w[0, 1] = 1.3
    zero = torch.zeros(2, 2, 3, 3, dtype=F64)
    for method in ("lag", "fft"):
        r = sdr_of(v, w, method)
        assert r.defined.tolist() == [[True, False], [True, True]]
        dead = sdr_of(v, zero, method)
        assert not dead.defined.any() and torch.isnan(dead.values).all()


def test_non_finite_inputs_and_weights_are_undefined():
    rng = np.random.default_rng(26)
    v = relu_inputs(rng, 4, 3, (6, 6))
    v[1, 2, 3, 3] = math.nan
    w = conv_weight(rng, 3, 2, (3, 3), transposed=False, groups=1)
    w[0, 1, 1, 1] = math.inf
    for method in ("lag", "fft"):
        r = sdr_of(v, w, method)
        assert r.defined.tolist() == [[True, False, False], [True, True, False]]
        assert torch.isfinite(r.values[r.defined]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(27)
    v = relu_inputs(rng, 16, 4, (8, 8))
    w = conv_weight(rng, 4, 3, (4, 4), transposed=True, groups=1)
    cpu = sdr_of(v, w, transposed=True, stride=2).values
    for dtype, tol in ((F64, 1e-10), (torch.float32, 1e-5)):
        acc = SpectrumAccumulator(2)
        for chunk in v.to("cuda", dtype).split(5):
            acc.add(chunk)
        gpu = spectral_density_ratio(acc, w.to("cuda", dtype), transposed=True, stride=2)
        assert gpu.values.device.type == "cuda"
        torch.testing.assert_close(gpu.values.cpu(), cpu, rtol=tol, atol=0)

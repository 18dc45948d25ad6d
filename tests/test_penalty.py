"""The spectral dependence of eq. (13): consistent with the SDR, zero exactly when SDR = 1,
differentiable in the weight (finite differences), and minimising it makes a layer generic."""

from __future__ import annotations

import pytest
import torch

from genaudit.analysis.accumulators import SpectrumAccumulator
from genaudit.analysis.penalty import input_spectrum, spectral_dependence
from genaudit.analysis.spectral import GridTooSmallError, spectral_density_ratio

LAYERS = [
    # (weight shape, input shape, transposed, stride, dilation, groups)
    ((5, 3, 3, 3), (4, 3, 9, 8), False, 1, 1, 1),
    ((6, 4, 4, 4), (4, 6, 5, 5), True, 2, 1, 2),  # strided transposed: folded power
    ((4, 2, 3), (3, 4, 17), False, 1, 2, 2),  # dilated grouped Conv1d
    ((3, 5, 4), (2, 3, 7), True, 3, 1, 1),
]


def _smooth(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Maps with a coloured (non-flat) spectrum: cumulative sums of noise along every axis."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    for axis in range(2, len(shape)):
        x = x.cumsum(axis)
    return x


@pytest.mark.parametrize("layer", LAYERS)
def test_equals_the_sdr_form(layer) -> None:
    wshape, xshape, transposed, stride, dilation, groups = layer
    weight = torch.randn(wshape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    maps = _smooth(xshape, 2)
    acc = SpectrumAccumulator(len(xshape) - 2, fft_dtype=torch.float64)
    acc.add(maps)
    kw = dict(transposed=transposed, stride=stride, dilation=dilation, groups=groups)
    pairs = spectral_density_ratio(acc, weight, **kw)
    expected = (pairs.values - 1.0).square() * pairs.mean_kernel_power.square()
    got = spectral_dependence(weight, maps, reduction="none", **kw)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=0.0)
    assert float(expected.abs().max()) > 1e-6  # a non-generic layer: the test can fail
    torch.testing.assert_close(spectral_dependence(weight, acc, **kw), expected.mean())
    scale_free = spectral_dependence(weight, maps, normalised=True, reduction="none", **kw)
    torch.testing.assert_close(scale_free, (pairs.values - 1.0).square(), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(
        spectral_dependence(7.0 * weight, maps, normalised=True, reduction="none", **kw),
        scale_free,
    )
    torch.testing.assert_close(spectral_dependence(weight, maps, reduction="sum", **kw),
                               expected.sum())  # fmt: skip


def test_zero_exactly_when_the_input_spectrum_is_flat() -> None:
    # a single impulse per channel has a flat spectrum: every SDR is 1
    maps = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    maps[0, :, 2, 5] = torch.tensor([1.0, 2.0, 3.0])
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    assert float(spectral_dependence(weight, maps, reduction="none").abs().max()) < 1e-28
    # and a constant kernel power (a single tap) gives zero on any input
    tap = torch.zeros(4, 3, 3, 3, dtype=torch.float64)
    tap[:, :, 1, 1] = 1.0
    assert float(spectral_dependence(tap, _smooth((2, 3, 8, 8), 3)).abs()) < 1e-20


def test_gradient_matches_finite_differences() -> None:
    maps = _smooth((3, 2, 6, 7), 4)
    for transposed, stride in ((False, 1), (True, 2)):
        shape = (2, 3, 3, 3) if transposed else (3, 2, 3, 3)  # 2 input channels either way
        weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)

        def fn(w: torch.Tensor, transposed: bool = transposed, stride: int = stride):
            return spectral_dependence(w, maps, transposed=transposed, stride=stride)

        assert torch.autograd.gradcheck(fn, (weight,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_minimising_it_makes_the_layer_generic() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    maps = _smooth((8, 3, 12, 12), 5)
    # start aligned with the input: a low-pass kernel on low-frequency maps
    with torch.no_grad():
        conv.weight.copy_(torch.ones_like(conv.weight) + 0.1 * torch.randn_like(conv.weight))

    def mean_abs_log10() -> float:
        acc = SpectrumAccumulator(2, fft_dtype=torch.float64)
        acc.add(maps)
        return float(spectral_density_ratio(acc, conv.weight.detach()).log10().abs().mean())

    before = mean_abs_log10()
    opt = torch.optim.Adam(conv.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        spectral_dependence(conv.weight, maps, normalised=True).backward()
        opt.step()
    after = mean_abs_log10()
    assert before > 0.3 and after < before / 3, (before, after)


def test_input_spectrum_and_errors() -> None:
    maps = _smooth((2, 3, 5), 6)
    s, grid = input_spectrum(maps)
    assert s.shape == (3, 3) and grid == (5,)
    with pytest.raises(GridTooSmallError):
        spectral_dependence(torch.ones(2, 3, 1, 1), torch.ones(4, 3, 1, 1))
    with pytest.raises(ValueError, match="reduction"):
        spectral_dependence(torch.ones(2, 3, 3), maps, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not fit input maps of 3 channels"):
        spectral_dependence(torch.ones(2, 4, 3), maps)
    with pytest.raises(ValueError, match="expected maps"):
        input_spectrum(torch.ones(3, 3))

"""Map transforms (docs/method.md) against independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genaudit.analysis import transforms
from genaudit.analysis.transforms import Transform, make_transform, shift, stretch
from genaudit.errors import UsageError

# Both grid_sample and interpolate compute sampling positions in float32, each ~1e-6 px off for
# maps this size; the float64 tests below pin the definition down to 1e-12.
F32 = {"atol": 3e-6, "rtol": 0.0}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _resize_crop(x: torch.Tensor, s: float, dims: tuple[int, ...]) -> torch.Tensor:
    """Oracle for s > 1: resize by s (align_corners=False), then centre-crop back."""
    size = list(x.shape[2:])
    new = [round(m * s) if 2 + k in dims else m for k, m in enumerate(size)]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    big = F.interpolate(x, size=new, mode=mode, align_corners=False)
    for k, (m, n) in enumerate(zip(size, new, strict=True)):
        if n != m:
            assert (n - m) % 2 == 0, "choose sizes so the crop is symmetric"
            big = big.narrow(2 + k, (n - m) // 2, m)
    return big


def _formula_1d(v: np.ndarray, s: float) -> np.ndarray:
    """T_s V(x) = V(c + (x − c)/s) on pixel centres x = j + 1/2, linear, edge values outside."""
    m = v.shape[-1]
    x = np.arange(m) + 0.5
    c = m / 2
    src = c + (x - c) / s - 0.5  # index coordinate
    src = np.clip(src, 0, m - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, m - 1)
    w = src - i0
    return v[..., i0] * (1 - w) + v[..., i1] * w


def _formula(x: np.ndarray, s: float, axes: tuple[int, ...]) -> np.ndarray:
    """Separable: the multilinear interpolation is a product of 1-D ones."""
    out = x
    for a in axes:
        out = np.moveaxis(_formula_1d(np.moveaxis(out, a, -1), s), -1, a)
    return out


# --------------------------------------------------------------------------- stretch, s > 1


@pytest.mark.parametrize("s, size", [(1.5, 8), (2.0, 8), (2.0, 6), (1.5, 4)])
@pytest.mark.parametrize("axis, dims", [("horizontal", (3,)), ("vertical", (2,)), ("both", (2, 3))])
def test_stretch_2d_matches_resize_and_crop(s: float, size: int, axis: str, dims: tuple) -> None:
    h = size if 2 in dims else 5  # an unstretched axis may have any size
    w = size if 3 in dims else 5
    x = torch.randn(2, 3, h, w, generator=_gen())
    got = stretch(x, s, axis)
    want = _resize_crop(x, s, dims)
    torch.testing.assert_close(got, want, **F32)


@pytest.mark.parametrize("s", [1.5, 2.0])
def test_stretch_1d_matches_resize_and_crop(s: float) -> None:
    x = torch.randn(3, 2, 8, generator=_gen(1))
    torch.testing.assert_close(stretch(x, s, "horizontal"), _resize_crop(x, s, (2,)), **F32)
    torch.testing.assert_close(stretch(x, s, "both"), _resize_crop(x, s, (2,)), **F32)


@pytest.mark.parametrize(
    "axis, dims", [("horizontal", (4,)), ("vertical", (3,)), ("depth", (2,)), ("both", (2, 3, 4))]
)
def test_stretch_3d_matches_resize_and_crop(axis: str, dims: tuple) -> None:
    x = torch.randn(2, 2, 4, 6, 8, generator=_gen(2))
    torch.testing.assert_close(stretch(x, 2.0, axis), _resize_crop(x, 2.0, dims), **F32)


def test_stretch_float64_is_exact_to_double_precision() -> None:
    x = torch.randn(2, 1, 8, 8, generator=_gen(3), dtype=torch.float64)
    torch.testing.assert_close(
        stretch(x, 1.5, "both"), _resize_crop(x, 1.5, (2, 3)), atol=1e-12, rtol=0
    )


# --------------------------------------------------------------------------- stretch, s ≤ 1


@pytest.mark.parametrize("s", [0.5, 0.7, 1.0, 1.3, 3.0])
@pytest.mark.parametrize("axis, axes", [("horizontal", (3,)), ("vertical", (2,)), ("both", (2, 3))])
def test_stretch_2d_matches_numpy_formula(s: float, axis: str, axes: tuple) -> None:
    x = torch.randn(2, 2, 7, 10, generator=_gen(4), dtype=torch.float64)
    want = _formula(x.numpy(), s, axes)
    np.testing.assert_allclose(stretch(x, s, axis).numpy(), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("s", [0.5, 0.8])
def test_stretch_1d_and_3d_shrink_match_numpy_formula(s: float) -> None:
    x1 = torch.randn(2, 3, 11, generator=_gen(5), dtype=torch.float64)
    np.testing.assert_allclose(stretch(x1, s).numpy(), _formula(x1.numpy(), s, (2,)), atol=1e-12)
    x3 = torch.randn(1, 2, 5, 6, 7, generator=_gen(6), dtype=torch.float64)
    np.testing.assert_allclose(
        stretch(x3, s, "both").numpy(), _formula(x3.numpy(), s, (2, 3, 4)), atol=1e-12
    )
    np.testing.assert_allclose(
        stretch(x3, s, "depth").numpy(), _formula(x3.numpy(), s, (2,)), atol=1e-12
    )


def test_shrink_pads_with_the_border_values() -> None:
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 8)
    y = stretch(x, 0.5)
    assert y[0, 0, 0] == 0 and y[0, 0, -1] == 7  # clamped at the edges, never zeros
    assert y.min() == 0 and y.max() == 7


def test_identity_and_constants() -> None:
    x = torch.randn(2, 3, 5, 6, generator=_gen(7))
    assert torch.equal(stretch(x, 1.0, "both"), x)
    assert stretch(x, 1.0) is not x
    c = torch.full((1, 2, 6, 6), 0.25)
    torch.testing.assert_close(stretch(c, 0.3, "both"), c, atol=1e-7, rtol=0)


def test_one_by_one_maps_are_unchanged() -> None:
    x = torch.randn(3, 4, 1, 1, generator=_gen(8))
    torch.testing.assert_close(stretch(x, 2.0, "both"), x, atol=0, rtol=0)


def test_stretch_keeps_dtype_and_device() -> None:
    x = torch.randn(1, 1, 8, 8, generator=_gen(9))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = stretch(x.to(dtype), 2.0)
        assert y.dtype == dtype and y.shape == x.shape
        torch.testing.assert_close(y.float(), _resize_crop(x, 2.0, (3,)), atol=2e-2, rtol=0)


@pytest.mark.gpu
def test_stretch_on_cuda_matches_cpu() -> None:
    x = torch.randn(2, 3, 8, 8, generator=_gen(10))
    torch.testing.assert_close(stretch(x.cuda(), 1.5, "both").cpu(), stretch(x, 1.5, "both"))


# --------------------------------------------------------------------------- shift


@pytest.mark.parametrize("axis, dims", [("horizontal", (3,)), ("vertical", (2,)), ("both", (2, 3))])
@pytest.mark.parametrize("k", [1, -2, 3.0])
def test_shift_is_roll(axis: str, dims: tuple, k: float) -> None:
    x = torch.randn(2, 3, 5, 6, generator=_gen(11))
    want = torch.roll(x, shifts=(int(k),) * len(dims), dims=dims)
    assert torch.equal(shift(x, k, axis), want)


def test_shift_1d_and_3d() -> None:
    x1 = torch.randn(2, 1, 9, generator=_gen(12))
    assert torch.equal(shift(x1, 2), torch.roll(x1, 2, 2))
    x3 = torch.randn(1, 1, 3, 4, 5, generator=_gen(13))
    assert torch.equal(shift(x3, 1, "depth"), torch.roll(x3, 1, 2))
    assert torch.equal(shift(x3, 1, "both"), torch.roll(x3, (1, 1, 1), (2, 3, 4)))


# --------------------------------------------------------------------------- registry, errors


def test_registry_and_transform_objects() -> None:
    assert transforms.list_transforms() == ["shift", "stretch"]
    t = make_transform("Stretch", 2, " Both ")
    assert t == Transform("stretch", 2.0, "both")
    assert t.to_dict() == {"name": "stretch", "param": 2.0, "axis": "both"}
    x = torch.randn(1, 1, 4, 4, generator=_gen(14))
    assert torch.equal(t(x), stretch(x, 2.0, "both"))
    assert make_transform("shift", 2.0).to_dict() == {
        "name": "shift",
        "param": 2,
        "axis": "horizontal",
    }


def test_unknown_transform_lists_the_valid_names() -> None:
    with pytest.raises(UsageError, match="unknown transform 'zoom'; available: shift, stretch"):
        make_transform("zoom", 2.0)


@pytest.mark.parametrize("factor", [0, -1.5, float("nan"), float("inf"), "2", True])
def test_bad_stretch_factor(factor: object) -> None:
    with pytest.raises(UsageError, match="stretch factor"):
        make_transform("stretch", factor, "horizontal")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="stretch factor"):
        stretch(torch.zeros(1, 1, 4, 4), factor)  # type: ignore[arg-type]


@pytest.mark.parametrize("factor", [1e-300, 1e-7, 1e7, 1e300, 5e-324])
def test_extreme_stretch_factor_is_a_usage_error(factor: float) -> None:
    with pytest.raises(UsageError, match=r"stretch factor must be from 1e-06 to 1e\+06"):
        make_transform("stretch", factor, "horizontal")
    with pytest.raises(UsageError, match="stretch factor"):
        stretch(torch.zeros(1, 1, 4, 4), factor)


@pytest.mark.parametrize("factor", ["1e-300", "1e300"])
def test_extreme_factor_on_the_command_line_exits_2(factor: str) -> None:
    from pathlib import Path

    from typer.testing import CliRunner

    from genaudit.cli import app

    model = str(Path(__file__).parent.parent / "fixtures" / "dcgan64_generator.safetensors")
    args = ["stretch", model, "--factor", factor, "--num-samples", "2", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "stretch factor must be from 1e-06 to 1e+06" in res.stderr


@pytest.mark.parametrize("factor", [1e-6, 1e6])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_stretch_factor_at_the_bounds(factor: float, dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 8, 8, generator=_gen()).to(dtype)
    out = make_transform("stretch", factor, "both")(x)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    # s = 1e6 samples every pixel at (almost) the centre: each map is nearly constant
    if factor > 1:
        assert float((out - out.mean((2, 3), keepdim=True)).abs().max()) < 1e-2


def test_huge_shift_is_the_shift_modulo_the_map() -> None:
    x = torch.randn(1, 2, 6, 8, generator=_gen())
    k = int(1e300)
    torch.testing.assert_close(shift(x, 1e300, "horizontal"), torch.roll(x, k % 8, dims=3))
    torch.testing.assert_close(shift(x, -13, "both"), torch.roll(x, (-13 % 6, -13 % 8), (2, 3)))


@pytest.mark.parametrize("pixels", [1.5, float("nan"), "1"])
def test_bad_shift(pixels: object) -> None:
    with pytest.raises(UsageError, match="whole number of pixels"):
        make_transform("shift", pixels)  # type: ignore[arg-type]


def test_axis_errors() -> None:
    with pytest.raises(UsageError, match="unknown axis 'diagonal'"):
        make_transform("stretch", 2.0, "diagonal")
    with pytest.raises(UsageError, match="axis 'vertical' does not exist on a map with 1 spatial"):
        stretch(torch.zeros(1, 1, 8), 2.0, "vertical")
    with pytest.raises(UsageError, match="axis 'depth' does not exist"):
        shift(torch.zeros(1, 1, 4, 4), 1, "depth")
    with pytest.raises(UsageError, match=r"got shape \(2, 5\)"):
        stretch(torch.zeros(2, 5), 2.0)
    with pytest.raises(UsageError, match="floating-point"):
        stretch(torch.zeros(1, 1, 4, 4, dtype=torch.int64), 2.0)

"""Map transforms for interventions: stretch and circular shift (docs/method.md).

Every transform acts on a batch of maps ``(N, C, *grid)`` with 1, 2 or 3 spatial dimensions:
``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Axes are named from the end:
``horizontal`` is the last spatial axis, ``vertical`` the one before it, ``depth`` the first of
three; ``both`` means every spatial axis at once (for 3-D maps all three).

Transforms live in a plain dict registry (``register`` / ``get`` / ``list_transforms``); a
``Transform`` binds a registered name to its parameter and axis and is what analyses receive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..values import check_stretch_factor

AXES = ("horizontal", "vertical", "depth", "both")

MapFn = Callable[[torch.Tensor, float, str], torch.Tensor]
ParamCheck = Callable[[float], None]


@dataclass(frozen=True)
class TransformEntry:
    """A registered transform: ``fn(x, param, axis)`` and a check of its parameter."""

    name: str
    fn: MapFn
    summary: str
    check: ParamCheck


_REGISTRY: dict[str, TransformEntry] = {}


def _no_check(param: float) -> None:
    return None


def register(name: str, summary: str, check: ParamCheck | None = None) -> Callable[[MapFn], MapFn]:
    """Decorator adding ``fn(x, param, axis) -> tensor`` to the registry under ``name``."""

    def wrap(fn: MapFn) -> MapFn:
        if name in _REGISTRY:
            raise ValueError(f"transform {name!r} registered twice")
        _REGISTRY[name] = TransformEntry(name, fn, summary, check or _no_check)
        return fn

    return wrap


def list_transforms() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> TransformEntry:
    """The registry entry for ``name``; the error lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown transform {name!r}; available: {', '.join(list_transforms())}",
            "use one of these names",
        ) from None


# --------------------------------------------------------------------------- axes


def _normalise_axis(axis: str) -> str:
    value = str(axis).strip().lower()
    if value not in AXES:
        raise UsageError(f"unknown axis {axis!r}", f"use one of: {', '.join(AXES)}")
    return value


def _spatial_dims(x: torch.Tensor) -> int:
    if x.ndim not in (3, 4, 5):
        raise UsageError(
            f"a map transform needs a tensor (N, C, L), (N, C, H, W) or (N, C, D, H, W); "
            f"got shape {tuple(x.shape)}"
        )
    return x.ndim - 2


def axis_dims(axis: str, d: int) -> tuple[int, ...]:
    """Tensor dimensions (counting N and C) that ``axis`` names on a map with ``d`` spatial axes.

    ``horizontal`` → ``(d + 1,)``, ``vertical`` → ``(d,)`` (needs d ≥ 2), ``depth`` → ``(d − 1,)``
    (needs d = 3), ``both`` → ``(2, …, d + 1)``.
    """
    axis = _normalise_axis(axis)
    if axis == "both":
        return tuple(range(2, 2 + d))
    offset = {"horizontal": 0, "vertical": 1, "depth": 2}[axis]
    if offset >= d:
        valid = [*AXES[:d], "both"]
        raise UsageError(
            f"axis {axis!r} does not exist on a map with {d} spatial dimension{'s' * (d > 1)}",
            f"use one of: {', '.join(valid)}",
        )
    return (d + 1 - offset,)


# --------------------------------------------------------------------------- stretch


def _check_factor(factor: float) -> None:
    """A finite factor from 1e-6 to 1e6 (:func:`genaudit.values.check_stretch_factor`)."""
    check_stretch_factor(factor, "stretch factor")


@register(
    "stretch",
    "stretch by a factor about the map's centre (bilinear, border padding)",
    check=_check_factor,
)
def stretch(x: torch.Tensor, factor: float, axis: str = "horizontal") -> torch.Tensor:
    r"""Stretch maps by ``factor`` about their centre along ``axis`` (docs/method.md).

    .. math::  (T_s V)(x) = V\bigl(c + (x - c)/s\bigr)

    on the continuous axis whose pixel centres sit at ``j + 1/2`` (``c`` is the centre of the
    map), evaluated by linear / bilinear / trilinear interpolation (``align_corners=False``) with
    border padding: ``s > 1`` samples only inside the map, ``s < 1`` repeats the edge values
    beyond it. Computed with ``grid_sample`` on an affine grid whose scale on each stretched axis
    is ``1/s``; a 1-D map is treated as a 2-D map of height 1.

    Parameters
    ----------
    x : Tensor, shape (N, C, L), (N, C, H, W) or (N, C, D, H, W)
        Floating-point maps on any device. Half-precision maps are interpolated in float32 and
        cast back.
    factor : float
        ``s`` from 1e-6 to 1e6 (:data:`genaudit.values.MAX_STRETCH_FACTOR`; beyond these every
        map is constant). ``s = 1`` returns an exact copy.
    axis : {"horizontal", "vertical", "depth", "both"}
        Last spatial axis, the one before it, the first of three, or all spatial axes
        (isotropic).

    Returns
    -------
    Tensor, same shape, dtype and device as ``x``.
    """
    _check_factor(factor)
    d = _spatial_dims(x)
    dims = axis_dims(axis, d)
    if not x.is_floating_point():
        raise UsageError(f"stretch needs floating-point maps, got {x.dtype}")
    if factor == 1:
        return x.clone()
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if d == 1:
        work = work.unsqueeze(2)  # (N, C, 1, L): the single row's centre maps onto itself
        dims = (3,)
    nd = work.ndim - 2
    # affine_grid orders coordinates (x, y[, z]) = last spatial axis first
    theta = torch.zeros(nd, nd + 1, dtype=work.dtype, device=work.device)
    for k in range(nd):
        tensor_dim = work.ndim - 1 - k
        theta[k, k] = 1.0 / factor if tensor_dim in dims else 1.0
    theta = theta.unsqueeze(0).expand(work.shape[0], nd, nd + 1)
    grid = F.affine_grid(theta, list(work.shape), align_corners=False)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if d == 1:
        out = out.squeeze(2)
    return out.to(x.dtype)


# --------------------------------------------------------------------------- shift


def _check_pixels(pixels: float) -> None:
    if isinstance(pixels, bool) or not isinstance(pixels, int | float):
        raise UsageError(f"shift needs a whole number of pixels, got {pixels!r}")
    if not math.isfinite(pixels) or float(pixels) != int(pixels):
        raise UsageError(f"shift needs a whole number of pixels, got {pixels!r}")


@register("shift", "circular shift by whole pixels (a sanity check)", check=_check_pixels)
def shift(x: torch.Tensor, pixels: float, axis: str = "horizontal") -> torch.Tensor:
    r"""Circularly shift maps by a whole number of pixels along ``axis``.

    .. math::  (S_k V)[j] = V[(j - k) \bmod M]

    i.e. ``torch.roll``: content moves towards higher indices for ``k > 0``. With ``both`` every
    spatial axis is shifted by ``k``. Circular convolutions commute with it, which makes it a
    sanity check of the intervention machinery.

    Parameters
    ----------
    x : Tensor, shape (N, C, L), (N, C, H, W) or (N, C, D, H, W)
    pixels : int (a float with an integral value is accepted)
    axis : {"horizontal", "vertical", "depth", "both"}

    Returns
    -------
    Tensor, same shape, dtype and device as ``x`` (always a new tensor).
    """
    _check_pixels(pixels)
    d = _spatial_dims(x)
    dims = axis_dims(axis, d)
    k = int(pixels)
    # circular: k modulo each axis's size is the same shift, and fits torch's int64 however
    # large k is
    return torch.roll(x, shifts=tuple(k % max(1, x.shape[d]) for d in dims), dims=dims)


# --------------------------------------------------------------------------- bound transforms


@dataclass(frozen=True)
class Transform:
    """A registered transform with its parameter and axis; call it on ``(N, C, *grid)`` maps."""

    name: str
    param: float
    axis: str = "horizontal"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return get(self.name).fn(x, self.param, self.axis)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "param": self.param, "axis": self.axis}

    def describe(self) -> str:
        """Short text such as ``stretch 1.5 horizontal``."""
        return f"{self.name} {self.param:g} {self.axis}"


def make_transform(name: str, param: float, axis: str = "horizontal") -> Transform:
    """Validate ``name``, ``param`` and ``axis`` and bind them (dimension checks come on use)."""
    entry = get(str(name).strip().lower())
    entry.check(param)
    value: float = int(param) if entry.name == "shift" else float(param)
    return Transform(entry.name, value, _normalise_axis(axis))

"""Stretch pictures: the sample grid and the difference grid, drawn with Pillow.

``write_stretch_grids(result, "foo.png")`` writes two files:

- ``foo.png``: columns are samples; rows are the original output G(z), the directly stretched
  output T G(z), and the output after intervening at each chosen layer. Every row is labelled;
  a layer's label gives its dotted name, level and ``rel_mse``
  (``features.5 · fine · rel_mse 0.018``);
- ``foo_diff.png`` (``difference_path``): the absolute difference of each of those outputs to the
  directly stretched output (first row: the original output, which is what the do-nothing
  baseline measures; then one row per layer), averaged over channels and shown through the
  perceptual colour map magma on one scale shared by the whole grid, 0 to the largest
  difference, with a colour bar whose ticks give the values.

The file format follows the suffix (``export.GRID_SUFFIXES``: PNG, JPEG, WebP, TIFF); the
difference grid uses the same suffix. Both files are written together, all or nothing
(:func:`genaudit.files.staged_outputs`), or staged with the run's other outputs.

How outputs and differences are drawn is :mod:`genaudit.report.panels` (value range, channels,
1-D/2-D/3-D maps) with :mod:`genaudit.report.colours` (magma); the grid around them is
:mod:`genaudit.report.picture_layout`; the file encoding :mod:`genaudit.report.image_files`.
The sample grid is an RGB image only when the outputs are colour, the difference
grid always is (it is colour-mapped).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..analysis.stretch import StretchLayerResult, StretchResult
from ..errors import UsageError
from ..files import OutputSet, staged_outputs
from .export import difference_path
from .image_files import encode_image, image_format
from .panels import as_2d, colour_channels, difference_panels, display_range, output_panels
from .picture_layout import (
    SEPARATOR,
    RenderedGrid,
    compose_grid,
)

__all__ = [
    "difference_maps",
    "difference_path",
    "layer_label",
    "render_difference_grid",
    "render_stretch_grid",
    "write_stretch_grids",
]

# --------------------------------------------------------------------------- stretch grids


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _format_rel(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.3f}"
    return f"{value:.1e}"  # 0.000 would hide how small it is


def layer_label(layer: StretchLayerResult) -> str:
    """``features.5 · fine · rel_mse 0.018``: dotted name, level, rel_mse."""
    name = layer.name or "(model)"
    return SEPARATOR.join([name, layer.level, f"rel_mse {_format_rel(layer.rel_mse)}"])


def _transformed_label(result: StretchResult) -> str:
    name = str(result.transform.get("name", "transform"))
    known = {"stretch": "Stretched output", "shift": "Shifted output"}
    return known.get(name, f"Output after {name}")


def _transform_text(result: StretchResult) -> str:
    t = result.transform
    param = t.get("param")
    param_text = f"{param:g}" if isinstance(param, int | float) else str(param)
    words = [str(t.get("name", "transform")).capitalize(), param_text, str(t.get("axis", ""))]
    return " ".join(w for w in words if w)


def _samples_or_fail(result: StretchResult) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    s = result.samples
    if s is None or s.original.shape[0] == 0:
        raise UsageError(
            "no samples were kept for pictures", "run the stretch analysis with keep_samples > 0"
        )
    if s.original.ndim not in (3, 4, 5):
        raise UsageError(f"cannot draw outputs of shape {tuple(s.original.shape)}")
    return _numpy(s.original), _numpy(s.stretched), [_numpy(t) for t in s.intervened]


def _is_colour(maps: np.ndarray) -> bool:
    return maps.ndim in (4, 5) and maps.shape[1] in (3, 4)


def render_stretch_grid(result: StretchResult) -> RenderedGrid:
    """The sample grid: an RGB image for colour outputs, grayscale ("L") otherwise."""
    original, stretched, intervened = _samples_or_fail(result)
    everything = np.concatenate([original, stretched, *intervened])
    lo, hi = display_range(
        colour_channels(as_2d(everything)) if everything.ndim > 3 else everything[:, :1]
    )
    rows = [
        ("Original output", output_panels(original, lo, hi)),
        (_transformed_label(result), output_panels(stretched, lo, hi)),
    ]
    rows += [
        (layer_label(layer), output_panels(maps, lo, hi))
        for layer, maps in zip(result.layers, intervened, strict=True)
    ]
    title = f"{_transform_text(result)}{SEPARATOR}{original.shape[0]} samples"
    grid = compose_grid(rows, title, separate_after=2)
    if _is_colour(original):
        return grid
    # every pixel is gray (equal channels), so this conversion loses nothing
    return RenderedGrid(
        grid.image.convert("L"), grid.panels, grid.labels, grid.title, grid.colour_bar, grid.ticks
    )


def difference_maps(result: StretchResult) -> tuple[list[np.ndarray], float]:
    r"""Absolute differences to the directly transformed output, and the largest of them.

    For the original output and then each intervened output :math:`y`, the map

    .. math:: d(y) = \frac{1}{C} \sum_c \lvert y_c - (T G(z))_c \rvert

    of shape (K, 1, *grid); then the largest finite value over all of them (0 when none).
    """
    original, stretched, intervened = _samples_or_fail(result)
    diffs = [np.abs(m - stretched).mean(axis=1, keepdims=True) for m in (original, *intervened)]
    finite = np.concatenate([d.ravel() for d in diffs])
    finite = finite[np.isfinite(finite)]
    top = float(finite.max()) if finite.size else 0.0
    return diffs, top


def render_difference_grid(result: StretchResult) -> RenderedGrid:
    """The difference grid (RGB): magma on 0 … largest difference, with a colour bar.

    Row ``Original output``: ``|G(z) − T G(z)|``; one row per layer: ``|G_ℓ^T(z) − T G(z)|``;
    each averaged over channels (see :func:`difference_maps`).
    """
    diffs, top = difference_maps(result)
    hi = top if top > 0 else 1.0  # all equal: show 0 on a unit scale rather than divide by 0
    labels = ["Original output", *(layer_label(layer) for layer in result.layers)]
    rows = [(label, difference_panels(d, hi)) for label, d in zip(labels, diffs, strict=True)]
    reference = _transformed_label(result).lower()
    title = f"Absolute difference to the {reference}, mean over channels (largest {top:.3g})"
    return compose_grid(rows, title, separate_after=1, colour_scale=(0.0, hi))


def write_stretch_grids(
    result: StretchResult, path: str | Path, out: OutputSet | None = None
) -> tuple[Path, Path]:
    """Write the sample grid to ``path`` and the difference grid beside it
    (:func:`~genaudit.report.export.difference_path`); return both paths.

    The format follows the suffix (one of ``export.GRID_SUFFIXES``; anything else is a
    :class:`UsageError` before any drawing). Both files are rendered before either is written.
    With ``out`` (a :class:`~genaudit.files.OutputSet`) they are staged with the run's other
    outputs and written when it commits; without, both are written now, all or nothing.
    """
    fmt = image_format(path)
    grid = encode_image(render_stretch_grid(result).image, fmt)
    diff = encode_image(render_difference_grid(result).image, fmt)
    target, target_diff = Path(path), difference_path(path)
    if out is not None:
        out.add(target, grid)
        out.add(target_diff, diff)
    else:
        with staged_outputs() as own:
            own.add(target, grid)
            own.add(target_diff, diff)
    return target, target_diff

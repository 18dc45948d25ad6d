"""Panels: each sample's output map, or its difference map, drawn as one small RGB image.

How outputs are shown (:func:`output_panels`):

- value range, shared by the whole grid (:func:`display_range`): values in [0, 1] are shown as
  they are (sigmoid-like); values in [-1, 1] with a negative one map [-1, 1] onto black…white
  (tanh-like); anything else maps the grid's own min…max;
- channels (:func:`colour_channels`): 1 → grayscale, 3 → RGB, 4 → the first three as RGB (alpha
  dropped), any other number → the first channel in grayscale;
- 2-D maps are shown as images (small ones enlarged by an integer factor, nearest neighbour, so
  that pixels stay visible as pixels), 3-D maps (N, C, D, H, W) by their middle slice along D
  (:func:`as_2d`), 1-D maps (N, C, L) as waveforms of the first channel in a small panel per
  sample.

Differences (:func:`difference_panels`) are one channel, shown through the magma colour map
(:mod:`genaudit.report.colours`) on a scale 0 … hi; a 1-D difference is a colour-mapped band,
time running left to right. Every panel of one call has the same size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .colours import BACKGROUND, INK, ZERO_LINE, apply_colour_map, to_uint8

__all__ = ["as_2d", "colour_channels", "difference_panels", "display_range", "output_panels"]

_MIN_PANEL = 128  # small maps are enlarged by an integer factor towards this size
_MAX_ZOOM = 8
_WAVE_HEIGHT = 80
_WAVE_WIDTH = (192, 320)  # a panel is as wide as the signal is long, within these bounds
_WAVE_MARGIN = 4  # keeps the extremes of a waveform off the panel's edge
_SUPERSAMPLE = 4  # waveforms are drawn this much larger, then reduced: antialiased lines


def display_range(values: np.ndarray) -> tuple[float, float]:
    """(lo, hi) shown as black…white: [0, 1], [-1, 1], or the values' own min…max.

    Values all inside [0, 1] → (0, 1) (sigmoid-like); all inside [-1, 1] with one below 0 →
    (-1, 1) (tanh-like); otherwise (min, max), widened by 1 when constant. Non-finite values
    are ignored.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    if lo >= -1.0 and hi <= 1.0:
        return -1.0, 1.0
    if hi == lo:
        return lo - 0.5, hi + 0.5
    return lo, hi


def colour_channels(maps: np.ndarray) -> np.ndarray:
    """(K, C, *grid) → (K, 1 or 3, *grid) by the channel rule of the module docstring."""
    c = maps.shape[1]
    if c == 1:
        return maps
    if c in (3, 4):
        return maps[:, :3]
    return maps[:, :1]


def as_2d(maps: np.ndarray) -> np.ndarray:
    """(K, C, D, H, W) → middle slice (K, C, H, W); other maps unchanged."""
    if maps.ndim == 5:
        return maps[:, :, maps.shape[2] // 2]
    return maps


def _zoom(height: int, width: int) -> int:
    return max(1, min(_MAX_ZOOM, _MIN_PANEL // max(height, width)))


def _enlarge(pixels: np.ndarray) -> Image.Image:
    """(h, w, 3) uint8 → an RGB image enlarged by the integer zoom, nearest neighbour."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    zoom = _zoom(*pixels.shape[:2])
    if zoom == 1:
        return image
    return image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST)


def _image_panels(maps: np.ndarray, lo: float, hi: float) -> list[Image.Image]:
    """(K, C', H, W) with C' ∈ {1, 3} → K RGB panels (gray maps have equal channels)."""
    panels = []
    for sample in to_uint8(maps, lo, hi):
        rgb = np.repeat(sample, 3, axis=0) if sample.shape[0] == 1 else sample
        panels.append(_enlarge(np.transpose(rgb, (1, 2, 0))))
    return panels


def _wave_width(length: int) -> int:
    return int(min(max(length, _WAVE_WIDTH[0]), _WAVE_WIDTH[1]))


def _waveform_panels(waves: np.ndarray, lo: float, hi: float) -> list[Image.Image]:
    """(K, L) → K line plots: time left to right, ``hi`` at the top, 0 marked when in range."""
    length = waves.shape[1]
    width, height = _wave_width(length), _WAVE_HEIGHT
    s = _SUPERSAMPLE
    inner = height - 1 - 2 * _WAVE_MARGIN
    xs = np.linspace(0.0, width - 1, length) if length > 1 else np.array([0.0, width - 1.0])
    panels = []
    for wave in waves:
        panel = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(panel)
        if lo < 0.0 < hi:
            y_zero = round(_WAVE_MARGIN + hi / (hi - lo) * inner)
            draw.line([(0, y_zero), (width - 1, y_zero)], fill=ZERO_LINE, width=1)
        frac = (np.nan_to_num(wave, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
        ys = _WAVE_MARGIN + (1.0 - np.clip(frac, 0.0, 1.0)) * inner
        if length == 1:
            ys = np.repeat(ys, 2)
        # draw the line large on a mask and reduce it: Pillow's lines are not antialiased
        mask = Image.new("L", (width * s, height * s), 0)
        points = [(float(x) * s + s / 2, float(y) * s + s / 2) for x, y in zip(xs, ys, strict=True)]
        ImageDraw.Draw(mask).line(points, fill=255, width=round(1.5 * s), joint="curve")
        panel.paste(INK, (0, 0, width, height), mask.resize((width, height), Image.Resampling.BOX))
        panels.append(panel)
    return panels


def _band_panels(values: np.ndarray, lo: float, hi: float) -> list[Image.Image]:
    """(K, L) → K colour-mapped bands as large as the waveform panels; each pixel column shows
    the largest value of the samples it covers, so a short spike is not lost."""
    length = values.shape[1]
    width = _wave_width(length)
    starts = np.floor(np.arange(width) * length / width).astype(np.intp)
    finite = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    columns = np.maximum.reduceat(finite, starts, axis=1)  # (K, width)
    colours = apply_colour_map(columns, lo, hi)  # (K, width, 3)
    band = np.repeat(colours[:, None], _WAVE_HEIGHT, axis=1)  # (K, height, width, 3)
    return [Image.fromarray(np.ascontiguousarray(b)) for b in band]


def output_panels(maps: np.ndarray, lo: float, hi: float) -> list[Image.Image]:
    """(K, C, *grid) outputs → K panels, by dimensionality."""
    if maps.ndim == 3:
        return _waveform_panels(maps[:, 0], lo, hi)
    return _image_panels(colour_channels(as_2d(maps)), lo, hi)


def difference_panels(diffs: np.ndarray, hi: float) -> list[Image.Image]:
    """(K, 1, *grid) absolute differences → K colour-mapped panels on the scale 0 … hi."""
    if diffs.ndim == 3:
        return _band_panels(diffs[:, 0], 0.0, hi)
    return [_enlarge(apply_colour_map(d[0], 0.0, hi)) for d in as_2d(diffs)]

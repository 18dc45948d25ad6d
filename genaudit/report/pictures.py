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
difference grid uses the same suffix. Both files are written atomically.

How outputs are shown:

- value range, shared by the whole grid: values in [0, 1] are shown as they are (sigmoid-like);
  values in [-1, 1] with a negative one map [-1, 1] onto black…white (tanh-like); anything else
  maps the grid's own min…max;
- channels: 1 → grayscale, 3 → RGB, 4 → the first three as RGB (alpha dropped), any other number
  → the first channel in grayscale; the sample grid is an RGB image only when the outputs are
  colour, the difference grid always is (it is colour-mapped);
- 2-D maps are shown as images (small ones enlarged by an integer factor, nearest neighbour, so
  that pixels stay visible as pixels), 3-D maps (N, C, D, H, W) by their middle slice along D,
  1-D maps (N, C, L) as waveforms of the first channel in a small panel per sample; in the
  difference grid a 1-D difference is a colour-mapped band, time running left to right.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, features

from ..analysis.stretch import StretchLayerResult, StretchResult
from ..errors import UsageError
from ..files import write_atomic
from .export import GRID_SUFFIXES, check_suffix

# A box in pixels as Pillow's ``crop`` takes it: (left, top, right, bottom), right/bottom excluded.
Box = tuple[int, int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# --------------------------------------------------------------------------- style

BACKGROUND = (255, 255, 255)
INK = (25, 25, 25)
FRAME = (190, 190, 190)  # a hairline around each panel, so white maps do not melt into the page
ZERO_LINE = (215, 215, 215)

LABEL_SIZE = 15
TITLE_SIZE = 17
TICK_SIZE = 13

_PAD = 14  # outer margin
_GAP = 6  # between panels
_GROUP_GAP = 12  # extra space between the reference rows and the intervention rows
_LABEL_GAP = 14  # between the label column and the panels
_LINE_SPACING = 3
_TITLE_GAP = 10
_LABEL_MAX_WIDTH = 330  # longer labels are wrapped at " · ", then shortened from the left

_MIN_PANEL = 128  # small maps are enlarged by an integer factor towards this size
_MAX_ZOOM = 8
_WAVE_HEIGHT = 80
_WAVE_WIDTH = (192, 320)  # a panel is as wide as the signal is long, within these bounds
_WAVE_MARGIN = 4  # keeps the extremes of a waveform off the panel's edge
_SUPERSAMPLE = 4  # waveforms are drawn this much larger, then reduced: antialiased lines

_BAR_GAP = 16
_BAR_WIDTH = 16
_TICK_LENGTH = 5
_TICK_TEXT_GAP = 4

SEPARATOR = " · "

# Characters the bundled font lacks, replaced by ones it has (a missing glyph draws as a box).
_SUBSTITUTES = str.maketrans({"×": "x", "−": "-", "–": "-", "—": "-"})

# --------------------------------------------------------------------------- colour map

# matplotlib's magma sampled at 17 evenly spaced points (0 → black, 1 → pale yellow); linear
# interpolation between them stays within 3 of the full 256-entry table in every channel.
MAGMA_POINTS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 4), (10, 8, 34), (29, 17, 71), (54, 16, 107), (81, 18, 124), (106, 28, 129),
    (131, 38, 129), (156, 46, 127), (183, 55, 121), (208, 65, 111), (231, 82, 99),
    (245, 107, 92), (252, 137, 97), (254, 167, 114), (254, 196, 136), (253, 226, 163),
    (252, 253, 191),
)  # fmt: skip


def _lookup_table(points: Sequence[tuple[int, int, int]]) -> np.ndarray:
    anchors = np.asarray(points, dtype=np.float64)
    at = np.linspace(0.0, 1.0, len(points))
    x = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(x, at, anchors[:, k]) for k in range(3)], axis=1)
    return np.rint(table).astype(np.uint8)


MAGMA = _lookup_table(MAGMA_POINTS)  # (256, 3) uint8


def apply_colour_map(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Colours of ``values`` (any shape) through magma, ``lo`` → first entry, ``hi`` → last.

    Returns uint8 of shape ``values.shape + (3,)``; values outside [lo, hi] are clipped, NaN
    is shown as ``lo``.
    """
    return MAGMA[_to_uint8(values, lo, hi)]


# --------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=8)
def load_font(size: int) -> Font:
    """Pillow's bundled scalable font (Aileron, Pillow >= 10.1) at ``size`` pixels.

    No system font is needed, so pictures look the same on every machine.
    """
    return ImageFont.load_default(size=size)


def _clean_text(text: str) -> str:
    return text.translate(_SUBSTITUTES)


def _text_width(text: str, font: Font) -> int:
    return math.ceil(font.getlength(text)) if text else 0


@functools.lru_cache(maxsize=8)
def _line_height(font: Font) -> int:
    """Height from the drawing origin of a line down to its lowest descender."""
    return math.ceil(font.getbbox("Ag|_()")[3])


def _elide(text: str, font: Font, max_width: int) -> str:
    """``text``, or its end after an ellipsis, no wider than ``max_width``.

    The end is kept because it is the distinctive part of a dotted layer name.
    """
    if _text_width(text, font) <= max_width:
        return text
    for cut in range(1, len(text)):
        shorter = "…" + text[cut:]
        if _text_width(shorter, font) <= max_width:
            return shorter
    return "…"


def wrap_label(text: str, font: Font, max_width: int) -> list[str]:
    """Lines of ``text`` no wider than ``max_width``: broken at ``" · "``, then shortened."""
    text = _clean_text(text)
    if _text_width(text, font) <= max_width:
        return [text]
    lines: list[str] = []
    for part in text.split(SEPARATOR):
        joined = lines[-1] + SEPARATOR + part if lines else part
        if lines and _text_width(joined, font) <= max_width:
            lines[-1] = joined
        else:
            lines.append(part)
    return [_elide(line, font, max_width) for line in lines]


# --------------------------------------------------------------------------- maps → panels


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


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def _colour_channels(maps: np.ndarray) -> np.ndarray:
    """(K, C, *grid) → (K, 1 or 3, *grid) by the channel rule of the module docstring."""
    c = maps.shape[1]
    if c == 1:
        return maps
    if c in (3, 4):
        return maps[:, :3]
    return maps[:, :1]


def _as_2d(maps: np.ndarray) -> np.ndarray:
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
    for sample in _to_uint8(maps, lo, hi):
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


def _panels(maps: np.ndarray, lo: float, hi: float) -> list[Image.Image]:
    """(K, C, *grid) outputs → K panels, by dimensionality."""
    if maps.ndim == 3:
        return _waveform_panels(maps[:, 0], lo, hi)
    return _image_panels(_colour_channels(_as_2d(maps)), lo, hi)


def _difference_panels(diffs: np.ndarray, hi: float) -> list[Image.Image]:
    """(K, 1, *grid) absolute differences → K colour-mapped panels on the scale 0 … hi."""
    if diffs.ndim == 3:
        return _band_panels(diffs[:, 0], 0.0, hi)
    return [_enlarge(apply_colour_map(d[0], 0.0, hi)) for d in _as_2d(diffs)]


# --------------------------------------------------------------------------- colour bar ticks


def nice_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Round values in [lo, hi], evenly spaced by 1, 2, 2.5 or 5 × 10^k, at most ``max_ticks``.

    The step is the smallest of those for which the ticks fit; ``lo`` is a tick when it is a
    multiple of the step (0 always is).
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    max_ticks = max(max_ticks, 2)
    magnitude = 10.0 ** math.floor(math.log10((hi - lo) / (max_ticks - 1)))

    def multiples(step: float) -> range:
        # the 1e-9 keeps a tick that lands on lo or hi up to float noise
        return range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)

    step = 10.0 * magnitude
    for multiple in (1.0, 2.0, 2.5, 5.0):
        if len(multiples(multiple * magnitude)) <= max_ticks:
            step = multiple * magnitude
            break
    # 12 significant digits: drop the float noise of k * step (0.30000000000000004)
    return [float(f"{k * step:.12g}") for k in multiples(step)]


def format_ticks(ticks: Sequence[float]) -> list[str]:
    """Tick labels with as many decimals as the spacing needs (scientific when tiny or huge)."""
    if len(ticks) < 2:
        return [f"{t:.3g}" for t in ticks]
    step = min(abs(b - a) for a, b in itertools.pairwise(ticks))
    top = max(abs(t) for t in ticks)
    if step < 1e-3 or top >= 1e5:
        return ["0" if t == 0 else f"{t:.2g}" for t in ticks]
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return [f"{t:.{decimals}f}" for t in ticks]


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class RenderedGrid:
    """A drawn grid and where its parts are (boxes as Pillow's ``crop`` takes them).

    ``panels[r][c]`` is the panel of row ``r``, column ``c``; ``labels[r]`` the area of row
    ``r``'s label; ``colour_bar`` the bar itself (without its ticks) and ``ticks`` the value and
    pixel row of each tick, when the grid has a colour scale.
    """

    image: Image.Image
    panels: tuple[tuple[Box, ...], ...]
    labels: tuple[Box, ...]
    title: Box | None = None
    colour_bar: Box | None = None
    ticks: tuple[tuple[float, int], ...] = ()


def _tick_texts(lo: float, hi: float, bar_height: int) -> list[tuple[float, str]]:
    """Ticks of a bar ``bar_height`` pixels tall (about three text lines apart) and labels."""
    spacing = 3 * _line_height(load_font(TICK_SIZE))
    ticks = nice_ticks(lo, hi, max(2, min(7, bar_height // spacing + 1)))
    return list(zip(ticks, format_ticks(ticks), strict=True))


def _draw_colour_bar(
    image: Image.Image,
    box: Box,
    scale: tuple[float, float],
    tick_texts: Sequence[tuple[float, str]],
) -> tuple[tuple[float, int], ...]:
    """Draw the bar into ``box`` (``hi`` at the top), its outline, ticks and tick labels.

    Returns each tick's value and pixel row.
    """
    lo, hi = scale
    left, top, right, bottom = box
    height = bottom - top
    # every pixel row shows the value at its centre
    values = hi - (np.arange(height) + 0.5) / height * (hi - lo)
    strip = np.repeat(apply_colour_map(values, lo, hi)[:, None], right - left, axis=1)
    image.paste(Image.fromarray(np.ascontiguousarray(strip)), box)
    draw = ImageDraw.Draw(image)
    draw.rectangle((left - 1, top - 1, right, bottom), outline=INK)
    font = load_font(TICK_SIZE)
    text_h = _line_height(font)
    rows = []
    for value, text in tick_texts:
        # the row whose centre value is nearest ``value`` (the inverse of ``values`` above)
        row = top + min(height - 1, int((hi - value) / (hi - lo) * height))
        rows.append((value, row))
        draw.line([(right, row), (right + _TICK_LENGTH, row)], fill=INK)
        text_y = min(max(row - text_h // 2, 0), image.height - text_h)
        draw.text((right + _TICK_LENGTH + _TICK_TEXT_GAP, text_y), text, font=font, fill=INK)
    return tuple(rows)


def compose_grid(
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    title: str = "",
    *,
    separate_after: int = 0,
    colour_scale: tuple[float, float] | None = None,
) -> RenderedGrid:
    """Lay out labelled rows of equally sized RGB panels on a white page.

    Parameters
    ----------
    rows
        ``(label, panels)`` per row; the label sits left of the row, vertically centred, and is
        wrapped or shortened when it is wider than the label column allows.
    title
        One line along the top (optional).
    separate_after
        Leave extra space after this many rows (the reference rows), 0 for none.
    colour_scale
        ``(lo, hi)`` of a colour bar drawn right of the panels, spanning every row, with
        ticks at round values.
    """
    if not rows or not rows[0][1]:
        raise ValueError("compose_grid needs at least one row with one panel")
    pw, ph = rows[0][1][0].size
    if any(p.size != (pw, ph) for _, panels in rows for p in panels):
        raise ValueError("compose_grid needs panels of one size")
    label_font, title_font = load_font(LABEL_SIZE), load_font(TITLE_SIZE)
    columns = max(len(panels) for _, panels in rows)

    wrapped = [
        wrap_label(label, label_font, _LABEL_MAX_WIDTH) if label else [] for label, _ in rows
    ]
    line_h = _line_height(label_font)
    label_w = max((_text_width(line, label_font) for lines in wrapped for line in lines), default=0)
    blocks = [len(lines) * line_h + max(len(lines) - 1, 0) * _LINE_SPACING for lines in wrapped]
    row_h = max(ph, *blocks)

    title = _clean_text(title)
    title_h = _line_height(title_font) + _TITLE_GAP if title else 0
    x0 = _PAD + label_w + (_LABEL_GAP if label_w else 0)
    y0 = _PAD + title_h
    tops = []
    y = y0
    for r in range(len(rows)):
        tops.append(y)
        y += row_h + _GAP + (_GROUP_GAP if r + 1 == separate_after else 0)
    panels_right = x0 + columns * pw + (columns - 1) * _GAP
    panels_bottom = tops[-1] + row_h

    bar_box = None
    tick_texts: list[tuple[float, str]] = []
    width = panels_right + _PAD
    if colour_scale is not None:
        bar_box = (panels_right + _BAR_GAP, y0, panels_right + _BAR_GAP + _BAR_WIDTH, panels_bottom)
        tick_texts = _tick_texts(*colour_scale, panels_bottom - y0)
        tick_w = max(_text_width(text, load_font(TICK_SIZE)) for _, text in tick_texts)
        width = bar_box[2] + _TICK_LENGTH + _TICK_TEXT_GAP + tick_w + _PAD
    width = max(width, _PAD + _text_width(title, title_font) + _PAD)
    height = panels_bottom + _PAD

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    title_box = None
    if title:
        draw.text((_PAD, _PAD), title, font=title_font, fill=INK)
        title_box = (_PAD, _PAD, _PAD + _text_width(title, title_font), _PAD + title_h)

    panel_boxes: list[tuple[Box, ...]] = []
    label_boxes: list[Box] = []
    for (_, panels), lines, block, top in zip(rows, wrapped, blocks, tops, strict=True):
        text_y = top + (row_h - block) // 2
        for line in lines:
            draw.text((_PAD, text_y), line, font=label_font, fill=INK)
            text_y += line_h + _LINE_SPACING
        label_boxes.append((_PAD, top, _PAD + label_w, top + row_h))
        boxes = []
        for c, panel in enumerate(panels):
            left, upper = x0 + c * (pw + _GAP), top + (row_h - ph) // 2
            box = (left, upper, left + pw, upper + ph)
            draw.rectangle((left - 1, upper - 1, left + pw, upper + ph), outline=FRAME)
            image.paste(panel, box)
            boxes.append(box)
        panel_boxes.append(tuple(boxes))

    ticks: tuple[tuple[float, int], ...] = ()
    if colour_scale is not None and bar_box is not None:
        ticks = _draw_colour_bar(image, bar_box, colour_scale, tick_texts)

    return RenderedGrid(
        image=image,
        panels=tuple(panel_boxes),
        labels=tuple(label_boxes),
        title=title_box,
        colour_bar=bar_box,
        ticks=ticks,
    )


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
        _colour_channels(_as_2d(everything)) if everything.ndim > 3 else everything[:, :1]
    )
    rows = [
        ("Original output", _panels(original, lo, hi)),
        (_transformed_label(result), _panels(stretched, lo, hi)),
    ]
    rows += [
        (layer_label(layer), _panels(maps, lo, hi))
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
    rows = [(label, _difference_panels(d, hi)) for label, d in zip(labels, diffs, strict=True)]
    reference = _transformed_label(result).lower()
    title = f"Absolute difference to the {reference}, mean over channels (largest {top:.3g})"
    return compose_grid(rows, title, separate_after=1, colour_scale=(0.0, hi))


# --------------------------------------------------------------------------- files

# Pillow format and save options per suffix; every suffix of GRID_SUFFIXES has an entry.
_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def _save_options(fmt: str) -> dict[str, Any]:
    if fmt == "JPEG":
        # no chroma subsampling: it smears the thin coloured lines of text and panel edges
        return {"quality": 95, "subsampling": 0}
    if fmt == "WEBP":
        return {"lossless": True}  # labels and pixel-sized detail stay exact
    if fmt == "TIFF" and features.check("libtiff"):
        return {"compression": "tiff_lzw"}
    return {}


def image_format(path: str | Path) -> str:
    """Pillow's name of the format written for ``path``'s suffix (``.jpg`` → ``JPEG``)."""
    check_suffix(str(path), "picture", GRID_SUFFIXES)
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:  # GRID_SUFFIXES lists a suffix this module cannot write
        raise UsageError(f"picture {path}: no writer for {suffix}")
    return _FORMATS[suffix]


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """``image`` as the bytes of a ``fmt`` file (a name from :func:`image_format`)."""
    if fmt == "WEBP" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # WebP has no grayscale mode
    buf = io.BytesIO()
    image.save(buf, format=fmt, **_save_options(fmt))
    return buf.getvalue()


def difference_path(path: str | Path) -> Path:
    """Where the difference grid goes: ``foo.png`` → ``foo_diff.png`` (same folder and suffix)."""
    p = Path(path)
    return p.with_name(f"{p.stem}_diff{p.suffix}")


def write_stretch_grids(result: StretchResult, path: str | Path) -> tuple[Path, Path]:
    """Write the sample grid to ``path`` and the difference grid beside it; return both paths.

    The format follows the suffix (one of ``export.GRID_SUFFIXES``; anything else is a
    :class:`UsageError` before any drawing). Both files are rendered before either is written,
    and each is written atomically.
    """
    fmt = image_format(path)
    grid = encode_image(render_stretch_grid(result).image, fmt)
    diff = encode_image(render_difference_grid(result).image, fmt)
    target, target_diff = Path(path), difference_path(path)
    write_atomic(target, grid)
    write_atomic(target_diff, diff)
    return target, target_diff

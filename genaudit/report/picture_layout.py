"""Composing a picture grid: labelled rows of equal panels, a title and a colour bar.

:func:`compose_grid` lays rows of panels (:mod:`genaudit.report.panels`) out on a white page,
each row with its label on the left (wrapped at ``" · "`` and shortened from the left by
:func:`wrap_label` when too wide), an optional title along the top and an optional colour bar
on the right whose ticks sit at round values (:func:`nice_ticks`, :func:`format_ticks`). It
returns a :class:`RenderedGrid`: the image and where each of its parts is. Text is drawn in
Pillow's bundled font (:func:`load_font`), so pictures look the same on every machine.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .colours import BACKGROUND, FRAME, INK, apply_colour_map

__all__ = [
    "LABEL_SIZE",
    "SEPARATOR",
    "TICK_SIZE",
    "TITLE_SIZE",
    "Box",
    "Font",
    "RenderedGrid",
    "compose_grid",
    "format_ticks",
    "load_font",
    "nice_ticks",
    "wrap_label",
]

# A box in pixels as Pillow's ``crop`` takes it: (left, top, right, bottom), right/bottom excluded.
Box = tuple[int, int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

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

_BAR_GAP = 16
_BAR_WIDTH = 16
_TICK_LENGTH = 5
_TICK_TEXT_GAP = 4

SEPARATOR = " · "

# Characters the bundled font lacks, replaced by ones it has (a missing glyph draws as a box).
_SUBSTITUTES = str.maketrans({"×": "x", "−": "-", "–": "-", "—": "-"})

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

"""Stretch pictures as PNG files, with no third-party imaging library (DESIGN §5).

``write_stretch_grids(result, "foo.png")`` writes two files:

- ``foo.png``: columns are samples; rows are the original output G(z), the directly stretched
  output T G(z), and the output after intervening at each chosen layer (labelled
  ``<level> <dotted name>``);
- ``foo_diff.png`` (``difference_path``): the absolute difference of each of those outputs to the
  directly stretched output — first row ``original`` (what the baseline measures), then one row per
  layer — averaged over channels, on one gray scale shared by the whole grid (0 → black, the
  largest difference → white; the title gives the scale).

How outputs are shown:

- value range, shared by the whole grid: values in [0, 1] are shown as they are (sigmoid-like);
  values in [-1, 1] with a negative one map [-1, 1] onto black…white (tanh-like); anything else
  maps the grid's own min…max;
- channels: 1 → grayscale, 3 → RGB, 4 → the first three as RGB (alpha dropped), any other number
  → the first channel in grayscale; the PNG is RGB only when the pictures are;
- 2-D maps are shown as images (small ones enlarged by an integer factor, nearest neighbour),
  3-D maps (N, C, D, H, W) by their middle slice along D, 1-D maps (N, C, L) as waveforms of the
  first channel, drawn as line plots in a small panel per sample.

Labels use a built-in 5×7 bitmap font (letters are drawn as capitals; characters it lacks show
as ``?``). PNGs are 8-bit, unfiltered (filter type 0), and written atomically.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError
from .export import write_atomic
from .stretch import StretchResult

# --------------------------------------------------------------------------- PNG


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(image: np.ndarray) -> bytes:
    """8-bit PNG bytes of ``image``: (H, W) grayscale or (H, W, 3) RGB, dtype uint8.

    Every scanline uses filter type 0 (none); the data stream is zlib level 6, so equal images
    give equal bytes.
    """
    arr = np.ascontiguousarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        colour_type, channels = 0, 1
    elif arr.ndim == 3 and arr.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"encode_png needs (H, W) or (H, W, 3) pixels, got {arr.shape}")
    height, width = arr.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"encode_png needs a non-empty image, got {arr.shape}")
    scanlines = np.zeros((height, 1 + width * channels), dtype=np.uint8)
    scanlines[:, 1:] = arr.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)),
            _chunk(b"IEND", b""),
        ]
    )


# --------------------------------------------------------------------------- font

# 5×7 glyphs, rows top to bottom, '#' = ink. Letters are capitals, used for both cases.
_GLYPH_ROWS = {
    "a": ".###. #...# #...# ##### #...# #...# #...#",
    "b": "####. #...# #...# ####. #...# #...# ####.",
    "c": ".###. #...# #.... #.... #.... #...# .###.",
    "d": "###.. #..#. #...# #...# #...# #..#. ###..",
    "e": "##### #.... #.... ####. #.... #.... #####",
    "f": "##### #.... #.... ####. #.... #.... #....",
    "g": ".###. #...# #.... #.### #...# #...# .####",
    "h": "#...# #...# #...# ##### #...# #...# #...#",
    "i": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "j": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "k": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "l": "#.... #.... #.... #.... #.... #.... #####",
    "m": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "n": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "o": ".###. #...# #...# #...# #...# #...# .###.",
    "p": "####. #...# #...# ####. #.... #.... #....",
    "q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "r": "####. #...# #...# ####. #.#.. #..#. #...#",
    "s": ".#### #.... #.... .###. ....# ....# ####.",
    "t": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "u": "#...# #...# #...# #...# #...# #...# .###.",
    "v": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "w": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "x": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    " ": "..... ..... ..... ..... ..... ..... .....",
}
GLYPH_WIDTH, GLYPH_HEIGHT = 5, 7
FONT: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows.split()], dtype=bool)
    for ch, rows in _GLYPH_ROWS.items()
}
_ALIASES = {"×": "x", "·": ".", "'": ",", '"': ",", "−": "-"}


def _glyph(ch: str) -> np.ndarray:
    ch = _ALIASES.get(ch, ch).lower()
    return FONT.get(ch, FONT["?"])


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """(height, width) in pixels of ``text`` drawn at ``scale`` (1 px spacing between glyphs)."""
    if not text:
        return GLYPH_HEIGHT * scale, 0
    return GLYPH_HEIGHT * scale, (len(text) * (GLYPH_WIDTH + 1) - 1) * scale


def draw_text(
    canvas: np.ndarray, top: int, left: int, text: str, scale: int = 1, value: int = 255
) -> None:
    """Draw ``text`` into ``canvas`` (H, W, 3) with its top-left corner at (top, left); clipped."""
    x = left
    for ch in text:
        glyph = np.kron(_glyph(ch), np.ones((scale, scale), dtype=bool))
        _paint(canvas, top, x, glyph, value)
        x += (GLYPH_WIDTH + 1) * scale


def _paint(canvas: np.ndarray, top: int, left: int, mask: np.ndarray, value: int) -> None:
    h, w = canvas.shape[:2]
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + mask.shape[0], h), min(left + mask.shape[1], w)
    if t1 <= t0 or l1 <= l0:
        return
    sub = mask[t0 - top : t1 - top, l0 - left : l1 - left]
    canvas[t0:t1, l0:l1][sub] = value


# --------------------------------------------------------------------------- maps → pixels

BACKGROUND = 40
INK = 255
_GAP = 2
_PAD = 4
_MAX_LABEL = 32
_MIN_PANEL = 64
_WAVE_HEIGHT = 48


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
    """(K, C, D, H, W) → middle slice (K, C, H, W); 2-D maps unchanged."""
    if maps.ndim == 5:
        return maps[:, :, maps.shape[2] // 2]
    return maps


def _image_panels(maps: np.ndarray, lo: float, hi: float) -> list[np.ndarray]:
    """(K, C', H, W) with C' ∈ {1, 3} → K panels (h, w, 3) uint8, enlarged when small."""
    h, w = maps.shape[2:]
    zoom = max(1, min(8, _MIN_PANEL // max(h, w)))
    pix = _to_uint8(maps, lo, hi)
    panels = []
    for sample in pix:
        rgb = np.repeat(sample, 3, axis=0) if sample.shape[0] == 1 else sample
        img = np.transpose(rgb, (1, 2, 0))
        if zoom > 1:
            img = np.repeat(np.repeat(img, zoom, axis=0), zoom, axis=1)
        panels.append(np.ascontiguousarray(img))
    return panels


def _draw_line(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, value: int) -> None:
    """Bresenham's line from (x0, y0) to (x1, y1) into canvas (H, W, 3), clipped."""
    h, w = canvas.shape[:2]
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        if 0 <= y0 < h and 0 <= x0 < w:
            canvas[y0, x0] = value
        if x0 == x1 and y0 == y1:
            return
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


def _waveform_panels(waves: np.ndarray, lo: float, hi: float) -> list[np.ndarray]:
    """(K, L) → K line plots (h, w, 3) uint8: time left to right, ``hi`` at the top."""
    length = waves.shape[1]
    width = int(min(max(length, _MIN_PANEL * 2), 256))
    height = _WAVE_HEIGHT
    xs = (
        np.rint(np.arange(length) * (width - 1) / (length - 1)).astype(int)
        if length > 1
        else np.array([width // 2])
    )
    panels = []
    for wave in waves:
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        if lo < 0.0 < hi:  # a dim zero line
            y_zero = round(hi / (hi - lo) * (height - 1))
            canvas[y_zero, :] = 70
        frac = (np.nan_to_num(wave, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
        ys = np.rint((1.0 - np.clip(frac, 0.0, 1.0)) * (height - 1)).astype(int)
        if length == 1:
            _draw_line(canvas, 0, int(ys[0]), width - 1, int(ys[0]), INK)
        for i in range(length - 1):
            _draw_line(canvas, int(xs[i]), int(ys[i]), int(xs[i + 1]), int(ys[i + 1]), INK)
        panels.append(canvas)
    return panels


def _panels(maps: np.ndarray, lo: float, hi: float) -> list[np.ndarray]:
    """(K, C, *grid) maps → K panels, by dimensionality."""
    if maps.ndim == 3:
        return _waveform_panels(maps[:, 0], lo, hi)
    return _image_panels(_colour_channels(_as_2d(maps)), lo, hi)


def _fit_label(label: str) -> str:
    return label if len(label) <= _MAX_LABEL else ".." + label[-(_MAX_LABEL - 2) :]


def compose_grid(rows: list[tuple[str, list[np.ndarray]]], title: str = "") -> np.ndarray:
    """Lay out labelled rows of equally sized panels (h, w, 3) into one RGB canvas.

    A label column on the left holds each row's label; ``title`` (optional) runs along the top.
    """
    if not rows or not rows[0][1]:
        raise ValueError("compose_grid needs at least one row with one panel")
    ph, pw = rows[0][1][0].shape[:2]
    columns = max(len(panels) for _, panels in rows)
    font = 2 if ph >= 32 else 1
    labels = [_fit_label(label) for label, _ in rows]
    text_h = GLYPH_HEIGHT * font
    label_w = max(text_size(label, font)[1] for label in labels) + 2 * _PAD
    row_h = max(ph, text_h)
    title_h = text_h + 2 * _PAD if title else _PAD
    title_w = text_size(title, font)[1] + 2 * _PAD if title else 0
    width = max(label_w + columns * (pw + _GAP) + _PAD - _GAP, title_w)
    height = title_h + len(rows) * (row_h + _GAP) - _GAP + _PAD
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    if title:
        draw_text(canvas, _PAD, _PAD, title, font, INK)
    for r, (label, (_, panels)) in enumerate(zip(labels, rows, strict=True)):
        top = title_h + r * (row_h + _GAP)
        draw_text(canvas, top + (row_h - text_h) // 2, _PAD, label, font, INK)
        for c, panel in enumerate(panels):
            left = label_w + c * (pw + _GAP)
            y = top + (row_h - ph) // 2
            canvas[y : y + ph, left : left + pw] = panel
    return canvas


# --------------------------------------------------------------------------- stretch grids


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _layer_labels(result: StretchResult) -> list[str]:
    return [f"{layer.level} {layer.name or '(model)'}" for layer in result.layers]


def _transform_text(result: StretchResult) -> str:
    t = result.transform
    param = t.get("param")
    param_text = f"{param:g}" if isinstance(param, int | float) else str(param)
    return f"{t.get('name', 'transform')} {param_text} {t.get('axis', '')}".strip()


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


def render_stretch_grid(result: StretchResult) -> np.ndarray:
    """The sample grid as pixels: (H, W) grayscale or (H, W, 3) RGB uint8."""
    original, stretched, intervened = _samples_or_fail(result)
    everything = np.concatenate([original, stretched, *intervened])
    lo, hi = display_range(
        _colour_channels(_as_2d(everything)) if everything.ndim > 3 else everything[:, :1]
    )
    rows = [("original", _panels(original, lo, hi)), ("stretched", _panels(stretched, lo, hi))]
    rows += [
        (label, _panels(maps, lo, hi))
        for label, maps in zip(_layer_labels(result), intervened, strict=True)
    ]
    canvas = compose_grid(rows, _transform_text(result))
    return canvas if _is_colour(original) else np.ascontiguousarray(canvas[:, :, 0])


def render_difference_grid(result: StretchResult) -> np.ndarray:
    """The difference grid as grayscale pixels (H, W) uint8.

    Row ``original``: ``|G(z) − T G(z)|``; row per layer: ``|G_ℓ^T(z) − T G(z)|``; each averaged
    over channels and shown on the scale 0 … (largest value in the grid).
    """
    original, stretched, intervened = _samples_or_fail(result)
    diffs = [np.abs(m - stretched).mean(axis=1, keepdims=True) for m in (original, *intervened)]
    diffs = [_as_2d(d) for d in diffs]
    finite = np.concatenate([d.ravel() for d in diffs])
    finite = finite[np.isfinite(finite)]
    top = float(finite.max()) if finite.size else 0.0
    hi = top if top > 0 else 1.0
    labels = ["original", *_layer_labels(result)]
    rows = [(label, _panels(d, 0.0, hi)) for label, d in zip(labels, diffs, strict=True)]
    title = f"abs difference to stretched, scale 0 to {top:.3g}"
    canvas = compose_grid(rows, title)
    return np.ascontiguousarray(canvas[:, :, 0])


def difference_path(path: str | Path) -> Path:
    """Where the difference grid goes: ``foo.png`` → ``foo_diff.png`` (same folder)."""
    p = Path(path)
    return p.with_name(f"{p.stem}_diff{p.suffix or '.png'}")


def write_stretch_grids(result: StretchResult, path: str | Path) -> tuple[Path, Path]:
    """Write the sample grid to ``path`` and the difference grid beside it; return both paths.

    Both files are rendered before either is written, and each is written atomically.
    """
    grid = encode_png(render_stretch_grid(result))
    diff = encode_png(render_difference_grid(result))
    target, target_diff = Path(path), difference_path(path)
    write_atomic(target, grid)
    write_atomic(target_diff, diff)
    return target, target_diff

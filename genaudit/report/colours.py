"""Colours of the pictures: the page's own colours and the magma colour map for values.

The page is white with near-black ink (:data:`BACKGROUND`, :data:`INK`); panels get a light
hairline frame (:data:`FRAME`). Values are shown through :data:`MAGMA`, matplotlib's perceptual
colour map rebuilt from 17 sampled points so that no matplotlib is needed
(:func:`apply_colour_map`), or as grey levels (:func:`to_uint8`); both map ``lo`` → first entry,
``hi`` → last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "BACKGROUND",
    "FRAME",
    "INK",
    "MAGMA",
    "MAGMA_POINTS",
    "ZERO_LINE",
    "apply_colour_map",
    "to_uint8",
]

BACKGROUND = (255, 255, 255)
INK = (25, 25, 25)
FRAME = (190, 190, 190)  # a hairline around each panel, so white maps do not melt into the page
ZERO_LINE = (215, 215, 215)


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
    return MAGMA[to_uint8(values, lo, hi)]


def to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` (any shape) as uint8 grey levels, ``lo`` → 0, ``hi`` → 255.

    Values outside [lo, hi] are clipped; NaN is shown as ``lo``, ±inf as ``hi`` / ``lo``.
    """
    scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)

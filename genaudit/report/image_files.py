"""Picture files: the Pillow format for a file's suffix, and the image encoded in it.

The suffixes are those of ``export.GRID_SUFFIXES`` (PNG, JPEG, WebP, TIFF); each format is saved
with options that keep labels and pixel-sized detail sharp (no chroma subsampling in JPEG,
lossless WebP, LZW-compressed TIFF where Pillow has libtiff).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, features

from .export import GRID_SUFFIXES, writer_format

__all__ = ["encode_image", "image_format"]

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
    return writer_format(path, "picture", GRID_SUFFIXES, _FORMATS)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """``image`` as the bytes of a ``fmt`` file (a name from :func:`image_format`)."""
    if fmt == "WEBP" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # WebP has no grayscale mode
    buf = io.BytesIO()
    image.save(buf, format=fmt, **_save_options(fmt))
    return buf.getvalue()

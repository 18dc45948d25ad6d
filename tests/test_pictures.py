"""PNG stretch grids, read back with an independent minimal PNG decoder."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from genaudit.errors import UsageError
from genaudit.pictures import (
    BACKGROUND,
    display_range,
    encode_png,
    render_difference_grid,
    render_stretch_grid,
    write_stretch_grids,
)
from genaudit.stretch import StretchLayerResult, StretchResult, StretchSamples
from genaudit.transforms import stretch


def decode_png(data: bytes) -> tuple[dict[str, int], np.ndarray]:
    """IHDR fields and pixels of an 8-bit, non-interlaced PNG whose rows all use filter 0."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, f"bad CRC in {tag!r}"
        chunks.append((tag, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3}[ctype]
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + w * channels)
    assert (rows[:, 0] == 0).all(), "only filter type 0 is expected"
    pixels = rows[:, 1:].reshape((h, w) if channels == 1 else (h, w, 3))
    return {"width": w, "height": h, "colour_type": ctype}, pixels


def make_result(maps: torch.Tensor, layers: int = 2, factor: float = 1.5) -> StretchResult:
    """A StretchResult around given outputs (K, C, *grid), with fake intervened rows."""
    target = stretch(maps, factor, "horizontal")
    intervened = tuple(target + 0.1 * (k + 1) * (maps - target) for k in range(layers))
    levels = ["coarse", "fine", "image"]
    rows = tuple(
        StretchLayerResult(k, f"main.{3 * k}", levels[k % 3], 0.1, 0.2, 0.5) for k in range(layers)
    )
    return StretchResult(
        transform={"name": "stretch", "param": factor, "axis": "horizontal"},
        num_samples=maps.shape[0],
        layers=rows,
        samples=StretchSamples(maps, target, intervened),
        output_shape=tuple(maps.shape[1:]),
    )


def _blobs(k: int, c: int, *grid: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.tanh(torch.randn(k, c, *grid, generator=g))


def test_encoder_round_trip() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    info, back = decode_png(encode_png(gray))
    assert info == {"width": 7, "height": 5, "colour_type": 0}
    assert np.array_equal(back, gray)
    rgb = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    info, back = decode_png(encode_png(rgb))
    assert info == {"width": 4, "height": 3, "colour_type": 2}
    assert np.array_equal(back, rgb)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(gray.astype(np.float32))


def _label_margin_has_ink(pixels: np.ndarray, rows: int, top: int = 20) -> None:
    """Some pixels left of the first panel, in each of ``rows`` bands, differ from background."""
    gray = pixels if pixels.ndim == 2 else pixels[:, :, 0]
    margin = gray[top:, :20]
    assert (margin != BACKGROUND).any()
    bands = np.array_split(margin, rows, axis=0)
    assert all((band != BACKGROUND).any() for band in bands)


def test_grayscale_grid_and_difference(tmp_path: Path) -> None:
    result = make_result(_blobs(4, 1, 16, 16), layers=2)
    grid_path, diff_path = write_stretch_grids(result, tmp_path / "stretch.png")
    assert grid_path == tmp_path / "stretch.png"
    assert diff_path == tmp_path / "stretch_diff.png"
    info, pix = decode_png(grid_path.read_bytes())
    assert info["colour_type"] == 0
    # 16×16 maps are enlarged 4× to 64×64 panels: 4 columns, 4 rows (original, stretched, 2 layers)
    assert info["width"] > 4 * 64 and info["height"] > 4 * 64
    assert np.array_equal(pix, render_stretch_grid(result))
    info_d, pix_d = decode_png(diff_path.read_bytes())
    assert info_d["colour_type"] == 0
    assert info_d["width"] > 4 * 64 and info_d["height"] > 3 * 64  # original + 2 layers
    assert np.array_equal(pix_d, render_difference_grid(result))
    assert pix_d.max() == 255  # shared scale reaches white at the largest difference
    _label_margin_has_ink(pix, rows=4)
    _label_margin_has_ink(pix_d, rows=3)
    assert not list(tmp_path.glob(".*tmp"))


def test_panel_pixels_show_the_maps() -> None:
    """A [0, 1] map is drawn as is: the top-left panel holds its pixel values."""
    maps = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    result = make_result(maps, layers=1)
    pix = render_stretch_grid(result)
    want = np.rint(maps[0, 0].numpy() * 255).astype(np.uint8)
    want = np.kron(want, np.ones((8, 8), dtype=np.uint8))  # 8×8 enlarged 8× to 64×64
    found = [
        (r, c) for r in range(pix.shape[0] - 63) for c in range(pix.shape[1] - 63)
        if pix[r, c] == want[0, 0] and np.array_equal(pix[r : r + 64, c : c + 64], want)
    ]  # fmt: skip
    assert found


def test_rgb_grid(tmp_path: Path) -> None:
    result = make_result(_blobs(3, 3, 8, 12), layers=3)
    grid_path, diff_path = write_stretch_grids(result, tmp_path / "rgb.png")
    info, pix = decode_png(grid_path.read_bytes())
    assert info["colour_type"] == 2 and pix.shape[2] == 3
    assert not np.array_equal(pix[:, :, 0], pix[:, :, 1])  # colour, not gray
    info_d, _ = decode_png(diff_path.read_bytes())
    assert info_d["colour_type"] == 0
    _label_margin_has_ink(pix, rows=5)


def test_other_channel_counts_are_drawn_gray() -> None:
    for c in (2, 5):
        pix = render_stretch_grid(make_result(_blobs(2, c, 8, 8), layers=1))
        assert pix.ndim == 2


def test_waveforms(tmp_path: Path) -> None:
    t = torch.linspace(0, 6.28, 50)
    maps = torch.stack([torch.sin(t * (k + 1)) for k in range(3)]).view(3, 1, 50)
    result = make_result(maps, layers=2)
    grid_path, diff_path = write_stretch_grids(result, tmp_path / "wave.png")
    info, pix = decode_png(grid_path.read_bytes())
    assert info["colour_type"] == 0
    assert info["width"] > 3 * 128  # panels are 128 px wide for short signals
    _label_margin_has_ink(pix, rows=4)
    # the line is drawn in white inside the panels
    assert (pix[24:, 120:] == 255).sum() > 3 * 4 * 50
    info_d, pix_d = decode_png(diff_path.read_bytes())
    assert info_d["height"] > 3 * 48
    _label_margin_has_ink(pix_d, rows=3)


def test_volumes_show_the_middle_slice() -> None:
    maps = torch.zeros(2, 1, 5, 8, 8)
    maps[:, :, 2] = 1.0  # only the middle slice is white
    result = make_result(maps, layers=1)
    pix = render_stretch_grid(result)
    assert pix.ndim == 2
    assert (pix == 255).sum() >= 2 * 64 * 64  # the first row's two 64×64 panels at least
    only_first = torch.zeros(2, 1, 5, 8, 8)
    only_first[:, :, 0] = 1.0
    pix0 = render_stretch_grid(make_result(only_first, layers=1))
    assert (pix0 == 255).sum() < (pix == 255).sum()


def test_display_ranges() -> None:
    assert display_range(np.array([0.0, 0.5, 1.0])) == (0.0, 1.0)
    assert display_range(np.array([-0.3, 0.9])) == (-1.0, 1.0)
    assert display_range(np.array([-3.0, 5.0])) == (-3.0, 5.0)
    assert display_range(np.array([2.0, 2.0])) == (1.5, 2.5)
    assert display_range(np.array([np.nan, 0.5])) == (0.0, 1.0)


def test_no_samples_is_a_usage_error(tmp_path: Path) -> None:
    result = make_result(_blobs(1, 1, 4, 4))
    bare = StretchResult(result.transform, 1, result.layers, None)
    with pytest.raises(UsageError, match="no samples"):
        write_stretch_grids(bare, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())

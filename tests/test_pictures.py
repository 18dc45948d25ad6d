"""Stretch grids drawn with Pillow, read back from the written files, and their parts.

The grids are genaudit.report.pictures; their parts are colours, panels, picture_layout.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops, ImageDraw

from genaudit.analysis.stretch import StretchLayerResult, StretchResult, StretchSamples
from genaudit.analysis.transforms import stretch
from genaudit.errors import UsageError
from genaudit.report.colours import BACKGROUND, MAGMA, apply_colour_map
from genaudit.report.export import GRID_SUFFIXES
from genaudit.report.panels import display_range
from genaudit.report.picture_layout import (
    LABEL_SIZE,
    RenderedGrid,
    compose_grid,
    format_ticks,
    load_font,
    nice_ticks,
    wrap_label,
)
from genaudit.report.pictures import (
    difference_path,
    layer_label,
    render_difference_grid,
    render_stretch_grid,
    write_stretch_grids,
)


def make_result(
    maps: torch.Tensor, layers: int = 2, factor: float = 1.5, exact_last: bool = False
) -> StretchResult:
    """A StretchResult around given outputs (K, C, *grid), with fake intervened rows.

    Row k (0-based) lies (k + 1) / 10 of the way back from the stretched output to the original;
    with ``exact_last`` the last row equals the stretched output (a perfect intervention).
    """
    target = stretch(maps, factor, "horizontal")
    intervened = [target + 0.1 * (k + 1) * (maps - target) for k in range(layers)]
    if exact_last:
        intervened[-1] = target.clone()
    levels = ["coarse", "fine", "image"]
    rows = tuple(
        StretchLayerResult(k, f"main.{3 * k}", levels[k % 3], 0.1, 0.2, 0.5) for k in range(layers)
    )
    return StretchResult(
        transform={"name": "stretch", "param": factor, "axis": "horizontal"},
        num_samples=maps.shape[0],
        layers=rows,
        samples=StretchSamples(maps, target, tuple(intervened)),
        output_shape=tuple(maps.shape[1:]),
    )


def _blobs(k: int, c: int, *grid: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.tanh(torch.randn(k, c, *grid, generator=g))


def _crop(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(image.convert("RGB").crop(box)).astype(int)


def _inside(grid: RenderedGrid) -> None:
    """Nothing is drawn outside the canvas."""
    w, h = grid.image.size
    boxes = [b for row in grid.panels for b in row] + list(grid.labels)
    boxes += [b for b in (grid.title, grid.colour_bar) if b is not None]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= w and 0 <= top < bottom <= h


def _ink(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """Mask of the pixels in ``box`` that are clearly darker than the white page."""
    return _crop(image, box).min(axis=2) < 160


# --------------------------------------------------------------------------- layout and pixels


def test_grayscale_grid_layout_and_rows(tmp_path: Path) -> None:
    result = make_result(_blobs(4, 1, 16, 16), layers=2)
    grid_path, diff_path = write_stretch_grids(result, tmp_path / "stretch.png")
    assert (grid_path, diff_path) == (tmp_path / "stretch.png", tmp_path / "stretch_diff.png")
    rendered = render_stretch_grid(result)
    _inside(rendered)
    with Image.open(grid_path) as im:
        assert im.format == "PNG" and im.mode == "L"
        assert im.size == rendered.image.size
        pixels = np.asarray(im)
    assert np.array_equal(pixels, np.asarray(rendered.image))
    # 4 rows (original, stretched, 2 layers) × 4 samples; 16×16 maps enlarged 8× to 128×128
    assert len(rendered.panels) == 4 and all(len(row) == 4 for row in rendered.panels)
    assert all((b[2] - b[0], b[3] - b[1]) == (128, 128) for row in rendered.panels for b in row)
    crops = [[_crop(rendered.image, b) for b in row] for row in rendered.panels]
    for c in range(4):
        for a in range(4):
            for b in range(a + 1, 4):
                assert not np.array_equal(crops[a][c], crops[b][c]), (a, b, c)
    # the columns are different samples
    assert not np.array_equal(crops[0][0], crops[0][1])
    assert not list(tmp_path.glob(".*tmp"))


def test_panel_pixels_show_the_maps() -> None:
    """A [0, 1] map is drawn as is: the first panel holds its values, each enlarged 8×8."""
    maps = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    rendered = render_stretch_grid(make_result(maps, layers=1))
    want = np.rint(maps[0, 0].numpy() * 255).astype(int)
    want = np.kron(want, np.ones((8, 8), dtype=int))
    assert np.array_equal(_crop(rendered.image, rendered.panels[0][0])[:, :, 0], want)


def test_rgb_grid(tmp_path: Path) -> None:
    result = make_result(_blobs(3, 3, 8, 12), layers=3)
    grid_path, diff_path = write_stretch_grids(result, tmp_path / "rgb.png")
    with Image.open(grid_path) as im:
        assert im.mode == "RGB"
        panel = np.asarray(im.crop(render_stretch_grid(result).panels[0][0])).astype(int)
    assert not np.array_equal(panel[:, :, 0], panel[:, :, 1])  # colour, not gray
    with Image.open(diff_path) as im:
        assert im.mode == "RGB"


def test_other_channel_counts_are_drawn_gray() -> None:
    for c in (2, 5):
        assert render_stretch_grid(make_result(_blobs(2, c, 8, 8), layers=1)).image.mode == "L"


def test_waveforms(tmp_path: Path) -> None:
    t = torch.linspace(0, 6.28, 50)
    maps = torch.stack([torch.sin(t * (k + 1)) for k in range(3)]).view(3, 1, 50)
    result = make_result(maps, layers=2)
    grid_path, _ = write_stretch_grids(result, tmp_path / "wave.png")
    rendered = render_stretch_grid(result)
    _inside(rendered)
    with Image.open(grid_path) as im:
        assert im.mode == "L" and im.size == rendered.image.size
    box = rendered.panels[0][0]
    assert (box[2] - box[0], box[3] - box[1]) == (192, 80)  # short signals: 192 px wide
    for row in rendered.panels:
        for b in row:
            ink = _ink(rendered.image, b)
            # a line crosses the panel: ink in (almost) every pixel column
            assert ink.any(axis=0).mean() > 0.95
    assert not np.array_equal(
        _crop(rendered.image, rendered.panels[0][0]), _crop(rendered.image, rendered.panels[1][0])
    )
    # differences of 1-D outputs are colour bands: constant down each column, varying along it
    diff = render_difference_grid(result)
    band = _crop(diff.image, diff.panels[0][0])
    assert (band == band[:1]).all()
    assert len(np.unique(band[0], axis=0)) > 10


def test_volumes_show_the_middle_slice() -> None:
    maps = torch.zeros(2, 1, 5, 8, 8)
    maps[:, :, 2] = 1.0  # only the middle slice is white
    rendered = render_stretch_grid(make_result(maps, layers=1))
    assert rendered.image.mode == "L"
    assert (_crop(rendered.image, rendered.panels[0][0]) == 255).all()
    only_first = torch.zeros(2, 1, 5, 8, 8)
    only_first[:, :, 0] = 1.0
    rendered0 = render_stretch_grid(make_result(only_first, layers=1))
    assert (_crop(rendered0.image, rendered0.panels[0][0]) == 0).all()


# --------------------------------------------------------------------------- labels


def test_row_labels_name_layer_level_and_rel_mse() -> None:
    layer = StretchLayerResult(5, "features.5", "fine", 1e-4, 0.01, 0.0176)
    assert layer_label(layer) == "features.5 · fine · rel_mse 0.018"
    tiny = StretchLayerResult(7, "features.7", "image", 1e-10, 0.01, 2.2e-6)
    assert layer_label(tiny) == "features.7 · image · rel_mse 2.2e-06"
    undefined = StretchLayerResult(7, "", "image", 0.0, 0.0, math.nan)
    assert layer_label(undefined) == "(model) · image · rel_mse n/a"


def _text_ink(text: str) -> np.ndarray:
    """``text`` drawn alone in the label font, cropped to its ink."""
    font = load_font(LABEL_SIZE)
    image = Image.new("RGB", (int(font.getlength(text)) + 20, 60), BACKGROUND)
    ImageDraw.Draw(image).text((0, 0), text, font=font, fill=(25, 25, 25))
    gray = image.convert("L")
    bbox = ImageChops.invert(gray).getbbox()
    assert bbox is not None
    return np.asarray(gray.crop(bbox))


def _label_ink(grid: RenderedGrid, row: int) -> np.ndarray:
    gray = grid.image.convert("L").crop(grid.labels[row])
    bbox = ImageChops.invert(gray).getbbox()
    assert bbox is not None, f"label of row {row} is blank"
    return np.asarray(gray.crop(bbox))


def test_labels_are_the_texts_drawn_in_the_label_column() -> None:
    result = make_result(_blobs(2, 1, 16, 16), layers=2)
    rendered = render_stretch_grid(result)
    texts = ["Original output", "Stretched output", *(layer_label(x) for x in result.layers)]
    for row, text in enumerate(texts):
        assert np.array_equal(_label_ink(rendered, row), _text_ink(text)), text
    diff = render_difference_grid(result)
    for row, text in enumerate(["Original output", *texts[2:]]):
        assert np.array_equal(_label_ink(diff, row), _text_ink(text)), text


def test_label_column_is_blank_without_labels() -> None:
    panel = Image.new("RGB", (32, 32), (90, 90, 90))
    with_labels = compose_grid([("Original output", [panel]), ("main.3 · fine", [panel])])
    without = compose_grid([("", [panel]), ("", [panel])])
    assert all(_ink(with_labels.image, box).any() for box in with_labels.labels)
    # without labels the panels start at the margin: no label column at all
    assert without.panels[0][0][0] < with_labels.panels[0][0][0]
    assert without.image.width < with_labels.image.width


def test_long_labels_are_wrapped_then_shortened_from_the_left() -> None:
    font = load_font(LABEL_SIZE)
    label = "generator.decoder.blocks.11.upsample.conv_transpose · intermediate · rel_mse 0.123"
    lines = wrap_label(label, font, 200)
    assert len(lines) >= 2
    assert all(font.getlength(line) <= 200 for line in lines)
    assert lines[0].startswith("…") and lines[0].endswith("conv_transpose")
    assert lines[-1].endswith("rel_mse 0.123")
    assert wrap_label("main.3 · fine", font, 200) == ["main.3 · fine"]
    # characters the bundled font lacks are replaced, not drawn as boxes
    assert wrap_label("a × b − c", font, 200) == ["a x b - c"]
    panel = Image.new("RGB", (16, 16), (0, 0, 0))
    grid = compose_grid([(label, [panel])])
    left, top, right, bottom = grid.labels[0]
    assert right - left <= 330 and bottom - top >= 2 * 15  # two lines at least, within bounds
    _inside(grid)


# --------------------------------------------------------------------------- difference grid


def test_difference_grid_has_a_colour_scale(tmp_path: Path) -> None:
    result = make_result(_blobs(3, 1, 16, 16), layers=2, exact_last=True)
    _, diff_path = write_stretch_grids(result, tmp_path / "s.png")
    diff = render_difference_grid(result)
    _inside(diff)
    with Image.open(diff_path) as im:
        assert im.mode == "RGB" and im.size == diff.image.size
        assert np.array_equal(np.asarray(im), np.asarray(diff.image))
    assert len(diff.panels) == 3  # original, 2 layers
    # a perfect intervention differs by 0 everywhere: the lowest colour of the map
    for box in diff.panels[2]:
        assert (_crop(diff.image, box) == MAGMA[0]).all()
    # the largest difference reaches the top of the scale somewhere
    top_colour = [(_crop(diff.image, b) == MAGMA[-1]).all(axis=2).any() for b in diff.panels[0]]
    assert any(top_colour)
    # the bar runs from the top colour down to the bottom one, brighter towards the top
    assert diff.colour_bar is not None
    bar = _crop(diff.image, diff.colour_bar)
    assert (bar == bar[:, :1]).all()  # each row one colour
    assert np.abs(bar[0, 0] - MAGMA[-1]).max() <= 4 and np.abs(bar[-1, 0] - MAGMA[0]).max() <= 4
    brightness = bar[:, 0].sum(axis=1)
    assert (np.diff(brightness) <= 0).all() and brightness[0] > brightness[-1] + 300
    assert len(np.unique(bar[:, 0], axis=0)) > 50
    # ticks at round values, with their labels drawn right of the bar
    assert result.samples is not None
    largest = float((result.samples.original - result.samples.stretched).abs().max())
    values = [v for v, _ in diff.ticks]
    assert values[0] == 0.0 and len(values) >= 3
    assert values == sorted(values) and values[-1] <= largest + 1e-6
    rows = [r for _, r in diff.ticks]
    assert rows == sorted(rows, reverse=True)  # larger values higher up
    right_of_bar = (diff.colour_bar[2] + 1, diff.colour_bar[1] - 8, diff.image.width,
                    diff.colour_bar[3] + 8)  # fmt: skip
    ink = _ink(diff.image, right_of_bar)
    for _, row in diff.ticks:
        near = row - right_of_bar[1]
        assert ink[max(near - 6, 0) : near + 7].any(), f"no tick label at row {row}"


def test_colour_map_is_magma() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    reference = np.rint(matplotlib.colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255)
    assert MAGMA.shape == (256, 3) and MAGMA.dtype == np.uint8
    assert np.abs(MAGMA.astype(int) - reference).max() <= 3
    assert apply_colour_map(np.array([0.0, 0.5, 1.0, np.nan, 9.0]), 0.0, 1.0).tolist() == [
        MAGMA[0].tolist(), MAGMA[128].tolist(), MAGMA[255].tolist(),
        MAGMA[0].tolist(), MAGMA[255].tolist(),
    ]  # fmt: skip


def test_nice_ticks_and_their_labels() -> None:
    assert nice_ticks(0.0, 0.51, 6) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert nice_ticks(0.0, 1.0, 6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.0, 1.0, 3) == [0.0, 0.5, 1.0]
    assert nice_ticks(0.0, 0.9, 4) == [0.0, 0.25, 0.5, 0.75]
    assert nice_ticks(0.0, 37.0, 5) == [0.0, 10.0, 20.0, 30.0]
    for hi in (3e-5, 0.0123, 0.7, 4.2, 1234.0):
        for n in (2, 4, 7):
            ticks = nice_ticks(0.0, hi, n)
            assert 2 <= len(ticks) <= n and ticks[0] == 0.0 and ticks[-1] <= hi
    assert format_ticks([0.0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]
    assert format_ticks([0.0, 0.1, 0.2]) == ["0.0", "0.1", "0.2"]
    assert format_ticks([0.0, 10.0, 20.0]) == ["0", "10", "20"]
    assert format_ticks([0.0, 1e-5, 2e-5]) == ["0", "1e-05", "2e-05"]


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", GRID_SUFFIXES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_grid_suffix_round_trips(tmp_path: Path, suffix: str, channels: int) -> None:
    result = make_result(_blobs(2, channels, 8, 8), layers=1)
    written = write_stretch_grids(result, tmp_path / f"grid{suffix}")
    assert written == (tmp_path / f"grid{suffix}", tmp_path / f"grid_diff{suffix}")
    expected_format = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                       ".tif": "TIFF", ".tiff": "TIFF"}[suffix]  # fmt: skip
    for path, rendered in zip(
        written, (render_stretch_grid(result), render_difference_grid(result)), strict=True
    ):
        with Image.open(path) as im:
            im.load()
            assert im.format == expected_format
            assert im.size == rendered.image.size
            back = np.asarray(im.convert("RGB")).astype(int)
        want = np.asarray(rendered.image.convert("RGB")).astype(int)
        if expected_format == "JPEG":
            assert np.abs(back - want).mean() < 2.0
        else:  # PNG, lossless WebP and TIFF give the pixels back exactly
            assert np.array_equal(back, want)


@pytest.mark.parametrize("name", ["grid.bmp", "grid.PDF", "grid"])
def test_unknown_suffixes_are_refused_before_drawing(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="cannot write"):
        write_stretch_grids(make_result(_blobs(1, 1, 4, 4)), tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_suffix_case_is_ignored_and_kept(tmp_path: Path) -> None:
    written = write_stretch_grids(make_result(_blobs(1, 1, 4, 4)), tmp_path / "g.JPG")
    assert written[1] == tmp_path / "g_diff.JPG" == difference_path(tmp_path / "g.JPG")
    with Image.open(written[1]) as im:
        assert im.format == "JPEG"


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

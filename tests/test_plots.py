"""log10-SDR histograms: the figures' axes, and the PNG / PDF / SVG files written from them."""

from __future__ import annotations

import builtins
import dataclasses
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import matplotlib
from PIL import Image

from genaudit.analysis.compare import Comparison, compare_results
from genaudit.analysis.sdr import SDRResult, run_sdr
from genaudit.errors import UsageError
from genaudit.io import registry as zoo
from genaudit.model.inputs import generated_source, latent_source
from genaudit.model.layers import walk_layers
from genaudit.report.export import PLOT_SUFFIXES
from genaudit.report.plots import (
    BINS,
    comparison_figure,
    plot_comparison,
    plot_sdr,
    require_matplotlib,
    sdr_figure,
    shared_range,
)


@pytest.fixture(scope="module")
def sdr_result() -> SDRResult:
    """A small DCGAN generator: a trace-method projection, then coarse, fine and image."""
    torch.manual_seed(0)
    model = zoo.build("dcgan_generator", {"ngf": 8, "image_size": 32})
    source = latent_source((100, 1, 1), seed=0)
    records = walk_layers(model, next(source.batches(2, 2)))
    return run_sdr(model, records, source, num_samples=8, batch_size=8, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    """A small VAE decoder against its (untrained) encoder, fed the decoder's outputs."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    decoder = zoo.build("vae_decoder", {"image_size": 32, "nc": 1, "nz": 8, "ngf": 8}).eval()
    encoder = zoo.build("vae_encoder", {"image_size": 32, "nc": 1, "nz": 8, "nef": 8}).eval()
    latents = latent_source((8,), seed=0)
    images = generated_source(decoder, latents, cpu)
    results = [
        run_sdr(model, walk_layers(model, next(source.batches(2, 2))), source, num_samples=8,
                batch_size=8, device=cpu)
        for model, source in ((decoder, latents), (encoder, images))
    ]  # fmt: skip
    return compare_results(*results)


def _visible(fig: Any) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_visible()]


def _has_zero_line(ax: Any) -> bool:
    return any(np.allclose(line.get_xdata(), 0.0) for line in ax.get_lines())


def test_sdr_panels_share_one_range_and_are_labelled(sdr_result: SDRResult) -> None:
    fig = sdr_figure(sdr_result, title="toy")
    sdr_layers = [x for x in sdr_result.layers if x.analysis == "sdr"]
    axes = _visible(fig)
    assert len(axes) == len(sdr_layers) == 3  # the trace-method projection has no panel
    limits = {ax.get_xlim() for ax in axes}
    assert len(limits) == 1
    lo, hi = limits.pop()
    for ax, layer in zip(axes, sdr_layers, strict=True):
        v = layer.log10()
        v = v[np.isfinite(v)]
        assert lo < v.min() and v.max() < hi
        assert ax.get_xlabel() == "log10 SDR" and ax.get_ylabel() == "pairs"
        assert layer.record.name in ax.get_title() and layer.record.level in ax.get_title()
        assert _has_zero_line(ax)
    assert fig.get_suptitle() == "toy"


def _area(ax: Any) -> float:
    """Area under the histograms of ``ax`` (the shoelace formula on each filled step outline)."""
    total = 0.0
    for patch in ax.patches:
        x, y = np.asarray(patch.get_xy()).T
        total += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return total


def test_sdr_histograms_count_pairs(sdr_result: SDRResult) -> None:
    fig = sdr_figure(sdr_result)
    layers = [x for x in sdr_result.layers if x.analysis == "sdr"]
    for ax, layer in zip(_visible(fig), layers, strict=True):
        width = (ax.get_xlim()[1] - ax.get_xlim()[0]) / BINS
        pairs = int(np.isfinite(layer.log10()).sum())
        assert _area(ax) == pytest.approx(pairs * width)


def test_one_outlier_widens_every_panel(sdr_result: SDRResult) -> None:
    layers = list(sdr_result.layers)
    k = next(i for i, x in enumerate(layers) if x.analysis == "sdr")
    assert layers[k].values is not None
    values = layers[k].values.copy()
    values.flat[0] = 10.0**-2.7
    layers[k] = dataclasses.replace(layers[k], values=values)
    fig = sdr_figure(dataclasses.replace(sdr_result, layers=tuple(layers)))
    assert all(ax.get_xlim()[0] < -2.7 for ax in _visible(fig))
    assert shared_range([np.array([0.01, 0.02])]) == pytest.approx((-0.53, 0.53))


def test_comparison_overlays_fractions_with_a_legend(comparison: Comparison) -> None:
    fig = comparison_figure(comparison, title="dec vs enc")
    axes = _visible(fig)
    assert len(axes) == len(comparison.levels)
    assert len({ax.get_xlim() for ax in axes}) == 1
    for ax, lv in zip(axes, comparison.levels, strict=True):
        assert ax.get_xlabel() == "log10 SDR" and ax.get_ylabel() == "fraction of pairs"
        title = ax.get_title()
        assert lv.level in title and lv.decoder_layer in title and lv.encoder_layer in title
        assert _has_zero_line(ax)
        assert [p.get_label() for p in ax.patches] == ["decoder", "encoder"]
        # heights are fractions: each histogram's bars sum to 1, so its area is one bin width
        width = (ax.get_xlim()[1] - ax.get_xlim()[0]) / BINS
        assert _area(ax) == pytest.approx(2 * width)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[:2] == ["decoder", "encoder"] and "generic" in texts[2]


@pytest.mark.parametrize("suffix", PLOT_SUFFIXES)
def test_plot_sdr_writes_each_format(tmp_path: Path, sdr_result: SDRResult, suffix: str) -> None:
    path = tmp_path / f"sdr{suffix}"
    plot_sdr(sdr_result, path, title="toy")
    data = path.read_bytes()
    if suffix == ".png":
        with Image.open(path) as im:
            assert im.format == "PNG"
            width, height = sdr_figure(sdr_result).get_size_inches() * 150
            assert im.size == (round(width), round(height))
    elif suffix == ".pdf":
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        assert b"/Type3" not in data  # TrueType fonts, as publishers ask
    else:
        root = ET.fromstring(data)
        assert root.tag.endswith("svg")
    # no dates or random ids: the same figure gives the same bytes
    plot_sdr(sdr_result, tmp_path / f"again{suffix}", title="toy")
    assert (tmp_path / f"again{suffix}").read_bytes() == data
    assert not list(tmp_path.glob(".*tmp"))


def test_plot_comparison_writes_png(tmp_path: Path, comparison: Comparison) -> None:
    plot_comparison(comparison, tmp_path / "cmp.png", title="dec vs enc")
    with Image.open(tmp_path / "cmp.png") as im:
        assert im.format == "PNG" and im.width > im.height


@pytest.mark.parametrize("name", ["sdr.jpg", "sdr"])
def test_unknown_plot_suffix_is_refused(tmp_path: Path, sdr_result: SDRResult, name: str) -> None:
    with pytest.raises(UsageError, match="cannot write"):
        plot_sdr(sdr_result, tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_global_matplotlib_state_is_left_alone(tmp_path: Path, sdr_result: SDRResult) -> None:
    before = dict(matplotlib.rcParams)
    had_pyplot = "matplotlib.pyplot" in sys.modules
    for suffix in PLOT_SUFFIXES:
        plot_sdr(sdr_result, tmp_path / f"s{suffix}")
    assert dict(matplotlib.rcParams) == before
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_without_matplotlib(
    tmp_path: Path, sdr_result: SDRResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(UsageError, match="matplotlib") as info:
        require_matplotlib()
    assert "genaudit[plot]" in (info.value.hint or "")
    with pytest.raises(UsageError):
        plot_sdr(sdr_result, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())

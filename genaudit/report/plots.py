"""log10-SDR histograms as PNG, PDF or SVG. Needs the optional ``plot`` extra (matplotlib).

Figures are built as ``matplotlib.figure.Figure`` objects and saved through the Agg canvas, not
through pyplot: no backend is switched and no global figure registry is touched, so importing
this module and plotting leave the caller's matplotlib state alone. Every panel of a figure
shares one x-range and one set of bin edges, so that layers can be compared by eye; a dashed
line marks log10 SDR = 0 (a generic kernel).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.compare import Comparison
from ..analysis.sdr import LayerSDR, SDRResult
from ..errors import UsageError, option
from ..files import OutputSet, staged_outputs
from .export import PLOT_SUFFIXES, writer_format

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SEPARATOR = " · "
DECODER_COLOUR = "#1f77b4"
ENCODER_COLOUR = "#ff7f0e"
SINGLE_COLOUR = "#1f77b4"
ZERO_COLOUR = "#222222"
BINS = 48
_MIN_HALF_WIDTH = 0.5  # the x-range covers at least [-0.5, 0.5], so narrow spikes are seen as such
_MARGIN = 0.03  # of the range, on each side

_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
_NO_DATES = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
_PNG_DPI = 150


def _figure_class() -> Any:
    """``matplotlib.figure.Figure``, or a UsageError (exit 2) when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            f"{option('plot')} needs matplotlib, which is not installed",
            'install the plotting extra: python3 -m pip install "genaudit[plot]"',
        ) from None
    return Figure


def require_matplotlib() -> None:
    """Fail early (exit 2), before any work, when --plot is asked for without matplotlib."""
    _figure_class()


def plot_format(path: str | Path) -> str:
    """matplotlib's format name for ``path``'s suffix (``.svg`` → ``svg``); UsageError if none."""
    return writer_format(path, "plot", PLOT_SUFFIXES, _FORMATS)


def shared_range(values: Sequence[np.ndarray]) -> tuple[float, float]:
    """One x-range for every panel: all finite values, 0, and at least [-0.5, 0.5], padded.

    Returns (lo, hi) with lo < 0 < hi.
    """
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    lo = min((float(v.min()) for v in finite), default=0.0)
    hi = max((float(v.max()) for v in finite), default=0.0)
    lo, hi = min(lo, -_MIN_HALF_WIDTH), max(hi, _MIN_HALF_WIDTH)
    pad = _MARGIN * (hi - lo)
    return lo - pad, hi + pad


def _finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _grid(figure_class: Any, panels: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes, at most 4 a row; unused cells of the last row are hidden."""
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig = figure_class(figsize=(width * cols, height * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _style(ax: Axes, xlim: tuple[float, float], ylabel: str) -> None:
    ax.set_xlim(*xlim)
    ax.axvline(0.0, color=ZERO_COLOUR, lw=0.9, ls="--", zorder=3)
    ax.set_xlabel("log10 SDR", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)


def sdr_figure(result: SDRResult, title: str = "") -> Figure:
    """One panel per SDR layer: the histogram of its pairs' log10 SDR (counts of pairs).

    Every panel has the same x-range and bin edges; its title names the layer, its level and
    how many pairs have a defined SDR.
    """
    figure_class = _figure_class()
    layers: list[LayerSDR] = [x for x in result.layers if x.analysis == "sdr"]
    if not layers:
        raise UsageError(f"{option('plot')}: no SDR layer to plot")
    values = [_finite(layer.log10()) for layer in layers]
    xlim = shared_range(values)
    edges = np.linspace(*xlim, BINS + 1).tolist()
    fig, axes = _grid(figure_class, len(layers), 3.2, 2.5)
    for ax, layer, v in zip(axes, layers, values, strict=True):
        ax.hist(v, bins=edges, histtype="stepfilled", facecolor=SINGLE_COLOUR, alpha=0.85)
        _style(ax, xlim, "pairs")
        name = layer.record.name or "(model)"
        ax.set_title(f"{name}{SEPARATOR}{layer.record.level}\n{v.size} pairs", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def comparison_figure(comparison: Comparison, title: str = "") -> Figure:
    """Decoder and encoder histograms of log10 SDR overlaid, one panel per mirrored level.

    Heights are fractions of each model's pairs (the two layers have different numbers of
    pairs); every panel has the same x-range and bin edges. One legend serves every panel.
    """
    figure_class = _figure_class()
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    levels = comparison.levels
    if not levels:
        raise UsageError(f"{option('plot')}: no pair of layers to plot")
    values = [v for lv in levels for v in (lv.decoder_values, lv.encoder_values)]
    xlim = shared_range(values)
    edges = np.linspace(*xlim, BINS + 1).tolist()
    fig, axes = _grid(figure_class, len(levels), 3.4, 2.7)
    for ax, lv in zip(axes, levels, strict=True):
        for v, colour, who in (
            (_finite(lv.decoder_values), DECODER_COLOUR, "decoder"),
            (_finite(lv.encoder_values), ENCODER_COLOUR, "encoder"),
        ):
            weights = np.full(v.size, 1.0 / v.size) if v.size else None
            # translucent fill so that overlaps show, opaque outline so that each shape reads
            ax.hist(v, bins=edges, weights=weights, histtype="stepfilled", label=who,
                    facecolor=to_rgba(colour, 0.4), edgecolor=colour, lw=1.0)  # fmt: skip
        _style(ax, xlim, "fraction of pairs")
        ax.set_title(
            f"{lv.level}\ndecoder {lv.decoder_layer}{SEPARATOR}encoder {lv.encoder_layer}",
            fontsize=9,
        )
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color=ZERO_COLOUR, lw=0.9, ls="--"))
    labels.append("log10 SDR = 0 (generic)")
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_figure(fig: Figure, path: str | Path, out: OutputSet | None = None) -> None:
    """Write ``fig`` as PNG, PDF or SVG by ``path``'s suffix, without dates: staged in ``out``
    (a :class:`~genaudit.files.OutputSet`, written when it commits), or now, atomically."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fmt = plot_format(path)
    FigureCanvasAgg(fig)  # attaches itself to the figure; PDF and SVG switch canvas on save
    buf = io.BytesIO()
    # Settings for this save only. PDF: TrueType (Type 42) fonts, which publishers accept and
    # which stay editable, instead of Type 3; SVG: a fixed salt, so equal figures give equal ids.
    with rc_context({"pdf.fonttype": 42, "svg.hashsalt": "genaudit"}):
        fig.savefig(buf, format=fmt, dpi=_PNG_DPI, metadata=_NO_DATES[fmt])
    if out is not None:
        out.add(path, buf.getvalue())
        return
    with staged_outputs() as own:
        own.add(path, buf.getvalue())


def plot_sdr(
    result: SDRResult, path: str | Path, title: str = "", out: OutputSet | None = None
) -> None:
    """Histograms of log10 SDR, one panel per SDR layer, written to ``path`` (PNG/PDF/SVG);
    staged in ``out`` when given (see :func:`save_figure`)."""
    plot_format(path)  # refuse an unknown suffix before drawing
    save_figure(sdr_figure(result, title), path, out)


def plot_comparison(
    comparison: Comparison, path: str | Path, title: str = "", out: OutputSet | None = None
) -> None:
    """Decoder and encoder histograms per mirrored level, written to ``path`` (PNG/PDF/SVG);
    staged in ``out`` when given (see :func:`save_figure`)."""
    plot_format(path)
    save_figure(comparison_figure(comparison, title), path, out)

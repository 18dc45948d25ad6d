"""The SDR tables: one row per layer (:func:`sdr_table`) and one per level (:func:`levels_table`).

Both show the same statistic columns of a layer's or a level's log10 SDR: pairs (undefined in
brackets), median SDR, mean, SD, percentiles, the generic fraction and a text histogram
(:func:`sparkline` of :func:`coarse_histogram`). Narrower than their natural width they leave
out secondary columns, each table in the order its docstring gives
(:mod:`genaudit.report.layout` picks the first layout that fits). Never prints by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.table import Table

from .layout import (
    DEFAULT_WIDTH,
    NAME_MIN,
    Cell,
    Column,
    Flow,
    Layout,
    Name,
    fit_table,
    flow,
    format_number,
    format_shape,
    layer_range,
    words,
)

if TYPE_CHECKING:  # report needs no torch at import time
    from ..analysis.sdr import LayerSDR, LevelSDR, SDRResult, Summary

__all__ = ["coarse_histogram", "levels_table", "sdr_table", "sparkline"]

_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(counts: Sequence[int]) -> str:
    """A one-line text histogram: one character per bin, height relative to the fullest bin."""
    top = max(counts) if counts else 0
    if top == 0:
        return ""
    chars = []
    for c in counts:
        k = 0 if c == 0 else max(1, round(c / top * (len(_BARS) - 1)))
        chars.append(_BARS[k])
    return "".join(chars)


def coarse_histogram(counts: Sequence[int]) -> list[int]:
    """Merge the 20 inner 0.1-wide bins pairwise: 12 bins (< −1, 0.2-wide × 10, > +1)."""
    inner = counts[1:-1]
    return [counts[0], *(inner[k] + inner[k + 1] for k in range(0, len(inner), 2)), counts[-1]]


@dataclass(frozen=True)
class _StatStyle:
    """Which statistic columns a layout shows, and how."""

    hist: bool = True
    quartiles: bool = True  # p25 and p75 besides p5 and p95
    short_headers: bool = False

    def left_out(self) -> list[str]:
        return (["histogram"] if not self.hist else []) + (
            ["p25 p75"] if not self.quartiles else []
        )


_PCT_ALL = ("p5", "p25", "p75", "p95")
_PCT_OUTER = ("p5", "p95")


def _stat_columns(style: _StatStyle) -> list[Column]:
    """pairs, median, mean, SD, percentiles, generic and (optionally) the histogram."""
    pct = _PCT_ALL if style.quartiles else _PCT_OUTER
    cols = [
        Column("pairs", "right"),
        Column("med." if style.short_headers else "median", "right"),
        Column("mean", "right"),
        Column("SD", "right"),
        Column(" ".join(pct), priority=5),
        Column("gen." if style.short_headers else "generic", "right"),
    ]
    if style.hist:
        cols.append(Column("hist −1…+1", priority=5))
    return cols


def _summary_cells(s: Summary, style: _StatStyle) -> list[Cell]:
    """The statistic cells shared by the layer and the level tables."""
    p = s.percentiles_log10
    undefined = f" ({s.undefined})" if s.undefined else ""
    pct = " ".join(
        format_number(p[k], "{:+.2f}") for k in (_PCT_ALL if style.quartiles else _PCT_OUTER)
    )
    cells: list[Cell] = [
        f"{s.pairs}{undefined}", format_number(s.median_sdr, "{:.3f}"), format_number(s.mean_log10),
        format_number(s.sd_log10, "{:.3f}"), flow(pct), format_number(s.generic_fraction, "{:.0%}"),
    ]  # fmt: skip
    if style.hist:
        cells.append(flow(sparkline(coarse_histogram(s.histogram))))
    return cells


def _note_cells(
    pairs: str, median: str, note: str | Sequence[str], style: _StatStyle
) -> list[Cell]:
    """Statistic cells of a row without a distribution: the note (text, or atoms kept whole)
    goes in the last text column (the histogram's, else the percentiles')."""
    note_cell = flow(*(words(note) if isinstance(note, str) else note))
    if style.hist:
        return [pairs, median, "", "", flow(), "", note_cell]
    return [pairs, median, "", "", note_cell, ""]


def _layer_note(layer: LayerSDR, style: _StatStyle) -> str:
    if layer.analysis == "skipped":
        return f"skipped: {layer.reason}"
    if layer.reason is not None:
        return layer.reason
    # "(trace)" in the pairs column says it too: only worth its room next to the histograms
    return "trace method" if style.hist else ""


def sdr_table(result: SDRResult, title: str | None = None, *, width: int = DEFAULT_WIDTH) -> Table:
    """One row per layer: pairs (undefined in brackets), median SDR, then on the log10 SDR
    scale the mean, SD and 5/25/75/95th percentiles, the generic fraction and a histogram.

    Narrower than its natural width it leaves out, in this order, the grid, the histogram,
    the 25th and 75th percentiles and the level, and shortens long layer names from the middle.
    """

    def layout(grid: bool, style: _StatStyle, level: bool) -> Layout:
        head = [Column("#", "right"), Column("layer", priority=0), Column("level")]
        head.append(Column("grid"))
        stats = _stat_columns(style)
        for layer in result.layers:
            r = layer.record
            head[0].cells.append(str(r.index))
            head[1].cells.append(flow(Name(r.name)))
            head[2].cells.append(r.level)
            if layer.analysis == "skipped":
                cells = _note_cells("-", "-", _layer_note(layer, style), style)
                head[3].cells.append(format_shape(r.grid))
            elif layer.analysis == "trace":
                ratio = format_number(layer.ratio, "{:.3f}")
                cells = _note_cells("1 (trace)", ratio, _layer_note(layer, style), style)
                head[3].cells.append(format_shape(r.grid) if r.grid else "vector")
            else:
                assert layer.summary is not None
                cells = _summary_cells(layer.summary, style)
                head[3].cells.append(format_shape(r.grid))
            for column, cell in zip(stats, cells, strict=True):
                column.cells.append(cell)
        left_out = ([] if grid else ["grid"]) + style.left_out() + ([] if level else ["level"])
        shown = [c for c in head if (c.header != "grid" or grid) and (c.header != "level" or level)]
        return Layout(shown + stats, left_out)

    full, no_hist = _StatStyle(), _StatStyle(hist=False)
    outer = _StatStyle(hist=False, quartiles=False)
    short = _StatStyle(hist=False, quartiles=False, short_headers=True)
    return fit_table(
        [
            lambda: layout(True, full, True),
            lambda: layout(False, full, True),
            lambda: layout(False, no_hist, True),
            lambda: layout(False, outer, True),
            lambda: layout(False, short, True),
            lambda: layout(False, short, False),
        ],
        width,
        title,
    )


def _trace_level_cells(lv: LevelSDR, style: _StatStyle) -> list[Cell]:
    """A level of trace-method layers: one ratio each (all of them when few, else the range)."""
    ratios = lv.trace_ratios
    pairs = f"{len(ratios)} (trace)"
    if not ratios:
        return _note_cells("-", "-", (), style)
    if len(ratios) == 1:
        return _note_cells(pairs, format_number(ratios[0], "{:.3f}"), (), style)
    if len(ratios) <= 4:
        texts = [format_number(x, "{:.3f}") for x in ratios]
        note = ("ratios", *(f"{t}," for t in texts[:-1]), texts[-1])
    else:
        finite = [x for x in ratios if x == x]
        low = format_number(min(finite), "{:.3f}") if finite else "-"
        high = format_number(max(finite), "{:.3f}") if finite else "-"
        note = ("ratios", f"from {low}", f"to {high}")
    return _note_cells(pairs, "", note, style)


def levels_table(
    result: SDRResult, title: str | None = None, *, width: int = DEFAULT_WIDTH
) -> Table:
    """One row per level: all pairs of the level's SDR layers pooled; a level of trace-method
    layers gives its ratio (a few: all of them; more: their range).

    The level's layers are named as a count and a range (``26 layers: a … b``). Narrower than
    its natural width the table leaves out the histogram, then shows the layers under the level
    name, then leaves out the 25th and 75th percentiles.
    """

    def layout(stacked: bool, style: _StatStyle) -> Layout:
        first = Column("level / layers" if stacked else "level", priority=0)
        layers = Column("layers", priority=1)
        stats = _stat_columns(style)
        for lv in result.levels:
            atoms = layer_range(lv.layers)
            if stacked:
                first.cells.append(Flow(atoms, head=lv.level, indent=2, wrap_below=NAME_MIN))
            else:
                first.cells.append(lv.level)
                layers.cells.append(Flow(atoms, wrap_below=NAME_MIN))
            if lv.summary is not None:
                cells = _summary_cells(lv.summary, style)
            else:
                cells = _trace_level_cells(lv, style)
            for column, cell in zip(stats, cells, strict=True):
                column.cells.append(cell)
        return Layout([first, *stats] if stacked else [first, layers, *stats], style.left_out())

    full, no_hist = _StatStyle(), _StatStyle(hist=False)
    outer = _StatStyle(hist=False, quartiles=False)
    short = _StatStyle(hist=False, quartiles=False, short_headers=True)
    return fit_table(
        [
            lambda: layout(False, full),
            lambda: layout(False, no_hist),
            lambda: layout(True, no_hist),
            lambda: layout(True, outer),
            lambda: layout(True, short),
        ],
        width,
        title,
    )

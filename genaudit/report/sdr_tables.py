"""The SDR tables: one row per layer (:func:`sdr_table`) and one per level (:func:`levels_table`).

Both show the same statistic columns of a layer's or a level's log10 SDR: pairs (undefined in
brackets), median SDR, mean, SD, percentiles, the generic fraction and a text histogram
(:func:`sparkline` of :func:`coarse_histogram`). Narrower than their natural width they leave
out secondary columns, each table in the order its docstring gives
(:mod:`genaudit.report.layout` picks the first layout that fits). Never prints by itself.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.table import Table

from .grouping import (
    ROW_LIMIT,
    Grouped,
    Row,
    RowMode,
    group_rows,
    row_index,
    row_label,
    summary_note,
    without_lines,
)
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


def _layer_cells(layer: LayerSDR, style: _StatStyle) -> list[Cell]:
    """The statistic cells of one layer's row."""
    if layer.analysis == "skipped":
        return _note_cells("-", "-", _layer_note(layer, style), style)
    if layer.analysis == "trace":
        ratio = format_number(layer.ratio, "{:.3f}")
        return _note_cells("1 (trace)", ratio, _layer_note(layer, style), style)
    assert layer.summary is not None
    return _summary_cells(layer.summary, style)


def _grid_text(grids: Sequence[tuple[int, ...]], trace: bool) -> str:
    """The input grid of a row's layers: one, or the smallest and the largest."""
    if not any(grids):
        return "vector" if trace else "-"
    ordered = sorted(set(grids), key=lambda g: (math.prod(g), g))
    if len(ordered) == 1:
        return format_shape(ordered[0])
    return f"{format_shape(ordered[0])}–{format_shape(ordered[-1])}"


def sdr_table(
    result: SDRResult,
    title: str | None = None,
    *,
    width: int = DEFAULT_WIDTH,
    rows: RowMode = "auto",
    hint: str = "",
) -> Table:
    """One row per layer: pairs (undefined in brackets), median SDR, then on the log10 SDR
    scale the mean, SD and 5/25/75/95th percentiles, the generic fraction and a histogram.

    With more than :data:`~genaudit.report.grouping.ROW_LIMIT` layers and ``rows="auto"``, one
    row per role and level instead (pairs pooled; trace-method layers: the median ratio and the
    range), and the layers without a value counted by reason in the caption, followed by
    ``hint`` (the caller's: how to list every layer). Narrower than its natural width it leaves
    out, in this order, the grid, the histogram, the 25th and 75th percentiles and the level,
    and shortens long layer names from the middle.
    """
    grouped = _sdr_groups(result) if rows == "auto" and len(result.layers) > ROW_LIMIT else None
    if grouped is not None:
        return _grouped_sdr_table(result, grouped, title, width, hint)

    def layout(grid: bool, style: _StatStyle, level: bool) -> Layout:
        head = [Column("#", "right"), Column("layer", priority=0), Column("level")]
        head.append(Column("grid"))
        stats = _stat_columns(style)
        for layer in result.layers:
            r = layer.record
            head[0].cells.append(str(r.index))
            head[1].cells.append(flow(Name(r.name)))
            head[2].cells.append(r.level)
            head[3].cells.append(_grid_text([r.grid], layer.analysis == "trace"))
            for column, cell in zip(stats, _layer_cells(layer, style), strict=True):
                column.cells.append(cell)
        left_out = ([] if grid else ["grid"]) + style.left_out() + ([] if level else ["level"])
        shown = [c for c in head if (c.header != "grid" or grid) and (c.header != "level" or level)]
        return Layout(shown + stats, left_out)

    return fit_table(_layer_layouts(layout), width, title)


_FULL, _NO_HIST = _StatStyle(), _StatStyle(hist=False)
_OUTER = _StatStyle(hist=False, quartiles=False)
_SHORT = _StatStyle(hist=False, quartiles=False, short_headers=True)


def _layer_layouts(
    layout: Callable[[bool, _StatStyle, bool], Layout],
) -> list[Callable[[], Layout]]:
    """The per-layer table's layouts, most complete first (see :func:`sdr_table`)."""
    return [
        lambda: layout(True, _FULL, True),
        lambda: layout(False, _FULL, True),
        lambda: layout(False, _NO_HIST, True),
        lambda: layout(False, _OUTER, True),
        lambda: layout(False, _SHORT, True),
        lambda: layout(False, _SHORT, False),
    ]


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
        median = format_number(statistics.median(finite), "{:.3f}") if finite else "-"
        return _note_cells(pairs, median, ("ratios", f"from {low}", f"to {high}"), style)
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


# --------------------------------------------------------------------------- summarised


def _without_reason(layer: LayerSDR) -> str | None:
    """Why a layer has no value (its row's note), or None when it has one."""
    if layer.analysis == "skipped":
        return f"skipped: {layer.reason}"
    if layer.analysis == "trace":
        if layer.ratio is None or not math.isfinite(layer.ratio):
            return layer.reason or "undefined"
        return None
    if layer.summary is None or layer.summary.defined == 0:
        return "undefined: no pair has a value (dead filters or channels)"
    return None


def _sdr_groups(result: SDRResult) -> Grouped[LayerSDR]:
    return group_rows(
        result.layers, name=lambda x: x.record.name, level=lambda x: x.record.level,
        kind=lambda x: x.analysis, reason=_without_reason,
    )  # fmt: skip


def _pooled(members: Sequence[LayerSDR], tolerance: float) -> Summary:
    """The pairs of a row's SDR layers pooled, as the per-level table pools a level's."""
    import numpy as np

    from ..analysis.sdr import Summary

    logs = np.concatenate([x.log10().ravel() for x in members])
    return Summary.of(logs, sum(x.summary.pairs for x in members if x.summary), tolerance)


def _group_cells(row: Row[LayerSDR], tolerance: float, style: _StatStyle) -> list[Cell]:
    """The statistic cells of a row of several layers."""
    if row.members[0].analysis == "trace":
        ratios = [float(x.ratio) for x in row.members if x.ratio is not None]
        low, high = (format_number(x, "{:.3f}") for x in (min(ratios), max(ratios)))
        pairs, med = f"{len(ratios)} (trace)", format_number(statistics.median(ratios), "{:.3f}")
        return _note_cells(pairs, med, ("min–max", f"{low}–{high}"), style)
    return _summary_cells(_pooled(row.members, tolerance), style)


def _grouped_sdr_table(
    result: SDRResult, grouped: Grouped[LayerSDR], title: str | None, width: int, hint: str
) -> Table:
    """:func:`sdr_table` of a large model: one row per role and level (or per level)."""

    def layout(grid: bool, style: _StatStyle, level: bool) -> Layout:
        head = [Column("#", "right"), Column("layer", priority=0), Column("level")]
        head.append(Column("grid"))
        stats = _stat_columns(style)
        for row in grouped.rows:
            first = row.members[0]
            head[0].cells.append(row_index([x.record.index for x in row.members]))
            head[1].cells.append(row_label(row, [x.record.name for x in row.members]))
            head[2].cells.append(first.record.level)
            grids = [x.record.grid for x in row.members]
            head[3].cells.append(_grid_text(grids, first.analysis == "trace"))
            if len(row.members) == 1:
                cells = _layer_cells(first, style)
            else:
                cells = _group_cells(row, result.tolerance, style)
            for column, cell in zip(stats, cells, strict=True):
                column.cells.append(cell)
        left_out = ([] if grid else ["grid"]) + style.left_out() + ([] if level else ["level"])
        shown = [c for c in head if (c.header != "grid" or grid) and (c.header != "level" or level)]
        notes = [summary_note(grouped, hint)]
        notes += without_lines(grouped, lambda x: x.record.name, "without a value")
        return Layout(shown + stats, left_out, notes)

    return fit_table(_layer_layouts(layout), width, title)

"""Trends over training: one table per level, and curves of each metric over the steps.

The tables (:func:`trend_tables`) have one row per snapshot, in step order, with the level's
median SDR, SD of log10 SDR, generic fraction and the rel_mse of its stretch layer; narrower than
their natural width they leave out the snapshot's name. The figure (:func:`trend_figure`) has one
panel per metric and one line per level over the training steps, as the paper's Fig. 4g.
Nothing here prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from ..analysis.tracking import LEVEL_METRICS, TrackPoint
from ..errors import UsageError, option
from ..files import OutputSet
from .layout import (
    DEFAULT_WIDTH,
    Cell,
    Column,
    Layout,
    Name,
    fit_table,
    flow,
    format_number,
    layer_range_text,
)
from .plots import plot_format, require_matplotlib, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["levels_in", "plot_trends", "trend_figure", "trend_table", "trend_tables"]

#: Axis labels of the metrics, in :data:`~genaudit.analysis.tracking.LEVEL_METRICS` order.
LABELS = {
    "median_sdr": "median SDR",
    "sd_log10_sdr": "SD of log10 SDR",
    "generic_fraction": "generic fraction",
    "stretch_rel_mse": "stretch rel_mse",
}
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def levels_in(points: Sequence[TrackPoint]) -> list[str]:
    """Every level of the points, in the order they first appear (execution order)."""
    return list(dict.fromkeys(level for p in points for level in p.levels))


def _title(level: str, points: Sequence[TrackPoint]) -> str:
    first = next((p.levels[level] for p in points if level in p.levels), {})
    layers = first.get("layers") or []
    parts = [f"{level}: " + (layer_range_text(layers, 40) if layers else "no SDR layer")]
    if first.get("stretch_layer"):
        parts.append(f"stretch at {first['stretch_layer']}")
    return "; ".join(parts)


def trend_table(
    level: str, points: Sequence[TrackPoint], *, width: int = DEFAULT_WIDTH, stretch: bool = True
) -> Table:
    """One row per point (snapshot) of ``level``: step, snapshot, median SDR, SD of log10 SDR,
    generic fraction and (with ``stretch``) the stretch rel_mse."""

    def layout(name: bool) -> Layout:
        cols = [Column("step", "right")]
        cols += [Column("snapshot", priority=0)] if name else []
        cols += [Column("median", "right"), Column("SD", "right"), Column("generic", "right")]
        cols += [Column("rel_mse", "right")] if stretch else []
        for p in points:
            m = p.levels.get(level, {})
            row: list[Cell] = [str(p.step)]
            row += [flow(Name(p.snapshot or "-"))] if name else []
            row += [
                format_number(m.get("median_sdr"), "{:.3f}"),
                format_number(m.get("sd_log10_sdr"), "{:.3f}"),
                format_number(m.get("generic_fraction"), "{:.0%}"),
            ]
            row += [format_number(m.get("stretch_rel_mse"), "{:.3f}")] if stretch else []
            for column, cell in zip(cols, row, strict=True):
                column.cells.append(cell)
        return Layout(cols, [] if name else ["snapshot"])

    return fit_table([lambda: layout(True), lambda: layout(False)], width, _title(level, points))


def trend_tables(
    points: Sequence[TrackPoint], *, width: int = DEFAULT_WIDTH, stretch: bool = True
) -> list[Table]:
    """:func:`trend_table` of every level, in execution order."""
    return [trend_table(lv, points, width=width, stretch=stretch) for lv in levels_in(points)]


def trend_figure(points: Sequence[TrackPoint], title: str = "", stretch: bool = True) -> Figure:
    """One panel per metric (median SDR, SD of log10 SDR, generic fraction, stretch rel_mse),
    one line per level, over the training steps; a dashed line marks SDR = 1 (generic)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    metrics = [m for m in LEVEL_METRICS if stretch or m != "stretch_rel_mse"]
    levels = levels_in(points)
    if not points or not levels:
        raise UsageError(f"{option('plot')}: nothing to plot")
    fig = Figure(figsize=(3.3 * len(metrics), 3.0), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel().tolist()
    steps = [p.step for p in points]
    for ax, metric in zip(axes, metrics, strict=True):
        for k, level in enumerate(levels):
            ys = [p.levels.get(level, {}).get(metric, math.nan) for p in points]
            if all(y is None or not math.isfinite(y) for y in ys):
                continue
            ys = [math.nan if y is None else y for y in ys]
            ax.plot(steps, ys, marker="o", ms=3.5, lw=1.4, label=level,
                    color=_COLOURS[k % len(_COLOURS)])  # fmt: skip
        if metric == "median_sdr":
            ax.axhline(1.0, color="#222222", lw=0.9, ls="--", zorder=1)
        if metric == "generic_fraction":
            ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("training step", fontsize=9)
        ax.set_title(LABELS[metric], fontsize=9)
        ax.tick_params(labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = [], []
    for ax in axes:  # every level that has a line somewhere, once
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6),
               fontsize=9, frameon=False)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_trends(
    points: Sequence[TrackPoint],
    path: str | Path,
    title: str = "",
    out: OutputSet | None = None,
    stretch: bool = True,
) -> None:
    """:func:`trend_figure` written to ``path`` (PNG/PDF/SVG); staged in ``out`` when given."""
    plot_format(path)
    save_figure(trend_figure(points, title, stretch), path, out)

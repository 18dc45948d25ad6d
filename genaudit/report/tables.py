"""Results → rich renderables: the tables of layers, architectures, stretch, compare and gate.

Every table builder takes ``width``, the console width the caller prints at, and decides from it
what to show: at narrow widths it leaves out secondary columns (saying so in a caption),
shortens headers and wraps text columns, and long layer names are shortened from the middle
(``encoder.blocks.11…attn.proj``), so that rich never has to crush a column. Numbers are
never shortened or wrapped: a column of numbers is always as wide as its widest number.
Never prints by itself.

The fitting machinery is :mod:`genaudit.report.layout`; the SDR tables per layer and per level
are :mod:`genaudit.report.sdr_tables`. Imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from rich.table import Table

from ..gate.metrics import fmt_value
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
    Atom,
    Cell,
    Column,
    Flow,
    Layout,
    Name,
    fit_table,
    flow,
    format_number,
    format_shape,
    words,
)

if TYPE_CHECKING:  # report needs no torch at import time
    from ..analysis.compare import Comparison
    from ..analysis.stretch import StretchResult
    from ..gate.verdict import Evaluation, GateResult
    from ..io.registry import ArchEntry
    from ..model.layers import LayerRecord

__all__ = [
    "archs_table",
    "comparison_table",
    "drift_table",
    "layers_table",
    "stretch_table",
    "verdict_table",
]

# --------------------------------------------------------------------------- layers


def _conv_params(r: LayerRecord) -> str:
    if not r.is_conv:
        return "-"
    parts = [f"k={format_shape(r.kernel_size)}"]
    if any(s != 1 for s in r.stride):
        parts.append(f"s={format_shape(r.stride)}")
    if any(d != 1 for d in r.dilation):
        parts.append(f"d={format_shape(r.dilation)}")
    if r.groups != 1:
        parts.append(f"g={r.groups}")
    return " ".join(parts)


_TYPE_SHORT = (("ConvTranspose", "ConvT"),)


def _short_type(name: str) -> str:
    for long, short in _TYPE_SHORT:
        name = name.replace(long, short)
    return name


def _uniform(texts: Sequence[str]) -> str:
    """The text every layer of a row shares, else ``various``."""
    return texts[0] if len(set(texts)) == 1 else "various"


def _layer_groups(records: Sequence[LayerRecord]) -> Grouped[LayerRecord]:
    return group_rows(
        records, name=lambda r: r.name, level=lambda r: r.level,
        kind=lambda r: f"{r.type} {r.analysis}",
        reason=lambda r: f"skipped: {r.reason}" if r.analysis == "skipped" else None,
    )  # fmt: skip


def layers_table(
    records: Sequence[LayerRecord],
    title: str | None = None,
    *,
    width: int = DEFAULT_WIDTH,
    rows: RowMode = "auto",
    hint: str = "",
) -> Table:
    """The inventory of ``genaudit layers``: one row per layer in execution order.

    With more than :data:`~genaudit.report.grouping.ROW_LIMIT` layers and ``rows="auto"``, one
    row per role and level instead (shapes and kernels when they share them, pairs summed),
    and the skipped layers counted by reason in the caption, followed by ``hint`` (the
    caller's: how to list every layer). Narrower than its natural width it abbreviates types
    (``ConvT2d``), wraps shapes and kernel parameters, then leaves out the kernel and the level
    columns.
    """
    grouped = _layer_groups(records) if rows == "auto" and len(records) > ROW_LIMIT else None
    listed = grouped.rows if grouped is not None else tuple(Row((r,), r.name) for r in records)

    def layout(short_type: bool, wrap_shapes: bool, kernel: bool, level: bool) -> Layout:
        cols = {
            "#": Column("#", "right"),
            "layer": Column("layer", priority=0),
            "type": Column("type"),
            "io": Column("input → output", priority=1),
            "kernel": Column("kernel", priority=2),
            "level": Column("level"),
            "pairs": Column("pairs", "right"),
            "analysis": Column("analysis", priority=2),
        }
        for row in listed:
            r, members = row.members[0], row.members
            analysis = r.analysis if r.analysis != "skipped" else f"skipped: {r.reason}"
            analysis_atoms = words(analysis)
            if r.analysis == "trace":
                analysis_atoms = ("trace",) if wrap_shapes else ("trace method",)
            io_in = _uniform([format_shape(m.input_shape) for m in members])
            io_out = _uniform([format_shape(m.output_shape) for m in members])
            cols["#"].cells.append(row_index([m.index for m in members]))
            if len(members) == 1 and not row.by_level:
                calls = (f"(×{r.calls})",) if r.calls > 1 else ()
                cols["layer"].cells.append(flow(Name(r.name), *calls))
            else:
                cols["layer"].cells.append(row_label(row, [m.name for m in members]))
            cols["type"].cells.append(_short_type(r.type) if short_type else r.type)
            cols["io"].cells.append(
                flow(f"{io_in} →", io_out) if wrap_shapes else f"{io_in} → {io_out}"
            )
            params = _uniform([_conv_params(m) for m in members])
            cols["kernel"].cells.append(flow(*params.split()) if wrap_shapes else params)
            cols["level"].cells.append(r.level)
            cols["pairs"].cells.append(str(sum(m.pairs for m in members)))
            cols["analysis"].cells.append(flow(*analysis_atoms))
        left_out = [name for name, shown in (("kernel", kernel), ("level", level)) if not shown]
        keep = [k for k in cols if k not in left_out]
        notes = []
        if grouped is not None:
            notes = [summary_note(grouped, hint)]
            notes += without_lines(grouped, lambda m: m.name, "not analysed")
        return Layout([cols[k] for k in keep], left_out, notes)

    return fit_table(
        [
            lambda: layout(False, False, True, True),
            lambda: layout(True, False, True, True),
            lambda: layout(True, True, True, True),
            lambda: layout(True, True, False, True),
            lambda: layout(True, True, False, False),
        ],
        width,
        title,
    )


# --------------------------------------------------------------------------- stretch


def stretch_table(
    result: StretchResult, title: str | None = None, *, width: int = DEFAULT_WIDTH
) -> Table:
    """One row per intervened layer: mse, the do-nothing baseline and rel_mse.

    Narrower than its natural width the baseline (the same for every layer) moves to the
    caption, then the level column is left out.
    """
    baselines = {format_number(r.baseline, "{:.4g}") for r in result.layers}
    shared = baselines.pop() if len(baselines) == 1 else None

    def layout(baseline: bool, level: bool) -> Layout:
        cols = [Column("#", "right"), Column("layer", priority=0)]
        cols += [Column("level")] if level else []
        cols += [Column("mse", "right")]
        cols += [Column("baseline", "right")] if baseline else []
        cols += [Column("rel_mse", "right")]
        for r in result.layers:
            row: list[Cell] = [str(r.index), flow(Name(r.name))]
            row += [r.level] if level else []
            row += [format_number(r.mse, "{:.4g}")]
            row += [format_number(r.baseline, "{:.4g}")] if baseline else []
            row += [format_number(r.rel_mse, "{:.3f}")]
            for column, cell in zip(cols, row, strict=True):
                column.cells.append(cell)
        notes = [] if baseline else [f"baseline (every layer): {shared}"]
        return Layout(cols, [] if level else ["level"], notes)

    layouts = [lambda: layout(True, True)]
    if shared is not None:
        layouts += [lambda: layout(False, True), lambda: layout(False, False)]
    else:
        layouts += [lambda: layout(True, False)]
    return fit_table(layouts, width, title)


# --------------------------------------------------------------------------- compare


def comparison_table(
    comparison: Comparison, title: str | None = None, *, width: int = DEFAULT_WIDTH
) -> Table:
    """Decoder and encoder log10-SDR distributions per mirrored layer pair, with tests.

    Narrower than its natural width the headers go on two lines, then the pair counts, the
    generic fractions and the "more generic" column are left out (SD ratio > 1 says the
    decoder is more generic).
    """

    def layout(two_line: bool, pairs: bool, generic: bool, more: bool) -> Layout:
        def header(one: str, two: str) -> str:
            return two if two_line else one

        spec = [
            ("level", "left", "level", True),
            ("layers", "left", header("decoder / encoder layer", "decoder /\nencoder layer"), True),
            ("pairs", "right", "pairs", pairs),
            ("sd_dec", "right", header("SD dec.", "SD\ndec."), True),
            ("sd_enc", "right", header("SD enc.", "SD\nenc."), True),
            ("ratio", "right", header("SD ratio", "SD\nratio"), True),
            ("gen_dec", "right", header("generic dec.", "generic\ndec."), generic),
            ("gen_enc", "right", header("generic enc.", "generic\nenc."), generic),
            ("ks", "right", "KS p", True),
            ("levene", "right", header("Levene p", "Levene\np"), True),
            ("more", "left", header("more generic", "more\ngeneric"), more),
        ]  # fmt: skip
        cols = {key: Column(head, justify, priority=0) for key, justify, head, _ in spec}
        for lv in comparison.levels:
            row: dict[str, Cell] = {
                "level": lv.level,
                "layers": flow(Name(lv.decoder_layer, suffix=" /"), Name(lv.encoder_layer)),
                "pairs": f"{lv.decoder.defined} / {lv.encoder.defined}",
                "sd_dec": format_number(lv.decoder.sd_log10, "{:.3f}"),
                "sd_enc": format_number(lv.encoder.sd_log10, "{:.3f}"),
                "ratio": format_number(lv.sd_ratio, "{:.2f}"),
                "gen_dec": format_number(lv.decoder.generic_fraction, "{:.0%}"),
                "gen_enc": format_number(lv.encoder.generic_fraction, "{:.0%}"),
                "ks": format_number(lv.ks_pvalue, "{:.2g}"),
                "levene": format_number(lv.levene_pvalue, "{:.2g}"),
                "more": "decoder" if lv.decoder_more_generic else "encoder",
            }
            for key, cell in row.items():
                cols[key].cells.append(cell)
        shown = [cols[key] for key, _, _, on in spec if on]
        left_out = [name for name, on in (("pairs", pairs), ("generic fractions", generic),
                                          ("more generic", more)) if not on]  # fmt: skip
        notes = [] if more else ["SD ratio > 1: the decoder is more generic"]
        return Layout(shown, left_out, notes)

    return fit_table(
        [
            lambda: layout(False, True, True, True),
            lambda: layout(True, True, True, True),
            lambda: layout(True, False, True, True),
            lambda: layout(True, False, True, False),
            lambda: layout(True, False, False, False),
        ],
        width,
        title,
    )


# --------------------------------------------------------------------------- registry


def archs_table(
    entries: Sequence[ArchEntry], title: str | None = None, *, width: int = DEFAULT_WIDTH
) -> Table:
    """Registered architectures with their keyword arguments and defaults.

    ``title`` is the caller's: it says how the architectures are chosen (a flag, a keyword).
    """

    def layout() -> Layout:
        cols = [
            Column("name"),
            Column("arguments (defaults)"),
            Column("what it is"),
        ]
        for e in entries:
            kwargs = [f"{k}={v}" for k, v in e.defaults().items()]
            args = tuple(f"{kw}," for kw in kwargs[:-1]) + tuple(kwargs[-1:])
            cols[0].cells.append(e.name)
            cols[1].cells.append(Flow(args))
            cols[2].cells.append(flow(*words(e.summary)))
        return Layout(cols)

    return fit_table([layout], width, title)


# --------------------------------------------------------------------------- gate


#: More checks than this, and the passing checks of each rule share one row (``rows="auto"``).
MAX_VERDICT_ROWS = 32


#: With many checks, a rule's checks of one result share a row when there are more than this.
GROUP_FROM = 3


def _verdict_rows(
    result: GateResult, rows: Literal["auto", "all"]
) -> list[Evaluation | list[Evaluation]]:
    """Every check in its own row, or (many checks, ``auto``) the checks of one rule with one
    result together in the place of the first, when there are more than :data:`GROUP_FROM`."""
    if rows == "all" or len(result.evaluations) <= MAX_VERDICT_ROWS:
        return list(result.evaluations)
    groups: dict[tuple[int, str], list[Evaluation]] = {}
    for e in result.evaluations:
        groups.setdefault((e.rule.index, e.status), []).append(e)
    out: list[Evaluation | list[Evaluation]] = []
    for e in result.evaluations:
        group = groups[(e.rule.index, e.status)]
        if len(group) <= GROUP_FROM:
            out.append(e)
        elif group[0] is e:
            out.append(group)
    return out


def _group_value(group: Sequence[Evaluation]) -> str:
    """The values of grouped checks: their range, and how many have none."""
    finite = [x.value for x in group if math.isfinite(x.value)]
    missing = sorted({x.shown_value for x in group if not math.isfinite(x.value)})
    low, high = (fmt_value(min(finite)), fmt_value(max(finite))) if finite else ("", "")
    parts = ([low] if low == high else [f"{low}–{high}"]) if finite else []
    if missing and finite:
        parts.append(f"({len(group) - len(finite)} {'/'.join(missing)})")
    elif missing:
        parts.append("/".join(missing))
    return " ".join(parts)


def verdict_table(
    result: GateResult,
    title: str,
    *,
    width: int = DEFAULT_WIDTH,
    rows: Literal["auto", "all"] = "auto",
    hint: str = "",
) -> Table:
    """One row per rule × layer/level: value, bound, severity and result.

    With more than :data:`MAX_VERDICT_ROWS` checks (a deep model) and ``rows="auto"``, the
    checks of a rule with one result (pass, warn or fail) share one row when there are more
    than :data:`GROUP_FROM` of them: how many, the first and last layer, the range of their
    values. ``hint`` (the caller's: how to list every check) then ends the caption. Narrow
    tables wrap the rule (metric, then bound) and the layer or level; long layer names are
    shortened from the middle.
    """
    entries = _verdict_rows(result, rows)
    grouped = any(isinstance(x, list) for x in entries)

    def layout(short_headers: bool) -> Layout:
        cols = [
            Column("#", "right"),
            Column("rule", priority=1),
            Column("layer / level", priority=0),
            Column("value", "right"),
            Column("sev." if short_headers else "severity"),
            Column("result"),
        ]
        for entry in entries:
            e = entry[0] if isinstance(entry, list) else entry
            if isinstance(entry, list):
                kinds = {x.kind for x in entry}
                noun = f"{next(iter(kinds))}s" if len(kinds) == 1 else "targets"
                where: tuple[Atom, ...] = (f"{len(entry)} {noun}", Name(entry[0].name),
                                           "…", Name(entry[-1].name))  # fmt: skip
                shown = _group_value(entry)
                mark = {"pass": "pass", "warn": "WARN", "fail": "FAIL"}[e.status]
                mark += f" ×{len(entry)}"
            else:
                where = (f"level {e.name}",) if e.kind == "level" else ("layer", Name(e.name))
                if e.layer and e.layer != e.name:
                    where += (Name(e.layer, prefix="(", suffix=")"),)
                shown = e.shown_value
                mark = {"pass": "pass", "warn": "WARN", "fail": "FAIL"}[e.status]
            row: list[Cell] = [
                str(e.rule.index), flow(e.rule.metric, e.rule.bound_text()), Flow(where),
                shown, e.rule.severity, mark,
            ]  # fmt: skip
            for column, cell in zip(cols, row, strict=True):
                column.cells.append(cell)
        notes = []
        if grouped:
            notes.append(
                f"{len(result.evaluations)} checks: those of a rule with one result share a row"
                + (f"; {hint}" if hint else "")
            )
        return Layout(cols, notes=notes)

    return fit_table([lambda: layout(False), lambda: layout(True)], width, title)


def drift_table(result: GateResult, *, width: int = DEFAULT_WIDTH) -> Table:
    """The values that drifted beyond their tolerance from the baseline."""

    def layout() -> Layout:
        cols = [
            Column("metric"),
            Column("layer", priority=0),
            Column("baseline", "right"),
            Column("value", "right"),
            Column("change", "right"),
            Column("allowed", "right"),
        ]
        for d in result.drifted:
            row: list[Cell] = [
                d.metric, flow(Name(d.layer)), fmt_value(d.baseline), fmt_value(d.value),
                fmt_value(d.delta, "{:+.4g}"), f"±{d.tolerance:g}",
            ]  # fmt: skip
            for column, cell in zip(cols, row, strict=True):
                column.cells.append(cell)
        return Layout(cols)

    return fit_table([layout], width, f"beyond the allowed drift from baseline {result.baseline}")

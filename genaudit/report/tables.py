"""Results → rich renderables. Never prints by itself.

Every table builder takes ``width``, the console width the caller prints at, and decides from it
what to show: at narrow widths it leaves out secondary columns (saying so in a caption),
shortens headers and wraps text columns, and long layer names are shortened from the middle
(``encoder.blocks.11…attn.proj``), so that rich never has to crush a column. Numbers are
never shortened or wrapped: a column of numbers is always as wide as its widest number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich import box
from rich.cells import cell_len, get_character_cell_size
from rich.table import Table
from rich.text import Text

from ..gate.core import fmt_value

if TYPE_CHECKING:  # report needs no torch at import time
    from ..analysis.compare import Comparison
    from ..analysis.sdr import LayerSDR, LevelSDR, SDRResult, Summary
    from ..analysis.stretch import StretchResult
    from ..gate.core import GateResult
    from ..io.registry import ArchEntry
    from ..model.layers import LayerRecord

DEFAULT_WIDTH = 120
# A layer name is not shortened below this many cells unless nothing else fits.
NAME_MIN = 20
# ... and never below this one, when even the most compact layout does not fit.
NAME_FLOOR = 8
# Cells between two columns: one for the (blank) rule and one of padding.
GAP = 2


# --------------------------------------------------------------------------- names


def shorten_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, shortened from the middle with ``…``.

    A dotted name loses a run of whole components from its middle, keeping its first
    component and its last word with what follows it (``encoder.blocks.11.layers.3.attn.proj``
    → ``encoder.blocks.11…attn.proj``): of the runs that make it fit, the one that drops the
    fewest indices, then the fewest cells. Failing that, it keeps whole components at the end
    and the first characters (``synth…residual_layers.0``); other text keeps its first and last
    characters.
    """
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[: max(width, 0)]
    parts = text.split(".")
    words = [k for k, part in enumerate(parts) if not part.isdigit()]
    if len(parts) >= 3 and words and words[-1] > 0:
        sizes = [cell_len(part) for part in parts]
        best: tuple[int, int, int] | None = None  # (indices dropped, cells dropped, -first)
        best_run = (0, 0)
        for first in range(1, words[-1] + 1):
            for last in range(first, words[-1]):  # drop parts[first..last]
                dots = len(parts) - 3 - (last - first)  # "…" takes the place of two
                kept = sum(sizes) - sum(sizes[first : last + 1]) + dots
                if kept + 1 > width:
                    continue
                dropped = parts[first : last + 1]
                score = (sum(p.isdigit() for p in dropped), sum(sizes) - kept, -first)
                if best is None or score < best:
                    best, best_run = score, (first, last)
        if best is not None:
            first, last = best_run
            short = ".".join(parts[:first]) + "…" + ".".join(parts[last + 1 :])
            if 2 * cell_len(short) >= width:  # else too little is left of the name
                return short
    room = width - 1
    right = room - room // 2
    # rather whole components at the end, when that leaves a few cells of the beginning:
    # "synth…residual_layers.0", "bl…conv1"
    for k in range(1, len(parts)):
        end = cell_len(".".join(parts[k:]))
        if end <= room - max(2, room // 4):
            right = max(right, end)
            break
    return _take(text, room - right) + "…" + _take(text[::-1], right)[::-1]


def _take(text: str, cells: int) -> str:
    """The longest prefix of ``text`` that fits in ``cells`` cells."""
    out, used = [], 0
    for ch in text:
        size = get_character_cell_size(ch)
        if used + size > cells:
            break
        out.append(ch)
        used += size
    return "".join(out)


# --------------------------------------------------------------------------- cells and layout


@dataclass(frozen=True)
class _Name:
    """A layer name in a cell: shortened from the middle when the column is too narrow."""

    name: str
    prefix: str = ""
    suffix: str = ""
    keep: int = 0  # cells worth leaving out columns for (only the last resort goes below)

    def natural(self) -> int:
        return cell_len(self.prefix + self.name + self.suffix)

    def minimum(self, floor: int) -> int:
        if floor >= NAME_MIN:
            floor = max(floor, self.keep)
        return min(self.natural(), floor + cell_len(self.prefix + self.suffix))

    def fit(self, width: int) -> str:
        room = max(width - cell_len(self.prefix + self.suffix), 1)
        return self.prefix + shorten_middle(self.name, room) + self.suffix


_Atom = str | _Name  # a plain atom (a number, a word) is never broken or shortened


def _atom_text(atom: _Atom, width: int) -> str:
    return atom if isinstance(atom, str) else atom.fit(width)


def _atom_natural(atom: _Atom) -> int:
    return cell_len(atom) if isinstance(atom, str) else atom.natural()


def _atom_minimum(atom: _Atom, floor: int) -> int:
    return cell_len(atom) if isinstance(atom, str) else atom.minimum(floor)


@dataclass(frozen=True)
class _Flow:
    """A text cell: atoms separated by spaces, wrapped onto as many lines as the column needs.

    ``head`` is an optional first line of its own; the atoms' lines are then indented.
    """

    atoms: tuple[_Atom, ...]
    head: str = ""
    indent: int = 0
    wrap_below: int = 0  # rather leave out columns than wrap lines shorter than this

    def _line(self) -> int:
        return sum(_atom_natural(a) for a in self.atoms) + max(len(self.atoms) - 1, 0)

    def natural(self) -> int:
        return max(cell_len(self.head), (self.indent + self._line()) if self.atoms else 0)

    def minimum(self, floor: int) -> int:
        widest = max((_atom_minimum(a, floor) for a in self.atoms), default=0)
        if floor >= NAME_MIN:  # not in the last resort
            widest = max(widest, min(self._line(), self.wrap_below))
        return max(cell_len(self.head), (self.indent + widest) if self.atoms else 0)

    def render(self, width: int) -> str:
        room = width - self.indent
        lines: list[str] = []
        for atom in self.atoms:
            text = _atom_text(atom, room)
            if lines and cell_len(lines[-1]) + 1 + cell_len(text) <= room:
                lines[-1] += " " + text
            else:
                lines.append(text)
        pad = " " * self.indent
        body = [pad + line for line in lines]
        return "\n".join([self.head, *body] if self.head else body)


def _flow(*atoms: _Atom) -> _Flow:
    return _Flow(tuple(atoms))


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_Cell = str | _Flow  # a str is fixed: shown as it is


def _cell_natural(cell: _Cell) -> int:
    if isinstance(cell, str):
        return max((cell_len(line) for line in cell.split("\n")), default=0)
    return cell.natural()


def _cell_minimum(cell: _Cell, floor: int) -> int:
    return _cell_natural(cell) if isinstance(cell, str) else cell.minimum(floor)


@dataclass
class _Column:
    header: str  # may span lines ("SD\ndec.")
    justify: str = "left"
    cells: list[_Cell] = field(default_factory=list)
    priority: int = 0  # spare width goes to flexible columns in increasing priority

    def natural(self) -> int:
        return max([_cell_natural(self.header), *(_cell_natural(c) for c in self.cells)])

    def minimum(self, floor: int) -> int:
        return max([_cell_natural(self.header), *(_cell_minimum(c, floor) for c in self.cells)])


@dataclass
class _Layout:
    """One way to show a table: its columns, and what it leaves out (for the caption)."""

    columns: list[_Column]
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _widths(columns: Sequence[_Column], width: int, floor: int) -> list[int] | None:
    """Column widths within ``width`` (None when the minimum does not fit): every column
    gets its minimum, spare cells go to the flexible ones up to their natural width."""
    widths = [c.minimum(floor) for c in columns]
    spare = width - sum(widths) - GAP * (len(columns) - 1)
    if spare < 0:
        return None
    for priority in sorted({c.priority for c in columns}):
        group = [k for k, c in enumerate(columns) if c.priority == priority]
        wants = {k: columns[k].natural() - widths[k] for k in group}
        total = sum(w for w in wants.values() if w > 0)
        if total <= 0 or spare <= 0:
            continue
        if total <= spare:
            shares = {k: max(w, 0) for k, w in wants.items()}
        else:  # in proportion to what each column wants
            shares = {k: max(w, 0) * spare // total for k, w in wants.items()}
            for k in group:  # the cells rounding left over, first columns first
                if sum(shares.values()) < spare and shares[k] < wants[k]:
                    shares[k] += 1
        for k, add in shares.items():
            widths[k] += add
            spare -= add
    return widths


def _render(
    layouts: Sequence[Callable[[], _Layout]],
    width: int,
    title: str | None,
) -> Table:
    """The first layout (most complete first) whose columns fit ``width``, as a Table.

    When none fits, the last one with layer names shortened down to :data:`NAME_FLOOR`; should
    even that be too wide (a very narrow console), rich folds cells rather than cutting them.
    """
    layout = layouts[-1]()
    widths: list[int] | None = None
    for make in layouts:
        candidate = make()
        widths = _widths(candidate.columns, width, NAME_MIN)
        if widths is not None:
            layout = candidate
            break
    if widths is None:
        widths = _widths(layout.columns, width, NAME_FLOOR)
    if widths is None:
        widths = [c.minimum(NAME_FLOOR) for c in layout.columns]
    notes = []
    if layout.left_out:
        notes.append(f"left out to fit {width} columns: {', '.join(layout.left_out)}")
    notes += layout.notes
    rows = len(layout.columns[0].cells) if layout.columns else 0
    texts = [
        [cell if isinstance(cell, str) else cell.render(w) for cell in column.cells]
        for column, w in zip(layout.columns, widths, strict=True)
    ]
    shown = [
        max(_cell_natural(s) for s in [column.header, *cells])
        for column, cells in zip(layout.columns, texts, strict=True)
    ]
    # a title or caption word wider than the table would be folded: widen the table instead,
    # by widening its first text column (the layer names, mostly)
    longest = max((cell_len(w) for w in _words(f"{title or ''} {' '.join(notes)}")), default=0)
    slack = min(longest, width) - (sum(shown) + GAP * (len(shown) - 1))
    texts_at = [k for k, c in enumerate(layout.columns) if c.justify == "left"]
    wider: dict[int, int] = {}
    if slack > 0 and texts_at:
        k = min(texts_at, key=lambda k: layout.columns[k].priority)
        wider[k] = shown[k] + slack
    table = _table(title, "\n".join(notes) or None)
    for k, column in enumerate(layout.columns):
        table.add_column(
            Text(column.header), justify=column.justify, no_wrap=False,  # type: ignore[arg-type]
            overflow="fold", min_width=wider.get(k),
        )  # fmt: skip
    for k in range(rows):
        table.add_row(*(Text(cells[k]) for cells in texts))
    return table


def _table(title: str | None, caption: str | None = None) -> Table:
    return Table(
        title=Text(title) if title is not None else None,
        caption=Text(caption) if caption is not None else None,
        header_style="bold", title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD,
        padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False,
    )  # fmt: skip


# --------------------------------------------------------------------------- formatting


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape) if shape else "-"


def _conv_params(r: LayerRecord) -> str:
    if not r.is_conv:
        return "-"
    parts = [f"k={_shape(r.kernel_size)}"]
    if any(s != 1 for s in r.stride):
        parts.append(f"s={_shape(r.stride)}")
    if any(d != 1 for d in r.dilation):
        parts.append(f"d={_shape(r.dilation)}")
    if r.groups != 1:
        parts.append(f"g={r.groups}")
    return " ".join(parts)


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


def _num(x: float | None, fmt: str = "{:+.3f}") -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    return fmt.format(x)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# Names in the per-level table: few rows, so worth more room than the per-layer tables give.
RANGE_NAME_MIN = 32


def layer_range(names: Sequence[str]) -> tuple[_Atom, ...]:
    """A level's layers as a count and a range: ``26 layers: blocks.0.conv1 … blocks.12.conv2``
    (first and last in execution order), never the whole list."""
    count = f"{_plural(len(names), 'layer')}:"
    keep = RANGE_NAME_MIN
    if not names:
        return (f"{_plural(0, 'layer')}",)
    if len(names) == 1:
        return (count, _Name(names[0], keep=keep))
    if len(names) == 2:
        return (count, _Name(names[0], suffix=",", keep=keep), _Name(names[1], keep=keep))
    return (count, _Name(names[0], suffix=" …", keep=keep), _Name(names[-1], keep=keep))


def layer_range_text(names: Sequence[str], width: int | None = None) -> str:
    """:func:`layer_range` on one line, names shortened from the middle to ``width`` cells."""
    return " ".join(_atom_text(a, width or 10**6) for a in layer_range(names))


# --------------------------------------------------------------------------- layers


_TYPE_SHORT = (("ConvTranspose", "ConvT"),)


def _short_type(name: str) -> str:
    for long, short in _TYPE_SHORT:
        name = name.replace(long, short)
    return name


def layers_table(
    records: Sequence[LayerRecord], title: str | None = None, *, width: int = DEFAULT_WIDTH
) -> Table:
    """The inventory of ``genaudit layers``: one row per layer in execution order.

    Narrower than its natural width it abbreviates types (``ConvT2d``), wraps shapes and kernel
    parameters, then leaves out the kernel and the level columns.
    """

    def layout(short_type: bool, wrap_shapes: bool, kernel: bool, level: bool) -> _Layout:
        cols = {
            "#": _Column("#", "right"),
            "layer": _Column("layer", priority=0),
            "type": _Column("type"),
            "io": _Column("input → output", priority=1),
            "kernel": _Column("kernel", priority=2),
            "level": _Column("level"),
            "pairs": _Column("pairs", "right"),
            "analysis": _Column("analysis", priority=2),
        }
        for r in records:
            analysis = r.analysis if r.analysis != "skipped" else f"skipped: {r.reason}"
            analysis_atoms = _words(analysis)
            if r.analysis == "trace":
                analysis_atoms = ("trace",) if wrap_shapes else ("trace method",)
            calls = (f"(×{r.calls})",) if r.calls > 1 else ()
            io_in, io_out = _shape(r.input_shape), _shape(r.output_shape)
            cols["#"].cells.append(str(r.index))
            cols["layer"].cells.append(_flow(_Name(r.name), *calls))
            cols["type"].cells.append(_short_type(r.type) if short_type else r.type)
            cols["io"].cells.append(
                _flow(f"{io_in} →", io_out) if wrap_shapes else f"{io_in} → {io_out}"
            )
            params = _conv_params(r)
            cols["kernel"].cells.append(_flow(*params.split()) if wrap_shapes else params)
            cols["level"].cells.append(r.level)
            cols["pairs"].cells.append(str(r.pairs))
            cols["analysis"].cells.append(_flow(*analysis_atoms))
        left_out = [name for name, shown in (("kernel", kernel), ("level", level)) if not shown]
        keep = [k for k in cols if k not in left_out]
        return _Layout([cols[k] for k in keep], left_out)

    return _render(
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


# --------------------------------------------------------------------------- SDR


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


def _stat_columns(style: _StatStyle) -> list[_Column]:
    """pairs, median, mean, SD, percentiles, generic and (optionally) the histogram."""
    pct = _PCT_ALL if style.quartiles else _PCT_OUTER
    cols = [
        _Column("pairs", "right"),
        _Column("med." if style.short_headers else "median", "right"),
        _Column("mean", "right"),
        _Column("SD", "right"),
        _Column(" ".join(pct), priority=5),
        _Column("gen." if style.short_headers else "generic", "right"),
    ]
    if style.hist:
        cols.append(_Column("hist −1…+1", priority=5))
    return cols


def _summary_cells(s: Summary, style: _StatStyle) -> list[_Cell]:
    """The statistic cells shared by the layer and the level tables."""
    p = s.percentiles_log10
    undefined = f" ({s.undefined})" if s.undefined else ""
    pct = " ".join(_num(p[k], "{:+.2f}") for k in (_PCT_ALL if style.quartiles else _PCT_OUTER))
    cells: list[_Cell] = [
        f"{s.pairs}{undefined}", _num(s.median_sdr, "{:.3f}"), _num(s.mean_log10),
        _num(s.sd_log10, "{:.3f}"), _flow(pct), _num(s.generic_fraction, "{:.0%}"),
    ]  # fmt: skip
    if style.hist:
        cells.append(_flow(sparkline(coarse_histogram(s.histogram))))
    return cells


def _note_cells(
    pairs: str, median: str, note: str | Sequence[str], style: _StatStyle
) -> list[_Cell]:
    """Statistic cells of a row without a distribution: the note (text, or atoms kept whole)
    goes in the last text column (the histogram's, else the percentiles')."""
    flow = _flow(*(_words(note) if isinstance(note, str) else note))
    if style.hist:
        return [pairs, median, "", "", _flow(), "", flow]
    return [pairs, median, "", "", flow, ""]


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

    def layout(grid: bool, style: _StatStyle, level: bool) -> _Layout:
        head = [_Column("#", "right"), _Column("layer", priority=0), _Column("level")]
        head.append(_Column("grid"))
        stats = _stat_columns(style)
        for layer in result.layers:
            r = layer.record
            head[0].cells.append(str(r.index))
            head[1].cells.append(_flow(_Name(r.name)))
            head[2].cells.append(r.level)
            if layer.analysis == "skipped":
                cells = _note_cells("-", "-", _layer_note(layer, style), style)
                head[3].cells.append(_shape(r.grid))
            elif layer.analysis == "trace":
                ratio = _num(layer.ratio, "{:.3f}")
                cells = _note_cells("1 (trace)", ratio, _layer_note(layer, style), style)
                head[3].cells.append(_shape(r.grid) if r.grid else "vector")
            else:
                assert layer.summary is not None
                cells = _summary_cells(layer.summary, style)
                head[3].cells.append(_shape(r.grid))
            for column, cell in zip(stats, cells, strict=True):
                column.cells.append(cell)
        left_out = ([] if grid else ["grid"]) + style.left_out() + ([] if level else ["level"])
        shown = [c for c in head if (c.header != "grid" or grid) and (c.header != "level" or level)]
        return _Layout(shown + stats, left_out)

    full, no_hist = _StatStyle(), _StatStyle(hist=False)
    outer = _StatStyle(hist=False, quartiles=False)
    short = _StatStyle(hist=False, quartiles=False, short_headers=True)
    return _render(
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


def _trace_level_cells(lv: LevelSDR, style: _StatStyle) -> list[_Cell]:
    """A level of trace-method layers: one ratio each (all of them when few, else the range)."""
    ratios = lv.trace_ratios
    pairs = f"{len(ratios)} (trace)"
    if not ratios:
        return _note_cells("-", "-", (), style)
    if len(ratios) == 1:
        return _note_cells(pairs, _num(ratios[0], "{:.3f}"), (), style)
    if len(ratios) <= 4:
        texts = [_num(x, "{:.3f}") for x in ratios]
        note = ("ratios", *(f"{t}," for t in texts[:-1]), texts[-1])
    else:
        finite = [x for x in ratios if x == x]
        low = _num(min(finite), "{:.3f}") if finite else "-"
        high = _num(max(finite), "{:.3f}") if finite else "-"
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

    def layout(stacked: bool, style: _StatStyle) -> _Layout:
        first = _Column("level / layers" if stacked else "level", priority=0)
        layers = _Column("layers", priority=1)
        stats = _stat_columns(style)
        for lv in result.levels:
            atoms = layer_range(lv.layers)
            if stacked:
                first.cells.append(_Flow(atoms, head=lv.level, indent=2, wrap_below=NAME_MIN))
            else:
                first.cells.append(lv.level)
                layers.cells.append(_Flow(atoms, wrap_below=NAME_MIN))
            if lv.summary is not None:
                cells = _summary_cells(lv.summary, style)
            else:
                cells = _trace_level_cells(lv, style)
            for column, cell in zip(stats, cells, strict=True):
                column.cells.append(cell)
        return _Layout([first, *stats] if stacked else [first, layers, *stats], style.left_out())

    full, no_hist = _StatStyle(), _StatStyle(hist=False)
    outer = _StatStyle(hist=False, quartiles=False)
    short = _StatStyle(hist=False, quartiles=False, short_headers=True)
    return _render(
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


# --------------------------------------------------------------------------- stretch


def stretch_table(
    result: StretchResult, title: str | None = None, *, width: int = DEFAULT_WIDTH
) -> Table:
    """One row per intervened layer: mse, the do-nothing baseline and rel_mse.

    Narrower than its natural width the baseline (the same for every layer) moves to the
    caption, then the level column is left out.
    """
    baselines = {_num(r.baseline, "{:.4g}") for r in result.layers}
    shared = baselines.pop() if len(baselines) == 1 else None

    def layout(baseline: bool, level: bool) -> _Layout:
        cols = [_Column("#", "right"), _Column("layer", priority=0)]
        cols += [_Column("level")] if level else []
        cols += [_Column("mse", "right")]
        cols += [_Column("baseline", "right")] if baseline else []
        cols += [_Column("rel_mse", "right")]
        for r in result.layers:
            row: list[_Cell] = [str(r.index), _flow(_Name(r.name))]
            row += [r.level] if level else []
            row += [_num(r.mse, "{:.4g}")]
            row += [_num(r.baseline, "{:.4g}")] if baseline else []
            row += [_num(r.rel_mse, "{:.3f}")]
            for column, cell in zip(cols, row, strict=True):
                column.cells.append(cell)
        notes = [] if baseline else [f"baseline (every layer): {shared}"]
        return _Layout(cols, [] if level else ["level"], notes)

    layouts = [lambda: layout(True, True)]
    if shared is not None:
        layouts += [lambda: layout(False, True), lambda: layout(False, False)]
    else:
        layouts += [lambda: layout(True, False)]
    return _render(layouts, width, title)


# --------------------------------------------------------------------------- compare


def comparison_table(
    comparison: Comparison, title: str | None = None, *, width: int = DEFAULT_WIDTH
) -> Table:
    """Decoder and encoder log10-SDR distributions per mirrored layer pair, with tests.

    Narrower than its natural width the headers go on two lines, then the pair counts, the
    generic fractions and the "more generic" column are left out (SD ratio > 1 says the
    decoder is more generic).
    """

    def layout(two_line: bool, pairs: bool, generic: bool, more: bool) -> _Layout:
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
        cols = {key: _Column(head, justify, priority=0) for key, justify, head, _ in spec}
        for lv in comparison.levels:
            row: dict[str, _Cell] = {
                "level": lv.level,
                "layers": _flow(_Name(lv.decoder_layer, suffix=" /"), _Name(lv.encoder_layer)),
                "pairs": f"{lv.decoder.defined} / {lv.encoder.defined}",
                "sd_dec": _num(lv.decoder.sd_log10, "{:.3f}"),
                "sd_enc": _num(lv.encoder.sd_log10, "{:.3f}"),
                "ratio": _num(lv.sd_ratio, "{:.2f}"),
                "gen_dec": _num(lv.decoder.generic_fraction, "{:.0%}"),
                "gen_enc": _num(lv.encoder.generic_fraction, "{:.0%}"),
                "ks": _num(lv.ks_pvalue, "{:.2g}"),
                "levene": _num(lv.levene_pvalue, "{:.2g}"),
                "more": "decoder" if lv.decoder_more_generic else "encoder",
            }
            for key, cell in row.items():
                cols[key].cells.append(cell)
        shown = [cols[key] for key, _, _, on in spec if on]
        left_out = [name for name, on in (("pairs", pairs), ("generic fractions", generic),
                                          ("more generic", more)) if not on]  # fmt: skip
        notes = [] if more else ["SD ratio > 1: the decoder is more generic"]
        return _Layout(shown, left_out, notes)

    return _render(
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


def archs_table(entries: Sequence[ArchEntry], *, width: int = DEFAULT_WIDTH) -> Table:
    """Registered architectures with their keyword arguments and defaults."""

    def layout() -> _Layout:
        cols = [
            _Column("name"),
            _Column("arguments (defaults)"),
            _Column("what it is"),
        ]
        for e in entries:
            kwargs = [f"{k}={v}" for k, v in e.defaults().items()]
            args = tuple(f"{kw}," for kw in kwargs[:-1]) + tuple(kwargs[-1:])
            cols[0].cells.append(e.name)
            cols[1].cells.append(_Flow(args))
            cols[2].cells.append(_flow(*_words(e.summary)))
        return _Layout(cols)

    title = "architectures for --arch NAME (keyword arguments via --arch-kwargs JSON)"
    return _render([layout], width, title)


# --------------------------------------------------------------------------- gate


def verdict_table(result: GateResult, title: str, *, width: int = DEFAULT_WIDTH) -> Table:
    """One row per rule × layer/level: value, bound, severity and result.

    Narrow tables wrap the rule (metric, then bound) and the layer or level; long layer names
    are shortened from the middle.
    """

    def layout(short_headers: bool) -> _Layout:
        cols = [
            _Column("#", "right"),
            _Column("rule", priority=1),
            _Column("layer / level", priority=0),
            _Column("value", "right"),
            _Column("sev." if short_headers else "severity"),
            _Column("result"),
        ]
        for e in result.evaluations:
            where: tuple[_Atom, ...] = (
                (f"level {e.name}",) if e.kind == "level" else ("layer", _Name(e.name))
            )
            if e.layer and e.layer != e.name:
                where += (_Name(e.layer, prefix="(", suffix=")"),)
            mark = {"pass": "pass", "warn": "WARN", "fail": "FAIL"}[e.status]
            row: list[_Cell] = [
                str(e.rule.index), _flow(e.rule.metric, e.rule.bound_text()), _Flow(where),
                fmt_value(e.value), e.rule.severity, mark,
            ]  # fmt: skip
            for column, cell in zip(cols, row, strict=True):
                column.cells.append(cell)
        return _Layout(cols)

    return _render([lambda: layout(False), lambda: layout(True)], width, title)


def drift_table(result: GateResult, *, width: int = DEFAULT_WIDTH) -> Table:
    """The values that drifted beyond their tolerance from the baseline."""

    def layout() -> _Layout:
        cols = [
            _Column("metric"),
            _Column("layer", priority=0),
            _Column("baseline", "right"),
            _Column("value", "right"),
            _Column("change", "right"),
            _Column("allowed", "right"),
        ]
        for d in result.drifted:
            row: list[_Cell] = [
                d.metric, _flow(_Name(d.layer)), fmt_value(d.baseline), fmt_value(d.value),
                fmt_value(d.delta, "{:+.4g}"), f"±{d.tolerance:g}",
            ]  # fmt: skip
            for column, cell in zip(cols, row, strict=True):
                column.cells.append(cell)
        return _Layout(cols)

    return _render([layout], width, f"beyond the allowed drift from baseline {result.baseline}")

"""Fitting a table to the console width: columns, cells, names shortened from the middle.

Every table builder (:mod:`genaudit.report.tables`, :mod:`genaudit.report.sdr_tables`) describes
its table as a list of ways to show it (each a :class:`Layout` of :class:`Column` s), most
complete first, and :func:`fit_table` shows the first whose columns fit ``width``, the console
width the caller prints at. The less complete layouts leave out secondary columns (said in a
caption), shorten headers and wrap text columns; long layer names (:class:`Name`) are shortened
from the middle (``encoder.blocks.11…attn.proj``, :func:`shorten_middle`), so that rich never has
to crush a column. Numbers are never shortened or wrapped: a column of numbers is always as wide
as its widest number.

A cell is a ``str`` (fixed, shown as it is) or a :class:`Flow` (atoms wrapped onto as many lines
as the column needs; an atom is a ``str``, never broken, or a :class:`Name`).
:func:`layer_range` names a level's layers as a count and a range. Nothing here prints.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich import box
from rich.cells import cell_len, get_character_cell_size
from rich.table import Table
from rich.text import Text

__all__ = [
    "DEFAULT_WIDTH",
    "GAP",
    "NAME_FLOOR",
    "NAME_MIN",
    "RANGE_NAME_MIN",
    "Atom",
    "Cell",
    "Column",
    "Flow",
    "Layout",
    "Name",
    "fit_table",
    "flow",
    "format_number",
    "format_shape",
    "layer_range",
    "layer_range_text",
    "shorten_middle",
    "words",
]

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
class Name:
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


Atom = str | Name  # a plain atom (a number, a word) is never broken or shortened


def _atom_text(atom: Atom, width: int) -> str:
    return atom if isinstance(atom, str) else atom.fit(width)


def _atom_natural(atom: Atom) -> int:
    return cell_len(atom) if isinstance(atom, str) else atom.natural()


def _atom_minimum(atom: Atom, floor: int) -> int:
    return cell_len(atom) if isinstance(atom, str) else atom.minimum(floor)


@dataclass(frozen=True)
class Flow:
    """A text cell: atoms separated by spaces, wrapped onto as many lines as the column needs.

    ``head`` is an optional first line of its own; the atoms' lines are then indented.
    """

    atoms: tuple[Atom, ...]
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


def flow(*atoms: Atom) -> Flow:
    """A :class:`Flow` of ``atoms`` with no head line."""
    return Flow(tuple(atoms))


def words(text: str) -> tuple[str, ...]:
    """``text`` split at white space: atoms that wrap between words."""
    return tuple(text.split())


Cell = str | Flow  # a str is fixed: shown as it is


def _cell_natural(cell: Cell) -> int:
    if isinstance(cell, str):
        return max((cell_len(line) for line in cell.split("\n")), default=0)
    return cell.natural()


def _cell_minimum(cell: Cell, floor: int) -> int:
    return _cell_natural(cell) if isinstance(cell, str) else cell.minimum(floor)


@dataclass
class Column:
    """A column: its header, how it is justified, its cells, and how soon it gets spare width."""

    header: str  # may span lines ("SD\ndec.")
    justify: str = "left"
    cells: list[Cell] = field(default_factory=list)
    priority: int = 0  # spare width goes to flexible columns in increasing priority

    def natural(self) -> int:
        return max([_cell_natural(self.header), *(_cell_natural(c) for c in self.cells)])

    def minimum(self, floor: int) -> int:
        return max([_cell_natural(self.header), *(_cell_minimum(c, floor) for c in self.cells)])


@dataclass
class Layout:
    """One way to show a table: its columns, and what it leaves out (for the caption)."""

    columns: list[Column]
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _widths(columns: Sequence[Column], width: int, floor: int) -> list[int] | None:
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


def fit_table(
    layouts: Sequence[Callable[[], Layout]],
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
    longest = max((cell_len(w) for w in words(f"{title or ''} {' '.join(notes)}")), default=0)
    slack = min(longest, width) - (sum(shown) + GAP * (len(shown) - 1))
    texts_at = [k for k, c in enumerate(layout.columns) if c.justify == "left"]
    wider: dict[int, int] = {}
    if slack > 0 and texts_at:
        k = min(texts_at, key=lambda k: layout.columns[k].priority)
        wider[k] = shown[k] + slack
    total = sum(max(w, wider.get(k, 0)) for k, w in enumerate(shown)) + GAP * (len(shown) - 1)
    notes = [_hanging(note, min(total, width)) for note in notes]
    table = _table(title, "\n".join(notes) or None)
    for k, column in enumerate(layout.columns):
        table.add_column(
            Text(column.header), justify=column.justify, no_wrap=False,  # type: ignore[arg-type]
            overflow="fold", min_width=wider.get(k),
        )  # fmt: skip
    for k in range(rows):
        table.add_row(*(Text(cells[k]) for cells in texts))
    return table


def _hanging(note: str, width: int) -> str:
    """An indented caption line wrapped with a hanging indent (rich would start its
    continuation lines at the left edge); other lines are left to rich."""
    lead = note[: len(note) - len(note.lstrip(" "))]
    if not lead or cell_len(note) <= width:
        return note
    lines = textwrap.wrap(
        note, width, subsequent_indent=lead + "    ", break_long_words=False,
        break_on_hyphens=False,
    )  # fmt: skip
    return "\n".join(lines)


def _table(title: str | None, caption: str | None = None) -> Table:
    """An empty table in the style every report table shares."""
    return Table(
        title=Text(title) if title is not None else None,
        caption=Text(caption) if caption is not None else None,
        header_style="bold", title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD,
        padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False,
    )  # fmt: skip


# --------------------------------------------------------------------------- formatting


def format_shape(shape: Sequence[int]) -> str:
    """``4×4`` (``-`` for an empty shape)."""
    return "×".join(str(s) for s in shape) if shape else "-"


def format_number(x: float | None, fmt: str = "{:+.3f}") -> str:
    """``x`` in ``fmt``, or ``-`` for None and NaN."""
    if x is None or x != x:  # None or NaN
        return "-"
    return fmt.format(x)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# Names in the per-level table: few rows, so worth more room than the per-layer tables give.
RANGE_NAME_MIN = 32


def layer_range(names: Sequence[str]) -> tuple[Atom, ...]:
    """A level's layers as a count and a range: ``26 layers: blocks.0.conv1 … blocks.12.conv2``
    (first and last in execution order), never the whole list."""
    count = f"{_plural(len(names), 'layer')}:"
    keep = RANGE_NAME_MIN
    if not names:
        return (f"{_plural(0, 'layer')}",)
    if len(names) == 1:
        return (count, Name(names[0], keep=keep))
    if len(names) == 2:
        return (count, Name(names[0], suffix=",", keep=keep), Name(names[1], keep=keep))
    return (count, Name(names[0], suffix=" …", keep=keep), Name(names[-1], keep=keep))


def layer_range_text(names: Sequence[str], width: int | None = None) -> str:
    """:func:`layer_range` on one line, names shortened from the middle to ``width`` cells."""
    return " ".join(_atom_text(a, width or 10**6) for a in layer_range(names))

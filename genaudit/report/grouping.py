"""Large models in few rows: layers grouped by role and level, those without a value by reason.

A model with more than :data:`ROW_LIMIT` layers would scroll a table of one row per layer off
the screen (a transformer has hundreds of Linear layers). Its tables then show one row per
*role* and level: the layers whose dotted names differ only in their indices
(``blocks.0.attn.qkv``, ``blocks.1.attn.qkv`` → ``blocks.*.attn.qkv``, a glob that selects them
again); should even that give more than :data:`ROW_LIMIT` rows, one row per level and kind of
analysis. Layers without a value (skipped, or undefined) leave the rows and are counted in one
line per reason, the reason's call site (`` at file.py:12``) left out so that it groups.
A table asked for every row, or for an explicit selection, lists every layer. Imports no torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .layout import NAME_MIN, Flow, Name, flow, layer_range, layer_range_text

__all__ = [
    "ROW_LIMIT",
    "Grouped",
    "Row",
    "RowMode",
    "group_rows",
    "reason_key",
    "role_pattern",
    "row_index",
    "row_label",
    "summary_note",
    "without_lines",
]

#: A table of more layers than this is summarised by default (about a screen of rows).
ROW_LIMIT = 32

#: ``auto``: summarise a table of more than :data:`ROW_LIMIT` layers; ``all``: one row each.
RowMode = Literal["auto", "all"]

T = TypeVar("T")

_CALL_SITE = re.compile(r".+:\d+(?::\d+)?\)?")


def role_pattern(name: str) -> str:
    """``name`` with every index as ``*``: ``blocks.3.attn.qkv`` → ``blocks.*.attn.qkv``."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def reason_key(reason: str) -> str:
    """``reason`` without its call site: ``… (modulated) at model.py:42`` → ``… (modulated)``.

    Only a last `` at `` followed by ``file:line`` goes (``needs at least 2`` stays).
    """
    head, sep, tail = reason.rpartition(" at ")
    if sep and head and _CALL_SITE.fullmatch(tail):
        return head
    return reason


@dataclass(frozen=True)
class Row(Generic[T]):
    """One row of a summarised table: one layer, the layers of one role, or of one level."""

    members: tuple[T, ...]
    label: str  # the layer's name, the role pattern or the level
    by_level: bool = False  # the label is a level: name the members as a count and a range


@dataclass(frozen=True)
class Grouped(Generic[T]):
    """A summarised table: its rows, and the layers without a value by reason (in order)."""

    rows: tuple[Row[T], ...]
    without: tuple[tuple[str, tuple[T, ...]], ...]
    layers: int  # every layer, with or without a value

    @property
    def by_level(self) -> bool:
        return any(r.by_level for r in self.rows)


def _grouped(
    items: Sequence[T], key: Callable[[T], tuple[str, ...]], label: Callable[[T], str]
) -> dict[tuple[str, ...], tuple[str, list[T]]]:
    groups: dict[tuple[str, ...], tuple[str, list[T]]] = {}
    for item in items:
        groups.setdefault(key(item), (label(item), []))[1].append(item)
    return groups


def group_rows(
    items: Sequence[T],
    *,
    name: Callable[[T], str],
    level: Callable[[T], str],
    kind: Callable[[T], str],
    reason: Callable[[T], str | None],
    limit: int = ROW_LIMIT,
) -> Grouped[T]:
    """``items`` (layers in execution order) as rows of one role and level (and ``kind``:
    layers of different kinds never share a row); more than ``limit`` of those: of one level.
    ``reason`` is None for a layer with a value, else the text its own row would show."""
    with_value = [x for x in items if reason(x) is None]
    without: dict[str, list[T]] = {}
    for x in items:
        why = reason(x)
        if why is not None:
            without.setdefault(reason_key(why), []).append(x)
    groups = _grouped(
        with_value, lambda x: (role_pattern(name(x)), level(x), kind(x)),
        lambda x: role_pattern(name(x)),
    )  # fmt: skip
    rows = [
        Row(tuple(members), name(members[0]) if len(members) == 1 else label)
        for label, members in groups.values()
    ]
    if len(rows) > limit:
        by_level = _grouped(with_value, lambda x: (level(x), kind(x)), level)
        rows = [Row(tuple(members), label, by_level=True) for label, members in by_level.values()]
    order = {id(x): k for k, x in enumerate(items)}
    rows.sort(key=lambda r: order[id(r.members[0])])
    return Grouped(tuple(rows), tuple((k, tuple(v)) for k, v in without.items()), len(items))


def _where(names: Sequence[str]) -> str:
    """Which layers: their role patterns when one or two, else a count and a range."""
    roles = list(dict.fromkeys(role_pattern(n) for n in names))
    if len(names) == 1:
        return names[0]
    if len(roles) <= 2:
        return ", ".join(roles)
    return layer_range_text(names).split(": ", 1)[1]


def without_lines(grouped: Grouped[T], name: Callable[[T], str], head: str) -> list[str]:
    """One line per reason (``36 undefined: zero weights (blocks.*.attn.proj)``) under
    ``N layers {head}:``; none when every layer has a value."""
    count = sum(len(members) for _, members in grouped.without)
    if not count:
        return []
    lines = [f"{count} layer{'' if count == 1 else 's'} {head}:"]
    for why, members in grouped.without:
        lines.append(f"  {len(members)} {why} ({_where([name(x) for x in members])})")
    return lines


def row_index(indices: Sequence[int]) -> str:
    """A row's ``#``: the layer's index, or the first and last of its layers'."""
    return str(indices[0]) if len(indices) == 1 else f"{indices[0]}–{indices[-1]}"


def row_label(row: Row[Any], names: Sequence[str]) -> Flow:
    """A row's layer cell: the layer, the role pattern and its count, or a level's range."""
    if row.by_level:
        return Flow(layer_range(names), wrap_below=NAME_MIN)
    if len(names) == 1:
        return flow(Name(names[0]))
    return flow(Name(row.label, suffix=f" ×{len(names)}"))


def summary_note(grouped: Grouped[Any], hint: str = "") -> str:
    """What a summarised table's rows are, and the caller's ``hint``."""
    rows = len(grouped.rows)
    what = "level" if grouped.by_level else "role (indices as *) and level"
    text = f"{grouped.layers} layers in {rows} row{'' if rows == 1 else 's'}, one per {what}"
    return f"{text}; {hint}" if hint else text

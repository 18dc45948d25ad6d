"""Level names and layer selectors: plain data, importable without torch.

A level groups the convolutions of a model by where they sit in it (see ``docs/method.md``):
``projection`` (fed a 1×1 map), ``coarse``, ``intermediate`` and ``fine`` (by output
resolution), ``image`` (the last convolution of a model whose output is at least as large as its
input) and ``readout`` (the last convolution of a model whose output is smaller than its input: an
encoder's code, a discriminator's score). Linear layers are ``linear``.
"""

from __future__ import annotations

import fnmatch
from typing import Final, Literal, Protocol, TypeGuard

Level = Literal["projection", "coarse", "intermediate", "fine", "image", "readout", "linear"]

LEVELS: tuple[Level, ...] = ("projection", "coarse", "intermediate", "fine", "image")
READOUT_LEVEL: Final = "readout"
LINEAR_LEVEL: Final = "linear"
ALL_LEVELS: tuple[Level, ...] = (*LEVELS, READOUT_LEVEL, LINEAR_LEVEL)
# Hidden levels fed maps (not 1×1 vectors): where SDR statistics and interventions are meaningful.
HIDDEN_LEVELS: tuple[Level, ...] = ("coarse", "intermediate", "fine")


def is_level(name: str) -> TypeGuard[Level]:
    """Whether ``name`` is one of :data:`ALL_LEVELS`."""
    return name in ALL_LEVELS


class NamedLayer(Protocol):
    """What a selector is matched against: a dotted name and an execution index."""

    @property
    def name(self) -> str: ...

    @property
    def index(self) -> int: ...


def matches_layer(layer: NamedLayer, pattern: str) -> bool:
    """A dotted name, a glob on dotted names, or an execution index."""
    return (
        layer.name == pattern
        or fnmatch.fnmatchcase(layer.name, pattern)
        or pattern == str(layer.index)
    )


def split_selectors(values: list[str] | tuple[str, ...] | None) -> list[str]:
    """Repeatable selector options that also accept comma-separated lists."""
    return [v.strip() for item in values or () for v in item.split(",") if v.strip()]

"""The limits on what a checkpoint file may make genaudit allocate, in one place.

Every allocation a file drives is bounded before it happens, by the limits in :data:`LIMITS`.
Each can be raised (or lowered) for one load with ``--limit NAME=VALUE`` on the command line
(:func:`parse_limit`, :func:`limits_set`; NAME with dashes, e.g. ``checkpoint-bytes=128G``), or
with the environment variable named next to it (a positive integer, read each time a limit is
checked, so callers and tests may set it at any time); the flag wins over the variable:

- ``GENAUDIT_MAX_CHECKPOINT_BYTES`` (default 64 GiB): the most data a checkpoint may hold: the
  total uncompressed size of a zip archive's members (torch zip checkpoints, ``.pt2``), the
  storages a legacy ``torch.save`` file declares, the parameters of a registry architecture.
- ``GENAUDIT_MAX_ZIP_RATIO`` (default 100): the most a zip member may expand (uncompressed size
  over compressed size; members under 1 MiB uncompressed are exempt). torch writes its members
  uncompressed, so real checkpoints are at 1; a deflate bomb is near 1000.
- ``GENAUDIT_MAX_SAFETENSORS_HEADER_BYTES`` (default 100 MB, safetensors' own limit): the largest
  safetensors JSON header that is read.

Zip limits are checked from the archive's central directory, before any member is read. A
safetensors header is checked entry by entry: known dtype, shape of non-negative integers, integer
``data_offsets`` inside the data section whose length is dtype size × number of elements, and no
two tensors overlapping. A legacy torch file's storages (declared in its pickle) may not add up to
more than the file's size (:func:`declared_storage_bytes`), and a pickle is read through
:class:`CappedReader`, so that an opcode declaring a huge length cannot make the reader allocate
it. Architectures built by name take integer keyword arguments within the fixed bounds of
:data:`genaudit.io.registry.KWARG_BOUNDS` and are built on the ``meta`` device first: their size
is checked against ``GENAUDIT_MAX_CHECKPOINT_BYTES`` and their shapes against the checkpoint's
tensors before anything is allocated (:mod:`genaudit.io.registry`).
"""

from __future__ import annotations

import os
import pickletools
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from ..errors import CheckpointError, UsageError, option

__all__ = [
    "LIMITS",
    "RATIO_EXEMPT_BYTES",
    "CappedReader",
    "declared_storage_bytes",
    "limit",
    "limit_hint",
    "limits_set",
    "parse_limit",
]

# name -> (environment variable, default): see "Limits" in the module docstring.
LIMITS: dict[str, tuple[str, int]] = {
    "checkpoint_bytes": ("GENAUDIT_MAX_CHECKPOINT_BYTES", 64 << 30),
    "zip_ratio": ("GENAUDIT_MAX_ZIP_RATIO", 100),
    "safetensors_header_bytes": ("GENAUDIT_MAX_SAFETENSORS_HEADER_BYTES", 100_000_000),
}
RATIO_EXEMPT_BYTES = 1 << 20  # small zip members may compress well (a zero-filled tensor)


_SET: ContextVar[Mapping[str, int] | None] = ContextVar("genaudit_limits", default=None)
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NUMBER = re.compile(r"^\s*(\d[\d_]*)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def _flag_name(name: str) -> str:
    return name.replace("_", "-")


def parse_limit(text: str) -> tuple[str, int]:
    """``NAME=VALUE`` of ``--limit``: a name of :data:`LIMITS` (dashes or underscores) and a
    positive integer, with an optional binary suffix K, M, G or T (``128G``, ``512MiB``).

    Raises :class:`~genaudit.errors.UsageError` (exit 2) naming the valid names."""
    names = ", ".join(_flag_name(n) for n in LIMITS)
    name, sep, value = text.partition("=")
    key = name.strip().replace("-", "_")
    if not sep or key not in LIMITS:
        raise UsageError(
            f"{text!r} is not NAME=VALUE with NAME one of {names}",
            f"e.g. {option('limit')} checkpoint-bytes=128G",
        )
    m = _NUMBER.match(value)
    number = int(m.group(1).replace("_", "")) * _SUFFIXES[m.group(2).upper()] if m else 0
    if number <= 0:
        raise UsageError(
            f"{text!r}: the value must be a positive integer (K, M, G or T suffixes allowed)"
        )
    return key, number


@contextmanager
def limits_set(values: Mapping[str, int]) -> Iterator[None]:
    """Use ``values`` (names of :data:`LIMITS` → positive integers) instead of the defaults and
    the environment while the block runs (one load; other threads and contexts are unaffected)."""
    unknown = set(values) - set(LIMITS)
    if unknown:
        raise ValueError(f"unknown limits: {sorted(unknown)}")
    token = _SET.set({**(_SET.get() or {}), **values})
    try:
        yield
    finally:
        _SET.reset(token)


def limit(name: str) -> int:
    """The limit ``name`` of :data:`LIMITS`: set by :func:`limits_set` (``--limit``), else its
    environment variable, else the default.

    Raises :class:`~genaudit.errors.CheckpointError` when the variable is not a positive integer.
    """
    chosen = _SET.get() or {}
    if name in chosen:
        return chosen[name]
    variable, default = LIMITS[name]
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise CheckpointError(
            f"the environment variable {variable}={raw[:40]!r} is not a positive integer",
            f"unset it or give a number of {'bytes' if 'bytes' in name else 'times'}",
        )
    return value


def limit_hint(name: str) -> str:
    """The hint of an error about the limit ``name``: how to raise it."""
    return (
        f"if you trust the file, raise the limit with {option('limit')} "
        f"{_flag_name(name)}=N (now {limit(name)}) or the environment variable {LIMITS[name][0]}"
    )


class CappedReader:
    """A binary file whose ``read(n)`` never asks for more than what is left of the file: a
    pickle opcode declaring a huge length must not make the reader allocate that much."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self._fh, self._size = fh, size

    def read(self, n: int = -1) -> bytes:
        left = max(self._size - self._fh.tell(), 0)
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._fh.readline()

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)


# Bytes per element of the storage classes a legacy torch.save file names.
_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
    "UntypedStorage": 1,
}
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})


def declared_storage_bytes(stream: Any) -> int:
    """The bytes the storages of a legacy torch.save pickle declare (``torch.load`` allocates
    them while unpickling), read statically: each ``('storage', type, key, location, numel, …)``
    persistent id, counted once per key. Ids it does not recognise count for nothing."""
    memo: dict[Any, Any] = {}
    frames: list[list[Any]] = [[]]
    other = object()
    storages: dict[str, int] = {}
    for op, arg, _pos in pickletools.genops(stream):
        name, top = op.name, frames[-1]
        if name == "MARK":
            frames.append([])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = top[-1] if top else other
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            top.append(memo.get(arg, other))
        elif name == "TUPLE" and len(frames) > 1:
            items = tuple(frames.pop())
            frames[-1].append(items)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            k = int(name[-1])
            items = tuple(top[-k:]) if len(top) >= k else ()
            del top[-k:]
            top.append(items)
        elif name in ("BINPERSID", "PERSID"):
            pid = top.pop() if top and name == "BINPERSID" else None
            if (
                isinstance(pid, tuple)
                and len(pid) >= 5
                and pid[0] == "storage"
                and isinstance(pid[1], str)
                and isinstance(pid[4], int)
                and not isinstance(pid[4], bool)
            ):
                itemsize = _STORAGE_ITEMSIZE.get(pid[1].rpartition(" ")[2], 1)
                storages[str(pid[2])] = max(pid[4], 0) * itemsize
            top.append(other)
        elif name in _STRING_OPS_SIMPLE or name in _INT_OPS:
            top.append(arg)
        elif name == "GLOBAL":
            top.append(str(arg))
        elif name == "NONE":
            top.append(None)
        elif pickletools.markobject in op.stack_before and len(frames) > 1:
            frames.pop()
            frames[-1].append(other)
        else:
            top.append(other)
    return sum(storages.values())


_STRING_OPS_SIMPLE = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING"}
)

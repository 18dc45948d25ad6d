"""Static pickle scanning: the globals a pickle references, read without unpickling it.

``pickletools.genops`` walks the opcodes and nothing is imported or called, so a hostile file can
be named and refused before any loader touches it. :func:`inert_globals` is the allow-list of
globals that only rebuild tensors and containers (torch's weights-only unpickler's own list):
whatever else a scan finds is *suspicious*. :func:`is_module_like` tells a whole pickled
``nn.Module`` apart from a state dict saved next to other objects.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any

__all__ = ["PickleScan", "inert_globals", "is_module_like", "scan_pickle"]


@dataclass(frozen=True)
class PickleScan:
    """What a pickle references, as the static scan found it."""

    globals: frozenset[str]  # every global referenced, as "module.qualname"
    strings: frozenset[str]  # every string literal pushed (to spot nn.Module.__dict__ keys)


class _Unknown:
    """Stack placeholder for values the static scan does not track."""


_UNKNOWN = _Unknown()
_MARK = object()
_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
    }
)


def _normalise_global(module: str, name: str) -> str:
    # The same Python-2 name mapping torch's weights-only unpickler applies.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def scan_pickle(stream: IO[bytes]) -> PickleScan:
    """Globals and strings of the next pickle in ``stream``, read without unpickling.

    A small stack machine follows string pushes and the memo, so that ``STACK_GLOBAL`` (whose
    module and name are strings pushed earlier, possibly fetched back from the memo) resolves
    to a name. A ``STACK_GLOBAL`` of anything else is reported as an unresolvable global.
    """
    stack: list[object] = []
    memo: dict[Any, object] = {}
    found: set[str] = set()
    strings: set[str] = set()

    def pop() -> object:
        return stack.pop() if stack else _UNKNOWN

    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in _STRING_OPS:
            text = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            strings.add(text)
            stack.append(text)
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else _UNKNOWN
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _UNKNOWN
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, _UNKNOWN))
            continue
        if name == "DUP":
            stack.append(stack[-1] if stack else _UNKNOWN)
            continue
        if name == "STACK_GLOBAL":
            qualname, module = pop(), pop()
            if isinstance(module, str) and isinstance(qualname, str):
                found.add(_normalise_global(module, qualname))
            else:
                found.add("<STACK_GLOBAL with a computed name>")
            stack.append(_UNKNOWN)
            continue
        if name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            found.add(_normalise_global(module, qualname))
        elif name in ("EXT1", "EXT2", "EXT4"):
            found.add(f"<copyreg extension code {arg}>")
        # Generic stack effect from pickletools' opcode table.
        before = op.stack_before
        if pickletools.markobject in before:
            while stack and stack[-1] is not _MARK:
                stack.pop()
            if stack:
                stack.pop()
            for _ in range(before.index(pickletools.markobject)):
                pop()
        else:
            for _ in before:
                pop()
        for item in op.stack_after:
            stack.append(_MARK if item is pickletools.markobject else _UNKNOWN)
    return PickleScan(frozenset(found), frozenset(strings))


@lru_cache(maxsize=1)
def inert_globals() -> frozenset[str]:
    """The globals torch's weights-only unpickler accepts by default (tensor rebuild functions,
    storage and dtype types, OrderedDict, torch.Size, torch.device …)."""
    try:
        from torch import _weights_only_unpickler

        return frozenset(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):  # private API: keep a core list if it moves
        return frozenset(
            {
                "collections.OrderedDict",
                "torch._utils._rebuild_tensor_v2",
                "torch._utils._rebuild_parameter",
                "torch._utils._rebuild_parameter_with_state",
                "torch.nn.parameter.Parameter",
                "torch.Size",
                "torch.device",
                "torch.FloatStorage",
                "torch.DoubleStorage",
                "torch.HalfStorage",
                "torch.BFloat16Storage",
                "torch.LongStorage",
                "torch.IntStorage",
                "torch.BoolStorage",
                "torch.ByteStorage",
                "torch.storage.UntypedStorage",
            }
        )


def is_module_like(scan: PickleScan, suspicious: frozenset[str]) -> bool:
    """Whether a pickle holds a whole nn.Module: it references torch.nn module classes, or
    references other classes and carries nn.Module's own attribute names."""
    if any(g.startswith("torch.nn.") for g in suspicious):
        return True
    return bool(suspicious) and {"_modules", "_parameters"} <= scan.strings

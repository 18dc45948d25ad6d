"""Bytes → format → state dict, without running code unless the user trusts the file.

The format is decided from the file's content (magic numbers, zip entry names, pickle opcodes),
never from its extension; a known extension that contradicts the content is an error. Weight-only
formats are loaded without running any code: safetensors through ``safetensors.torch.load_file``,
PyTorch files through ``torch.load(..., weights_only=True)``. Before ``torch.load`` the pickle is
read *statically* (``pickletools.genops``, nothing is imported or called) so that a refusal can name
the classes and functions a file references.

Code-bearing formats (a whole pickled ``nn.Module``, TorchScript, ``torch.export`` ``.pt2``,
``torch.package``, raw pickles) raise :class:`~genaudit.errors.UnsafeCheckpointError` unless
``trust=True``. With ``trust=True``:

- ``pickled-module`` (and a PyTorch file with other non-allowlisted globals) is loaded with
  ``torch.load(weights_only=False)``: ``obj`` is whatever was saved, typically the ``nn.Module``.
- ``torch-export`` is loaded with ``torch.export.load`` and **unflattened**
  (``torch.export.unflatten``): ``obj`` is an ``UnflattenedModule`` whose submodules keep their
  dotted names (``main.0`` …) and are really called, so forward hooks on them fire. Its submodules
  are ``InterpreterModule`` instances, not ``nn.Conv2d`` & co.: the original class name is kept in
  their private ``_ty`` attribute and the convolution's arguments in their ``graph``. The plain
  ``ExportedProgram.module()`` is *not* used: its submodules only hold parameters (``get_attr``) and
  are never called, so hooks registered on them would never fire.
- ``torchscript`` is loaded with ``torch.jit.load`` only to read its weights: ``obj`` is the flat
  ``state_dict()`` of the ScriptModule (forward hooks cannot see inside compiled TorchScript, so
  the architecture must be given with ``--arch``).
- ``pickle`` (a raw Python pickle) is loaded with ``pickle.load``.
- ``torch-package`` stays refused (:class:`CheckpointError`): not supported even when trusted.

Loading with ``trust=True`` sets ``RawCheckpoint.trusted``; the command line prints
:func:`trust_warning` and records it in the report.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import importlib
import io
import json
import os
import pickle
import pickletools
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .. import __version__
from ..errors import CheckpointError, StateDictMismatchError, UnsafeCheckpointError, first_line
from . import registry as zoo

__all__ = [
    "FORMATS",
    "RawCheckpoint",
    "arch_from_metadata",
    "detect_format",
    "find_state_dicts",
    "load_into",
    "read_checkpoint",
    "save_safetensors",
    "select_state_dict",
    "trust_warning",
]

FORMATS: tuple[str, ...] = (
    "safetensors",
    "safetensors-sharded",
    "torch-zip",
    "torch-legacy",
    "pickled-module",
    "torchscript",
    "torch-export",
    "torch-package",
    "pickle",
)

_DESCRIPTION = {
    "safetensors": "safetensors data",
    "safetensors-sharded": "a sharded-safetensors index",
    "torch-zip": "a PyTorch zip checkpoint",
    "torch-legacy": "a legacy (non-zip) PyTorch checkpoint",
    "pickled-module": "a whole pickled nn.Module",
    "torchscript": "a TorchScript archive",
    "torch-export": "a torch.export archive",
    "torch-package": "a torch.package archive",
    "pickle": "a raw Python pickle",
}

_PICKLE_FAMILY = frozenset(FORMATS) - {"safetensors", "safetensors-sharded"}

# Extensions whose meaning is unambiguous enough that contradicting content is an error;
# any other extension (or none) lets the content decide.
_EXTENSION_FORMATS: dict[str, frozenset[str]] = {
    ".safetensors": frozenset({"safetensors"}),
    ".json": frozenset({"safetensors-sharded"}),
    ".pt2": frozenset({"torch-export"}),
    **dict.fromkeys((".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl", ".pickle"), _PICKLE_FAMILY),
}

# torch.save's legacy (non-zip) format starts with a pickled magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_HINT_TRUST = (
    "pass --trust-checkpoint if you trust its author (code will run), "
    "or save model.state_dict() and pass --arch"
)
_HINT_CORRUPT = "re-save or re-download the file; genaudit reads safetensors and torch.save files"
_MAX_NAMES = 5
_MAX_KEYS = 8


@dataclass(frozen=True)
class RawCheckpoint:
    """A checkpoint read from disk, before any architecture is involved."""

    path: Path
    sha256: str  # hex digest of the file bytes (for sharded safetensors: of the index json)
    format: str  # one of FORMATS
    obj: Any  # nested dicts / tensors; an nn.Module only when trusted
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__, else {}
    trusted: bool = False  # True when code-bearing content was loaded because trust=True


# --------------------------------------------------------------------------------------------
# Static pickle scanning


@dataclass(frozen=True)
class _PickleScan:
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


def _scan_pickle(stream: IO[bytes]) -> _PickleScan:
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
    return _PickleScan(frozenset(found), frozenset(strings))


@lru_cache(maxsize=1)
def _inert_globals() -> frozenset[str]:
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


def _is_module_like(scan: _PickleScan, suspicious: frozenset[str]) -> bool:
    """Whether a pickle holds a whole nn.Module: it references torch.nn module classes, or
    references other classes and carries nn.Module's own attribute names."""
    if any(g.startswith("torch.nn.") for g in suspicious):
        return True
    return bool(suspicious) and {"_modules", "_parameters"} <= scan.strings


# --------------------------------------------------------------------------------------------
# Format detection


@dataclass(frozen=True)
class _Probe:
    path: Path  # the file the format belongs to (the index json for a sharded directory)
    format: str
    suspicious: frozenset[str] = frozenset()  # non-inert globals found statically
    zip_entries: tuple[str, ...] = ()
    header: dict[str, Any] = field(default_factory=dict)  # safetensors header / index json


def _fail(message: str, hint: str = _HINT_CORRUPT) -> CheckpointError:
    """A CheckpointError whose message is one line, as the CLI prints it."""
    return CheckpointError(message.replace("\n", " "), hint)


def _names(items: Sequence[str] | frozenset[str] | set[str], limit: int = _MAX_NAMES) -> str:
    ordered = sorted(items)
    shown = ", ".join(ordered[:limit])
    return shown + (", …" if len(ordered) > limit else "")


def _resolve_path(path: Path) -> Path:
    """The file to read: ``path`` itself, or the single shard index inside a directory."""
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist",
            "check the path; it must name a file or a directory",
        )
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if not indexes:
            raise CheckpointError(
                f"{path} is a directory without a *.safetensors.index.json shard index",
                "pass the checkpoint file itself, or a directory holding one sharded checkpoint",
            )
        if len(indexes) > 1:
            raise CheckpointError(
                f"{path} holds several shard indexes ({_names([p.name for p in indexes])})",
                "pass the index json of the checkpoint you want",
            )
        return indexes[0]
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file", "pass a checkpoint file")
    return path


def _probe_safetensors(path: Path, head: bytes, size: int) -> _Probe | None:
    """A safetensors probe, None when the bytes are not safetensors, an error when truncated."""
    if size < 8 or len(head) < 9 or head[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > 100_000_000:
        return None
    if 8 + n > size:
        raise _fail(
            f"{path} has a truncated safetensors header ({size} bytes, header needs {8 + n})"
        )
    with path.open("rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _fail(f"{path} has a corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise _fail(f"{path} has a corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            raise _fail(f"{path} has a corrupt safetensors header (entry {key!r})")
        if offsets[1] > data_size:
            raise _fail(f"{path} is truncated: tensor {key!r} lies beyond the end of the file")
    return _Probe(path, "safetensors", header=header)


def _probe_json(path: Path, head: bytes) -> _Probe | None:
    if head.lstrip()[:1] != b"{":
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        if path.suffix.lower() == ".json":
            raise _fail(f"{path} is not valid JSON") from None
        return None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise _fail(
            f'{path} is JSON but not a safetensors shard index (no "weight_map")',
            "pass the *.safetensors.index.json of a sharded checkpoint, or a weights file",
        )
    return _Probe(path, "safetensors-sharded", header=index)


def _probe_zip(path: Path) -> _Probe:
    try:
        with zipfile.ZipFile(path) as zf:
            names = tuple(zf.namelist())
            # torch archives keep everything under one top-level folder of any name.
            rel = {n.split("/", 1)[1] if "/" in n else n: n for n in names}
            if (
                "archive_format" in rel
                or any(r.endswith("serialized_exported_program.json") for r in rel)
                or any(r.startswith("models/") and r.endswith(".json") for r in rel)
            ):
                return _Probe(path, "torch-export", zip_entries=names)
            if ".data/extern_modules" in rel:
                return _Probe(path, "torch-package", zip_entries=names)
            if "constants.pkl" in rel or any(r.startswith("code/") for r in rel):
                return _Probe(path, "torchscript", zip_entries=names)
            if "data.pkl" not in rel:
                raise _fail(
                    f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl)",
                    "pass a file written by torch.save or safetensors",
                )
            data = zf.read(rel["data.pkl"])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise _fail(
            f"{path} is a truncated or corrupt zip archive ({first_line(exc, 160)})"
        ) from None
    try:
        scan = _scan_pickle(io.BytesIO(data))
    except (ValueError, EOFError, struct.error) as exc:
        raise _fail(f"{path} holds a corrupt pickle ({first_line(exc, 160)})") from None
    suspicious = scan.globals - _inert_globals()
    fmt = "pickled-module" if _is_module_like(scan, suspicious) else "torch-zip"
    return _Probe(path, fmt, suspicious=suspicious, zip_entries=names)


def _probe_pickle(path: Path) -> _Probe | None:
    """A legacy torch.save file or a raw pickle; None when the bytes are not a pickle."""
    with path.open("rb") as fh:
        try:
            first_ops = list(pickletools.genops(fh))
        except (ValueError, EOFError, struct.error, UnicodeDecodeError):
            return None
        ints = [
            a for op, a, _ in first_ops if isinstance(a, int) and op.name not in ("PROTO", "FRAME")
        ]
        if ints[:1] != [_LEGACY_MAGIC]:
            fh.seek(0)
            try:
                scan = _scan_pickle(fh)
            except (ValueError, EOFError, struct.error, UnicodeDecodeError):
                return None
            return _Probe(path, "pickle", suspicious=scan.globals)
        # Legacy layout: magic, protocol version, sys info, the object, storage keys, raw data.
        try:
            scans = [_scan_pickle(fh) for _ in range(4)]
        except (ValueError, EOFError, struct.error, UnicodeDecodeError) as exc:
            raise _fail(
                f"{path} is a truncated or corrupt legacy PyTorch file ({first_line(exc, 160)})"
            ) from None
    merged = _PickleScan(
        frozenset().union(*(s.globals for s in scans)),
        frozenset().union(*(s.strings for s in scans)),
    )
    suspicious = merged.globals - _inert_globals()
    fmt = "pickled-module" if _is_module_like(merged, suspicious) else "torch-legacy"
    return _Probe(path, fmt, suspicious=suspicious)


_OTHER_MAGIC = (
    (b"\x89HDF", "an HDF5 file (Keras?)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"GGUF", "a GGUF file"),
    (b"\x1f\x8b", "a gzip file"),
)


def _probe(path: Path) -> _Probe:
    """Detect the format of ``path`` (a file, or a directory holding one shard index)."""
    path = _resolve_path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}", "check permissions") from None
    if size == 0:
        raise _fail(f"checkpoint {path} is empty (0 bytes)")

    probe: _Probe | None
    known: str | None = None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        probe = _probe_zip(path)
    else:
        probe = _probe_safetensors(path, head, size) or _probe_json(path, head)
        # Other known formats first: some of their magic bytes are also pickle opcodes.
        known = next((desc for magic, desc in _OTHER_MAGIC if head.startswith(magic)), None)
        if probe is None and known is None:
            probe = _probe_pickle(path)
    if probe is None:
        detail = f"it looks like {known}" if known else "unrecognised content"
        raise _fail(
            f"{path} is not a readable checkpoint ({detail}; {size} bytes)",
            "genaudit reads safetensors and torch.save files; the file may also be corrupt",
        )

    suffix = path.suffix.lower()
    allowed = _EXTENSION_FORMATS.get(suffix)
    if allowed is not None and probe.format not in allowed:
        raise CheckpointError(
            f"{path} has the extension {suffix} but contains {_DESCRIPTION[probe.format]}",
            "rename the file to match its content; genaudit decides the format from the bytes",
        )
    return probe


def detect_format(path: Path) -> str:
    """The format of the checkpoint at ``path``, read from its bytes: one of :data:`FORMATS`."""
    return _probe(Path(path)).format


# --------------------------------------------------------------------------------------------
# Reading


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_global(name: str) -> tuple[set[str], Any]:
    """Import the object a user allowed by name (``module.Name`` or ``module:Qual.Name``).

    Only the module the user named (or a prefix of the dotted name they wrote) is imported.
    Returns the names a pickle may use for the object and the object itself.
    """
    spec = name.strip()
    if ":" in spec:
        module_name, _, qualname = spec.partition(":")
        candidates = [(module_name, qualname)]
    else:
        parts = spec.split(".")
        candidates = [
            (".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)
        ]
    hint = "name an importable object, e.g. --allow-global argparse.Namespace"
    for module_name, qualname in candidates:
        if not module_name or not qualname:
            continue
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # this prefix is not a module: try a shorter one
            raise CheckpointError(
                f"cannot import {module_name} for --allow-global {spec}: {exc}", hint
            ) from None
        except Exception as exc:  # importing user-named code may fail in any way
            raise CheckpointError(
                f"cannot import {module_name} for --allow-global {spec}: {first_line(exc, 160)}",
                hint,
            ) from None
        try:
            for attr in qualname.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            raise CheckpointError(
                f"--allow-global {spec}: {module_name} has no {qualname}", hint
            ) from None
        names = {f"{module_name}.{qualname}"}
        own_module = getattr(obj, "__module__", None)
        own_qualname = getattr(obj, "__qualname__", None)
        if isinstance(own_module, str) and isinstance(own_qualname, str):
            names.add(f"{own_module}.{own_qualname}")
        return names, obj
    raise CheckpointError(f"--allow-global {spec}: no importable module in this name", hint)


# Modules whose members can run code or touch the system: never suggested for --allow-global.
_DANGEROUS_MODULES = frozenset(
    {
        "builtins",
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "shutil",
        "pathlib",
        "importlib",
        "runpy",
        "socket",
        "pickle",
        "marshal",
        "types",
        "functools",
        "operator",
        "code",
        "ctypes",
        "io",
        "codecs",
        "webbrowser",
        "pty",
        "platform",
        "tempfile",
        "torch",
        "numpy",
    }
)


def _looks_inert(name: str) -> bool:
    """Whether a global looks like a plain data class (``argparse.Namespace``): CamelCase name,
    not from a module that can run code. A heuristic for hints only, never for loading."""
    module, _, qualname = name.rpartition(".")
    top = module.split(".", 1)[0]
    return (
        bool(qualname[:1].isupper()) and top not in _DANGEROUS_MODULES and not name.startswith("<")
    )


def _refusal(probe: _Probe, shown: str) -> UnsafeCheckpointError:
    """The refusal for a code-bearing file that was not trusted."""
    fmt, suspicious = probe.format, probe.suspicious
    refs = f"references {_names(suspicious)}" if suspicious else "references no globals"
    if fmt == "pickled-module":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a whole pickled nn.Module ({refs})", _HINT_TRUST
        )
    if fmt in ("torch-zip", "torch-legacy"):
        message = (
            f"refusing to load {shown}: its pickle references globals outside torch's "
            f"weights-only allowlist ({_names(suspicious)})"
        )
        inert_looking = sorted(g for g in suspicious if _looks_inert(g))
        if len(inert_looking) < len(suspicious):  # never suggest allowing a function
            return UnsafeCheckpointError(message, _HINT_TRUST)
        return UnsafeCheckpointError(
            message,
            f"if they are inert data types pass --allow-global NAME (e.g. --allow-global "
            f"{inert_looking[0]}); otherwise {_HINT_TRUST}",
        )
    if fmt == "pickle":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a raw Python pickle, not a PyTorch weights file ({refs})",
            _HINT_TRUST,
        )
    if fmt == "torchscript":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a TorchScript archive (compiled model code)",
            "pass --trust-checkpoint to read only its weights (its code is loaded; pass --arch "
            "too, since hooks cannot see inside TorchScript), or save model.state_dict() and "
            "pass --arch",
        )
    if fmt == "torch-export":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a torch.export archive (a serialized program)", _HINT_TRUST
        )
    sources = sorted(e.split("/", 1)[-1] for e in probe.zip_entries if e.endswith(".py"))
    bundled = f" bundling {_names(sources)}" if sources else ""
    return UnsafeCheckpointError(
        f"refusing to load {shown}: a torch.package archive{bundled}",
        "torch.package archives are not supported even with --trust-checkpoint: "
        "save model.state_dict() and pass --arch",
    )


def _weights_only_reason(exc: BaseException) -> str:
    """The informative part of torch's long weights-only error (after 'WeightsUnpickler error:')."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
        text = text.split("Check the documentation", 1)[0]
    line = " ".join(text.split())
    return line if len(line) <= 160 else line[:157] + "…"


def _torch_load(path: Path, shown: str, safe: list[Any], *, weights_only: bool) -> Any:
    try:
        if weights_only:
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=False)
    except pickle.UnpicklingError as exc:
        if weights_only:
            # The static scan found nothing code-bearing, yet torch's stricter loader said no:
            # typically a pickle protocol above 2 (torch.save(..., pickle_protocol=4)).
            raise UnsafeCheckpointError(
                f"refusing to load {shown}: torch's weights-only loader rejected it "
                f"({_weights_only_reason(exc)})",
                "re-save it with torch.save(state_dict, path) (default pickle protocol) or as "
                f"safetensors; otherwise {_HINT_TRUST}",
            ) from None
        raise _fail(f"cannot unpickle {shown}: {first_line(exc, 160)}") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, … for corrupt files
        raise _fail(f"cannot read {shown}: corrupt or truncated ({first_line(exc, 160)})") from None


def _load_safetensors(path: Path, shown: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # SafetensorError and friends for corrupt files
        raise _fail(f"cannot read {shown}: corrupt safetensors ({first_line(exc, 160)})") from None


def _read_sharded(probe: _Probe, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every shard named by the index, check that they agree with it, merge them."""
    index_path = probe.path
    weight_map = probe.header["weight_map"]
    by_shard: dict[str, set[str]] = {}
    for tensor_name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise _fail(f"{shown}: weight_map entry {tensor_name!r} is not a file name")
        by_shard.setdefault(shard, set()).add(str(tensor_name))
    if not by_shard:
        raise _fail(f"{shown}: the shard index lists no tensors")
    missing = []
    for shard in by_shard:
        # Checked lexically, not resolved: Hugging Face caches symlink shards to a blobs folder.
        relative = Path(shard)
        if relative.is_absolute() or ".." in relative.parts:
            raise _fail(f"{shown}: shard {shard!r} lies outside the index's directory")
        if not (index_path.parent / relative).is_file():
            missing.append(shard)
    if missing:
        raise _fail(
            f"{shown}: missing shard file(s) {_names(missing)}",
            "download every shard named in the index's weight_map next to the index",
        )
    state: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for shard in sorted(by_shard):
        shard_path = index_path.parent / shard
        shard_probe = _probe(shard_path)
        if shard_probe.format != "safetensors":
            raise _fail(
                f"{shown}: shard {shard} holds {_DESCRIPTION[shard_probe.format]}, not safetensors",
            )
        tensors = _load_safetensors(shard_path, str(shard_path))
        if set(tensors) != by_shard[shard]:
            diff = set(tensors) ^ by_shard[shard]
            raise _fail(
                f"{shown}: shard {shard} and the index disagree about {len(diff)} tensor(s) "
                f"({_names(diff)})",
            )
        state.update(tensors)
        shard_meta = shard_probe.header.get("__metadata__") or {}
        # The first shard (in sorted order) wins on conflicts: deterministic, and shards written
        # together normally repeat the same metadata.
        for key, value in shard_meta.items():
            metadata.setdefault(str(key), str(value))
    return state, metadata


def read_checkpoint(
    path: str | Path, *, allow_globals: Sequence[str] = (), trust: bool = False
) -> RawCheckpoint:
    """Read a checkpoint file (or sharded-safetensors directory) without running its code.

    Raises
    ------
    CheckpointError
        Missing, empty, corrupt, unsupported or mis-named files (exit 3).
    UnsafeCheckpointError
        Code-bearing content while ``trust`` is False (exit 3).
    """
    given = Path(path)
    shown = str(given)
    allowed_names: set[str] = set()
    safe_objects: list[Any] = []
    for name in allow_globals:
        names, obj = _resolve_global(name)
        allowed_names |= names
        safe_objects.append(obj)

    probe = _probe(given)
    fmt = probe.format
    try:
        sha = _sha256(probe.path)
    except OSError as exc:
        raise _fail(f"cannot read {shown}: {exc.strerror or exc}", "check permissions") from None

    def raw(
        obj: Any, metadata: dict[str, str] | None = None, trusted: bool = False
    ) -> RawCheckpoint:
        return RawCheckpoint(given, sha, fmt, obj, dict(metadata or {}), trusted)

    if fmt == "safetensors":
        meta = probe.header.get("__metadata__") or {}
        return raw(_load_safetensors(probe.path, shown), {str(k): str(v) for k, v in meta.items()})
    if fmt == "safetensors-sharded":
        return raw(*_read_sharded(probe, shown))

    unallowed = probe.suspicious - allowed_names
    if fmt in ("torch-zip", "torch-legacy", "pickled-module"):
        if not unallowed:
            return raw(_torch_load(probe.path, shown, safe_objects, weights_only=True))
        if not trust:
            raise _refusal(_Probe(probe.path, fmt, unallowed), shown)
        return raw(_torch_load(probe.path, shown, [], weights_only=False), trusted=True)
    if not trust:
        raise _refusal(probe, shown)
    if fmt == "torch-export":
        return raw(_load_export(probe.path, shown), trusted=True)
    if fmt == "torchscript":
        return raw(_load_torchscript_weights(probe.path, shown), trusted=True)
    if fmt == "pickle":
        try:
            with probe.path.open("rb") as fh:
                return raw(pickle.load(fh), trusted=True)
        except Exception as exc:  # the file's own code may fail in any way
            raise _fail(f"cannot unpickle {shown}: {first_line(exc, 160)}") from None
    raise CheckpointError(
        f"cannot load {shown}: {_DESCRIPTION[fmt]} is unsupported even when trusted",
        "save model.state_dict() (torch.save or safetensors) and pass --arch",
    )


def _load_export(path: Path, shown: str) -> nn.Module:
    """``torch.export.load`` + ``unflatten``: a module whose submodules run (hooks fire)."""
    try:
        with warnings.catch_warnings():  # torch's own deprecation chatter, not the user's concern
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            program = torch.export.load(str(path))
            return torch.export.unflatten(program)
    except Exception as exc:  # deserialisation of a foreign program may fail in any way
        raise _fail(
            f"cannot load the torch.export archive {shown}: {first_line(exc, 160)}"
        ) from None


def _load_torchscript_weights(path: Path, shown: str) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive; its module is discarded (hooks cannot see inside)."""
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated, still the only reader
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
        return {k: v.detach() for k, v in scripted.state_dict().items()}
    except Exception as exc:
        raise _fail(
            f"cannot load the TorchScript archive {shown}: {first_line(exc, 160)}"
        ) from None


def trust_warning(raw: RawCheckpoint) -> str:
    """The warning the CLI prints (and records) for a checkpoint loaded with trust; '' if none."""
    if not raw.trusted:
        return ""
    return (
        f"WARNING: --trust-checkpoint: {raw.path} ({_DESCRIPTION[raw.format]}, sha256 "
        f"{raw.sha256[:12]}…) was loaded by running code it contains; do this only for files "
        "from authors you trust"
    )


# --------------------------------------------------------------------------------------------
# Finding and selecting state dicts


def find_state_dicts(obj: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Every non-empty dict of tensors inside ``obj``, by dotted key path ("" for the root).

    Dicts and lists are walked (list items by index); a dict whose values are all tensors is a
    candidate and is not walked further; an ``nn.Module`` contributes its ``state_dict()``.
    """
    found: dict[str, dict[str, torch.Tensor]] = {}
    ancestors: set[int] = set()  # ids on the current path: pickles may hold cycles

    def walk(node: Any, where: str) -> None:
        if isinstance(node, nn.Module):
            state = node.state_dict()
            if state:
                found[where] = dict(state)
            return
        if (
            isinstance(node, Mapping)
            and node
            and all(isinstance(v, torch.Tensor) for v in node.values())
        ):
            found[where] = {str(k): v for k, v in node.items()}
            return
        if not isinstance(node, (Mapping, list, tuple)) or id(node) in ancestors:
            return
        ancestors.add(id(node))
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for key, value in items:
            walk(value, f"{where}.{key}" if where else str(key))
        ancestors.discard(id(node))

    walk(obj, "")
    return found


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_EMA = re.compile(r"(?:^|_)ema(?:_|$)", re.IGNORECASE)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items()}


def _all_have(state: Mapping[str, torch.Tensor], prefix: str) -> bool:
    return bool(state) and all(k.startswith(prefix) for k in state)


def _strip_wrappers(
    state: dict[str, torch.Tensor], stripped: str
) -> tuple[dict[str, torch.Tensor], str]:
    # DataParallel/DDP add "module.", torch.compile "_orig_mod."; they nest in either order.
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if _all_have(state, prefix):
                state, stripped, changed = _strip(state, prefix), stripped + prefix, True
    return state, stripped


def _variants(state: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Ways to read ``state``: as is, wrappers stripped, one attribute prefix stripped too."""
    out = [("", state)]
    unwrapped, stripped = _strip_wrappers(state, "")
    if stripped:
        out.append((stripped, unwrapped))
    firsts = {k.split(".", 1)[0] for k in unwrapped}
    if len(firsts) == 1 and all("." in k for k in unwrapped):
        attr = next(iter(firsts)) + "."
        inner, more = _strip_wrappers(_strip(unwrapped, attr), stripped + attr)
        out.append((more, inner))
    return out


@dataclass(frozen=True)
class _Fit:
    """How a state dict compares with the model's ``state_dict()``."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (key, ckpt, model)
    shared: int  # keys present in both with the same shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def score(self) -> tuple[int, int]:
        return (self.shared, -(len(self.missing) + len(self.unexpected) + len(self.mismatched)))

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing [{_key_list(self.missing)}]")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected [{_key_list(self.unexpected)}]")
        if self.mismatched:
            shapes = [f"{k} {tuple(c)} vs model {tuple(m)}" for k, c, m in self.mismatched]
            parts.append(f"{len(self.mismatched)} with other shapes [{_key_list(shapes)}]")
        return "; ".join(parts)


def _key_list(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS])
    return shown + (f", … {len(keys) - _MAX_KEYS} more" if len(keys) > _MAX_KEYS else "")


def _is_num_batches_tracked(key: str) -> bool:
    return key == "num_batches_tracked" or key.endswith(".num_batches_tracked")


def _fit(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> _Fit:
    # BatchNorm's num_batches_tracked counter does not affect eval-mode outputs and older
    # checkpoints lack it: a checkpoint missing only those keys still fits (filled from the model).
    missing = tuple(
        sorted(k for k in expected if k not in state and not _is_num_batches_tracked(k))
    )
    unexpected = tuple(sorted(k for k in state if k not in expected))
    mismatched = tuple(
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    shared = sum(1 for k in state if k in expected) - len(mismatched)
    return _Fit(missing, unexpected, mismatched, shared)


def _filled(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = dict(state)
    for key, value in expected.items():
        if key not in out and _is_num_batches_tracked(key):
            out[key] = value.detach().clone()
    return out


def _where(key: str) -> str:
    return "the top level" if key == "" else repr(key)


def _mismatch_hint(available: Sequence[str]) -> str:
    keys = ", ".join(repr(k) for k in sorted(available)[:_MAX_KEYS])
    more = ", …" if len(available) > _MAX_KEYS else ""
    return (
        f"pick the weights with --state-key (found: {keys}{more}), strip a key prefix with "
        "--strip-prefix, or check --arch / --arch-kwargs"
    )


def select_state_dict(
    candidates: Mapping[str, Mapping[str, torch.Tensor]],
    model: nn.Module,
    *,
    state_key: str | None = None,
    strip_prefix: str | None = None,
) -> tuple[str, dict[str, torch.Tensor]]:
    """The candidate state dict that fits ``model``, with its key prefix stripped.

    ``state_key`` picks one candidate; ``strip_prefix`` strips exactly that prefix (every key
    must have it). Otherwise the wrapper prefixes ``module.`` / ``_orig_mod.`` and one
    attribute prefix (Lightning's ``generator.`` …) are stripped when every key has them and
    stripping makes the keys fit. A candidate fits when its keys and shapes equal those of
    ``model.state_dict()``; missing BatchNorm ``num_batches_tracked`` keys are filled from the
    model. Several fitting candidates: EMA weights (a path component like ``ema``, ``g_ema``,
    ``model_ema``) win; still several is an error.

    Returns
    -------
    (key path, state dict ready for :func:`load_into`)
    """
    expected = model.state_dict()
    if not candidates:
        raise CheckpointError(
            "the checkpoint holds no state dict (no dict of tensors was found in it)",
            "save model.state_dict() and pass --arch",
        )
    if state_key is not None:
        if state_key not in candidates:
            raise CheckpointError(
                f"no state dict at --state-key {state_key!r}; found: "
                + ", ".join(repr(k) for k in sorted(candidates)),
                "pass one of these keys ('' is the top level)",
            )
        pool = {state_key: candidates[state_key]}
    else:
        pool = dict(candidates)

    variants: dict[str, list[tuple[str, dict[str, torch.Tensor]]]] = {}
    if strip_prefix is not None:
        prefix = strip_prefix if strip_prefix.endswith(".") else strip_prefix + "."
        for key, state in pool.items():
            if _all_have(state, prefix):
                variants[key] = [(prefix, _strip(state, prefix))]
        if not variants:
            where = f"at {_where(state_key)}" if state_key is not None else "in the checkpoint"
            raise CheckpointError(
                f"--strip-prefix {strip_prefix!r}: no state dict {where} has it on every key",
                "check the prefix (it is matched at the start of every key)",
            )
    else:
        variants = {key: _variants(dict(state)) for key, state in pool.items()}

    fitting: dict[str, dict[str, torch.Tensor]] = {}
    best: tuple[tuple[int, int], str, str, _Fit] | None = None
    for key in sorted(variants):
        for stripped, state in variants[key]:
            fit = _fit(state, expected)
            if fit.ok:
                fitting[key] = _filled(state, expected)
                break
            if best is None or fit.score() > best[0]:
                best = (fit.score(), key, stripped, fit)

    if len(fitting) > 1:
        ema = {k: v for k, v in fitting.items() if any(_EMA.search(p) for p in k.split("."))}
        fitting = ema or fitting
    if len(fitting) == 1:
        return next(iter(fitting.items()))
    if fitting:
        raise CheckpointError(
            "ambiguous: state dicts at " + ", ".join(repr(k) for k in sorted(fitting)) + " all fit",
            "pass --state-key to pick one",
        )
    assert best is not None  # variants is non-empty, so some candidate was scored
    _, key, stripped, fit = best
    note = f" (prefix {stripped!r} stripped)" if stripped else ""
    raise StateDictMismatchError(
        f"the weights at {_where(key)}{note} do not fit the model: {fit.describe()}",
        _mismatch_hint(list(candidates)),
    )


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``model`` strictly; one error lists every problem, sorted.

    Missing BatchNorm ``num_batches_tracked`` counters keep the model's values.
    """
    expected = model.state_dict()
    fit = _fit(state_dict, expected)
    if not fit.ok:
        raise StateDictMismatchError(
            f"the weights do not fit the model: {fit.describe()}",
            "pick other weights with --state-key / --strip-prefix, or check --arch / --arch-kwargs",
        )
    try:
        model.load_state_dict(_filled(state_dict, expected), strict=True)
    except RuntimeError as exc:
        raise StateDictMismatchError(
            f"the weights do not fit the model: {first_line(exc, 160)}",
            "check --arch / --arch-kwargs",
        ) from None


# --------------------------------------------------------------------------------------------
# Writing and architecture metadata

_META_ARCH = "genaudit.arch"
_META_KWARGS = "genaudit.arch_kwargs"
_META_VERSION = "genaudit.version"


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``state_dict`` as safetensors, atomically (temporary file + ``os.replace``).

    ``arch`` (a registry name, checked) and ``arch_kwargs`` are recorded in the metadata as
    ``genaudit.arch`` / ``genaudit.arch_kwargs`` (JSON, sorted keys), with ``genaudit.version``.
    """
    from safetensors.torch import save_file

    target = Path(path)
    meta: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, got {key!r}: {value!r}")
        meta[key] = value
    if arch is not None:
        zoo.get(arch)  # only registry names may be recorded: they are all that is ever rebuilt
        meta[_META_ARCH] = arch
        meta[_META_KWARGS] = json.dumps(arch_kwargs or {}, sort_keys=True)
    meta[_META_VERSION] = __version__

    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        # safetensors refuses tensors that share or only partly cover a storage (tied weights,
        # views): give those their own copy.
        if not whole or _storage_key(t) in seen:
            t = t.clone()
        seen.add(_storage_key(t))
        tensors[str(key)] = t

    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata=meta)
        # mkstemp creates the file 0600: give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def arch_from_metadata(metadata: Mapping[str, str]) -> tuple[str, dict[str, Any]] | None:
    """The (registry name, kwargs) a genaudit-written safetensors file records, or None.

    The name is only looked up in genaudit's registry (``zoo.get``), never imported: an unknown
    name raises :class:`~genaudit.errors.ArchitectureError` listing the valid ones.
    """
    name = metadata.get(_META_ARCH)
    if name is None:
        return None
    zoo.get(name)
    raw = metadata.get(_META_KWARGS, "{}")
    try:
        kwargs = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(
            f"the checkpoint's {_META_KWARGS} metadata is not valid JSON: {str(raw)[:80]!r}",
            "pass --arch and --arch-kwargs explicitly",
        ) from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(
            f"the checkpoint's {_META_KWARGS} metadata is not a JSON object: {str(raw)[:80]!r}",
            "pass --arch and --arch-kwargs explicitly",
        )
    return name, kwargs

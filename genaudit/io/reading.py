"""Safe reading: checkpoint file → :class:`RawCheckpoint`, running none of its code unless trusted.

Weight-only formats are loaded without running any code: safetensors through
``safetensors.torch.load_file``, PyTorch files through ``torch.load(..., weights_only=True)``, once
probing (:mod:`genaudit.io.formats`) has found in the pickle only inert globals or the ones the user
allowed with ``--allow-global``; a refusal names the classes and functions the file references.

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
- ``torchscript`` is loaded with ``torch.jit.load``: ``obj`` is the ``ScriptModule``. Forward
  hooks cannot see inside compiled TorchScript, so the model loader either turns it into a Python
  module with real layers (:mod:`genaudit.model.scripted`) or, with ``--arch``, reads only its
  ``state_dict()`` into the user's architecture.
- ``pickle`` (a raw Python pickle) is loaded with ``pickle.load``.
- ``torch-package`` stays refused (:class:`CheckpointError`): not supported even when trusted.

Loading with ``trust=True`` sets ``RawCheckpoint.trusted``, which the report records.

``--allow-global NAME`` (``allow_globals``) accepts only classes: never a function, method or
builtin, never from a module that runs code or touches files, processes or the network
(:data:`~genaudit.io.pickle_scan.DENIED_MODULES`), and only from a module already loaded: no module
is imported to look a name up, except those of the known-inert
:data:`~genaudit.io.pickle_scan.INERT_CLASSES`, the only names a refusal suggests. The allowed
classes the file does reference are kept in ``RawCheckpoint.allowed_globals`` (a partly trusted
read, which the report records).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import pickle
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnsafeCheckpointError, first_line, option
from .formats import DESCRIPTIONS, Format, Probe, name_list, one_line_error, probe_format
from .pickle_scan import INERT_CLASSES, is_denied_module

__all__ = ["RawCheckpoint", "read_checkpoint"]

_HINT_TRUST = (
    f"pass {option('trust_checkpoint')} if you trust its author (code will run), "
    f"or save model.state_dict() and pass {option('arch')}"
)


@dataclass(frozen=True)
class RawCheckpoint:
    """A checkpoint read from disk, before any architecture is involved."""

    path: Path
    sha256: str  # hex digest of the file bytes (for sharded safetensors: of the index json)
    format: Format
    obj: Any  # nested dicts / tensors; an nn.Module only when trusted
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__, else {}
    trusted: bool = False  # True when code-bearing content was loaded because trust=True
    # The classes the user allowed (--allow-global) that this file's pickle references: the run
    # is then partly trusted (those classes were constructed by the weights-only loader).
    allowed_globals: tuple[str, ...] = ()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_HINT_ALLOW = (
    f"{option('allow_global')} accepts only inert data classes, e.g. "
    + ", ".join(sorted(INERT_CLASSES))
    + f"; otherwise pass {option('trust_checkpoint')} if you trust the file's author"
)


def _candidates(spec: str) -> list[tuple[str, str]]:
    """The (module, qualname) splits of ``module.Name`` / ``module:Qual.Name``, longest module
    first."""
    if ":" in spec:
        module_name, _, qualname = spec.partition(":")
        pairs = [(module_name, qualname)]
    else:
        parts = spec.split(".")
        pairs = [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]
    return [(m, q) for m, q in pairs if m and q]


def _static_attr(obj: Any, qualname: str) -> Any:
    """``obj.a.b`` looked up statically: no module ``__getattr__`` (which may import a lazy
    submodule), no descriptor or property runs."""
    for attr in qualname.split("."):
        if isinstance(obj, ModuleType):
            if attr not in vars(obj):
                raise AttributeError(attr)
            obj = vars(obj)[attr]
        else:
            obj = inspect.getattr_static(obj, attr)
    return obj


def _resolve_global(name: str) -> tuple[set[str], Any]:
    """The class a user allowed by name (``module.Name`` or ``module:Qual.Name``).

    Only classes are accepted (never functions, methods or builtins), never from the modules of
    :func:`~genaudit.io.pickle_scan.is_denied_module`, and no module is imported to find one:
    the module must already be loaded, except for the known-inert :data:`INERT_CLASSES`.
    Returns the names a pickle may use for the class and the class itself.
    """
    spec = name.strip()
    what = f"{option('allow_global')} {spec}"
    pairs = _candidates(spec)
    if not pairs:
        raise CheckpointError(
            f"{what}: not of the form module.Name or module:Qual.Name", _HINT_ALLOW
        )
    inert = [m for m, q in pairs if f"{m}.{q}" in INERT_CLASSES]
    if inert:
        importlib.import_module(inert[0])  # argparse, collections, torch …: inert to import
    elif any(is_denied_module(m) or is_denied_module(f"{m}.{q}") for m, q in pairs):
        raise CheckpointError(
            f"{what}: refused, its module can run code or touch files, processes or the network",
            _HINT_ALLOW,
        )
    for module_name, qualname in pairs:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        try:
            obj = _static_attr(module, qualname)
        except AttributeError:
            raise CheckpointError(
                f"{what}: refused, {module_name} has no {qualname} "
                "(genaudit imports no module to look a name up)",
                _HINT_ALLOW,
            ) from None
        if not isinstance(obj, type):
            raise CheckpointError(
                f"{what}: refused, it is a {type(obj).__name__}, not a class", _HINT_ALLOW
            )
        full = f"{module_name}.{qualname}"
        own = f"{obj.__module__}.{obj.__qualname__}"
        if full not in INERT_CLASSES and own not in INERT_CLASSES:
            if is_denied_module(own) or is_denied_module(full):
                raise CheckpointError(
                    f"{what}: refused, {own} comes from a module that can run code or touch "
                    "files, processes or the network",
                    _HINT_ALLOW,
                )
            if issubclass(obj, (type, nn.Module, torch.Tensor, BaseException)):
                raise CheckpointError(
                    f"{what}: refused, {own} is a metaclass, module, tensor or exception class",
                    _HINT_ALLOW,
                )
        return {full, own}, obj
    raise CheckpointError(
        f"{what}: refused, genaudit does not import {pairs[0][0]} to look a name up "
        "(only modules already loaded, and the known-inert classes, are used)",
        _HINT_ALLOW,
    )


def _refusal(probe: Probe, shown: str) -> UnsafeCheckpointError:
    """The refusal for a code-bearing file that was not trusted."""
    fmt, suspicious = probe.format, probe.suspicious
    refs = f"references {name_list(suspicious)}" if suspicious else "references no globals"
    if fmt == "pickled-module":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a whole pickled nn.Module ({refs})", _HINT_TRUST
        )
    if fmt in ("torch-zip", "torch-legacy"):
        message = (
            f"refusing to load {shown}: its pickle references globals outside torch's "
            f"weights-only allowlist ({name_list(suspicious)})"
        )
        if not suspicious <= INERT_CLASSES:  # only ever suggest the known-inert classes
            return UnsafeCheckpointError(message, _HINT_TRUST)
        allows = " ".join(f"{option('allow_global')} {g}" for g in sorted(suspicious))
        return UnsafeCheckpointError(
            message, f"they are inert data types: pass {allows}; otherwise {_HINT_TRUST}"
        )
    if fmt == "pickle":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a raw Python pickle, not a PyTorch weights file ({refs})",
            _HINT_TRUST,
        )
    if fmt == "torchscript":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a TorchScript archive (compiled model code)",
            f"pass {option('trust_checkpoint')} if you trust its author (its code is loaded), "
            f"or save model.state_dict() and pass {option('arch')}",
        )
    if fmt == "torch-export":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a torch.export archive (a serialized program)", _HINT_TRUST
        )
    sources = sorted(e.split("/", 1)[-1] for e in probe.zip_entries if e.endswith(".py"))
    bundled = f" bundling {name_list(sources)}" if sources else ""
    return UnsafeCheckpointError(
        f"refusing to load {shown}: a torch.package archive{bundled}",
        f"torch.package archives are not supported even with {option('trust_checkpoint')}: "
        f"save model.state_dict() and pass {option('arch')}",
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
        raise one_line_error(f"cannot unpickle {shown}: {first_line(exc, 160)}") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, … for corrupt files
        raise one_line_error(
            f"cannot read {shown}: corrupt or truncated ({first_line(exc, 160)})"
        ) from None


def _load_safetensors(path: Path, shown: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # SafetensorError and friends for corrupt files
        raise one_line_error(
            f"cannot read {shown}: corrupt safetensors ({first_line(exc, 160)})"
        ) from None


def _read_sharded(probe: Probe, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every shard named by the index, check that they agree with it, merge them."""
    index_path = probe.path
    weight_map = probe.header["weight_map"]
    by_shard: dict[str, set[str]] = {}
    for tensor_name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise one_line_error(f"{shown}: weight_map entry {tensor_name!r} is not a file name")
        by_shard.setdefault(shard, set()).add(str(tensor_name))
    if not by_shard:
        raise one_line_error(f"{shown}: the shard index lists no tensors")
    missing = []
    for shard in by_shard:
        # Checked lexically, not resolved: Hugging Face caches symlink shards to a blobs folder.
        relative = Path(shard)
        if relative.is_absolute() or ".." in relative.parts:
            raise one_line_error(f"{shown}: shard {shard!r} lies outside the index's directory")
        if not (index_path.parent / relative).is_file():
            missing.append(shard)
    if missing:
        raise one_line_error(
            f"{shown}: missing shard file(s) {name_list(missing)}",
            "download every shard named in the index's weight_map next to the index",
        )
    state: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for shard in sorted(by_shard):
        shard_path = index_path.parent / shard
        shard_probe = probe_format(shard_path)
        if shard_probe.format != "safetensors":
            raise one_line_error(
                f"{shown}: shard {shard} holds {DESCRIPTIONS[shard_probe.format]}, not safetensors",
            )
        tensors = _load_safetensors(shard_path, str(shard_path))
        if set(tensors) != by_shard[shard]:
            diff = set(tensors) ^ by_shard[shard]
            raise one_line_error(
                f"{shown}: shard {shard} and the index disagree about {len(diff)} tensor(s) "
                f"({name_list(diff)})",
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

    probe = probe_format(given)
    fmt = probe.format
    try:
        sha = _sha256(probe.path)
    except OSError as exc:
        raise one_line_error(
            f"cannot read {shown}: {exc.strerror or exc}", "check permissions"
        ) from None

    def raw(
        obj: Any,
        metadata: dict[str, str] | None = None,
        trusted: bool = False,
        allowed: tuple[str, ...] = (),
    ) -> RawCheckpoint:
        return RawCheckpoint(given, sha, fmt, obj, dict(metadata or {}), trusted, allowed)

    if fmt == "safetensors":
        meta = probe.header.get("__metadata__") or {}
        return raw(_load_safetensors(probe.path, shown), {str(k): str(v) for k, v in meta.items()})
    if fmt == "safetensors-sharded":
        return raw(*_read_sharded(probe, shown))

    unallowed = probe.suspicious - allowed_names
    if fmt in ("torch-zip", "torch-legacy", "pickled-module"):
        if not unallowed:
            used = tuple(sorted(probe.suspicious & allowed_names))
            return raw(
                _torch_load(probe.path, shown, safe_objects, weights_only=True), allowed=used
            )
        if not trust:
            raise _refusal(Probe(probe.path, fmt, unallowed), shown)
        return raw(_torch_load(probe.path, shown, [], weights_only=False), trusted=True)
    if not trust:
        raise _refusal(probe, shown)
    if fmt == "torch-export":
        return raw(_load_export(probe.path, shown), trusted=True)
    if fmt == "torchscript":
        return raw(_load_torchscript(probe.path, shown), trusted=True)
    if fmt == "pickle":
        try:
            with probe.path.open("rb") as fh:
                return raw(pickle.load(fh), trusted=True)
        except Exception as exc:  # the file's own code may fail in any way
            raise one_line_error(f"cannot unpickle {shown}: {first_line(exc, 160)}") from None
    raise CheckpointError(
        f"cannot load {shown}: {DESCRIPTIONS[fmt]} is unsupported even when trusted",
        f"save model.state_dict() (torch.save or safetensors) and pass {option('arch')}",
    )


def _load_export(path: Path, shown: str) -> nn.Module:
    """``torch.export.load`` + ``unflatten``: a module whose submodules run (hooks fire)."""
    try:
        with warnings.catch_warnings():  # torch's own deprecation chatter, not the user's concern
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            program = torch.export.load(str(path))
            return torch.export.unflatten(program)
    except Exception as exc:  # deserialisation of a foreign program may fail in any way
        raise one_line_error(
            f"cannot load the torch.export archive {shown}: {first_line(exc, 160)}"
        ) from None


def _load_torchscript(path: Path, shown: str) -> torch.jit.ScriptModule:
    """A TorchScript archive's module (its weights are its ``state_dict()``)."""
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated, still the only reader
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
        if not isinstance(scripted, torch.jit.ScriptModule):
            raise TypeError(f"it holds a {type(scripted).__name__}, not a module")
        return scripted
    except Exception as exc:
        raise one_line_error(
            f"cannot load the TorchScript archive {shown}: {first_line(exc, 160)}"
        ) from None

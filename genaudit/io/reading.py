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
- ``torchscript`` is loaded with ``torch.jit.load`` only to read its weights: ``obj`` is the flat
  ``state_dict()`` of the ScriptModule (forward hooks cannot see inside compiled TorchScript, so
  the architecture must be given with ``--arch``).
- ``pickle`` (a raw Python pickle) is loaded with ``pickle.load``.
- ``torch-package`` stays refused (:class:`CheckpointError`): not supported even when trusted.

Loading with ``trust=True`` sets ``RawCheckpoint.trusted``, which the report records.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnsafeCheckpointError, first_line, option
from .formats import DESCRIPTIONS, Format, Probe, name_list, one_line_error, probe_format

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
    hint = f"name an importable object, e.g. {option('allow_global')} argparse.Namespace"
    for module_name, qualname in candidates:
        if not module_name or not qualname:
            continue
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # this prefix is not a module: try a shorter one
            raise CheckpointError(
                f"cannot import {module_name} for {option('allow_global')} {spec}: {exc}", hint
            ) from None
        except Exception as exc:  # importing user-named code may fail in any way
            raise CheckpointError(
                f"cannot import {module_name} for {option('allow_global')} {spec}: "
                f"{first_line(exc, 160)}",
                hint,
            ) from None
        try:
            for attr in qualname.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            raise CheckpointError(
                f"{option('allow_global')} {spec}: {module_name} has no {qualname}", hint
            ) from None
        names = {f"{module_name}.{qualname}"}
        own_module = getattr(obj, "__module__", None)
        own_qualname = getattr(obj, "__qualname__", None)
        if isinstance(own_module, str) and isinstance(own_qualname, str):
            names.add(f"{own_module}.{own_qualname}")
        return names, obj
    raise CheckpointError(
        f"{option('allow_global')} {spec}: no importable module in this name", hint
    )


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
        inert_looking = sorted(g for g in suspicious if _looks_inert(g))
        if len(inert_looking) < len(suspicious):  # never suggest allowing a function
            return UnsafeCheckpointError(message, _HINT_TRUST)
        return UnsafeCheckpointError(
            message,
            f"if they are inert data types pass {option('allow_global')} NAME "
            f"(e.g. {option('allow_global')} {inert_looking[0]}); otherwise {_HINT_TRUST}",
        )
    if fmt == "pickle":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a raw Python pickle, not a PyTorch weights file ({refs})",
            _HINT_TRUST,
        )
    if fmt == "torchscript":
        return UnsafeCheckpointError(
            f"refusing to load {shown}: a TorchScript archive (compiled model code)",
            f"pass {option('trust_checkpoint')} to read only its weights (its code is loaded; "
            f"pass {option('arch')} too, since hooks cannot see inside TorchScript), or save "
            f"model.state_dict() and pass {option('arch')}",
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
            raise _refusal(Probe(probe.path, fmt, unallowed), shown)
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


def _load_torchscript_weights(path: Path, shown: str) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive; its module is discarded (hooks cannot see inside)."""
    try:
        with warnings.catch_warnings():  # torch.jit.load is deprecated, still the only reader
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
        return {k: v.detach() for k, v in scripted.state_dict().items()}
    except Exception as exc:
        raise one_line_error(
            f"cannot load the TorchScript archive {shown}: {first_line(exc, 160)}"
        ) from None

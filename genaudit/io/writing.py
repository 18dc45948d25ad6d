"""Writing safetensors checkpoints that record their architecture, and reading that record back.

:func:`save_safetensors` puts ``genaudit.arch`` (a registry name), ``genaudit.arch_kwargs`` (JSON)
and ``genaudit.version`` into the file's metadata; :func:`arch_from_metadata` reads them back. The
name is only ever looked up in genaudit's registry, so a file can never make genaudit import code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError, option
from ..files import write_atomic
from . import registry as zoo

__all__ = ["arch_from_metadata", "save_safetensors"]

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
    """Write ``state_dict`` as safetensors, all or nothing (:func:`~genaudit.files.write_atomic`).

    ``arch`` (a registry name, checked) and ``arch_kwargs`` are recorded in the metadata as
    ``genaudit.arch`` / ``genaudit.arch_kwargs`` (JSON, sorted keys), with ``genaudit.version``.
    """
    from safetensors.torch import save

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

    write_atomic(path, save(tensors, metadata=meta))


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
    except (TypeError, ValueError, RecursionError):  # ValueError: JSONDecodeError, huge ints
        raise CheckpointError(
            f"the checkpoint's {_META_KWARGS} metadata is not valid JSON: {str(raw)[:80]!r}",
            f"pass {option('arch')} and {option('arch_kwargs')} explicitly",
        ) from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(
            f"the checkpoint's {_META_KWARGS} metadata is not a JSON object: {str(raw)[:80]!r}",
            f"pass {option('arch')} and {option('arch_kwargs')} explicitly",
        )
    return name, kwargs

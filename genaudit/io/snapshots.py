"""Training snapshots: checkpoint files named on the command line, ordered by training step.

A series of snapshots is given as files, a folder or a glob. Each file's step is the last
integer in its name without the suffix (``vae64_decoder_step00125.safetensors`` → 125,
``epoch=3-step=1250.ckpt`` → 1250); when no name carries one, the order given is kept and the
steps are 0, 1, 2 … . Importing this module does not import torch; :func:`reload_snapshot`
(later snapshots loaded into the first snapshot's model) does so when it runs.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StateDictMismatchError, UsageError

if TYPE_CHECKING:
    from ..model.loading import LoadedModel, LoadOptions

__all__ = ["CHECKPOINT_SUFFIXES", "Snapshot", "find_snapshots", "reload_snapshot", "step_of"]

#: What a file in a folder of snapshots is named like, to count as a checkpoint.
CHECKPOINT_SUFFIXES = (
    ".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl", ".pickle", ".pt2",
)  # fmt: skip
_SHARD_INDEX = ".safetensors.index.json"
_GLOB = re.compile(r"[*?\[]")
_INTEGER = re.compile(r"\d+")


@dataclass(frozen=True)
class Snapshot:
    """One checkpoint of the series: its path as given and its training step."""

    path: str
    step: int

    @property
    def name(self) -> str:
        return Path(self.path).name


def step_of(name: str) -> int | None:
    """The last integer in ``name`` without its suffix (``…_step00125.safetensors`` → 125)."""
    base = Path(name).name
    stem = base[: -len(_SHARD_INDEX)] if base.endswith(_SHARD_INDEX) else Path(base).stem
    found = _INTEGER.findall(stem)
    return int(found[-1]) if found else None


def _is_checkpoint_dir(path: Path) -> bool:
    """A sharded safetensors checkpoint: a folder with its shard index."""
    return any(path.glob("*" + _SHARD_INDEX))


def _in_folder(folder: Path) -> list[str]:
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        named = entry.suffix.lower() in CHECKPOINT_SUFFIXES or entry.name.endswith(_SHARD_INDEX)
        if (entry.is_file() and named) or (entry.is_dir() and _is_checkpoint_dir(entry)):
            found.append(str(entry))
    if not found:
        raise UsageError(
            f"{folder} holds no checkpoint file",
            "name the files, or a folder of " + ", ".join(CHECKPOINT_SUFFIXES) + " files",
        )
    return found


def _expand(spec: str) -> list[str]:
    path = Path(spec)
    if path.is_dir() and not _is_checkpoint_dir(path):
        return _in_folder(path)
    if not path.exists() and _GLOB.search(spec):
        matches = sorted(glob.glob(spec))
        if not matches:
            raise UsageError(f"no file matches {spec!r}", "check the pattern and its folder")
        return matches
    return [spec]  # the loader reports a missing or unreadable file


def find_snapshots(specs: Sequence[str]) -> list[Snapshot]:
    """The snapshots named by ``specs`` (files, folders, globs), ordered by step.

    Raises
    ------
    UsageError
        Nothing named, an empty folder, a glob matching nothing, the same file twice, some
        names with a step number and others without, or two files with the same step.
    """
    paths = [p for spec in specs for p in _expand(spec)]
    if not paths:
        raise UsageError("no snapshot given", "name checkpoint files, a folder or a glob")
    seen: dict[str, str] = {}
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            raise UsageError(f"{p} is named twice", "name each snapshot once")
        seen[key] = p
    steps = [step_of(p) for p in paths]
    if all(s is None for s in steps):
        return [Snapshot(p, k) for k, p in enumerate(paths)]
    missing = [p for p, s in zip(paths, steps, strict=True) if s is None]
    if missing:
        raise UsageError(
            f"cannot tell the step of {Path(missing[0]).name}: its name carries no number, "
            "and other snapshots' names do",
            "name every snapshot with its step (e.g. model_step01000.safetensors), or none",
        )
    by_step: dict[int, str] = {}
    for p, s in zip(paths, steps, strict=True):
        assert s is not None
        if s in by_step:
            raise UsageError(
                f"{Path(by_step[s]).name} and {Path(p).name} both have step {s}",
                "the step is the last number in a file's name: give each snapshot its own",
            )
        by_step[s] = p
    return [Snapshot(by_step[s], s) for s in sorted(by_step)]


def reload_snapshot(first: LoadedModel, path: str, options: LoadOptions) -> LoadedModel:
    """Another snapshot's weights loaded into ``first``'s model (the architecture is built once).

    The file is read by the same safe reader as the first (weights only unless trusted), and its
    weights are matched strictly: every key and shape of the model, as for the first snapshot.
    A checkpoint holding a module rather than weights (trusted formats), or ``module`` (a
    submodule audited), is loaded whole and its audited module's weights are matched strictly.

    Raises
    ------
    CheckpointError
        As :func:`~genaudit.model.loading.load_model`;
        :class:`~genaudit.errors.StateDictMismatchError` when the weights do not fit the model.
    """
    try:
        return _reload(first, path, options)
    except StateDictMismatchError as exc:
        raise StateDictMismatchError(
            f"{Path(path).name} does not fit the model of {first.path.name}: {exc.raw_message}",
            "every snapshot must be of the same architecture (same layers and shapes)",
        ) from None


def _reload(first: LoadedModel, path: str, options: LoadOptions) -> LoadedModel:
    from ..io.limits import limits_set
    from ..io.reading import read_checkpoint
    from ..io.state_dicts import choose_state_dict, find_state_dicts, load_into
    from ..model.loading import load_model

    model = first.model
    with limits_set(dict(options.limits)):
        if options.module is None:
            raw = read_checkpoint(
                path, allow_globals=options.allow_globals, trust=options.trust_checkpoint
            )
            if not _holds_module(raw.obj):
                chosen = choose_state_dict(
                    find_state_dicts(raw.obj), model, state_key=options.state_key,
                    strip_prefix=options.strip_prefix, select=options.select,
                )  # fmt: skip
                load_into(model, chosen.state)
                return replace(
                    first, path=raw.path, sha256=raw.sha256, format=raw.format,
                    state_key=chosen.key, key_prefix=chosen.prefix, ignored_keys=chosen.ignored,
                    trusted=raw.trusted, allowed_globals=raw.allowed_globals,
                )  # fmt: skip
        other = load_model(path, _same_architecture(first, options))
    load_into(model, other.model.state_dict())
    return replace(other, model=model)


def _same_architecture(first: LoadedModel, options: LoadOptions) -> LoadOptions:
    """Options that rebuild the first snapshot's architecture (the one its metadata named,
    with its keyword arguments), unless it came with the file (``<torchscript>`` …)."""
    if options.arch is not None or first.arch.startswith("<"):
        return options
    return replace(options, arch=first.arch, arch_kwargs=dict(first.arch_kwargs))


def _holds_module(obj: object) -> bool:
    from torch import nn

    return isinstance(obj, nn.Module)

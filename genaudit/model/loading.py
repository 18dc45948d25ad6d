"""Checkpoint → nn.Module: the architecture rebuilt, the weights loaded, the device chosen."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError, UsageError, option
from ..io import registry as zoo
from ..io.reading import read_checkpoint
from ..io.state_dicts import find_state_dicts, load_into, select_state_dict
from ..io.writing import arch_from_metadata
from ..values import check_device
from .exported import materialise_layers

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


# --------------------------------------------------------------------------- devices


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU; ``cpu``; ``cuda[:i]``."""
    spec = check_device(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise UsageError(f"unknown device {spec!r}", "use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(
            f"device {spec!r} asked for, but CUDA is not available here",
            f"use {option('device')} cpu",
        )
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(
            f"device {spec!r} asked for, but there are {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


# --------------------------------------------------------------------------- importing user code


def import_object(spec: str, option_name: str) -> Any:
    """Import ``pkg.module:attr`` that the user named explicitly with the option ``option_name``
    (``"arch"``, ``"sampler"``)."""
    what = option(option_name)
    if not _SPEC.match(spec):
        raise UsageError(f"{what} {spec!r} is not of the form pkg.module:name")
    module_name, attr = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(
            f"cannot import {module_name!r} for {what} {spec!r}: {exc}",
            "make sure the module is importable (installed, or on PYTHONPATH / the current folder)",
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ArchitectureError(f"{module_name!r} has no attribute {attr!r} ({what} {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ArchitectureError(f"{what} {spec!r} is not callable")
    return obj


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadOptions:
    """How to turn a checkpoint file into a model (docs/method.md)."""

    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    state_key: str | None = None
    strip_prefix: str | None = None
    module: str | None = None
    allow_globals: tuple[str, ...] = ()
    trust_checkpoint: bool = False


@dataclass(frozen=True)
class LoadedModel:
    """A model rebuilt from a checkpoint, with where it came from."""

    model: nn.Module
    path: Path
    sha256: str
    format: str
    state_key: str | None
    arch: str
    arch_kwargs: dict[str, Any]
    module: str | None
    trusted: bool
    allowed_globals: tuple[str, ...] = ()  # --allow-global classes the file used: partly trusted

    def describe(self) -> dict[str, Any]:
        """The checkpoint part of a JSON report. ``trusted``: code-bearing content was loaded
        (--trust-checkpoint); ``allowed_globals``: the classes allowed by name that the file
        references and the weights-only loader constructed (empty unless partly trusted)."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "format": self.format,
            "state_key": self.state_key,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "module": self.module,
            "trusted": self.trusted,
            "allowed_globals": list(self.allowed_globals),
        }


def _build_registered(
    name: str, kwargs: dict[str, Any], fits: Callable[[nn.Module], object] | None
) -> nn.Module:
    """A registry architecture: built on the meta device, checked by ``fits`` against the
    checkpoint's tensors, and only then built for real (no memory is spent on a misfit)."""
    meta = zoo.build_meta(name, kwargs)
    if fits is not None:
        fits(meta)
    return zoo.build(name, kwargs)


def build_architecture(
    arch: str | None,
    arch_kwargs: dict[str, Any],
    metadata: dict[str, str],
    source: str,
    fits: Callable[[nn.Module], object] | None = None,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the model named by ``--arch`` (registry name or pkg.module:Factory) or by the
    checkpoint's genaudit metadata.

    A registry architecture is first built on the ``meta`` device and passed to ``fits``, which
    raises when the checkpoint's weights do not fit it; only then is it built for real.
    """
    if arch is None:
        found = arch_from_metadata(metadata)
        if found is None:
            raise ArchitectureError(
                f"{source} holds weights only and does not say which architecture they belong to",
                f"pass {option('arch')} pkg.module:Factory (your model code) or a registered name: "
                + ", ".join(zoo.list_architectures()),
            )
        name, kwargs = found
        kwargs = {**kwargs, **arch_kwargs}
        return _build_registered(name, kwargs, fits), name, kwargs
    if ":" in arch:
        factory = import_object(arch, "arch")
        try:
            model = factory(**arch_kwargs)
        except Exception as exc:  # user code: any failure is theirs to see, in one line
            raise ArchitectureError(
                f"{option('arch')} {arch} failed with {type(exc).__name__}: {exc}",
                f"check {option('arch_kwargs')} against the factory's signature",
            ) from None
        if not isinstance(model, nn.Module):
            raise ArchitectureError(
                f"{option('arch')} {arch} returned {type(model).__name__}, not an nn.Module"
            )
        return model, arch, dict(arch_kwargs)
    return _build_registered(arch, dict(arch_kwargs), fits), arch, dict(arch_kwargs)


def select_module(model: nn.Module, path: str | None) -> nn.Module:
    """``--module PATH``: the submodule to audit (e.g. ``decoder`` of a VAE)."""
    if not path:
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        children = sorted(name for name, _ in model.named_children())
        raise UsageError(
            f"the model has no submodule {path!r}",
            f"its top-level submodules are: {', '.join(children) or '(none)'}",
        ) from None


def load_model(path: str | Path, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Read a checkpoint safely, rebuild its architecture and load the weights strictly."""
    raw = read_checkpoint(path, allow_globals=options.allow_globals, trust=options.trust_checkpoint)
    if isinstance(raw.obj, nn.Module):
        model: nn.Module = raw.obj
        if raw.format == "torch-export":
            materialise_layers(model)
        arch, state_key = f"<{raw.format}>", None
        kwargs: dict[str, Any] = {}
    else:
        candidates = find_state_dicts(raw.obj)

        def fits(meta: nn.Module) -> object:
            return select_state_dict(
                candidates, meta, state_key=options.state_key, strip_prefix=options.strip_prefix
            )

        model, arch, kwargs = build_architecture(
            options.arch, options.arch_kwargs, raw.metadata, Path(path).name, fits
        )
        state_key, state = select_state_dict(
            candidates, model, state_key=options.state_key, strip_prefix=options.strip_prefix
        )
        load_into(model, state)
    model.eval()
    model = select_module(model, options.module)
    return LoadedModel(
        model=model,
        path=raw.path,
        sha256=raw.sha256,
        format=raw.format,
        state_key=state_key,
        arch=arch,
        arch_kwargs=kwargs,
        module=options.module,
        trusted=raw.trusted,
        allowed_globals=raw.allowed_globals,
    )

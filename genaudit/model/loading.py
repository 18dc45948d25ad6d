"""Checkpoint → nn.Module: the architecture rebuilt, the weights loaded, the device chosen."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError, UsageError, option
from ..io import registry as zoo
from ..io.limits import limits_set
from ..io.reading import read_checkpoint
from ..io.state_dicts import choose_state_dict, find_state_dicts, load_into, prefix_option
from ..io.writing import arch_from_metadata
from ..values import check_device
from .exported import materialise_layers
from .scripted import python_module_from_torchscript, scripted_submodule
from .user_code import AttrConfig, UserCallable, is_user_spec, load_user_object

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


def import_object(spec: str, option_name: str) -> UserCallable:
    """Import ``pkg.module:attr`` or ``path/to/file.py:attr`` that the user named explicitly
    with the option ``option_name`` (``"arch"``, ``"sampler"``); calling the result reports
    a failure of the user's code with its file and line (:mod:`genaudit.model.user_code`)."""
    return load_user_object(spec, option_name)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadOptions:
    """How to turn a checkpoint file into a model (docs/method.md)."""

    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    #: A JSON object the factory of ``arch`` gets as its one positional argument, with
    #: attribute and item access (``--arch-config``); None: called with keywords only.
    arch_config: dict[str, Any] | None = None
    state_key: str | None = None
    strip_prefix: str | None = None
    select: str | None = None  # the same as strip_prefix=select + "."
    module: str | None = None
    allow_globals: tuple[str, ...] = ()
    trust_checkpoint: bool = False
    #: Limits on what the file may make genaudit allocate, by name (``--limit``; see
    #: :mod:`genaudit.io.limits`), for this load only.
    limits: tuple[tuple[str, int], ...] = ()


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
    arch_config: dict[str, Any] | None = None  # the factory's configuration object, as JSON
    key_prefix: str = ""  # removed from the weights' keys ("generator.", "module.")
    ignored_keys: int = 0  # keys of the chosen state dict outside key_prefix

    def describe(self) -> dict[str, Any]:
        """The checkpoint part of a JSON report. ``trusted``: code-bearing content was loaded
        (--trust-checkpoint); ``allowed_globals``: the classes allowed by name that the file
        references and the weights-only loader constructed (empty unless partly trusted);
        ``key_prefix`` and ``ignored_keys``: the prefix removed from the weights' keys and how
        many keys outside it were ignored."""
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
            **({} if self.arch_config is None else {"arch_config": self.arch_config}),
            "key_prefix": self.key_prefix,
            "ignored_keys": self.ignored_keys,
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
    arch_config: dict[str, Any] | None = None,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the model named by ``--arch`` (registry name or pkg.module:Factory) or by the
    checkpoint's genaudit metadata.

    A registry architecture is first built on the ``meta`` device and passed to ``fits``, which
    raises when the checkpoint's weights do not fit it; only then is it built for real.
    ``arch_config`` (your factory only) is passed as one positional configuration object.
    """
    if arch_config is not None and not (arch and is_user_spec(arch)):
        raise UsageError(
            f"{option('arch_config')} is for your own factory, called as Factory(config)",
            f"pass {option('arch')} path/to/file.py:Factory or pkg.module:Factory with it"
            + ("" if arch is None else f", or {option('arch_kwargs')} for {arch!r}"),
        )
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
    if is_user_spec(arch):
        factory = import_object(arch, "arch")
        config = () if arch_config is None else (AttrConfig(arch_config),)
        model = factory(*config, **arch_kwargs)  # a failure names the user's file and line
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
    with limits_set(dict(options.limits)):
        return _load_model(path, options)


def _load_model(path: str | Path, options: LoadOptions) -> LoadedModel:
    prefix_option(options.strip_prefix, options.select)  # a usage error before any reading
    raw = read_checkpoint(path, allow_globals=options.allow_globals, trust=options.trust_checkpoint)
    key_prefix, ignored_keys = "", 0
    # A TorchScript archive with --arch: only its weights, loaded into the user's architecture.
    as_module = isinstance(raw.obj, nn.Module) and not (
        raw.format == "torchscript" and options.arch is not None
    )
    scripted = as_module and raw.format == "torchscript"
    if as_module:
        model: nn.Module = raw.obj
        if raw.format == "torch-export":
            materialise_layers(model)
        if scripted:  # --module picks the scripted submodule, which is then converted
            model = python_module_from_torchscript(
                scripted_submodule(model, options.module), raw.path.name
            )
        arch, state_key = f"<{raw.format}>", None
        kwargs: dict[str, Any] = {}
    else:
        candidates = find_state_dicts(raw.obj)

        def fits(meta: nn.Module) -> object:
            return choose_state_dict(
                candidates,
                meta,
                state_key=options.state_key,
                strip_prefix=options.strip_prefix,
                select=options.select,
            )

        model, arch, kwargs = build_architecture(
            options.arch,
            options.arch_kwargs,
            raw.metadata,
            Path(path).name,
            fits,
            arch_config=options.arch_config,
        )
        chosen = choose_state_dict(
            candidates,
            model,
            state_key=options.state_key,
            strip_prefix=options.strip_prefix,
            select=options.select,
        )
        load_into(model, chosen.state)
        state_key, key_prefix, ignored_keys = chosen.key, chosen.prefix, chosen.ignored
    model.eval()
    model = select_module(model, None if scripted else options.module)
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
        arch_config=None if as_module else options.arch_config,
        key_prefix=key_prefix,
        ignored_keys=ignored_keys,
    )

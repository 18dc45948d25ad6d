"""The Python API: audit a model in memory, or load the model the command line would audit.

``genaudit.sdr(model, inputs)`` and ``genaudit.stretch(model, inputs)`` take any ``nn.Module``
and its inputs, and return the result dataclasses the command line reports (``to_dict()``,
``to_rows()``, ``to_pandas()``); ``genaudit.load(path, ...)`` reads a checkpoint as
``genaudit sdr PATH ...`` does. Nothing here prints or exits: errors are
:class:`~genaudit.errors.GenauditError` subclasses (``exc.lines("api")`` phrases their hints
with keyword arguments). The model's training flags, hooks, device, the global random state
and the grad mode are as they were afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn

from .analysis.distributed import DistributedRun
from .analysis.sdr import SDRResult, run_sdr
from .analysis.stretch import StretchResult, choose_stretch_layers, run_stretch
from .analysis.transforms import make_transform
from .config import DEFAULT_TOLERANCE, Settings
from .errors import UsageError
from .io.limits import LIMITS
from .model.hooks import eval_mode
from .model.inputs import InputSource, callable_source, feeding, held_source, trial_forward
from .model.layers import LayerRecord, select_layers, walk_layers
from .model.levels import split_selectors
from .model.loading import LoadedModel, LoadOptions, load_model, resolve_device
from .model.user_code import read_arch_config

__all__ = ["Inputs", "as_source", "load", "load_checkpoint", "sdr", "stretch"]

_DEFAULTS = Settings()

#: What the analyses accept as a model's inputs (see :func:`as_source`).
Inputs: TypeAlias = (
    Tensor
    | tuple[Tensor, ...]
    | Iterable[Tensor | Sequence[Tensor]]
    | Callable[[int, torch.Generator, torch.device], Tensor | Sequence[Tensor]]
    | InputSource
)


# --------------------------------------------------------------------------- inputs


def _tensors(tensors: Sequence[Tensor], describe: dict[str, Any]) -> InputSource:
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in tensors}
    if len(sizes) != 1 or -1 in sizes:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise UsageError(f"the inputs do not share a batch dimension ({shapes})")
    return held_source([t.detach() for t in tensors], describe)


def _batch(item: Any, k: int) -> tuple[Tensor, ...]:
    items = (item,) if isinstance(item, Tensor) else item
    if not isinstance(items, tuple | list) or not items:
        raise UsageError(f"batch {k} of the inputs is a {type(item).__name__}, not tensors")
    if not all(isinstance(t, Tensor) for t in items):
        raise UsageError(f"batch {k} of the inputs holds something other than tensors")
    return tuple(items)


def as_source(inputs: Inputs, *, seed: int = 0, num_samples: int | None = None) -> InputSource:
    """The model's inputs, by sample index, from what a user has in hand.

    Parameters
    ----------
    inputs
        - a tensor ``(N, …)``: N samples of the one positional input;
        - a tuple of tensors sharing the first dimension: N samples of each positional input;
        - a sampler ``fn(batch_size, generator, device)`` returning a tensor or a tuple (drawn
          per block of samples from a generator seeded by ``seed``, so sample k does not depend
          on the batch size);
        - any other iterable (a list of batches, a generator, a ``DataLoader``) of batches, each
          a tensor or a tuple/list of positional inputs: read until ``num_samples`` samples;
        - an :class:`~genaudit.model.inputs.InputSource`, as it is.
    """
    if isinstance(inputs, InputSource):
        return inputs
    if isinstance(inputs, Tensor):
        return _tensors((inputs,), {"kind": "tensors"})
    if isinstance(inputs, tuple) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return _tensors(inputs, {"kind": "tensors"})
    if callable(inputs) and not isinstance(inputs, nn.Module):
        return callable_source(inputs, seed, "the sampler", {"kind": "sampler", "seed": seed})
    if isinstance(inputs, Iterable) and not isinstance(inputs, str | bytes | Mapping):
        batches: list[tuple[Tensor, ...]] = []
        count = 0
        for k, item in enumerate(inputs):
            batch = _batch(item, k)
            batches.append(batch)
            count += int(batch[0].shape[0]) if batch[0].ndim else 0
            if num_samples is not None and count >= num_samples:
                break
        if not batches:
            raise UsageError("the inputs hold no batch")
        if len({len(b) for b in batches}) != 1:
            raise UsageError("the batches of the inputs have different numbers of tensors")
        joined = tuple(torch.cat(parts) for parts in zip(*batches, strict=True))
        return _tensors(joined, {"kind": "batches", "batches": len(batches)})
    raise UsageError(
        f"inputs of type {type(inputs).__name__} are not understood",
        "pass a tensor, a tuple of tensors, an iterable of batches or a sampler function",
    )


# --------------------------------------------------------------------------- running


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextmanager
def _audit_state(model: nn.Module, device: str | torch.device | None) -> Iterator[torch.device]:
    """The device to run on (the model's own by default; another is used for the call and the
    model moved back); the model in eval mode, and its training flags, the global random state
    and the grad mode restored afterwards."""
    home = _model_device(model)
    dev = home if device is None else resolve_device(str(device))
    cuda = [d for d in {home, dev} if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), eval_mode(model):
        if dev != home:
            model.to(dev)
        try:
            yield dev
        finally:
            if dev != home:
                model.to(home)


def _chosen(
    model: nn.Module,
    source: InputSource,
    dev: torch.device,
    layers: str | Sequence[str] | Sequence[LayerRecord] | None,
    level_overrides: Mapping[str, str] | None,
) -> tuple[list[LayerRecord], list[str] | None]:
    """The layer walk (after a trial forward pass), and the selectors, or the records given."""
    source = feeding(model, source)
    trial_forward(model, source, dev)
    given = [layers] if isinstance(layers, str) else list(layers or ())
    if given and all(isinstance(r, LayerRecord) for r in given):
        return [r for r in given if isinstance(r, LayerRecord)], None
    records = walk_layers(model, source.first_batch(dev), level_overrides)
    return records, split_selectors([str(x) for x in given])


def _count(source: InputSource, num_samples: int | None) -> int:
    if num_samples is not None:
        return num_samples
    if source.available is not None:
        return min(source.available, _DEFAULTS.num_samples)
    return _DEFAULTS.num_samples


def sdr(
    model: nn.Module,
    inputs: Inputs,
    *,
    layers: str | Sequence[str] | Sequence[LayerRecord] | None = None,
    num_samples: int | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    device: str | torch.device | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    level_overrides: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    distributed: DistributedRun | None = None,
) -> SDRResult:
    """Spectral density ratio of every (filter, activation map) pair of ``model``'s layers.

    Parameters
    ----------
    model : nn.Module
        Any module; it is run in eval mode and left as it was.
    inputs
        Its inputs (see :func:`as_source`).
    layers : str or sequence, optional
        Level names, dotted names, globs or indices (as ``--layers``), or layer records from
        :func:`~genaudit.model.layers.walk_layers`; default: every layer.
    num_samples : int, optional
        N; default: every sample of tensor inputs up to 512, else 512.
    batch_size, device, tolerance, seed
        Samples per forward pass; where to run (default: the model's device); the
        ``|log10 SDR|`` under which a pair counts as generic; the seed of sampler inputs.
    level_overrides : mapping, optional
        Dotted names or globs → level names, as in the configuration file.
    progress : callable, optional
        Called with the number of samples of each finished batch.
    distributed : DistributedRun, optional
        This process's place in a torchrun job (:mod:`genaudit.analysis.distributed`).

    Returns
    -------
    SDRResult
        Per layer and per level, as ``genaudit sdr`` reports it.
    """
    source = as_source(inputs, seed=seed, num_samples=num_samples)
    with _audit_state(model, device) as dev:
        records, selectors = _chosen(model, source, dev, layers, level_overrides)
        chosen = records if selectors is None else select_layers(records, selectors)
        return run_sdr(
            model, chosen, source, num_samples=_count(source, num_samples),
            batch_size=batch_size, device=dev, tolerance=tolerance, progress=progress,
            group=distributed,
        )  # fmt: skip


def stretch(
    model: nn.Module,
    inputs: Inputs,
    *,
    layers: str | Sequence[str] | None = None,
    factor: float = 1.5,
    axis: str = "horizontal",
    transform: str = "stretch",
    num_samples: int | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    device: str | torch.device | None = None,
    seed: int = 0,
    keep_samples: int = 0,
    level_overrides: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> StretchResult:
    """Stretch the activation maps of hidden layers and compare with stretching the output.

    Parameters
    ----------
    model : nn.Module
        A model whose output is maps ``(N, C, …)``; its weights are never changed.
    inputs
        Its inputs (see :func:`as_source`).
    layers : str or sequence, optional
        Where to intervene (as ``--layers``: a level means its last convolution that runs);
        default: the last convolution of each level from projection to image.
    factor, axis, transform
        The stretch factor (or the shift in pixels with ``transform="shift"``) and its axis
        (``horizontal``, ``vertical``, ``depth`` or ``both``).
    num_samples, batch_size, device, seed, level_overrides, progress
        As for :func:`sdr`.
    keep_samples : int
        Keep this many samples of every output for pictures (``result.samples``).

    Returns
    -------
    StretchResult
        mse, baseline and ``rel_mse = mse / baseline`` per layer, as ``genaudit stretch``
        reports them.
    """
    op = make_transform(transform, factor, axis)
    source = as_source(inputs, seed=seed, num_samples=num_samples)
    with _audit_state(model, device) as dev:
        records, selectors = _chosen(model, source, dev, layers, level_overrides)
        chosen = choose_stretch_layers(records, selectors or ())
        return run_stretch(
            model, records, chosen, source, transform=op, num_samples=_count(source, num_samples),
            batch_size=batch_size, device=dev, keep_samples=keep_samples, progress=progress,
        )  # fmt: skip


# --------------------------------------------------------------------------- loading


def load_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    arch_config: str | Path | Mapping[str, Any] | None = None,
    state_key: str | None = None,
    select: str | None = None,
    strip_prefix: str | None = None,
    module: str | None = None,
    allow_globals: Sequence[str] = (),
    trust_checkpoint: bool = False,
    limits: Mapping[str, int] | None = None,
) -> LoadedModel:
    """:func:`load` with where the model came from (format, SHA-256, state key, prefix …)."""
    if limits:
        unknown = sorted(set(limits) - set(LIMITS))
        if unknown:
            raise UsageError(f"unknown limits {unknown}", f"limits are: {', '.join(LIMITS)}")
    config = arch_config
    if isinstance(config, str | Path):
        config = read_arch_config(config)
    options = LoadOptions(
        arch=arch, arch_kwargs=dict(arch_kwargs or {}),
        arch_config=dict(config) if config is not None else None, state_key=state_key,
        strip_prefix=strip_prefix, select=select, module=module,
        allow_globals=tuple(allow_globals), trust_checkpoint=trust_checkpoint,
        limits=tuple((limits or {}).items()),
    )  # fmt: skip
    return load_model(path, options)


def load(path: str | Path, *, device: str | torch.device = "cpu", **options: Any) -> nn.Module:
    """The model ``genaudit sdr PATH`` audits, in eval mode on ``device``.

    Parameters
    ----------
    path : str or Path
        A checkpoint: safetensors (or a sharded index), a torch state dict, a Lightning
        ``.ckpt``, a nested dict; code-bearing files only with ``trust_checkpoint=True``.
    device : str or torch.device
        ``cpu`` (default), ``auto``, ``cuda`` or ``cuda:N``.
    **options
        ``arch`` (a registered name, ``pkg.module:Factory`` or ``path/to/file.py:Factory``),
        ``arch_kwargs`` (a dict), ``arch_config`` (a dict or a JSON file: the factory's one
        config object), ``state_key``, ``select``, ``strip_prefix``, ``module``,
        ``allow_globals``, ``trust_checkpoint``, ``limits`` (names of the limits → values):
        see :func:`load_checkpoint` and the command line's options of the same names.
    """
    loaded = load_checkpoint(path, **options)
    return loaded.model.to(resolve_device(str(device))).eval()

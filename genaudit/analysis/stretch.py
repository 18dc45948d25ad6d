"""Hidden-layer stretch interventions (docs/method.md).

For fixed inputs z, each chosen layer ℓ has its output replaced by ``T(output)`` (every channel and
sample) while everything downstream runs unchanged; the result is compared with transforming the
model's output directly:

- ``mse_ℓ = mean (G_ℓ^T(z) − T G(z))²`` over samples, channels and pixels,
- ``baseline = mean (G(z) − T G(z))²`` (not intervening at all),
- ``rel_mse_ℓ = mse_ℓ / baseline``: 0 is perfect extrapolation, 1 no better than doing nothing.

Cost per batch: one plain forward pass, plus for each chosen layer only the part of the network
downstream of it, the upstream values being those of the plain pass (``replay.Replayer``; a full
forward pass whenever that could not give the same numbers exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import NothingToAnalyseError, UsageError, option
from ..model.functional import intervene_functional
from ..model.hooks import eval_mode, forward_hooks
from ..model.layers import LEVELS, LayerRecord, first_tensor, select_layers
from ..model.levels import Level
from .finite import check_finite_weights
from .frames import data_frame
from .precision import full_float32
from .replay import Replayer
from .transforms import Transform, axis_dims

CSV_HEADER = ("layer", "level", "mse", "baseline", "rel_mse")

# Levels that default_stretch_layers intervenes at, in the order of the levels.
STRETCH_LEVELS = LEVELS

# False runs every layer's pass as a full forward pass (the reference the replay is tested on).
_REPLAY = True
# How many layer passes the last run_stretch ran downstream only and in full (for tests).
_LAST_PASSES: dict[str, int] = {}


class Batches(Protocol):
    """The model's inputs, batch after batch.

    ``batches(num_samples, batch_size, device)`` yields the positional inputs of samples
    ``0 … num_samples-1`` in consecutive batches of at most ``batch_size`` samples, on ``device``.
    """

    def batches(
        self, num_samples: int, batch_size: int, device: torch.device | str
    ) -> Iterable[tuple[torch.Tensor, ...]]: ...


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StretchLayerResult:
    """Stretch error of intervening at one layer."""

    index: int
    name: str
    level: Level
    mse: float
    baseline: float
    rel_mse: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "level": self.level,
            "mse": self.mse,
            "baseline": self.baseline,
            "rel_mse": self.rel_mse,
        }


@dataclass(frozen=True, eq=False)
class StretchSamples:
    """The first few samples, CPU float32, for pictures.

    ``original`` is G(z), ``stretched`` is T G(z), ``intervened[k]`` is the output after
    intervening at ``layers[k]`` of the result; every tensor has shape (K, C, *grid).
    """

    original: torch.Tensor
    stretched: torch.Tensor
    intervened: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class StretchResult:
    """Stretch errors per chosen layer, in execution order (``samples`` is not serialised)."""

    transform: dict[str, Any]
    num_samples: int
    layers: tuple[StretchLayerResult, ...]
    samples: StretchSamples | None = None
    output_shape: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def baseline(self) -> float:
        """``mean (G(z) − T G(z))²``, shared by every layer."""
        return self.layers[0].baseline if self.layers else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "transform": dict(self.transform),
            "num_samples": self.num_samples,
            "output_shape": list(self.output_shape),
            "baseline": self.baseline,
            "layers": [layer.to_dict() for layer in self.layers],
            "notes": list(self.notes),
        }

    def csv_rows(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Header ``layer, level, mse, baseline, rel_mse`` and one row per layer."""
        rows = [(r.name, r.level, r.mse, r.baseline, r.rel_mse) for r in self.layers]
        return CSV_HEADER, rows

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per layer intervened at: index, layer, level, mse, baseline, rel_mse."""
        return [
            {"index": r.index, "layer": r.name, "level": r.level, "mse": r.mse,
             "baseline": r.baseline, "rel_mse": r.rel_mse}
            for r in self.layers
        ]  # fmt: skip

    def to_pandas(self) -> Any:
        """:meth:`to_rows` as a ``pandas.DataFrame`` (pandas is optional: a UsageError
        without it)."""
        return data_frame(self.to_rows())


# --------------------------------------------------------------------------- choosing layers


def default_stretch_layers(records: Sequence[LayerRecord]) -> list[LayerRecord]:
    """Every level that is present: the last convolution of the level that runs.

    ``projection``, ``coarse``, ``intermediate`` and ``fine`` are the hidden levels; ``image``
    is included as the sanity check (its error is 0 or close to it). Execution order.
    """
    return _last_of_levels(records, STRETCH_LEVELS)


def _last_of_levels(records: Sequence[LayerRecord], levels: Sequence[str]) -> list[LayerRecord]:
    chosen: dict[int, LayerRecord] = {}
    for level in levels:
        members = [r for r in records if r.level == level and r.is_conv]
        if members:
            last = max(members, key=lambda r: r.index)
            chosen[last.index] = last
    return [chosen[i] for i in sorted(chosen)]


def choose_stretch_layers(
    records: Sequence[LayerRecord], selectors: Sequence[str] = ()
) -> list[LayerRecord]:
    """Layers to intervene at, in execution order.

    No selector → ``default_stretch_layers``. A level name means the last layer of that level
    that runs (docs/method.md); ``all`` means every convolution; dotted names, globs and indices
    select as in ``layers.select_layers`` (naming a Linear layer is refused by ``run_stretch``).
    """
    if not selectors:
        chosen = default_stretch_layers(records)
        if not chosen:
            raise NothingToAnalyseError(
                "the model has no convolution layer to intervene at",
                "stretch interventions act on the output maps of convolutions",
            )
        return chosen
    picked: dict[int, LayerRecord] = {}
    for sel in selectors:
        sel = sel.strip()
        if sel in LEVELS:
            hits = _last_of_levels(records, [sel])
            if not hits:
                hits = select_layers(records, [sel])  # raises the usual "no layer matches"
        elif sel == "all":
            hits = [r for r in records if r.is_conv]
        else:
            hits = select_layers(records, [sel])
        picked.update((r.index, r) for r in hits)
    return [picked[i] for i in sorted(picked)]


# --------------------------------------------------------------------------- intervening


@contextmanager
def intervene(
    model: nn.Module, module: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[nn.Module]:
    """Replace ``module``'s output by ``transform(output)`` while the context is open.

    The model is in eval mode inside the context; the hook is removed and every module's
    training flag restored on exit, also when the forward pass raises. Gradients are the
    caller's business (``run_stretch`` runs under ``torch.no_grad()``). A module that runs
    several times per forward pass is transformed every time.
    """
    if not any(m is module for m in model.modules()):
        raise UsageError("the module to intervene at is not part of the model")

    def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise UsageError(
                f"cannot intervene at {type(mod).__name__}: its output is "
                f"{type(output).__name__}, not a tensor"
            )
        return transform(output)

    with eval_mode(model), forward_hooks([(module, hook)]):
        yield model


def output_map(output: Any) -> torch.Tensor:
    """The model's output as maps ``(N, C, *grid)``; a tuple contributes its first tensor."""
    t = first_tensor(output)
    if t is None:
        raise NothingToAnalyseError(
            f"the model returned {type(output).__name__}, not a tensor",
            f"stretch compares output maps: audit a generator or decoder (see {option('module')})",
        )
    if t.ndim not in (3, 4, 5) or not t.is_floating_point():
        shape = "×".join(map(str, t.shape))
        kind = "" if t.is_floating_point() else f" ({t.dtype})"
        raise NothingToAnalyseError(
            f"the model's output has shape {shape}{kind}: not a map (N, C, L), "
            "(N, C, H, W) or (N, C, D, H, W), so a stretched output cannot be compared",
            f"stretch applies to generators and decoders; use {option('module')} to pick one",
        )
    return t


def _check_layer(record: LayerRecord, axis: str | None) -> None:
    if not record.is_conv or len(record.output_shape) < 2:
        raise UsageError(
            f"layer {record.name!r} ({record.type}) does not output a map, "
            "so it cannot be stretched",
            "choose convolution layers or levels (projection, coarse, intermediate, fine, image)",
        )
    if axis is not None:
        try:
            axis_dims(axis, len(record.output_shape) - 1)
        except UsageError as exc:
            raise UsageError(f"layer {record.name!r}: {exc.raw_message}", exc.raw_hint) from None


def _squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ (a − b)² in float64, as a 0-d tensor on the maps' device (no host sync per batch)."""
    return (a.to(torch.float64) - b.to(torch.float64)).square().sum()


def run_stretch(
    model: nn.Module,
    records: Sequence[LayerRecord],
    selected: Sequence[LayerRecord] | None,
    source: Batches,
    *,
    transform: Transform,
    num_samples: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    keep_samples: int = 8,
    progress: Callable[[int], None] | None = None,
) -> StretchResult:
    r"""Stretch error of intervening at each selected layer (docs/method.md).

    .. math::

        \mathrm{mse}_\ell = \frac{1}{N C |\Omega|} \sum_{n, c, x}
            \bigl(G_\ell^T(z_n) - T\,G(z_n)\bigr)^2_{c, x}, \qquad
        \mathrm{baseline} = \frac{1}{N C |\Omega|} \sum_{n, c, x}
            \bigl(G(z_n) - T\,G(z_n)\bigr)^2_{c, x},

    and ``rel_mse_ℓ = mse_ℓ / baseline`` (NaN, with a note, when the baseline is 0).

    Parameters
    ----------
    model : nn.Module
        Already on ``device``; its output (or the first tensor of a tuple output) must be maps
        (N, C, L), (N, C, H, W) or (N, C, D, H, W). Weights are never changed.
    records : sequence of LayerRecord
        ``walk_layers`` of ``model``.
    selected : sequence of LayerRecord or None
        Layers to intervene at (``choose_stretch_layers``); None → ``default_stretch_layers``.
    source : Batches
        Inputs z (the loader's ``InputSource`` is one); the same samples are used for every
        layer.
    transform : Transform
        ``T``, applied to the model's output and to each chosen layer's output.
    num_samples, batch_size : int
        N, and how many samples run per forward pass. Squared errors are summed in float64
        batch by batch, so memory does not grow with N and the numbers do not depend on the
        batch size.
    device : torch.device or str
        Where the inputs are sent.
    keep_samples : int
        How many of the first samples to keep (CPU float32) for pictures; 0 keeps none.
    progress : callable, optional
        Called with the number of samples of each batch once it is done.

    Returns
    -------
    StretchResult
        One ``StretchLayerResult`` per selected layer, in execution order.
    """
    if num_samples < 1:
        raise UsageError(f"{option('num_samples')} must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise UsageError(f"{option('batch_size')} must be at least 1, got {batch_size}")
    chosen = list(selected) if selected is not None else choose_stretch_layers(records)
    chosen = sorted({r.index: r for r in chosen}.values(), key=lambda r: r.index)
    if not chosen:
        raise UsageError("no layer chosen to intervene at")
    axis = getattr(transform, "axis", None)
    for record in chosen:
        _check_layer(record, axis if isinstance(axis, str) else None)
    check_finite_weights(model, records)

    def intervention(record: LayerRecord) -> Callable[[], AbstractContextManager[nn.Module]]:
        """A module's forward hook, or for a functional convolution a mode on its op."""
        if record.is_functional:
            return lambda: intervene_functional(model, record.op_keys, transform)
        module = model.get_submodule(record.name)
        return lambda: intervene(model, module, transform)

    interventions = [intervention(r) for r in chosen]
    replayer = Replayer(
        model, [None if r.is_functional else model.get_submodule(r.name) for r in chosen]
    )
    replayer.enabled = replayer.enabled and _REPLAY

    sq_base = torch.zeros((), dtype=torch.float64)
    sq_layers = [torch.zeros((), dtype=torch.float64) for _ in chosen]
    count = 0
    out_shape: tuple[int, ...] = ()
    keep = max(0, int(keep_samples))
    kept_orig: list[torch.Tensor] = []
    kept_stretched: list[torch.Tensor] = []
    kept_layers: list[list[torch.Tensor]] = [[] for _ in chosen]
    n_kept = 0

    def _keep(t: torch.Tensor, n: int) -> torch.Tensor:
        return t[:n].detach().to("cpu", torch.float32).clone()

    with eval_mode(model), torch.no_grad(), full_float32(device):
        for inputs in source.batches(num_samples, batch_size, device):
            out = output_map(replayer.baseline(partial(model, *inputs)))
            target = transform(out)
            if target.shape != out.shape:
                raise UsageError(
                    f"the transform changed the output's shape from {tuple(out.shape)} "
                    f"to {tuple(target.shape)}"
                )
            out_shape = tuple(out.shape[1:])
            count += out.numel()
            sq_base = sq_base.to(out.device) + _squared_error(out, target)
            take = min(keep - n_kept, out.shape[0])
            if take > 0:
                kept_orig.append(_keep(out, take))
                kept_stretched.append(_keep(target, take))
            for k, intervening in enumerate(interventions):
                with intervening():
                    y = output_map(replayer.forward(k, partial(model, *inputs)))
                if y.shape != out.shape:
                    raise NothingToAnalyseError(
                        f"intervening at {chosen[k].name!r} changed the output's shape from "
                        f"{tuple(out.shape)} to {tuple(y.shape)}"
                    )
                sq_layers[k] = sq_layers[k].to(y.device) + _squared_error(y, target)
                if take > 0:
                    kept_layers[k].append(_keep(y, take))
            n_kept += max(take, 0)
            if progress is not None:
                progress(out.shape[0])

    _LAST_PASSES.update(replayed=replayer.replayed, full=replayer.full)
    baseline = float(sq_base.item()) / count
    notes: list[str] = []
    if baseline == 0:
        notes.append(
            f"the transform leaves the output unchanged (baseline mse 0, output grid "
            f"{'×'.join(map(str, out_shape[1:]))}): rel_mse is undefined (NaN)"
        )
    elif not math.isfinite(baseline):
        notes.append("the model's output holds NaN or infinite values: baseline is not finite")
    layers = []
    for record, sq in zip(chosen, sq_layers, strict=True):
        mse = float(sq.item()) / count
        rel = mse / baseline if baseline > 0 else math.nan
        if not math.isfinite(mse) and math.isfinite(baseline):
            notes.append(f"intervening at {record.name!r} gives NaN or infinite outputs")
        layers.append(
            StretchLayerResult(record.index, record.name, record.level, mse, baseline, rel)
        )
    samples = None
    if n_kept > 0:
        samples = StretchSamples(
            original=torch.cat(kept_orig),
            stretched=torch.cat(kept_stretched),
            intervened=tuple(torch.cat(parts) for parts in kept_layers),
        )
    return StretchResult(
        transform=transform.to_dict(),
        num_samples=num_samples,
        layers=tuple(layers),
        samples=samples,
        output_shape=out_shape,
        notes=tuple(notes),
    )

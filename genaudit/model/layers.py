"""Module → ordered layer records with levels (docs/method.md).

The order is the order in which layers *run*, found by a dry run with forward hooks, not the
order in which they were registered.

Levels (names in :mod:`genaudit.model.levels`), assigned from the shapes seen in the dry run:

- ``linear``: every Linear layer.
- ``image`` or ``readout``: the last convolution that runs. It is ``readout`` when the model's
  output is spatially smaller than its input: the last convolution's output grid has fewer points
  than the reference grid, as for an encoder's code or a discriminator's score. The reference is
  the grid of the model's first input when it is a map (``(N, C, *grid)`` with more than one
  point: padding inside the model, such as an image-to-image network's reflection padding, does
  not count), otherwise the input grid of the first convolution fed a map. A generator fed a latent
  vector or a 1×1 map, a super-resolution or image-to-image network and a vocoder end at
  ``image``, and so does a model none of whose convolutions is fed a map. Linear layers are never
  the reference: a generator
  whose first layer is Linear (z → Linear → a small map → convolutions) is measured from the map
  its Linear layer makes, smaller than its image, so it ends at ``image``; a Linear layer ahead
  of convolutions that shrink their maps (a conditional discriminator's label embedding turned
  into an extra input map) does not keep the last of them from being a ``readout``.
- ``projection``: any other convolution fed a 1×1 map.
- ``coarse``, ``intermediate``, ``fine``: the other convolutions, grouped by the number of points
  of their output grid (three contiguous groups, smallest first; ``coarse`` and ``fine`` for two
  resolutions, ``fine`` for one).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..analysis.spectral import sdr_skip_reason
from ..errors import NothingToAnalyseError, UsageError, option
from .functional import FunctionalSpy, OpKey
from .hooks import eval_mode, forward_hooks
from .levels import ALL_LEVELS, LEVELS, LINEAR_LEVEL, READOUT_LEVEL, Level, is_level, matches_layer

__all__ = [
    "ALL_LEVELS",
    "LEVELS",
    "LINEAR_LEVEL",
    "READOUT_LEVEL",
    "AnalysisKind",
    "LayerRecord",
    "walk_layers",
]

#: Which statistic a layer gets: SDR on a grid, the trace method on vectors, or none.
AnalysisKind = Literal["sdr", "trace", "skipped"]


@dataclass(frozen=True)
class LayerRecord:
    """One Linear or convolution layer as seen in a dry run.

    Shapes exclude the batch dimension. ``input_shape`` is the layer's actual input (for
    ``Upsample + Conv``, the upsampled map). A convolution called functionally (type such as
    ``conv2d (functional)``) has its call ``site`` (``file:line``) and ``op_keys``, which
    identify its op in a forward pass (:mod:`genaudit.model.functional`).
    """

    index: int
    name: str
    type: str
    transposed: bool
    dims: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    calls: int
    level: Level
    analysis: AnalysisKind
    reason: str | None
    pairs: int
    site: str | None = None
    op_keys: tuple[OpKey, ...] = ()

    @property
    def is_conv(self) -> bool:
        return self.type != "Linear"

    @property
    def is_functional(self) -> bool:
        """A convolution called functionally, not the forward of a module."""
        return bool(self.op_keys)

    @property
    def grid(self) -> tuple[int, ...]:
        """The spatial grid of the layer's input (empty for Linear)."""
        return tuple(self.input_shape[1:]) if self.is_conv else ()

    @property
    def output_grid(self) -> tuple[int, ...]:
        return tuple(self.output_shape[1:]) if self.is_conv else ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["op_keys"]
        if d["site"] is None:
            del d["site"]
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


def is_audited_layer(module: nn.Module) -> bool:
    """Conv1d/2d/3d, ConvTranspose1d/2d/3d (also parametrised) and Linear."""
    return isinstance(module, nn.modules.conv._ConvNd | nn.Linear)


def int_tuple(value: Any, d: int) -> tuple[int, ...]:
    """A convolution's size argument as ints: a sequence as it is, an int repeated ``d`` times."""
    if isinstance(value, tuple | list):
        return tuple(int(x) for x in value)
    return (int(value),) * d


def first_tensor(x: Any) -> torch.Tensor | None:
    """The first tensor in a (nested) tuple or list of outputs, or None."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, tuple | list):
        for item in x:
            t = first_tensor(item)
            if t is not None:
                return t
    return None


@dataclass
class _Seen:
    module: nn.Module
    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    calls: int = 1
    order: int = 0


def dry_run(
    model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> tuple[list[_Seen], FunctionalSpy]:
    """Run ``model`` once: the audited modules in the order they first ran, and the spy that
    saw the convolutions called functionally (:mod:`genaudit.model.functional`)."""
    names = {
        id(m): n for n, m in model.named_modules(remove_duplicate=False) if is_audited_layer(m)
    }
    modules = {id(m): m for m in model.modules() if is_audited_layer(m)}
    seen: dict[int, _Seen] = {}
    tick = itertools.count()  # one clock for module layers and functional ops
    spy = FunctionalSpy(model, tick)

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        key = id(module)
        if key in seen:
            seen[key].calls += 1
            return
        x, y = first_tensor(args), first_tensor(output)
        if x is None or y is None:
            return
        shapes = tuple(x.shape[1:]), tuple(y.shape[1:])
        seen[key] = _Seen(module, names[key], *shapes, order=next(tick))

    hooks = [(m, hook) for m in modules.values()]
    with eval_mode(model), forward_hooks(hooks), torch.no_grad(), spy.watch():
        model(*inputs)
    return list(seen.values()), spy


def _record(index: int, s: _Seen) -> dict[str, Any]:
    m = s.module
    if isinstance(m, nn.Linear):
        return dict(
            index=index, name=s.name, type="Linear", transposed=False, dims=0,
            in_channels=m.in_features, out_channels=m.out_features, kernel_size=(), stride=(),
            padding=(), dilation=(), groups=1, input_shape=s.input_shape,
            output_shape=s.output_shape, calls=s.calls,
        )  # fmt: skip
    assert isinstance(m, nn.modules.conv._ConvNd)
    d = m.weight.ndim - 2
    cls = type(m)
    if parametrize.is_parametrized(m):
        # torch.nn.utils.parametrize swaps in a subclass named Parametrized<Original>
        cls = cls.__bases__[0]
    padding: tuple[int, ...] | str = (
        m.padding if isinstance(m.padding, str) else int_tuple(m.padding, d)
    )
    return dict(
        index=index, name=s.name, type=cls.__name__, transposed=bool(m.transposed), dims=d,
        in_channels=m.in_channels, out_channels=m.out_channels,
        kernel_size=int_tuple(m.kernel_size, d), stride=int_tuple(m.stride, d), padding=padding,
        dilation=int_tuple(m.dilation, d), groups=m.groups, input_shape=s.input_shape,
        output_shape=s.output_shape, calls=s.calls,
    )  # fmt: skip


def _analysis(rec: dict[str, Any]) -> tuple[AnalysisKind, str | None, int]:
    """Which statistic applies: SDR on a grid, the trace method on vectors, or nothing."""
    if rec["type"] == "Linear":
        return "trace", None, 1
    grid = rec["input_shape"][1:]
    if math.prod(grid) == 1:
        return "trace", None, 1
    reason = sdr_skip_reason(grid)
    if reason is not None:
        return "skipped", reason, 0
    return "sdr", None, rec["out_channels"] * (rec["in_channels"] // rec["groups"])


def split_contiguous(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Split ``items`` into ``parts`` contiguous groups as equal as possible (larger first)."""
    q, r = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        size = q + (1 if k < r else 0)
        out.append(list(items[start : start + size]))
        start += size
    return out


def _grid_points(shape: Sequence[int]) -> int:
    """Points of the spatial grid of a ``(C, *grid)`` shape."""
    return math.prod(shape[1:])


def _reads_out(
    records: Sequence[Mapping[str, Any]], convs: Sequence[int], input_points: int | None
) -> bool:
    """Whether the last convolution's output grid is smaller than the reference grid.

    The reference is the model's input grid (``input_points`` points) when it is a map of more
    than one point, else the input grid of the first convolution (``convs``: indices in run
    order) fed a map of more than one point; without either the model is fed vectors or 1×1
    maps and is not a readout.
    """
    fed_maps = [i for i in convs if _grid_points(records[i]["input_shape"]) > 1]
    if not fed_maps:
        return False
    reference = _grid_points(records[fed_maps[0]]["input_shape"])
    if input_points is not None and input_points > 1:
        reference = input_points
    return _grid_points(records[convs[-1]]["output_shape"]) < reference


def input_grid_points(inputs: Sequence[Any]) -> int | None:
    """Points of the grid of the model's first input ``(N, C, *grid)``, or None when it is not
    a map (a latent vector, a label, no tensor)."""
    first = inputs[0] if inputs else None
    if not isinstance(first, torch.Tensor) or first.ndim < 3:
        return None
    return math.prod(int(m) for m in first.shape[2:])


def assign_levels(records: list[dict[str, Any]], input_points: int | None = None) -> list[Level]:
    """Levels for records in execution order (the rule: see the module docstring);
    ``input_points``: the points of the model's input grid (:func:`input_grid_points`)."""
    levels: list[Level] = [LINEAR_LEVEL] * len(records)
    convs = [i for i, r in enumerate(records) if r["type"] != "Linear"]
    if not convs:
        return levels
    last = convs[-1]
    levels[last] = READOUT_LEVEL if _reads_out(records, convs, input_points) else "image"
    rest = []
    for i in convs[:-1]:
        if _grid_points(records[i]["input_shape"]) == 1:
            levels[i] = "projection"
        else:
            rest.append(i)

    def resolution(i: int) -> tuple[int, tuple[int, ...]]:
        grid = tuple(records[i]["output_shape"][1:])
        return (math.prod(grid), grid)

    resolutions = sorted({resolution(i) for i in rest})
    names: list[Level]
    if len(resolutions) >= 3:
        groups = split_contiguous(resolutions, 3)
        names = ["coarse", "intermediate", "fine"]
    elif len(resolutions) == 2:
        groups, names = [[resolutions[0]], [resolutions[1]]], ["coarse", "fine"]
    else:
        groups, names = [resolutions], ["fine"]
    level_of = {res: name for group, name in zip(groups, names, strict=True) for res in group}
    for i in rest:
        levels[i] = level_of[resolution(i)]
    return levels


def walk_layers(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    level_overrides: Mapping[str, str] | None = None,
) -> list[LayerRecord]:
    """Audited layers of ``model`` in execution order, with shapes, levels and analysis.

    ``level_overrides`` maps dotted names or glob patterns to level names (configuration).
    """
    seen, spy = dry_run(model, inputs)
    functional = spy.layers(inputs, {s.name for s in seen})
    if not seen and not functional:
        raise NothingToAnalyseError(
            "no Linear or convolution layer ran in a forward pass of the model",
            f"check {option('module')}: genaudit audits Conv1d/2d/3d, ConvTranspose1d/2d/3d and "
            "Linear layers, and convolutions called functionally",
        )
    timed = [(s.order, _record(0, s)) for s in seen] + [(f.pop("order"), f) for f in functional]
    recs = [{**rec, "index": i} for i, (_, rec) in enumerate(sorted(timed, key=lambda t: t[0]))]
    levels = assign_levels(recs, input_grid_points(inputs))
    out = []
    for rec, level in zip(recs, levels, strict=True):
        skip: str | None = rec.pop("reason", None)  # a functional op that is not analysed
        analysis, reason, pairs = _analysis(rec) if skip is None else ("skipped", skip, 0)
        out.append(LayerRecord(**rec, level=level, analysis=analysis, reason=reason, pairs=pairs))
    if level_overrides:
        out = apply_level_overrides(out, level_overrides)
    return out


def apply_level_overrides(
    records: list[LayerRecord], overrides: Mapping[str, str]
) -> list[LayerRecord]:
    """Reassign levels from configuration: ``{"main.3": "coarse", "decoder.*": "fine"}``."""
    levels: dict[str, Level] = {}
    for pattern, level in overrides.items():
        if not is_level(level):
            raise UsageError(
                f"configuration maps {pattern!r} to unknown level {level!r}",
                f"levels are: {', '.join(ALL_LEVELS)}",
            )
        if not any(matches_layer(r, pattern) for r in records):
            raise UsageError(
                f"configuration maps {pattern!r} to level {level!r}, but no layer matches it",
                "layers: " + ", ".join(r.name for r in records),
            )
        levels[pattern] = level
    result = []
    for r in records:
        for pattern, level in levels.items():
            if matches_layer(r, pattern):
                r = replace(r, level=level)
        result.append(r)
    return result


def select_layers(records: Sequence[LayerRecord], selectors: Sequence[str]) -> list[LayerRecord]:
    """Layers chosen by level names, dotted names, glob patterns or indices (union, run order)."""
    if not selectors:
        return list(records)
    chosen: set[int] = set()
    for sel in selectors:
        sel = sel.strip()
        if sel == "all":
            hits = [r.index for r in records]
        elif sel in ALL_LEVELS:
            hits = [r.index for r in records if r.level == sel]
        else:
            hits = [r.index for r in records if matches_layer(r, sel)]
        if not hits:
            present = sorted({r.level for r in records}, key=ALL_LEVELS.index)
            raise UsageError(
                f"no layer matches {sel!r}",
                f"use a level ({', '.join(present)}), a dotted name such as {records[0].name!r}, "
                "a glob, or an index",
            )
        chosen.update(hits)
    return [r for r in records if r.index in chosen]

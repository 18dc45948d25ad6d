"""Convolutions called functionally (``F.conv2d(x, w)``): found, named, and tapped in a forward.

A convolution that is not the forward of a ``Conv*`` module (a custom layer holding its own
parameter, an equalised learning-rate weight ``w * scale``, a StyleGAN2 modulated convolution
applied with the grouped-convolution trick) is seen by a torch-function mode over
``F.conv1d/2d/3d`` and ``F.conv_transpose1d/2d/3d`` (``F.conv2d`` *is* ``torch.conv2d``: the
mode receives the ``torch`` builtins). One such op is identified across forward passes by its
call site (file and line of the first frame outside torch) and the ordinal of the call at that
site within one forward pass. Its weight is *fixed* when it is a parameter or buffer of the
model, or when two single-sample forward passes give it the same value and shape as the
batched one; otherwise it varies per sample (modulated) and the op is listed, not analysed.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .hooks import eval_mode

__all__ = [
    "PER_SAMPLE_REASON",
    "ConvTap",
    "FunctionalSpy",
    "OpKey",
    "intervene_functional",
]

#: (file, line, ordinal of the call at that line within one forward pass)
OpKey = tuple[str, int, int]

PER_SAMPLE_REASON = "not analysed: weight varies per sample (modulated)"
UNDECIDED_REASON = (
    "not analysed: the weight is computed in the forward pass and one sample cannot tell "
    "whether it varies per sample"
)

# The objects the mode receives: F.conv2d is torch.conv2d, and so on.
_CONV_OPS: dict[Any, tuple[str, int, bool]] = {
    torch.conv1d: ("conv1d", 1, False),
    torch.conv2d: ("conv2d", 2, False),
    torch.conv3d: ("conv3d", 3, False),
    torch.conv_transpose1d: ("conv_transpose1d", 1, True),
    torch.conv_transpose2d: ("conv_transpose2d", 2, True),
    torch.conv_transpose3d: ("conv_transpose3d", 3, True),
}
_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_ARGS_T = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_DEFAULTS: dict[str, Any] = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_MODULE_FORWARDS = ("forward", "_conv_forward")


@dataclass(frozen=True, eq=False)
class ConvCall:
    """The arguments of one convolution op."""

    op: str
    dims: int
    transposed: bool
    x: torch.Tensor
    weight: torch.Tensor
    stride: Any
    padding: Any
    dilation: Any
    groups: int

    @classmethod
    def parse(cls, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ConvCall:
        op, dims, transposed = _CONV_OPS[func]
        given = dict(zip(_ARGS_T if transposed else _ARGS, args, strict=False)) | kwargs
        v = {**_DEFAULTS, **given}
        return cls(op, dims, transposed, v["input"], v["weight"], v["stride"], v["padding"],
                   v["dilation"], int(v["groups"]))  # fmt: skip


def _site(frame: FrameType | None) -> FrameType | None:
    """The first frame outside torch (and this module), or None for a ``Conv*`` module's forward."""
    f = frame
    while f is not None:
        name = f.f_code.co_filename
        if name == __file__ or name.startswith(_TORCH_DIR):
            if f.f_code.co_name in _MODULE_FORWARDS and isinstance(
                f.f_locals.get("self"), nn.modules.conv._ConvNd
            ):
                return None
            f = f.f_back
            continue
        # a Conv* subclass with its own forward is audited as a module, with hooks
        if isinstance(f.f_locals.get("self"), nn.modules.conv._ConvNd):
            return None
        return f
    return None


class _ConvMode(TorchFunctionMode):
    """Sees every convolution op outside ``Conv*`` module forwards; ``reset`` per forward."""

    def __init__(self) -> None:
        super().__init__()
        self._ordinals: dict[tuple[str, int], int] = {}

    def reset(self) -> None:
        self._ordinals.clear()

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _CONV_OPS:
            return func(*args, **kwargs)
        frame = _site(sys._getframe(1))
        if frame is None:
            return func(*args, **kwargs)
        where = (frame.f_code.co_filename, frame.f_lineno)
        n = self._ordinals.get(where, 0)
        self._ordinals[where] = n + 1
        call = ConvCall.parse(func, args, kwargs)
        return self.on_call((*where, n), frame, call, lambda: func(*args, **kwargs))

    def on_call(self, key: OpKey, frame: FrameType, call: ConvCall, run: Callable[[], Any]) -> Any:
        return run()


class ConvTap(_ConvMode):
    """Calls ``before[key](x, weight)`` ahead of the ops whose key is given (statistics)."""

    def __init__(self, before: dict[OpKey, Callable[[torch.Tensor, torch.Tensor], None]]) -> None:
        super().__init__()
        self.before = before

    def on_call(self, key: OpKey, frame: FrameType, call: ConvCall, run: Callable[[], Any]) -> Any:
        take = self.before.get(key)
        if take is not None:
            take(call.x, call.weight)
        return run()


class _Transforming(_ConvMode):
    def __init__(
        self, keys: Sequence[OpKey], transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        super().__init__()
        self.keys, self.transform = set(keys), transform

    def on_call(self, key: OpKey, frame: FrameType, call: ConvCall, run: Callable[[], Any]) -> Any:
        out = run()
        return self.transform(out) if key in self.keys else out


@contextmanager
def intervene_functional(
    model: nn.Module,
    keys: Sequence[OpKey],
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[nn.Module]:
    """Replace the output of the functional convolution ops ``keys`` by ``transform(output)``
    for one forward pass; eval mode inside, the mode removed and training flags restored on
    exit (also when the forward pass raises)."""
    with eval_mode(model), _Transforming(keys, transform):
        yield model


def site_text(filename: str, line: int) -> str:
    """``file:line``, the file relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        rel = filename
    return f"{filename if rel.startswith('..') else rel}:{line}"


def _ints(value: Any, d: int) -> tuple[int, ...]:
    if isinstance(value, tuple | list):
        return tuple(int(x) for x in value)
    return (int(value),) * d


@dataclass
class _Op:
    key: OpKey
    order: int
    owner: str
    param: str | None
    call: ConvCall
    out_shape: tuple[int, ...]
    weight: torch.Tensor | None  # a copy, for weights that are not a parameter or buffer


class _Probe(_ConvMode):
    """Records every op of one forward pass (the dry run and its single-sample probes)."""

    def __init__(self, tensors: dict[int, str], modules: dict[int, str], tick: Iterator[int]):
        super().__init__()
        self.tensors, self.modules, self.tick = tensors, modules, tick
        self.ops: list[_Op] = []

    def on_call(self, key: OpKey, frame: FrameType, call: ConvCall, run: Callable[[], Any]) -> Any:
        out = run()
        param = self.tensors.get(id(call.weight))
        owner = ""
        f: FrameType | None = frame
        while f is not None:
            name = self.modules.get(id(f.f_locals.get("self")))
            if name is not None:
                owner = name
                break
            f = f.f_back
        copy = None if param is not None else call.weight.detach().clone()
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        self.ops.append(_Op(key, next(self.tick), owner, param, call, shape, copy))
        return out


class FunctionalSpy:
    """The functional convolutions of one dry run: ``with spy.watch(): model(*inputs)``, then
    :meth:`layers` (which may run two single-sample probes to tell fixed weights from
    per-sample ones)."""

    def __init__(self, model: nn.Module, tick: Iterator[int]) -> None:
        self.model = model
        tensors = itertools.chain(
            model.named_parameters(remove_duplicate=False),
            model.named_buffers(remove_duplicate=False),
        )
        self._tensors = {id(t): n for n, t in tensors}
        self._modules = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self._main = _Probe(self._tensors, self._modules, tick)

    def watch(self) -> _Probe:
        return self._main

    def _probe(self, inputs: tuple[torch.Tensor, ...]) -> dict[OpKey, _Op] | None:
        probe = _Probe(self._tensors, self._modules, itertools.count())
        try:
            with eval_mode(self.model), torch.no_grad(), probe:
                self.model(*inputs)
        except Exception:  # a model that takes no single sample: cannot tell, said so
            return None
        return {op.key: op for op in probe.ops}

    def layers(self, inputs: tuple[torch.Tensor, ...], taken: set[str]) -> list[dict[str, Any]]:
        """One dict per functional layer: ``order`` (its first run), the fields of a layer
        record, and ``reason`` (None when its weight is fixed). ``taken``: names in use."""
        ops = self._main.ops
        if not ops:
            return []
        probes: list[dict[OpKey, _Op]] | None = None
        if any(op.param is None for op in ops):
            probes = self._probes(inputs)
        groups: dict[tuple[Any, ...], list[_Op]] = {}
        for op in ops:  # a parameter reused at one call site is one layer run several times
            group = (op.key[0], op.key[1], op.param) if op.param is not None else op.key
            groups.setdefault(group, []).append(op)
        out = []
        used = set(taken)
        for members in groups.values():
            first = members[0]
            reason = None
            for op in members:
                reason = reason or self._reason(op, probes)
            shape_op = first
            if reason is not None and probes:  # shapes of one sample, not the folded batch
                shape_op = probes[0].get(first.key, first)
            name = self._name(first, used)
            used.add(name)
            site = site_text(first.key[0], first.key[1])
            rec = _fields(shape_op, name, len(members))
            rec.update(order=first.order, reason=reason and f"{reason}, called at {site}",
                       site=site, op_keys=tuple(op.key for op in members))  # fmt: skip
            out.append(rec)
        return out

    def _probes(self, inputs: tuple[torch.Tensor, ...]) -> list[dict[OpKey, _Op]] | None:
        n = min((int(t.shape[0]) for t in inputs if t.ndim > 0), default=0)
        if n < 2:
            return None
        found = [self._probe(tuple(t[k : k + 1] for t in inputs)) for k in (0, 1)]
        return None if found[0] is None or found[1] is None else [found[0], found[1]]

    @staticmethod
    def _reason(op: _Op, probes: list[dict[OpKey, _Op]] | None) -> str | None:
        if op.call.x.ndim != op.call.dims + 2:
            return "not analysed: the input has no batch dimension"
        if op.param is not None:
            return None
        if probes is None:
            return UNDECIDED_REASON
        a, b = probes[0].get(op.key), probes[1].get(op.key)
        if a is None or b is None or a.weight is None or b.weight is None or op.weight is None:
            return PER_SAMPLE_REASON  # the op does not run for a single sample as it does here
        if a.call.groups != op.call.groups or a.weight.shape != op.weight.shape:
            return PER_SAMPLE_REASON  # the batch is folded into the weight (groups = batch × g)
        if not (torch.equal(a.weight, b.weight) and torch.equal(a.weight, op.weight)):
            return PER_SAMPLE_REASON
        return None

    def _name(self, op: _Op, used: set[str]) -> str:
        if op.param is not None:
            base = op.param.removesuffix(".weight") or op.param
        else:
            base = op.owner or type(self.model).__name__
        if base not in used:
            return base
        k = 2
        while f"{base}#{k}" in used:
            k += 1
        return f"{base}#{k}"


def _fields(op: _Op, name: str, calls: int) -> dict[str, Any]:
    """The layer-record fields of a functional convolution (shapes without the batch)."""
    c, w, d = op.call, op.call.weight, op.call.dims
    c_out = int(w.shape[1]) * c.groups if c.transposed else int(w.shape[0])
    padding = c.padding if isinstance(c.padding, str) else _ints(c.padding, d)
    return dict(
        name=name, type=f"{c.op} (functional)", transposed=c.transposed, dims=d,
        in_channels=int(c.x.shape[1]) if c.x.ndim > 1 else 0, out_channels=c_out,
        kernel_size=tuple(int(k) for k in w.shape[2:]), stride=_ints(c.stride, d),
        padding=padding, dilation=_ints(c.dilation, d), groups=c.groups,
        input_shape=tuple(int(s) for s in c.x.shape[1:]),
        output_shape=tuple(int(s) for s in op.out_shape[1:]), calls=calls,
    )  # fmt: skip

"""Make a trusted ``torch.export`` program auditable: real layer modules in place of graphs.

``torch.export.unflatten`` keeps the module tree and dotted names, but every submodule is an
``InterpreterModule`` running a small graph, so nothing in it is an ``nn.Conv2d``. Each one
that stood for a Linear or convolution (its ``_ty`` names the original class) is replaced by a
real module built from the graph's aten call and holding the same parameters; the parent
graphs fetch submodules by name when they run, so forward hooks then work as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx.operator_schemas import normalize_function

from ..errors import CheckpointError
from .layers import int_tuple

_CONV_OPS = {
    "conv1d": (1, False), "conv2d": (2, False), "conv3d": (3, False),
    "conv_transpose1d": (1, True), "conv_transpose2d": (2, True), "conv_transpose3d": (3, True),
}  # fmt: skip
_CLASSES: dict[tuple[int, bool], type[nn.modules.conv._ConvNd]] = {
    (1, False): nn.Conv1d, (2, False): nn.Conv2d, (3, False): nn.Conv3d,
    (1, True): nn.ConvTranspose1d, (2, True): nn.ConvTranspose2d, (3, True): nn.ConvTranspose3d,
}  # fmt: skip
_LAYER_TYPES = tuple(f"torch.nn.modules.{m}" for m in (
    "conv.Conv1d", "conv.Conv2d", "conv.Conv3d", "conv.ConvTranspose1d",
    "conv.ConvTranspose2d", "conv.ConvTranspose3d", "linear.Linear",
))  # fmt: skip


def _attr(sub: nn.Module, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        raise CheckpointError(f"exported layer reads {node} that is not a stored parameter")
    value = sub
    for part in str(node.target).split("."):
        value = getattr(value, part)
    assert isinstance(value, torch.Tensor)
    return value


def _rebuild(sub: nn.Module) -> nn.Module | None:
    """A real Linear / convolution equivalent to the graph of ``sub``, or None."""
    graph = getattr(sub, "graph", None)
    if graph is None:
        return None
    calls = [n for n in graph.nodes if n.op == "call_function"]
    if len(calls) != 1:
        return None
    node = calls[0]
    name = getattr(node.target, "__name__", "").split(".")[0]
    normalized = normalize_function(
        node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True
    )
    if normalized is None:
        return None
    kw = dict(normalized.kwargs)
    weight, bias = _attr(sub, kw.get("weight")), _attr(sub, kw.get("bias"))
    if weight is None:
        return None
    return layer_module(name, kw, weight, bias)


def layer_module(
    name: str, kw: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None
) -> nn.Module | None:
    """A real Linear / convolution for the aten call ``name`` (``linear``, ``conv2d``,
    ``conv_transpose2d``, ``convolution`` …) with normalised keyword arguments ``kw``, holding
    copies of ``weight`` and ``bias``; None for any other call."""
    if name == "convolution":  # the generic call: dimensions from the weight, kind from a flag
        transposed = bool(kw.get("transposed", False))
        name = f"conv{'_transpose' if transposed else ''}{weight.ndim - 2}d"
    if name == "linear":
        module: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    elif name in _CONV_OPS:
        d, transposed = _CONV_OPS[name]
        groups = int(kw.get("groups", 1))
        padding = kw.get("padding", 0)
        pad = padding if isinstance(padding, str) else int_tuple(padding, d)
        c_in = weight.shape[0] if transposed else weight.shape[1] * groups
        c_out = weight.shape[1] * groups if transposed else weight.shape[0]
        extra = {"output_padding": int_tuple(kw.get("output_padding", 0), d)} if transposed else {}
        cls: Any = _CLASSES[(d, transposed)]  # Conv and ConvTranspose take different kwargs
        module = cls(
            c_in, c_out, tuple(weight.shape[2:]), stride=int_tuple(kw.get("stride", 1), d),
            padding=pad, dilation=int_tuple(kw.get("dilation", 1), d), groups=groups,
            bias=bias is not None, **extra,
        )  # fmt: skip
    else:
        return None
    with torch.no_grad():
        module.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        if bias is not None:
            module.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return module


def materialise_layers(model: nn.Module) -> int:
    """Replace exported Linear / convolution graphs by real modules; returns how many."""
    count = 0
    for name, sub in list(model.named_modules()):
        if not name or str(getattr(sub, "_ty", "")) not in _LAYER_TYPES:
            continue
        real = _rebuild(sub)
        if real is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, real)
        count += 1
    return count


def static_input_shapes(model: nn.Module) -> list[tuple[Any, ...]] | None:
    """The shapes of the tensor inputs of an exported (``torch.export``) program, batch
    dimension included, as its input specs record them: ints where the export fixed a size,
    symbols where it left one dynamic; None for a module that is not an exported program."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return None
    shapes: list[tuple[Any, ...]] = []
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            shapes.append(tuple(value.shape))
    return shapes or None


def static_batch_size(model: nn.Module) -> int | None:
    """The batch size an exported program was fixed to at export (the first dimension of
    every tensor input, when it is the same static int), or None: not exported, or dynamic."""
    shapes = static_input_shapes(model)
    if not shapes or any(len(s) == 0 for s in shapes):
        return None
    firsts = [s[0] for s in shapes]
    if not all(type(f) is int for f in firsts) or len(set(firsts)) != 1:
        return None  # symbolic (dynamic) sizes are SymInts, not ints
    size = int(firsts[0])
    return size if size >= 1 else None

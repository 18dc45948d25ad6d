"""Make a trusted TorchScript module auditable: its graph run in Python, with real layer modules.

Forward hooks cannot see inside compiled TorchScript. The module is frozen (its submodules'
code inlined, its parameters kept under their dotted names) and its graph converted into a
``torch.fx.GraphModule`` by torch's TorchScript converter, without example inputs, so no shape
is fixed. Each call of a Linear or convolution whose weights (and bias) come from one Linear or
convolution submodule of the original (``original_name``; a weight computed from stored tensors
alone, as weight normalisation does, is evaluated once) becomes a call of a real ``nn.Linear`` /
``nn.Conv2d`` … at that submodule's dotted name, holding the same values: hooks then fire, and
the outputs are the TorchScript module's. Scripted and traced modules are both handled.
A ``pad`` that a convolution ran on its own input (a ``padding_mode`` other than zeros) is
folded back into the rebuilt layer; a padding module before it is not, as in eager mode.
"""

from __future__ import annotations

import typing
import warnings
from typing import Any

import torch
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function

from ..errors import CheckpointError, UsageError, first_line, option
from .exported import layer_module
from .layers import int_tuple

__all__ = ["python_module_from_torchscript", "scripted_submodule"]

_LAYER_CLASSES = frozenset(
    {
        "Linear",
        "Conv1d",
        "Conv2d",
        "Conv3d",
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
    }
)
_LAYER_CALLS = frozenset(
    {"linear", "convolution", "conv1d", "conv2d", "conv3d"}
    | {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
)


class _NotStored(Exception):
    """A layer's weight depends on the model's inputs, not only on stored tensors."""


def _hint() -> str:
    return (
        f"pass {option('arch')} pkg.module:Factory (the model's code) to load only the archive's "
        "weights into it"
    )


def _fx_graph(scripted: Any) -> fx.GraphModule:
    """The frozen, inlined graph of ``scripted`` as an fx graph calling aten operators."""
    from torch._export import converter

    frozen = torch._C._freeze_module(
        typing.cast(torch._C.ScriptModule, scripted._c), preserveParameters=True
    )
    graph = torch._C._jit_onnx_list_model_parameters(frozen)[0]._get_method("forward").graph
    # What TS2EPConverter.__init__ does, without the example inputs it would fix shapes with.
    state = scripted.state_dict()
    params = {name for name, _ in scripted.named_parameters()}
    conv: Any = converter.TS2EPConverter.__new__(converter.TS2EPConverter)
    conv.ts_model, conv.ts_graph = scripted, graph
    conv.name_to_param = {k: v for k, v in state.items() if k in params}
    conv.name_to_buffer = {k: v for k, v in state.items() if k not in params}
    conv.name_to_non_tensor_attributes, conv.name_to_constant = {}, {}
    conv.lift_get_attr()
    lifted, fqns = converter.get_block_to_lifted_attrs(graph)
    to_fx = converter.TS2FXGraphConverter(
        graph,
        conv.name_to_param,
        conv.name_to_buffer,
        lifted,
        conv.name_to_non_tensor_attributes,
        conv.name_to_constant,
        fqns,
    )
    return to_fx.convert()


def _stored(gm: fx.GraphModule, node: Any, attrs: set[str]) -> torch.Tensor | None:
    """The value of ``node`` computed from stored tensors only; their names go to ``attrs``."""
    if node is None:
        return None
    if not isinstance(node, fx.Node):
        raise _NotStored
    if node.op == "get_attr":
        attrs.add(str(node.target))
        value = _get(gm, str(node.target))
        if not isinstance(value, torch.Tensor):
            raise _NotStored
        return value
    if node.op != "call_function" or not callable(node.target):
        raise _NotStored
    args = fx.node.map_arg(node.args, lambda n: _stored(gm, n, attrs))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: _stored(gm, n, attrs))
    value = node.target(*args, **kwargs)
    if not isinstance(value, torch.Tensor):
        raise _NotStored
    return value


def _get(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _put(root: nn.Module, target: str, value: Any) -> None:
    """Store ``value`` at the dotted ``target`` under ``root``, making plain modules on the way."""
    *path, last = target.split(".")
    for part in path:
        child = getattr(root, part, None)
        if not isinstance(child, nn.Module):
            child = nn.Module()
            setattr(root, part, child)
        root = child
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        root.register_buffer(last, value)
    else:
        setattr(root, last, value)


def _owner(attrs: set[str], layers: dict[str, str]) -> str | None:
    """The one layer submodule that holds every tensor in ``attrs``, or None."""
    owners = set()
    for attr in attrs:
        parts = attr.split(".")[:-1]
        while parts and ".".join(parts) not in layers:
            parts.pop()
        if not parts:
            return None
        owners.add(".".join(parts))
    return owners.pop() if len(owners) == 1 else None


def _pads_itself(sub: Any) -> str | None:
    """The padding mode a convolution submodule pads its own input with before convolving, as
    a ``padding_mode`` other than zeros does: the mode when the submodule keeps its
    ``padding_mode`` (scripted), ``"?"`` when its own forward graph calls ``pad`` (traced, which
    keeps no attributes), else None. A ``pad`` outside the submodule (a padding module before it)
    is not the layer's: a hook on the layer sees the padded map."""
    mode = getattr(sub, "padding_mode", None)
    if isinstance(mode, str):
        return None if mode == "zeros" else mode
    try:
        graph = sub.graph
    except (AttributeError, RuntimeError):
        return None
    blocks = [graph]
    while blocks:
        for node in blocks.pop().nodes():
            if node.kind() == "aten::pad":
                return "?"
            blocks.extend(node.blocks())
    return None


def _fold_padding(kw: dict[str, Any], name: str, d: int, own: str) -> str | None:
    """A convolution with a ``padding_mode`` other than zeros runs as ``pad`` then an unpadded
    convolution: take the ``pad`` into the call's arguments (``kw``, changed in place), so that
    the layer is fed the unpadded map as in the original; returns the mode, or None. ``own`` is
    what :func:`_pads_itself` says of the layer (``"?"``: a mode it does not know)."""
    source = kw["input"]
    if (
        "transpose" in name
        or getattr(source, "op", None) != "call_function"
        or getattr(source.target, "__name__", "") != "pad.default"
        or any(int(p) != 0 for p in int_tuple(kw.get("padding", 0), d))
        or bool(kw.get("transposed", False))
    ):
        return None
    normalized = normalize_function(
        source.target, source.args, source.kwargs, normalize_to_only_use_kwargs=True
    )
    if normalized is None:
        return None
    pad_kw = normalized.kwargs
    mode, pads = pad_kw.get("mode"), pad_kw.get("pad")
    if mode not in ("circular", "reflect", "replicate") or not isinstance(pads, list | tuple):
        return None
    if own not in ("?", mode):
        return None
    if len(pads) != 2 * d or any(pads[2 * i] != pads[2 * i + 1] for i in range(d)):
        return None
    kw["padding"] = tuple(int(pads[2 * (d - 1 - i)]) for i in range(d))
    kw["input"] = pad_kw["input"]
    return str(mode)


def _same(a: nn.Module, b: nn.Module) -> bool:
    """Whether two rebuilt layers are the same layer (one submodule called twice)."""
    if type(a) is not type(b) or repr(a) != repr(b):
        return False
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _rewrite(
    gm: fx.GraphModule, layers: dict[str, str], padded: dict[str, str]
) -> dict[str, nn.Module]:
    """Replace every Linear / convolution call owned by a layer submodule by a call of a real
    module at the layer's name; returns the rebuilt modules by name (not yet installed).
    ``padded``: the layers that pad their own input (:func:`_pads_itself`), by name."""
    built: dict[str, nn.Module] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", "").split(".")[0]
        if name not in _LAYER_CALLS:
            continue
        normalized = normalize_function(
            node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True
        )
        if normalized is None or not isinstance(normalized.kwargs.get("input"), fx.Node):
            continue
        kw = dict(normalized.kwargs)
        attrs: set[str] = set()
        try:
            with torch.no_grad():
                weight, bias = (
                    _stored(gm, kw.get("weight"), attrs),
                    _stored(gm, kw.get("bias"), attrs),
                )
        except _NotStored:
            continue
        owner = _owner(attrs, layers)
        if weight is None or owner is None:
            continue
        padding_mode = None
        if owner in padded:
            padding_mode = _fold_padding(kw, name, weight.ndim - 2, padded[owner])
        module = layer_module(name, kw, weight, bias)
        if module is None or type(module).__name__ != layers[owner]:
            continue
        if padding_mode is not None:
            setattr(module, "padding_mode", padding_mode)  # noqa: B010 (typed nn.Module)
        if owner in built and not _same(built[owner], module):
            continue
        built.setdefault(owner, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(owner, (kw["input"],))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    return built


def _install(gm: fx.GraphModule, built: dict[str, nn.Module]) -> None:
    """Put the rebuilt layers in place; what the graph still reads under them is carried over."""
    live = [str(n.target) for n in gm.graph.nodes if n.op == "get_attr"]
    for owner, module in built.items():
        old = _get(gm, owner) if _has(gm, owner) else None
        for target in live:
            if not target.startswith(owner + "."):
                continue
            rest = target[len(owner) + 1 :]
            if _has(module, rest) and _get(module, rest) is not None:
                continue  # weight, bias: the real module holds the same values
            if old is not None and _has(old, rest):
                _put(module, rest, _get(old, rest))
        parent_name, _, attr = owner.rpartition(".")
        if parent_name and not _has(gm, parent_name):
            _put(gm, parent_name, nn.Module())
        parent = gm.get_submodule(parent_name) if parent_name else gm
        setattr(parent, attr, module)


def _has(root: nn.Module, target: str) -> bool:
    try:
        _get(root, target)
    except AttributeError:
        return False
    return True


def python_module_from_torchscript(scripted: nn.Module, shown: str) -> nn.Module:
    """A Python module equivalent to ``scripted`` in evaluation mode, whose Linear and
    convolution layers are real ``torch.nn`` modules under their original dotted names.

    Raises
    ------
    CheckpointError
        The graph cannot be converted, or one of its layers cannot be rebuilt (exit 3).
    """
    layers = {
        name: str(getattr(sub, "original_name", "")).removeprefix("Parametrized")
        for name, sub in scripted.named_modules()
    }
    layers = {name: cls for name, cls in layers.items() if name and cls in _LAYER_CLASSES}
    try:
        scripted.eval()
        subs = dict(scripted.named_modules())
        padded = {name: mode for name in layers if (mode := _pads_itself(subs[name])) is not None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = _fx_graph(scripted)
            built = _rewrite(gm, layers, padded)
            gm.graph.eliminate_dead_code()
            _install(gm, built)
            gm.recompile()
    except Exception as exc:  # the converter fails in many ways on graphs it does not support
        raise CheckpointError(
            f"cannot turn the TorchScript graph of {shown} into Python modules "
            f"({type(exc).__name__}: {first_line(exc, 160)})",
            _hint(),
        ) from None
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    missed = sorted(
        name for name in layers if name not in built and any(t.startswith(name + ".") for t in used)
    )
    if missed:
        raise CheckpointError(
            f"cannot rebuild layer {missed[0]} ({layers[missed[0]]}) of the TorchScript archive "
            f"{shown} as a module: its graph uses it in a way genaudit cannot follow",
            _hint(),
        )
    gm.eval()
    return gm


def scripted_submodule(scripted: nn.Module, path: str | None) -> nn.Module:
    """``--module PATH`` in a TorchScript module (which has no ``get_submodule``)."""
    module = scripted
    for part in (path or "").split(".") if path else []:
        children = dict(module.named_children())
        if part not in children:
            raise UsageError(
                f"the model has no submodule {path!r}",
                f"its top-level submodules are: "
                f"{', '.join(sorted(n for n, _ in scripted.named_children())) or '(none)'}",
            )
        module = children[part]
    return module

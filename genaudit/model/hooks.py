"""Context managers that hook into a model and always clean up."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

ForwardHook = Callable[..., Any]  # forward hooks and forward pre-hooks


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` (and every submodule) in eval mode; restore each module's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def forward_hooks(
    modules: Sequence[tuple[nn.Module, ForwardHook]], *, pre: bool = False
) -> Iterator[list[RemovableHandle]]:
    """Register a forward (or forward-pre) hook on each module; remove them all on exit."""
    handles: list[RemovableHandle] = []
    try:
        for module, hook in modules:
            if pre:
                handles.append(module.register_forward_pre_hook(hook))
            else:
                handles.append(module.register_forward_hook(hook))
        yield handles
    finally:
        for h in handles:
            h.remove()


def has_hooks(model: nn.Module) -> bool:
    """True when any submodule still carries a forward or forward-pre hook."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

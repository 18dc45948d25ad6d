"""Replaying a model from cached activations: run only what lies downstream of a layer.

``run_stretch`` runs the model once plainly (the baseline G(z)) and then once per chosen layer ℓ
with ℓ's output transformed. Everything that finishes before ℓ first starts gives the same values
in every one of those passes, so :class:`Replayer` runs it once:

- the baseline pass records the call structure (forward pre-hooks and forward hooks on every
  submodule: which module call starts and ends when) and keeps references (no copies) to the
  values the later passes need;
- for layer ℓ, the calls on the stack when ℓ first starts are its *ancestors*; each ancestor's
  child calls that ended before that moment are *upstream*. A plain ``nn.Sequential`` ancestor
  is resumed at ℓ's branch, on that branch's recorded input; for any other ancestor (its own
  ``forward`` runs, functional ops included) each upstream child call returns its recorded output
  without running. ``forward`` is replaced on those modules only for the pass (an instance
  attribute, restored afterwards, keeping any instance-level ``forward`` already there).

Whenever exactness is not certain the layer's pass is a full forward pass, as before: the model
is a TorchScript module, a later batch's call structure differs from the first batch's (control
flow that depends on the data), a recorded tensor's version counter moved since it was recorded
(an in-place op changed it), a recorded value holds something other than tensors and plain
constants, or a replay did not happen exactly as planned. Functional convolutions (no module of
their own) always take the full pass. Memory: references to the recorded values of one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

_CONSTANTS = (int, float, bool, str, type(None))


def _tensors(value: Any) -> list[torch.Tensor] | None:
    """The tensors in ``value`` (a tensor, or tuples/lists of tensors and constants), or None
    when it holds anything else (which is not replayed)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, _CONSTANTS):
        return []
    if isinstance(value, tuple | list):
        found: list[torch.Tensor] = []
        for item in value:
            inner = _tensors(item)
            if inner is None:
                return None
            found += inner
        return found
    return None


@dataclass(frozen=True, eq=False)
class _Kept:
    """A recorded value and the version counters of its tensors when it was recorded."""

    value: Any
    tensors: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]

    @classmethod
    def of(cls, value: Any) -> _Kept | None:
        found = _tensors(value)
        if found is None:
            return None
        return cls(value, tuple(found), tuple(t._version for t in found))

    def intact(self) -> bool:
        return all(t._version == v for t, v in zip(self.tensors, self.versions, strict=True))


@dataclass
class _Call:
    module: int  # index into Replayer.modules
    index: int  # which call of that module, counting from 0
    parent: int  # call id of the caller, -1 for the outermost call
    children: list[int] = field(default_factory=list)
    last: int = -1  # the last call id of its subtree (ids are in start order)


@dataclass(frozen=True)
class _Action:
    """What a wrapped module's ``forward`` does at one of its calls."""

    resume: bool  # True: run a Sequential's children from ``start`` on ``kept``'s input
    kept: int  # call id whose recorded output (replay) or input (resume) is used
    start: int
    advance: tuple[tuple[int, int], ...]  # (module, calls skipped) for the wrapped modules


@dataclass
class _Plan:
    actions: dict[int, dict[int, _Action]]  # module → call index → action
    outputs: set[int]
    inputs: set[int]


def _calls(signature: Sequence[int]) -> list[_Call] | None:
    """The call tree of a pass's events (``m + 1`` starts module m, ``-(m + 1)`` ends it)."""
    calls: list[_Call] = []
    stack: list[int] = []
    counts: dict[int, int] = {}
    for event in signature:
        if event > 0:
            m = event - 1
            parent = stack[-1] if stack else -1
            calls.append(_Call(m, counts.get(m, 0), parent))
            counts[m] = counts.get(m, 0) + 1
            if parent >= 0:
                calls[parent].children.append(len(calls) - 1)
            stack.append(len(calls) - 1)
        else:
            if not stack or calls[stack[-1]].module != -event - 1:
                return None
            calls[stack[-1]].last = len(calls) - 1
            stack.pop()
    return calls if not stack else None


def _plain_sequential(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
        and "forward" not in module.__dict__
    )


class Replayer:
    """Runs each chosen layer's pass on what lies downstream of it (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The model run by ``baseline`` and ``forward``.
    layers : sequence of nn.Module or None
        The module intervened at for each chosen layer; None for a layer without a module of its
        own (a functional convolution), whose pass is always a full forward pass.
    """

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module | None]) -> None:
        self.model = model
        self.modules = list(model.modules())
        self._index = {id(m): i for i, m in enumerate(self.modules)}
        self.layers = [None if m is None else self._index.get(id(m)) for m in layers]
        self.enabled = not isinstance(model, torch.jit.ScriptModule) and not any(
            isinstance(m, torch.jit.ScriptModule) for m in self.modules
        )
        # modules whose child calls may be recorded on the first batch: the layers' ancestors
        wanted: set[int] = set()
        names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
        for m in layers:
            if m is not None and id(m) in names:
                parts = names[id(m)].split(".") if names[id(m)] else []
                for n in range(len(parts)):
                    wanted.add(self._index[id(model.get_submodule(".".join(parts[:n])))])
        self._wanted_parents = wanted
        self._signature0: list[int] | None = None
        self._plans: list[_Plan | None] = [None] * len(layers)
        self._want_out: set[int] = set()
        self._want_in: set[int] = set()
        self._outputs: dict[int, _Kept | None] = {}
        self._inputs: dict[int, _Kept | None] = {}
        self._batch_ok = False
        self.replayed = 0  # passes run downstream only
        self.full = 0  # passes run in full

    # ----------------------------------------------------------------- baseline pass

    def baseline(self, run: Callable[[], Any]) -> Any:
        """``run()`` (the plain forward pass), recording what the layers' passes will reuse."""
        self._outputs, self._inputs, self._batch_ok = {}, {}, False
        if not self.enabled:
            return run()
        first = self._signature0 is None
        signature: list[int] = []
        stack: list[tuple[int, int]] = []  # (call id, module)
        starts = 0
        outputs: dict[int, _Kept | None] = {}
        inputs: dict[int, _Kept | None] = {}
        want_out, want_in, wanted_parents = self._want_out, self._want_in, self._wanted_parents

        def pre(m: int, module: nn.Module, args: tuple[Any, ...]) -> None:
            nonlocal starts
            cid = starts
            starts += 1
            parent = stack[-1][1] if stack else -1
            stack.append((cid, m))
            signature.append(m + 1)
            if (parent in wanted_parents) if first else (cid in want_in):
                inputs[cid] = _Kept.of(args)

        def post(m: int, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            cid, _ = stack.pop() if stack else (-1, -1)
            signature.append(-(m + 1))
            parent = stack[-1][1] if stack else -1
            if (parent in wanted_parents) if first else (cid in want_out):
                outputs[cid] = _Kept.of(output)

        handles: list[RemovableHandle] = []
        try:
            for i, module in enumerate(self.modules):
                handles.append(module.register_forward_pre_hook(_bind(pre, i), prepend=True))
                handles.append(module.register_forward_hook(_bind(post, i), prepend=True))
            result = run()
        finally:
            for h in handles:
                h.remove()
        if first:
            self._signature0 = signature
            self._learn(signature)
            self._batch_ok = True
        else:
            self._batch_ok = signature == self._signature0
        self._outputs, self._inputs = outputs, inputs
        return result

    def _learn(self, signature: list[int]) -> None:
        calls = _calls(signature)
        if calls is None:
            self.enabled = False
            return
        for k, layer in enumerate(self.layers):
            if layer is not None:
                self._plans[k] = self._plan(calls, layer)
        for plan in self._plans:
            if plan is not None:
                self._want_out |= plan.outputs
                self._want_in |= plan.inputs

    def _plan(self, calls: list[_Call], layer: int) -> _Plan | None:
        first = next((c for c, call in enumerate(calls) if call.module == layer), None)
        if first is None:
            return None
        steps: list[tuple[int, int, bool]] = []  # (call, first skipped child, resume?)
        c = first
        while calls[c].parent >= 0:
            parent = calls[c].parent
            kids = calls[parent].children
            pos = kids.index(c)
            module = self.modules[calls[parent].module]
            seq = _plain_sequential(module) and [calls[k].module for k in kids] == [
                self._index.get(id(m)) for m in _children(module)
            ]
            if seq and pos > 0:
                steps.append((parent, c, True))
            elif not seq:
                steps.extend((k, k, False) for k in kids[:pos])
            c = parent
        if not steps:
            return None  # nothing upstream: the full pass is the minimum
        wrapped = {calls[call].module for call, _, _ in steps}

        def skipped(lo: int, hi: int) -> tuple[tuple[int, int], ...]:
            counts: dict[int, int] = {}
            for j in range(lo, hi + 1):
                if calls[j].module in wrapped:
                    counts[calls[j].module] = counts.get(calls[j].module, 0) + 1
            return tuple(counts.items())

        plan = _Plan({}, set(), set())
        for call, kept, resume in steps:
            if resume:
                kids = calls[call].children
                pos = kids.index(kept)
                action = _Action(True, kept, pos, skipped(call + 1, kept - 1))
                plan.inputs.add(kept)
            else:
                action = _Action(False, kept, 0, skipped(call + 1, calls[call].last))
                plan.outputs.add(kept)
            plan.actions.setdefault(calls[call].module, {})[calls[call].index] = action
        return plan

    # ----------------------------------------------------------------- a layer's pass

    def forward(self, k: int, run: Callable[[], Any]) -> Any:
        """``run()`` for layer ``k`` (its intervention already in place): downstream only when
        the batch's recorded values allow it exactly, else a full forward pass."""
        plan = self._plans[k] if self.enabled and self._batch_ok else None
        if plan is not None and self._usable(plan):
            done, result = self._patched(plan, run)
            if done:
                self.replayed += 1
                return result
        self.full += 1
        return run()

    def _usable(self, plan: _Plan) -> bool:
        for cid in plan.outputs:
            kept = self._outputs.get(cid)
            if kept is None or not kept.intact():
                return False
        for cid in plan.inputs:
            kept = self._inputs.get(cid)
            if kept is None or not kept.intact() or len(kept.value) != 1:
                return False
        return True

    def _patched(self, plan: _Plan, run: Callable[[], Any]) -> tuple[bool, Any]:
        outputs = {c: kept.value for c, kept in self._outputs.items() if kept is not None}
        inputs = {c: kept.value for c, kept in self._inputs.items() if kept is not None}
        seen: dict[int, int] = {}
        fired = [0]

        def wrap(m: int, module: nn.Module, original: Callable[..., Any]) -> Callable[..., Any]:
            actions = plan.actions[m]

            def forward(*args: Any, **kwargs: Any) -> Any:
                i = seen.get(m, 0)
                seen[m] = i + 1
                action = actions.get(i)
                if action is None:
                    return original(*args, **kwargs)
                fired[0] += 1
                for other, n in action.advance:
                    seen[other] = seen.get(other, 0) + n
                if not action.resume:
                    return outputs[action.kept]
                (x,) = inputs[action.kept]
                for child in _children(module)[action.start :]:
                    x = child(x)
                return x

            return forward

        with _forwards({m: wrap(m, self.modules[m], self.modules[m].forward)
                        for m in plan.actions}, self.modules):  # fmt: skip
            result = run()
        return fired[0] == sum(len(a) for a in plan.actions.values()), result


def _children(module: nn.Module) -> list[nn.Module]:
    """What ``nn.Sequential.forward`` runs, in order (a module listed twice runs twice)."""
    return [m for m in module._modules.values() if m is not None]


def _bind(hook: Callable[..., None], m: int) -> Callable[..., None]:
    def bound(*args: Any) -> None:
        hook(m, *args)

    return bound


@contextmanager
def _forwards(
    replacements: dict[int, Callable[..., Any]], modules: list[nn.Module]
) -> Iterator[None]:
    """Set ``forward`` on some modules as an instance attribute; put back what was there."""
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for m, fn in replacements.items():
            module = modules[m]
            saved.append((module, module.__dict__.get("forward")))
            module.forward = fn
        yield
    finally:
        for module, before in reversed(saved):
            if before is None:
                del module.forward
            else:
                module.forward = before

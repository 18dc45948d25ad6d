"""State-dict matching: the dicts of tensors in a checkpoint, and the one that fits a model.

A checkpoint may keep its weights anywhere (``state_dict``, ``netG``, a list of networks …) and
under prefixes (DataParallel's ``module.``, ``torch.compile``'s ``_orig_mod.``, Lightning's
``generator.``). :func:`find_state_dicts` lists every candidate, :func:`select_state_dict` keeps the
one whose keys and shapes fit the model (EMA weights preferred) and :func:`load_into` loads it
strictly. A misfit is one :class:`~genaudit.errors.StateDictMismatchError` that lists every
missing, unexpected and reshaped key, sorted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, StateDictMismatchError, first_line, option

__all__ = ["find_state_dicts", "load_into", "select_state_dict"]

_MAX_KEYS = 8


def find_state_dicts(obj: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Every non-empty dict of tensors inside ``obj``, by dotted key path ("" for the root).

    Dicts and lists are walked (list items by index); a dict whose values are all tensors is a
    candidate and is not walked further; an ``nn.Module`` contributes its ``state_dict()``.
    """
    found: dict[str, dict[str, torch.Tensor]] = {}
    ancestors: set[int] = set()  # ids on the current path: pickles may hold cycles

    def walk(node: Any, where: str) -> None:
        if isinstance(node, nn.Module):
            state = node.state_dict()
            if state:
                found[where] = dict(state)
            return
        if (
            isinstance(node, Mapping)
            and node
            and all(isinstance(v, torch.Tensor) for v in node.values())
        ):
            found[where] = {str(k): v for k, v in node.items()}
            return
        if not isinstance(node, (Mapping, list, tuple)) or id(node) in ancestors:
            return
        ancestors.add(id(node))
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for key, value in items:
            walk(value, f"{where}.{key}" if where else str(key))
        ancestors.discard(id(node))

    walk(obj, "")
    return found


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_EMA = re.compile(r"(?:^|_)ema(?:_|$)", re.IGNORECASE)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items()}


def _all_have(state: Mapping[str, torch.Tensor], prefix: str) -> bool:
    return bool(state) and all(k.startswith(prefix) for k in state)


def _strip_wrappers(
    state: dict[str, torch.Tensor], stripped: str
) -> tuple[dict[str, torch.Tensor], str]:
    # DataParallel/DDP add "module.", torch.compile "_orig_mod."; they nest in either order.
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if _all_have(state, prefix):
                state, stripped, changed = _strip(state, prefix), stripped + prefix, True
    return state, stripped


def _variants(state: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Ways to read ``state``: as is, wrappers stripped, one attribute prefix stripped too."""
    out = [("", state)]
    unwrapped, stripped = _strip_wrappers(state, "")
    if stripped:
        out.append((stripped, unwrapped))
    firsts = {k.split(".", 1)[0] for k in unwrapped}
    if len(firsts) == 1 and all("." in k for k in unwrapped):
        attr = next(iter(firsts)) + "."
        inner, more = _strip_wrappers(_strip(unwrapped, attr), stripped + attr)
        out.append((more, inner))
    return out


@dataclass(frozen=True)
class _Fit:
    """How a state dict compares with the model's ``state_dict()``."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (key, ckpt, model)
    shared: int  # keys present in both with the same shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def score(self) -> tuple[int, int]:
        return (self.shared, -(len(self.missing) + len(self.unexpected) + len(self.mismatched)))

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing [{_key_list(self.missing)}]")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected [{_key_list(self.unexpected)}]")
        if self.mismatched:
            shapes = [f"{k} {tuple(c)} vs model {tuple(m)}" for k, c, m in self.mismatched]
            parts.append(f"{len(self.mismatched)} with other shapes [{_key_list(shapes)}]")
        return "; ".join(parts)


def _key_list(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS])
    return shown + (f", … {len(keys) - _MAX_KEYS} more" if len(keys) > _MAX_KEYS else "")


def _is_num_batches_tracked(key: str) -> bool:
    return key == "num_batches_tracked" or key.endswith(".num_batches_tracked")


def _fit(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> _Fit:
    # BatchNorm's num_batches_tracked counter does not affect eval-mode outputs and older
    # checkpoints lack it: a checkpoint missing only those keys still fits (filled from the model).
    missing = tuple(
        sorted(k for k in expected if k not in state and not _is_num_batches_tracked(k))
    )
    unexpected = tuple(sorted(k for k in state if k not in expected))
    mismatched = tuple(
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    shared = sum(1 for k in state if k in expected) - len(mismatched)
    return _Fit(missing, unexpected, mismatched, shared)


def _filled(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out = dict(state)
    for key, value in expected.items():
        if key not in out and _is_num_batches_tracked(key):
            out[key] = value.detach().clone()
    return out


def _where(key: str) -> str:
    return "the top level" if key == "" else repr(key)


def _mismatch_hint(available: Sequence[str]) -> str:
    keys = ", ".join(repr(k) for k in sorted(available)[:_MAX_KEYS])
    more = ", …" if len(available) > _MAX_KEYS else ""
    return (
        f"pick the weights with {option('state_key')} (found: {keys}{more}), strip a key prefix "
        f"with {option('strip_prefix')}, or check {option('arch')} / {option('arch_kwargs')}"
    )


def select_state_dict(
    candidates: Mapping[str, Mapping[str, torch.Tensor]],
    model: nn.Module,
    *,
    state_key: str | None = None,
    strip_prefix: str | None = None,
) -> tuple[str, dict[str, torch.Tensor]]:
    """The candidate state dict that fits ``model``, with its key prefix stripped.

    ``state_key`` picks one candidate; ``strip_prefix`` strips exactly that prefix (every key
    must have it). Otherwise the wrapper prefixes ``module.`` / ``_orig_mod.`` and one
    attribute prefix (Lightning's ``generator.`` …) are stripped when every key has them and
    stripping makes the keys fit. A candidate fits when its keys and shapes equal those of
    ``model.state_dict()``; missing BatchNorm ``num_batches_tracked`` keys are filled from the
    model. Several fitting candidates: EMA weights (a path component like ``ema``, ``g_ema``,
    ``model_ema``) win; still several is an error.

    Returns
    -------
    (key path, state dict ready for :func:`load_into`)
    """
    expected = model.state_dict()
    if not candidates:
        raise CheckpointError(
            "the checkpoint holds no state dict (no dict of tensors was found in it)",
            f"save model.state_dict() and pass {option('arch')}",
        )
    if state_key is not None:
        if state_key not in candidates:
            raise CheckpointError(
                f"no state dict at {option('state_key')} {state_key!r}; found: "
                + ", ".join(repr(k) for k in sorted(candidates)),
                "pass one of these keys ('' is the top level)",
            )
        pool = {state_key: candidates[state_key]}
    else:
        pool = dict(candidates)

    variants: dict[str, list[tuple[str, dict[str, torch.Tensor]]]] = {}
    if strip_prefix is not None:
        prefix = strip_prefix if strip_prefix.endswith(".") else strip_prefix + "."
        for key, state in pool.items():
            if _all_have(state, prefix):
                variants[key] = [(prefix, _strip(state, prefix))]
        if not variants:
            where = f"at {_where(state_key)}" if state_key is not None else "in the checkpoint"
            raise CheckpointError(
                f"{option('strip_prefix')} {strip_prefix!r}: no state dict {where} has it on "
                "every key",
                "check the prefix (it is matched at the start of every key)",
            )
    else:
        variants = {key: _variants(dict(state)) for key, state in pool.items()}

    fitting: dict[str, dict[str, torch.Tensor]] = {}
    best: tuple[tuple[int, int], str, str, _Fit] | None = None
    for key in sorted(variants):
        for stripped, state in variants[key]:
            fit = _fit(state, expected)
            if fit.ok:
                fitting[key] = _filled(state, expected)
                break
            if best is None or fit.score() > best[0]:
                best = (fit.score(), key, stripped, fit)

    if len(fitting) > 1:
        ema = {k: v for k, v in fitting.items() if any(_EMA.search(p) for p in k.split("."))}
        fitting = ema or fitting
    if len(fitting) == 1:
        return next(iter(fitting.items()))
    if fitting:
        raise CheckpointError(
            "ambiguous: state dicts at " + ", ".join(repr(k) for k in sorted(fitting)) + " all fit",
            f"pass {option('state_key')} to pick one",
        )
    assert best is not None  # variants is non-empty, so some candidate was scored
    _, key, stripped, fit = best
    note = f" (prefix {stripped!r} stripped)" if stripped else ""
    raise StateDictMismatchError(
        f"the weights at {_where(key)}{note} do not fit the model: {fit.describe()}",
        _mismatch_hint(list(candidates)),
    )


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``model`` strictly; one error lists every problem, sorted.

    Missing BatchNorm ``num_batches_tracked`` counters keep the model's values.
    """
    expected = model.state_dict()
    fit = _fit(state_dict, expected)
    if not fit.ok:
        raise StateDictMismatchError(
            f"the weights do not fit the model: {fit.describe()}",
            f"pick other weights with {option('state_key')} / {option('strip_prefix')}, or check "
            f"{option('arch')} / {option('arch_kwargs')}",
        )
    try:
        model.load_state_dict(_filled(state_dict, expected), strict=True)
    except RuntimeError as exc:
        raise StateDictMismatchError(
            f"the weights do not fit the model: {first_line(exc, 160)}",
            f"check {option('arch')} / {option('arch_kwargs')}",
        ) from None

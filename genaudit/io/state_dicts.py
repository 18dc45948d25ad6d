"""State-dict matching: the dicts of tensors in a checkpoint, and the one that fits a model.

A checkpoint may keep its weights anywhere (``state_dict``, ``netG``, a list of networks …) and
under prefixes (DataParallel's ``module.``, ``torch.compile``'s ``_orig_mod.``, Lightning's
``generator.`` beside ``discriminator.``). :func:`find_state_dicts` lists every candidate,
:func:`choose_state_dict` keeps the one whose keys and shapes fit the model, whole or under one
key path prefix (EMA weights preferred), and :func:`load_into` loads it strictly. A misfit is
one :class:`~genaudit.errors.StateDictMismatchError` that lists every missing, unexpected and
reshaped key, sorted.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, StateDictMismatchError, UsageError, first_line, option

__all__ = [
    "Selection",
    "choose_state_dict",
    "find_state_dicts",
    "load_into",
    "prefix_option",
    "select_state_dict",
]

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


def _quoted(items: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in items[:_MAX_KEYS])
    return shown + (", …" if len(items) > _MAX_KEYS else "")


def _top_prefixes(states: Iterable[Mapping[str, torch.Tensor]]) -> list[str]:
    """The first key path components (``generator.``, ``discriminator.``), wrappers removed."""
    found: set[str] = set()
    for state in states:
        unwrapped, _ = _strip_wrappers(dict(state), "")
        found.update(k.split(".", 1)[0] + "." for k in unwrapped if "." in k)
    return sorted(found)


def _foreign_prefixes(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> list[str]:
    """The top-level prefixes of ``state`` when there are several and the model has none of
    them (a state dict of several networks), else none."""
    tops, own = _top_prefixes([state]), set(_top_prefixes([expected]))
    return tops if len(tops) > 1 and not own & set(tops) else []


def _mismatch_hint(available: Sequence[str], prefixes: Sequence[str] = ()) -> str:
    under = f" (the keys lie under {_quoted(prefixes)})" if prefixes else ""
    return (
        f"pick the weights with {option('state_key')} (found: {_quoted(sorted(available))}), "
        f"keep the keys under one prefix with {option('select')}{under}, or check "
        f"{option('arch')} / {option('arch_kwargs')}"
    )


@dataclass(frozen=True)
class Selection:
    """The weights chosen for a model: the candidate's key path (``""``: the top level), the
    prefix removed from its keys (``""``: none) and how many of its keys lay outside that prefix
    and were ignored."""

    key: str
    state: dict[str, torch.Tensor]
    prefix: str = ""
    ignored: int = 0

    def label(self) -> str:
        under = f"the keys under {self.prefix!r}" if self.prefix else "the keys"
        return f"{under} at {_where(self.key)}"


def prefix_option(strip_prefix: str | None, select: str | None) -> tuple[str, str] | None:
    """The key prefix asked for with ``strip_prefix`` or ``select`` (the same thing; a trailing
    dot is added) and how messages name that option; None when neither is given.

    Raises
    ------
    UsageError
        Both are given, or the value is not a dotted key path.
    """
    if strip_prefix is not None and select is not None:
        raise UsageError(
            f"{option('select')} and {option('strip_prefix')} both choose a key prefix",
            f"pass one of them ({option('select')} generator is {option('strip_prefix')} "
            "generator.)",
        )
    name, value = ("select", select) if select is not None else ("strip_prefix", strip_prefix)
    if value is None:
        return None
    prefix = value if value.endswith(".") else value + "."
    if any(not part for part in prefix[:-1].split(".")):
        raise UsageError(
            f"{option(name)} {value!r} is not a dotted key path",
            f"name the keys' prefix, e.g. {option(name)} generator or {option(name)} model.netG",
        )
    return prefix, f"{option(name)} {value!r}"


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _prefixed(pool: Mapping[str, Mapping[str, torch.Tensor]], prefix: str) -> list[Selection]:
    """Each candidate's keys under ``prefix`` (looked for after wrapper prefixes too), with
    wrapper prefixes inside it removed as well; candidates without such keys are left out."""
    out = []
    for key in sorted(pool):
        state = dict(pool[key])
        unwrapped, wrappers = _strip_wrappers(state, "")
        for outer, base in [("", state), (wrappers, unwrapped)][: 2 if wrappers else 1]:
            kept = _under(base, prefix)
            if kept:
                inner, stripped = _strip_wrappers(kept, outer + prefix)
                out.append(Selection(key, inner, stripped, len(state) - len(kept)))
                break
    return out


def _component_prefixes(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, Any]
) -> list[str]:
    """Key path prefixes (``generator.``, ``model.netG.``) holding as many keys as the model
    has (``num_batches_tracked`` counters may be missing): the ones worth trying; and the
    top-level prefixes when there are several, whose misfit may be the one to show."""
    most = len(expected)
    least = most - sum(1 for k in expected if _is_num_batches_tracked(k))
    counts: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        for end in range(1, len(parts)):
            counts[".".join(parts[:end]) + "."] += 1
    tops = {p for p in counts if p.count(".") == 1}
    shown = tops if len(tops) > 1 else set()
    return sorted(p for p, n in counts.items() if least <= n <= most or p in shown)


def _partial_readings(
    pool: Mapping[str, Mapping[str, torch.Tensor]], expected: Mapping[str, torch.Tensor]
) -> list[tuple[Selection, _Fit]]:
    """The keys of each candidate under each key path prefix worth trying, and their fit."""
    found = []
    for key in sorted(pool):
        state = pool[key]
        for prefix in _component_prefixes(state, expected):
            kept = _under(state, prefix)
            inner, stripped = _strip_wrappers(kept, prefix)
            found.append(
                (Selection(key, inner, stripped, len(state) - len(kept)), _fit(inner, expected))
            )
    return found


def _is_ema(selection: Selection) -> bool:
    parts = selection.key.split(".") + selection.prefix.split(".")
    return any(_EMA.search(p) for p in parts)


def _choose(fitting: list[Selection], prefix_given: bool) -> Selection:
    """The one fitting selection; EMA weights win over others; still several is an error."""
    if len(fitting) > 1:
        fitting = [s for s in fitting if _is_ema(s)] or fitting
    if len(fitting) == 1:
        return fitting[0]
    keys = sorted({s.key for s in fitting})
    if prefix_given or all(not s.ignored for s in fitting):
        raise CheckpointError(
            f"ambiguous: state dicts at {_quoted(keys)} all fit",
            f"pass {option('state_key')} to pick one",
        )
    prefixes = [s.prefix for s in fitting]
    if len(keys) == 1:
        raise CheckpointError(
            f"ambiguous: the keys under {_quoted(prefixes)} at {_where(keys[0])} all fit the model",
            f"pick one with {option('select')} (e.g. {option('select')} {prefixes[0][:-1]})",
        )
    raise CheckpointError(
        f"ambiguous: {'; '.join(s.label() for s in fitting[:_MAX_KEYS])} all fit the model",
        f"pick one with {option('state_key')} and {option('select')}",
    )


def choose_state_dict(
    candidates: Mapping[str, Mapping[str, torch.Tensor]],
    model: nn.Module,
    *,
    state_key: str | None = None,
    strip_prefix: str | None = None,
    select: str | None = None,
) -> Selection:
    """The weights in ``candidates`` that fit ``model``: which candidate, under which prefix.

    ``state_key`` picks one candidate. ``strip_prefix`` (or ``select``, the same with another
    name) keeps exactly the keys under that prefix, removes it and ignores the other keys
    (Lightning's ``generator.*`` beside ``discriminator.*``). Otherwise each candidate is tried
    whole: as is, with the wrapper prefixes ``module.`` / ``_orig_mod.`` removed when every key
    has them, and with one attribute prefix removed too when every key starts with it; when no
    candidate fits whole, every key path prefix (``generator.``, ``model.netG.``) under which the
    keys fit is found. A fit means the keys and shapes equal those of ``model.state_dict()``;
    missing BatchNorm ``num_batches_tracked`` keys are filled from the model. Several fits: EMA
    weights (a path component or prefix like ``ema``, ``g_ema``, ``G_ema``) win; still several is
    an error.

    Raises
    ------
    UsageError
        Both ``strip_prefix`` and ``select``, or a value that is not a dotted key path.
    CheckpointError
        No candidate, an unknown ``state_key`` or prefix, or an ambiguous choice;
        :class:`~genaudit.errors.StateDictMismatchError` when nothing fits.
    """
    asked = prefix_option(strip_prefix, select)
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

    if asked is not None:
        prefix, named = asked
        readings = [[s] for s in _prefixed(pool, prefix)]
        if not readings:
            where = f"at {_where(state_key)}" if state_key is not None else "in the checkpoint"
            tops = _top_prefixes(pool.values())
            raise CheckpointError(
                f"{named}: no key {where} starts with {prefix!r}",
                f"the keys' top-level prefixes are {_quoted(tops)}; pass one of them"
                if tops
                else "no key has a prefix (a dotted path)",
            )
    else:
        readings = [
            [Selection(key, state, stripped) for stripped, state in _variants(dict(pool[key]))]
            for key in sorted(pool)
        ]

    fitting: list[Selection] = []
    best: tuple[tuple[int, int], Selection, _Fit] | None = None
    for variants in readings:
        for selection in variants:
            fit = _fit(selection.state, expected)
            if fit.ok:
                fitting.append(replace(selection, state=_filled(selection.state, expected)))
                break
            if best is None or fit.score() > best[0]:
                best = (fit.score(), selection, fit)
    if not fitting and asked is None:
        for selection, fit in _partial_readings(pool, expected):
            if fit.ok:
                fitting.append(replace(selection, state=_filled(selection.state, expected)))
            elif best is None or fit.score() > best[0]:
                best = (fit.score(), selection, fit)
    if fitting:
        return _choose(fitting, asked is not None)
    assert best is not None  # readings is non-empty, so some candidate was scored
    _, near, fit = best
    if near.ignored:
        note = f" (the keys under {near.prefix!r}; {near.ignored} other keys ignored)"
    else:
        note = f" (prefix {near.prefix!r} stripped)" if near.prefix else ""
    raise StateDictMismatchError(
        f"the weights at {_where(near.key)}{note} do not fit the model: {fit.describe()}",
        _mismatch_hint(
            list(candidates), [] if asked else _foreign_prefixes(pool[near.key], expected)
        ),
    )


def select_state_dict(
    candidates: Mapping[str, Mapping[str, torch.Tensor]],
    model: nn.Module,
    *,
    state_key: str | None = None,
    strip_prefix: str | None = None,
    select: str | None = None,
) -> tuple[str, dict[str, torch.Tensor]]:
    """(key path, state dict ready for :func:`load_into`) of :func:`choose_state_dict`."""
    chosen = choose_state_dict(
        candidates, model, state_key=state_key, strip_prefix=strip_prefix, select=select
    )
    return chosen.key, chosen.state


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

"""Non-finite values (NaN, infinity) found and named: in weights, and in a layer's inputs.

A checkpoint with NaN or infinite weights is refused before sampling (exit 3, naming the first
layer); NaN and infinite activations are found from the accumulated sums once at the end (no
cost per batch) and reported as the layer's own reason, never as "undefined" like a dead
kernel; exit 4 when they leave no layer analysed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidInputError, NumericalError
from ..model.layers import LayerRecord
from .accumulators import SpectrumAccumulator
from .distributed import Accumulator

# The reason given for a layer whose accumulated input is not finite.
NONFINITE_REASON = "non-finite activations (NaN or inf in the input)"


def check_finite_weights(model: nn.Module, records: Sequence[LayerRecord]) -> None:
    """Refuse (exit 3, :class:`InvalidInputError`) a model whose chosen layers hold NaN or
    infinite weights or biases, naming the first such layer in execution order.

    Run once before sampling: a checkpoint with non-finite weights is broken input, whose
    layers would otherwise come out as "undefined" like a dead kernel. One host sync per layer.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    for r in sorted(records, key=lambda x: x.index):
        module = modules.get(r.name)
        if module is None:
            continue
        for kind in ("weight", "bias"):
            t = getattr(module, kind, None)
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                continue
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                raise InvalidInputError(
                    f"layer {r.name} ({r.type}) has {bad} NaN or infinite {kind} value"
                    f"{'s' * (bad > 1)} (of {t.numel()})",
                    "the checkpoint is broken (diverged training or a bad conversion): audit "
                    "another checkpoint",
                )


def finite_sums(accumulators: Sequence[Accumulator]) -> list[bool]:
    """Whether each accumulator's sums are finite, with one host sync for all of them.

    NaN and infinite inputs stay in the running sums (the added terms are squares or sums that
    cannot cancel an infinity into a finite value), so checking the totals once at the end
    costs nothing per batch.
    """
    flags: list[torch.Tensor] = []
    for a in accumulators:
        sums = [a.power_sum] if isinstance(a, SpectrumAccumulator) else [a.total, a.outer]
        present = [t for t in sums if t is not None]
        if not present:
            flags.append(torch.ones((), dtype=torch.bool))
            continue
        flag = torch.isfinite(present[0]).all()
        for t in present[1:]:
            flag = flag & torch.isfinite(t).all().to(flag.device)
        flags.append(flag)
    if not flags:
        return []
    where = flags[0].device
    return [bool(v) for v in torch.stack([f.to(where) for f in flags]).tolist()]


def nonfinite_failure(names: Sequence[str]) -> NumericalError:
    """The error (exit 4) for a run whose every layer got non-finite input; ``names``: those
    layers, in execution order."""
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return NumericalError(
        f"no layer could be analysed: non-finite activations (NaN or infinite) reach "
        f"layer {names[0]}{more}",
        "the model produces NaN or infinite values on these inputs: check its weights, "
        "normalisation statistics and inputs",
    )

"""The paper's repair in a training loop: eq. (13) minimised at chosen levels, between SGD steps.

:class:`GenericityPenalty` finds a model's convolutions at the chosen levels once (a dry run),
captures their input maps during a forward pass, and returns the spectral dependence of
:mod:`genaudit.analysis.penalty` summed over those layers: a loss differentiable in the layers'
weights, with the input spectra estimated from the batch and held constant. The paper alternates
minimisation steps of this loss with the model's own SGD steps::

    penalty = GenericityPenalty(generator, z_example)
    for z, x in batches:
        loss = objective(generator(z), x); loss.backward(); opt.step(); opt.zero_grad()
        penalty(z).backward(); penalty_opt.step(); penalty_opt.zero_grad()

or, without the extra forward pass, ``with penalty.capture(): out = generator(z)`` during the
training forward and ``penalty.loss()`` afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NothingToAnalyseError
from ..model.hooks import eval_mode, forward_hooks
from ..model.layers import LayerRecord, first_tensor, select_layers, walk_layers
from ..model.levels import ALL_LEVELS
from .penalty import spectral_dependence

__all__ = ["GenericityPenalty"]

DEFAULT_LEVELS = ("intermediate", "fine", "image")


def _inputs(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (x,) if isinstance(x, Tensor) else tuple(x)


def layer_weight(module: nn.Module) -> Tensor:
    """The weight a convolution runs with, attached to the parameters it is computed from.

    Parametrised weights (``torch.nn.utils.parametrizations``) are recomputed by attribute
    access; old-style weight norm (``weight_g``/``weight_v``) is recomputed here, since the
    attribute it sets holds the value of the last forward pass."""
    g, v = getattr(module, "weight_g", None), getattr(module, "weight_v", None)
    if isinstance(g, Tensor) and isinstance(v, Tensor):
        from torch.nn.utils.weight_norm import WeightNorm

        dim = next(
            (h.dim for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm)), 0
        )
        return torch._weight_norm(v, g, dim)
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


class GenericityPenalty:
    """Spectral dependence (paper eq. (13)) of a model's convolutions at chosen levels.

    Parameters
    ----------
    model : nn.Module
        The model being trained (a generator or decoder).
    example_inputs : Tensor or sequence of Tensor
        Positional inputs for one dry run that finds the layers and their levels.
    levels : sequence of str
        Levels (or dotted names, globs, indices) of the layers to repair; the paper uses the
        intermediate, fine and image levels. Only layers analysed with the SDR are kept.
    normalised : bool
        Use ``(SDR − 1)²`` per pair, invariant to the kernel's scale (default), instead of
        eq. (13)'s ``(SDR − 1)² <P>²``, which a step can also lower by shrinking the kernel.

    Attributes
    ----------
    records : tuple of LayerRecord
        The layers the penalty covers, in execution order.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | Sequence[Tensor],
        *,
        levels: Sequence[str] = DEFAULT_LEVELS,
        normalised: bool = True,
    ) -> None:
        records = walk_layers(model, _inputs(example_inputs))
        # level names absent from this model are passed over; other selectors must match
        wanted = [s for s in levels if s not in ALL_LEVELS or any(r.level == s for r in records)]
        chosen = (
            [r for r in select_layers(records, wanted) if r.analysis == "sdr"] if wanted else []
        )
        if not chosen:
            raise NothingToAnalyseError(
                f"no convolution of the model at {', '.join(levels)} has an SDR to repair",
                "choose other levels or layers",
            )
        self.model = model
        self.records: tuple[LayerRecord, ...] = tuple(chosen)
        self.normalised = normalised
        self._modules = [model.get_submodule(r.name) for r in chosen]
        self._maps: dict[int, Tensor] = {}

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the penalised weights are computed from (``weight``, or weight norm's
        ``weight_g``/``weight_v`` and parametrisations' originals; never biases): what a
        penalty optimiser steps."""
        return [
            p for m in self._modules for name, p in m.named_parameters()
            if name.rsplit(".", 1)[-1] != "bias"
        ]  # fmt: skip

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record the chosen layers' input maps (detached) during the forward passes inside."""

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = first_tensor(args)
            if x is not None:
                self._maps[id(module)] = x.detach()

        self._maps.clear()
        with forward_hooks([(m, hook) for m in self._modules], pre=True):
            yield

    def loss(self) -> Tensor:
        """The mean spectral dependence over the chosen layers, from the maps last captured;
        differentiable in their weights."""
        terms = []
        for r, module in zip(self.records, self._modules, strict=True):
            maps = self._maps.get(id(module))
            if maps is None:
                raise RuntimeError(f"layer {r.name} did not run inside capture()")
            terms.append(
                spectral_dependence(
                    layer_weight(module), maps, transposed=r.transposed, stride=r.stride,
                    dilation=r.dilation, groups=r.groups, normalised=self.normalised,
                )
            )  # fmt: skip
        return torch.stack(terms).mean()

    def __call__(self, *inputs: Tensor) -> Tensor:
        """Run the model on ``inputs`` (no gradient, eval mode, training flags restored) to
        capture the input maps, and return :meth:`loss`."""
        with self.capture(), eval_mode(self.model), torch.no_grad():
            self.model(*inputs)
        return self.loss()

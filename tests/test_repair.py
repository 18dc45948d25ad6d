"""GenericityPenalty: the paper's repair in a training loop (eq. (13) at chosen levels)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genaudit.analysis.repair import GenericityPenalty
from genaudit.analysis.sdr import run_sdr
from genaudit.errors import NothingToAnalyseError
from genaudit.model.inputs import latent_source

CPU = torch.device("cpu")


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _generator(weight_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    convs = [nn.ConvTranspose2d(8, 8, 4, 1, 0), nn.ConvTranspose2d(8, 6, 4, 2, 1),
             nn.ConvTranspose2d(6, 4, 4, 2, 1), nn.Conv2d(4, 3, 3, padding=1)]  # fmt: skip
    with torch.no_grad():  # smooth, low-pass kernels on smooth maps: far from generic
        for conv in convs:
            conv.weight.abs_().add_(0.2)
    if weight_norm:
        convs[2] = nn.utils.weight_norm(convs[2])
    return nn.Sequential(
        convs[0], nn.BatchNorm2d(8), nn.ReLU(), convs[1], nn.BatchNorm2d(6), nn.ReLU(),
        convs[2], nn.ReLU(), convs[3], nn.Tanh(),
    )  # fmt: skip


def _mean_abs_log10(model: nn.Module, penalty: GenericityPenalty) -> float:
    result = run_sdr(model, penalty.records, latent_source((8, 1, 1), seed=3), num_samples=32,
                     batch_size=32, device=CPU)  # fmt: skip
    logs = torch.cat([torch.as_tensor(layer.log10()).flatten() for layer in result.layers])
    return float(logs.abs().mean())


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")
@pytest.mark.parametrize("weight_norm", [False, True])
def test_alternating_penalty_steps_make_the_chosen_layers_more_generic(weight_norm: bool) -> None:
    model = _generator(weight_norm).train()
    z = torch.randn(16, 8, 1, 1, generator=torch.Generator().manual_seed(1))
    assert [r.name for r in GenericityPenalty(model, z[:2]).records] == ["6", "8"]  # fine, image
    penalty = GenericityPenalty(model, z[:2], levels=("coarse", "fine", "image"))
    assert [(r.name, r.level) for r in penalty.records] == [
        ("3", "coarse"),
        ("6", "fine"),
        ("8", "image"),
    ]
    running, hooks = model[1].running_mean.clone(), _hooks(model)
    before = _mean_abs_log10(model, penalty)
    params = penalty.parameters()
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {"3.weight", "8.weight"} | (
        {"6.weight_g", "6.weight_v"} if weight_norm else {"6.weight"}
    )
    assert {names[id(p)] for p in params} == expected
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(25):
        opt.zero_grad()
        loss = penalty(z)
        assert loss.requires_grad and loss.ndim == 0
        loss.backward()
        opt.step()
    after = _mean_abs_log10(model, penalty)
    assert before > 0.1 and after < 0.5 * before, (before, after)
    # the capture pass changed nothing else: training flags, BatchNorm statistics, hooks
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, running)
    assert _hooks(model) == hooks


def test_capture_during_the_training_forward() -> None:
    model = _generator()
    z = torch.randn(4, 8, 1, 1)
    penalty = GenericityPenalty(model, z[:2], levels=("image",))
    with penalty.capture():
        model(z)
    loss = penalty.loss()
    loss.backward()
    assert model[8].weight.grad is not None and model[3].weight.grad is None
    assert _hooks(model) == 0
    penalty._maps.clear()
    with pytest.raises(RuntimeError, match="did not run"):
        penalty.loss()


def test_levels_without_layers_are_an_error() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(NothingToAnalyseError):
        GenericityPenalty(model, torch.randn(2, 4))

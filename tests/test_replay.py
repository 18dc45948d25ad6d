"""Stretch runs each layer's pass downstream only: the same numbers as full forward passes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_functional_convs import tiny_stylegan
from test_stretch import FixedInputs, latents
from torch import nn

from genaudit.analysis import stretch as stretch_module
from genaudit.analysis.stretch import StretchResult, choose_stretch_layers, run_stretch
from genaudit.analysis.transforms import make_transform
from genaudit.io import registry as zoo
from genaudit.model.hooks import has_hooks
from genaudit.model.inputs import latent_source
from genaudit.model.layers import walk_layers

STRETCH = make_transform("stretch", 1.5, "horizontal")


def _run(model: nn.Module, source: Any, selectors: Sequence[str], replay: bool, n: int, b: int):
    records = walk_layers(model, next(iter(source.batches(2, 2, "cpu"))))
    chosen = choose_stretch_layers(records, selectors)
    stretch_module._REPLAY = replay
    try:
        result = run_stretch(model, records, chosen, source, transform=STRETCH, num_samples=n,
                             batch_size=b, keep_samples=3)  # fmt: skip
    finally:
        stretch_module._REPLAY = True
    return result, dict(stretch_module._LAST_PASSES)


def same_as_full(
    model: nn.Module, source: Any, selectors: Sequence[str] = ("all",), n: int = 10, b: int = 4
) -> tuple[StretchResult, dict[str, int]]:
    """Stretch with replay and with full forward passes: exactly equal; the replay's counts."""
    full, full_passes = _run(model, source, selectors, False, n, b)
    result, passes = _run(model, source, selectors, True, n, b)
    assert full_passes["replayed"] == 0
    assert result.to_dict() == full.to_dict()
    assert all(x.mse > 0 for x in result.layers[:-1])  # the comparison is not vacuous
    assert result.samples is not None and full.samples is not None
    assert torch.equal(result.samples.original, full.samples.original)
    for a, b_ in zip(result.samples.intervened, full.samples.intervened, strict=True):
        assert torch.equal(a, b_)
    assert not has_hooks(model)
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert passes["replayed"] + passes["full"] == len(result.layers) * -(-n // b)
    return result, passes


def dcgan() -> nn.Module:
    torch.manual_seed(0)
    return zoo.build("dcgan_generator", {"ngf": 4, "nz": 6, "image_size": 32})


def test_dcgan_replays_every_layer_with_something_upstream() -> None:
    model = dcgan()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result, passes = same_as_full(model, latent_source((6, 1, 1), seed=3))
    assert [x.name for x in result.layers] == ["main.0", "main.3", "main.6", "main.9"]
    assert passes == {"replayed": 9, "full": 3}  # main.0 has nothing upstream
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_upstream_modules_run_once_per_batch() -> None:
    model = dcgan()
    runs = {"replay": 0, "full": 0}
    mode = ["replay"]
    bn = model.main[1]  # upstream of main.3, main.6 and main.9
    plain = bn.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        runs[mode[0]] += 1
        return plain(x)

    bn.forward = counting  # an instance-level forward of the user's: kept as it is
    source = latent_source((6, 1, 1), seed=0)
    _run(model, source, ["main.3", "main.6", "main.9"], True, 12, 4)
    mode[0] = "full"
    _run(model, source, ["main.3", "main.6", "main.9"], False, 12, 4)
    # walk_layers runs once, then 3 batches: 1 pass each instead of 1 + 3
    assert runs == {"replay": 1 + 3, "full": 1 + 3 * 4}
    assert bn.__dict__["forward"] is counting


class Block(nn.Module):
    """A residual block with in-place ReLUs and an in-place residual add."""

    def __init__(self, c: int, pre_activation: bool = False) -> None:
        super().__init__()
        self.pre = pre_activation
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu, self.relu2 = nn.ReLU(inplace=True), nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = self.relu2(x)  # changes the block's input in place
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return out if self.pre else self.relu2(out)


class ResGenerator(nn.Module):
    def __init__(self, nz: int = 6, c: int = 4) -> None:
        super().__init__()
        self.c = c
        self.fc = nn.Linear(nz, c * 16)
        self.blocks = nn.Sequential(
            Block(c), nn.Upsample(scale_factor=2), nn.Conv2d(c, c, 3, padding=1), Block(c),
            Block(c, pre_activation=True),
        )  # fmt: skip
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc(z).view(-1, self.c, 4, 4), 0.2)
        return torch.tanh(self.to_rgb(self.blocks(x)))


def _init_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def test_resnet_with_in_place_ops() -> None:
    torch.manual_seed(1)
    model = _init_bn(ResGenerator())
    result, passes = same_as_full(model, latents(10, (6,), torch.float32))
    assert len(result.layers) == 8
    # full passes where a value to reuse was changed in place after it was recorded: conv2 of
    # each block (ReLU(inplace) on bn1's output) and blocks.4.conv1 (the block's input)
    assert passes == {"replayed": 4 * 3, "full": 4 * 3}


class SharedGenerator(nn.Module):
    """One convolution called twice: inside a Sequential, then directly."""

    def __init__(self, nz: int = 6, c: int = 8) -> None:
        super().__init__()
        self.c0 = nn.ConvTranspose2d(nz, c, 4)
        self.shared = nn.Conv2d(c, c, 3, padding=1)
        self.stem = nn.Sequential(self.shared, nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
        self.up = nn.Upsample(scale_factor=2)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.c0(z))
        x = self.shared(x)
        return self.out(self.up(x))


def test_a_module_called_twice() -> None:
    torch.manual_seed(2)
    model = SharedGenerator()
    result, passes = same_as_full(model, latents(10, (6, 1, 1), torch.float32))
    assert len(result.layers) == 4
    assert passes["replayed"] == 3 * 3  # every layer but c0, on all 3 batches


class FunctionalParent(nn.Module):
    """Functional ops in the parent's forward between modules, and a parameter of its own."""

    def __init__(self, nz: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(nz, 8 * 16)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 3, 3, padding=1)
        self.gain = nn.Parameter(torch.tensor(1.3))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc(z).view(-1, 8, 4, 4), 0.2)
        x = F.interpolate(self.c1(x), scale_factor=2) * self.gain + 0.1
        x = F.relu(self.c2(x))
        return torch.tanh(self.c3(x))


def test_functional_ops_in_the_parent() -> None:
    torch.manual_seed(3)
    _, passes = same_as_full(FunctionalParent(), latents(10, (6,), torch.float32))
    assert passes == {"replayed": 9, "full": 0}


class Dynamic(nn.Module):
    """An extra convolution only for batches whose first latent is positive."""

    def __init__(self, nz: int = 6) -> None:
        super().__init__()
        self.c0 = nn.ConvTranspose2d(nz, 8, 4)
        self.extra = nn.Conv2d(8, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.c0(z)
        if z[0, 0] > 0:
            x = self.extra(x)
        return self.out(F.relu(self.c1(x)))


def test_control_flow_that_changes_between_batches() -> None:
    torch.manual_seed(4)
    z = torch.randn(10, 6, 1, 1)
    z[:, 0] = z[:, 0].abs()
    z[4, 0] = -1.0  # the second batch skips `extra`
    _, passes = same_as_full(Dynamic(), FixedInputs(z), ["c0", "c1", "out"])
    assert passes == {"replayed": 2 * 2, "full": 3 + 2}  # batch 2 in full, c0 always


def test_functional_convolutions_take_the_full_pass() -> None:
    model = tiny_stylegan()
    result, passes = same_as_full(model, latent_source((6,), seed=1), ())
    assert [x.name for x in result.layers] == ["b4.torgb", "b8.conv", "b8.torgb"]
    assert all(r.is_functional for r in walk_layers(model, latent_source((6,), seed=1).batch(0, 2))
               if r.name in ("b4.torgb", "b8.conv", "b8.torgb"))  # fmt: skip
    assert passes == {"replayed": 0, "full": 3 * 3}
    assert torch._C._len_torch_function_stack() == 0


def test_forwards_put_back_when_a_pass_raises() -> None:
    model = FunctionalParent()
    bad = make_transform("stretch", 1.5, "horizontal")
    calls = [0]
    plain = model.c3.forward

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 3:  # during a layer's pass
            raise RuntimeError("boom")
        return plain(x)

    model.c3.forward = flaky
    source = latents(4, (6,), torch.float32)
    records = walk_layers(model, source.batch(0, 2))
    calls[0] = 0
    with pytest.raises(RuntimeError, match="boom"):
        run_stretch(model, records, choose_stretch_layers(records, ["all"]), source,
                    transform=bad, num_samples=4, batch_size=4)  # fmt: skip
    assert model.c3.__dict__["forward"] is flaky
    assert not has_hooks(model)
    assert [name for name, m in model.named_modules() if "forward" in m.__dict__] == ["c3"]

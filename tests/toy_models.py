"""Small architectures for tests, importable by ``--arch toy_models:Name``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations


class ReorderedGenerator(nn.Module):
    """Registration order differs from execution order: ``late`` is registered first."""

    def __init__(self, nz: int = 8) -> None:
        super().__init__()
        self.late = nn.ConvTranspose2d(8, 1, 4, 2, 1)  # runs last
        self.middle = nn.ConvTranspose2d(16, 8, 4, 2, 1)
        self.early = nn.ConvTranspose2d(nz, 16, 4, 1, 0)  # runs first

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.late(torch.relu(self.middle(torch.relu(self.early(z))))))


class LinearFirstGenerator(nn.Module):
    """z (nz,) → Linear → 4×4 maps → Upsample + Conv → 8×8 → conv to 1 channel."""

    def __init__(self, nz: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(nz, 8 * 16)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(8, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 8, 4, 4)
        return torch.sigmoid(self.out(torch.relu(self.conv(self.up(x)))))


class ConditionalGenerator(nn.Module):
    """Conditional: forward(z, y) with y int labels or one-hot vectors."""

    def __init__(self, nz: int = 5, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, 4)
        self.fc = nn.Linear(nz + 4, 4 * 16)
        self.conv = nn.ConvTranspose2d(4, 1, 4, 2, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = y @ self.embed.weight if y.is_floating_point() else self.embed(y)
        h = self.fc(torch.cat([z, e], dim=1)).view(-1, 4, 4, 4)
        return torch.tanh(self.conv(h))


class TwoInputGenerator(nn.Module):
    """forward(z, noise): a latent vector and a noise map added after the first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.ConvTranspose2d(4, 6, 4, 1, 0)
        self.second = nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(z) + noise))


class ZooOfConvs(nn.Module):
    """1-D, 3-D, grouped, dilated and weight-normalised / parametrised layers."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, padding=2, dilation=2)
        self.t1 = nn.ConvTranspose1d(4, 4, 4, 2, 1, groups=2)
        self.c3 = nn.Conv3d(1, 2, 3, padding=1)
        self.wn = parametrizations.weight_norm(nn.Conv2d(2, 4, 3, padding=1, groups=2))
        self.sn = parametrizations.spectral_norm(nn.ConvTranspose2d(4, 2, 4, 2, 1))

    def forward(
        self, x1: torch.Tensor, x3: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.t1(self.c1(x1))
        b = self.c3(x3)
        c = self.sn(self.wn(b.flatten(1, 2)[:, :2]))
        return a, b, c


def reordered(nz: int = 8) -> nn.Module:
    return ReorderedGenerator(nz)


def linear_first(nz: int = 6) -> nn.Module:
    return LinearFirstGenerator(nz)


def conditional(nz: int = 5, num_classes: int = 3) -> nn.Module:
    return ConditionalGenerator(nz, num_classes)


def two_inputs() -> nn.Module:
    return TwoInputGenerator()


def sampler(batch_size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A ``--sampler``: latents of shape (8, 1, 1) uniform on [0, 1)."""
    return torch.rand((batch_size, 8, 1, 1), generator=generator).to(device)


def conv1d_pair() -> nn.Module:
    """Two 1-D convolutions: 2 → 3 channels (k=3), then 3 → 2 (k=1)."""
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(3, 2, 1))

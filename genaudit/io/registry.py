"""Registry of standard architectures, usable by name with ``--arch`` (docs/method.md).

Only the names registered here are ever built from a checkpoint's metadata; a name
that is not in the registry is refused, never imported.

Keyword arguments are checked before anything is built (:data:`KWARG_BOUNDS`: integers within
sane bounds), and :func:`build` builds the model on the ``meta`` device first, refusing one whose
parameters and buffers would exceed ``GENAUDIT_MAX_CHECKPOINT_BYTES``
(:mod:`genaudit.io.limits`); :func:`build_meta` gives that shapes-only model, so that a
caller can match it against a checkpoint's tensors before materialising anything.

Every model built here carries a ``genaudit_input`` attribute describing what it is fed:
``("latent", shape)`` for generators and decoders, ``("data", shape)`` for
discriminators and encoders (shape without the batch dimension).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ArchitectureError, OptionStyle, option, render_options
from .limits import LIMITS, limit


@dataclass(frozen=True)
class InputInfo:
    """What a model is fed: latents drawn by genaudit, or data samples."""

    kind: str  # "latent" or "data"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ArchEntry:
    name: str
    factory: Callable[..., nn.Module]
    raw_summary: str  # may name the user's options (:func:`~genaudit.errors.option`)

    @property
    def summary(self) -> str:
        """The one-line description, options phrased for the command line."""
        return self.summary_for("cli")

    def summary_for(self, style: OptionStyle) -> str:
        """The one-line description, options phrased for ``style``."""
        return render_options(self.raw_summary, style)

    def defaults(self) -> dict[str, Any]:
        """The factory's keyword arguments and their default values."""
        sig = inspect.signature(self.factory)
        return {k: p.default for k, p in sig.parameters.items()}


_REGISTRY: dict[str, ArchEntry] = {}


def register(
    name: str, summary: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a factory to the registry under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = ArchEntry(name, factory, summary)
        return factory

    return wrap


def list_architectures() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> ArchEntry:
    """The registry entry for ``name``; the error lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ArchitectureError(
            f"unknown architecture {name!r}; registered: {', '.join(list_architectures())}",
            f"use one of these names, or pass {option('arch')} pkg.module:Factory for your own "
            "code",
        ) from None


# The (smallest, largest) value of each keyword argument the registered factories take: all are
# integers. The bounds are far above any real model and far below what would exhaust memory in
# the constructor; the model's total size is checked on the meta device too.
KWARG_BOUNDS: dict[str, tuple[int, int]] = {
    "image_size": (8, 8192),
    "nc": (1, 1024),
    "nz": (1, 1 << 20),
    "ngf": (1, 1 << 14),
    "ndf": (1, 1 << 14),
    "nef": (1, 1 << 14),
}


def _checked_kwargs(name: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``kwargs`` checked against the factory's signature and :data:`KWARG_BOUNDS`."""
    entry = get(name)
    kwargs = dict(kwargs or {})
    allowed = entry.defaults()
    unknown = sorted(str(k) for k in set(kwargs) - set(allowed))
    if unknown:
        raise ArchitectureError(
            f"architecture {name!r} takes no argument(s) {', '.join(unknown)}"[:300],
            f"valid arguments: {', '.join(sorted(allowed))}",
        )
    for key, value in sorted(kwargs.items()):
        low, high = KWARG_BOUNDS.get(key, (1, 1 << 20))
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArchitectureError(
                f"architecture {name!r}: {key} must be an integer, got {str(value)[:40]!r}",
                f"check {option('arch_kwargs')} (or the checkpoint's genaudit.arch_kwargs)",
            )
        if not low <= value <= high:
            shown = str(value) if abs(value) < 10**12 else f"{str(value)[:12]}…"
            raise ArchitectureError(
                f"architecture {name!r}: {key}={shown} is outside {low}..{high}",
                f"check {option('arch_kwargs')} (or the checkpoint's genaudit.arch_kwargs)",
            )
    return kwargs


def _model_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def build_meta(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The registered architecture built on the ``meta`` device: shapes only, no memory.

    Raises :class:`~genaudit.errors.ArchitectureError` for bad arguments, and for a model whose
    parameters and buffers would exceed ``GENAUDIT_MAX_CHECKPOINT_BYTES``.
    """
    kwargs = _checked_kwargs(name, kwargs)
    try:
        with torch.device("meta"):
            model = get(name).factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"cannot build {name!r} with {kwargs}: {exc}") from None
    size, most = _model_bytes(model), limit("checkpoint_bytes")
    if size > most:
        raise ArchitectureError(
            f"architecture {name!r} with {kwargs} would hold {size} bytes of weights, over the "
            f"limit of {most}",
            f"check {option('arch_kwargs')}; to allow it, set the environment variable "
            f"{LIMITS['checkpoint_bytes'][0]}",
        )
    return model


def build(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build a registered architecture with keyword arguments checked against its factory and
    :data:`KWARG_BOUNDS`, and its size checked on the ``meta`` device (:func:`build_meta`)
    before it is built for real."""
    build_meta(name, kwargs)
    kwargs = _checked_kwargs(name, kwargs)
    try:
        return get(name).factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"cannot build {name!r} with {kwargs}: {exc}") from None


def _num_doublings(image_size: int, base: int = 4) -> int:
    n = round(math.log2(image_size / base)) if image_size >= base else -1
    if image_size < 2 * base or base * 2**n != image_size:
        raise ValueError(
            f"image_size must be {2 * base}, {4 * base}, {8 * base}, … (got {image_size})"
        )
    return n


class DCGANGenerator(nn.Module):
    """Radford et al. (2016) generator: z (nz×1×1) → 4×4 → … → image_size², tanh output."""

    def __init__(self, image_size: int = 64, nc: int = 3, nz: int = 100, ngf: int = 64) -> None:
        super().__init__()
        n = _num_doublings(image_size)
        width = ngf * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(n - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.genaudit_input = InputInfo("latent", (nz, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    """Radford et al. (2016) discriminator: image_size² image → one logit per sample."""

    def __init__(self, image_size: int = 64, nc: int = 3, ndf: int = 64) -> None:
        super().__init__()
        n = _num_doublings(image_size)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(n - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False), nn.Flatten()]
        self.main = nn.Sequential(*layers)
        self.genaudit_input = InputInfo("data", (nc, image_size, image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class VAEEncoder(nn.Module):
    """Convolutional β-VAE encoder like the paper's (Sec. 4): 4×4 stride-2 convs to 4×4, then a
    linear map to the posterior mean and log-variance, returned concatenated as (N, 2·nz)."""

    def __init__(self, image_size: int = 64, nc: int = 3, nz: int = 32, nef: int = 32) -> None:
        super().__init__()
        n = _num_doublings(image_size)
        layers: list[nn.Module] = []
        cin, width = nc, nef
        for _ in range(n):
            layers += [nn.Conv2d(cin, width, 4, 2, 1), nn.ReLU(True)]
            cin, width = width, width * 2
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin * 16, 2 * nz)
        self.nz = nz
        self.genaudit_input = InputInfo("data", (nc, image_size, image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.features(x)))


class VAEDecoder(nn.Module):
    """Convolutional β-VAE decoder like the paper's (Sec. 4): a linear map from z to 4×4 maps,
    then 4×4 stride-2 transposed convs up to image_size², sigmoid output in [0, 1]."""

    def __init__(self, image_size: int = 64, nc: int = 3, nz: int = 32, ngf: int = 32) -> None:
        super().__init__()
        n = _num_doublings(image_size)
        width = ngf * 2 ** (n - 1)
        self.fc = nn.Linear(nz, width * 16)
        self.unflatten = nn.Unflatten(1, (width, 4, 4))
        layers: list[nn.Module] = [nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, nc, 4, 2, 1), nn.Sigmoid()]
        self.features = nn.Sequential(*layers)
        self.genaudit_input = InputInfo("latent", (nz,))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.features(self.unflatten(self.fc(z)))


class VAE(nn.Module):
    """Encoder + decoder; ``forward`` decodes latents so that the whole model is a generator.

    Audit one half with ``--module encoder`` or ``--module decoder``.
    """

    def __init__(
        self, image_size: int = 64, nc: int = 3, nz: int = 32, nef: int = 32, ngf: int = 32
    ) -> None:
        super().__init__()
        self.encoder = VAEEncoder(image_size, nc, nz, nef)
        self.decoder = VAEDecoder(image_size, nc, nz, ngf)
        self.genaudit_input = self.decoder.genaudit_input

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


@register("dcgan_generator", "DCGAN generator (Radford et al. 2016), z → image, tanh output")
def dcgan_generator(image_size: int = 64, nc: int = 3, nz: int = 100, ngf: int = 64) -> nn.Module:
    return DCGANGenerator(image_size, nc, nz, ngf)


@register("dcgan_discriminator", "DCGAN discriminator (Radford et al. 2016), image → logit")
def dcgan_discriminator(image_size: int = 64, nc: int = 3, ndf: int = 64) -> nn.Module:
    return DCGANDiscriminator(image_size, nc, ndf)


@register(
    "vae_encoder", "convolutional β-VAE encoder as in Besserve et al. 2021, image → (μ, log σ²)"
)
def vae_encoder(image_size: int = 64, nc: int = 3, nz: int = 32, nef: int = 32) -> nn.Module:
    return VAEEncoder(image_size, nc, nz, nef)


@register("vae_decoder", "convolutional β-VAE decoder as in Besserve et al. 2021, z → image")
def vae_decoder(image_size: int = 64, nc: int = 3, nz: int = 32, ngf: int = 32) -> nn.Module:
    return VAEDecoder(image_size, nc, nz, ngf)


@register(
    "vae",
    f"β-VAE with .encoder and .decoder; forward decodes (use {option('module')} to pick a half)",
)
def vae(image_size: int = 64, nc: int = 3, nz: int = 32, nef: int = 32, ngf: int = 32) -> nn.Module:
    return VAE(image_size, nc, nz, nef, ngf)

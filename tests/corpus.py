"""A corpus of realistic generator shapes, built small in code, and the files users save them as.

Importable by ``--arch corpus:name`` (the tests folder is on ``sys.path``). Each architecture is a
scaled-down copy of a well-known one with the same layer types, strides, paddings, groups,
normalisations and key names, so its checkpoints look like the real thing to the loader:

- ``hifigan`` / ``hifigan_param``: a HiFi-GAN vocoder generator built from one config object
  ``h`` (old-style ``weight_g``/``weight_v`` weight norm, or ``parametrizations.weight_norm``);
- ``cyclegan``: the CycleGAN / pix2pix ResNet generator (image in, image out);
- ``esrgan``: an ESRGAN RRDB network (BasicSR key names), nearest-neighbour or PixelShuffle
  upsampling;
- ``swinsr``: a tiny transformer super-resolution net (LayerNorm + Linear attention, depthwise
  3×3 convolutions in the feed-forward, PixelShuffle upsampler);
- ``grouped``: a DCGAN-like generator with grouped transposed convolutions;
- ``lit_gan``: a Lightning-style GAN module holding ``generator`` and ``discriminator``;
- ``stylegan2``: a StyleGAN2-like generator whose convolutions are modulated per sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrizations

# --------------------------------------------------------------------------- (a) HiFi-GAN


class AttrDict(dict):
    """HiFi-GAN's config object: a dict whose items are also attributes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__ = self


#: HiFi-GAN's V1 config, scaled down: 16 mel bins, 16 → 8 → 4 channels, upsampling 8 × 8.
HIFIGAN_CONFIG: dict[str, Any] = {
    "num_mels": 16,
    "upsample_rates": [8, 8],
    "upsample_kernel_sizes": [16, 16],
    "upsample_initial_channel": 16,
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
}
LRELU_SLOPE = 0.1


def _legacy_weight_norm(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # deprecated in favour of parametrizations, still common
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module)


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """HiFi-GAN's MRF residual block: dilated convolutions (convs1) each followed by one more."""

    def __init__(
        self, norm: Callable[[nn.Module], nn.Module], channels: int, k: int, d: Sequence[int]
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            norm(nn.Conv1d(channels, channels, k, 1, dilation=x, padding=_padding(k, x))) for x in d
        )
        self.convs2 = nn.ModuleList(
            norm(nn.Conv1d(channels, channels, k, 1, dilation=1, padding=_padding(k, 1))) for _ in d
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            x = xt + x
        return x


class HifiGanGenerator(nn.Module):
    """HiFi-GAN's ``Generator(h)``: mel spectrogram ``(B, num_mels, T)`` → waveform."""

    norm: Callable[[nn.Module], nn.Module] = staticmethod(_legacy_weight_norm)

    def __init__(self, h: Any) -> None:
        super().__init__()
        norm = type(self).norm
        self.num_kernels = len(h.resblock_kernel_sizes)
        self.num_upsamples = len(h.upsample_rates)
        ch = h.upsample_initial_channel
        self.conv_pre = norm(nn.Conv1d(h.num_mels, ch, 7, 1, padding=3))
        self.ups = nn.ModuleList(
            norm(nn.ConvTranspose1d(ch // 2**i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(h.upsample_rates, h.upsample_kernel_sizes, strict=True))
        )
        self.resblocks = nn.ModuleList()
        for i in range(self.num_upsamples):
            c = ch // 2 ** (i + 1)
            for k, d in zip(h.resblock_kernel_sizes, h.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock1(norm, c, k, d))
        self.conv_post = norm(nn.Conv1d(c, 1, 7, 1, padding=3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


class HifiGanGeneratorParam(HifiGanGenerator):
    """The same generator with ``torch.nn.utils.parametrizations.weight_norm``."""

    norm = staticmethod(parametrizations.weight_norm)


def hifigan_config(**overrides: Any) -> AttrDict:
    """The config object ``h`` (attribute and item access), defaults overridden by keyword."""
    unknown = set(overrides) - set(HIFIGAN_CONFIG)
    if unknown:
        raise TypeError(f"unknown HiFi-GAN config keys: {sorted(unknown)}")
    return AttrDict({**HIFIGAN_CONFIG, **overrides})


def hifigan(**config: Any) -> nn.Module:
    """``--arch corpus:hifigan --arch-kwargs '{"upsample_rates": …}'``: old-style weight norm."""
    return HifiGanGenerator(hifigan_config(**config))


def hifigan_param(**config: Any) -> nn.Module:
    """As :func:`hifigan`, with parametrised weight norm."""
    return HifiGanGeneratorParam(hifigan_config(**config))


# --------------------------------------------------------------------------- (b) CycleGAN


class ResnetBlock(nn.Module):
    """CycleGAN's residual block: reflection pad, 3×3 conv, instance norm, ReLU, twice."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, bias=True),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ``ResnetGenerator`` (keys ``model.N.…``): image ``(B, 3, H, W)`` → image."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 4, n_blocks: int = 2):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, bias=True),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):  # downsampling
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                nn.InstanceNorm2d(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):  # upsampling
            mult = 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1
                ),
                nn.InstanceNorm2d(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def cyclegan(ngf: int = 4, n_blocks: int = 2) -> nn.Module:
    return ResnetGenerator(3, 3, ngf, n_blocks)


# --------------------------------------------------------------------------- (c) ESRGAN


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convolutions with leaky ReLU, scaled residual."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, scaled residual."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(nf, gc)
        self.rdb2 = ResidualDenseBlock(nf, gc)
        self.rdb3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN (BasicSR names: conv_first, body, conv_body, conv_up1/2, conv_hr, conv_last), ×4.

    ``upsampler="nearest"``: ``nn.Upsample`` then a 3×3 conv per ×2 step; ``"pixelshuffle"``: a
    3×3 conv to 4× the channels then ``nn.PixelShuffle(2)``.
    """

    def __init__(self, nf: int = 8, nb: int = 1, gc: int = 4, upsampler: str = "nearest"):
        super().__init__()
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        if upsampler == "nearest":
            self.conv_up1 = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(nf, nf, 3, 1, 1))
            self.conv_up2 = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(nf, nf, 3, 1, 1))
        elif upsampler == "pixelshuffle":
            self.conv_up1 = nn.Sequential(nn.Conv2d(nf, 4 * nf, 3, 1, 1), nn.PixelShuffle(2))
            self.conv_up2 = nn.Sequential(nn.Conv2d(nf, 4 * nf, 3, 1, 1), nn.PixelShuffle(2))
        else:
            raise ValueError(f"upsampler must be nearest or pixelshuffle, not {upsampler!r}")
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(feat))
        feat = self.lrelu(self.conv_up2(feat))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def esrgan(nf: int = 8, nb: int = 1, gc: int = 4, upsampler: str = "nearest") -> nn.Module:
    return RRDBNet(nf, nb, gc, upsampler)


# --------------------------------------------------------------------------- (d) transformer SR


class TransformerBlock(nn.Module):
    """Pre-norm block: global self-attention over pixels, then a feed-forward with a depthwise
    3×3 convolution between its two Linear layers (LeFF / Restormer style)."""

    def __init__(self, dim: int, heads: int = 2, expand: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = expand * dim
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(att)
        h = self.fc1(self.norm2(x)).transpose(1, 2).reshape(b, -1, *size)
        h = F.gelu(self.dwconv(h)).flatten(2).transpose(1, 2)
        return x + self.fc2(h)


class TinySwinSR(nn.Module):
    """Conv stem → transformer blocks on pixel tokens → conv → PixelShuffle ×2 → conv."""

    def __init__(self, dim: int = 8, depth: int = 2, scale: int = 2) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, dim, 3, 1, 1)
        self.layers = nn.ModuleList(TransformerBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)
        self.upsample = nn.Sequential(
            nn.Conv2d(dim, dim * scale**2, 3, 1, 1), nn.PixelShuffle(scale)
        )
        self.conv_last = nn.Conv2d(dim, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        b, c, h, w = feat.shape
        t = feat.flatten(2).transpose(1, 2)
        for layer in self.layers:
            t = layer(t, (h, w))
        body = self.norm(t).transpose(1, 2).reshape(b, c, h, w)
        feat = feat + self.conv_after_body(body)
        return self.conv_last(self.upsample(feat))


def swinsr(dim: int = 8, depth: int = 2) -> nn.Module:
    return TinySwinSR(dim, depth)


# --------------------------------------------------------------------------- (e) grouped


class GroupedGenerator(nn.Module):
    """z ``(nz, 1, 1)`` → 4×4 → grouped ConvTranspose2d (groups 2, then 4) → 16×16 → RGB."""

    def __init__(self, nz: int = 8, ngf: int = 16) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, ngf // 2, 4, 2, 1, groups=2, bias=False),
            nn.BatchNorm2d(ngf // 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf // 2, ngf // 2, 4, 2, 1, groups=4, bias=False),
            nn.BatchNorm2d(ngf // 2),
            nn.ReLU(True),
            nn.Conv2d(ngf // 2, 3, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


def grouped(nz: int = 8, ngf: int = 16) -> nn.Module:
    return GroupedGenerator(nz, ngf)


# --------------------------------------------------------------------------- (f) Lightning GAN


class DCGANGenerator(nn.Module):
    """z ``(nz, 1, 1)`` → 16×16 single-channel images."""

    def __init__(self, nz: int = 8, ngf: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, 2 * ngf, 4, 1, 0, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 1, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DCGANDiscriminator(nn.Module):
    """16×16 single-channel images → one logit."""

    def __init__(self, ndf: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * ndf, 1, 4, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class LitGAN(nn.Module):
    """What a ``LightningModule`` GAN holds (without Lightning): ``generator``, ``discriminator``;
    its forward is the generator's."""

    def __init__(self, nz: int = 8, ngf: int = 8, ndf: int = 8) -> None:
        super().__init__()
        self.generator = DCGANGenerator(nz, ngf)
        self.discriminator = DCGANDiscriminator(ndf)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def lit_gan(nz: int = 8, ngf: int = 8, ndf: int = 8) -> nn.Module:
    return LitGAN(nz, ngf, ndf)


def dcgan_generator(nz: int = 8, ngf: int = 8) -> nn.Module:
    """The generator of :class:`LitGAN` alone (keys ``net.…``)."""
    return DCGANGenerator(nz, ngf)


# --------------------------------------------------------------------------- (h) StyleGAN2


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: the weight is scaled per sample by a style, optionally
    demodulated, and applied as one grouped ``F.conv2d`` over the batch (groups = batch size)."""

    def __init__(
        self, cin: int, cout: int, k: int, w_dim: int, demodulate: bool = True, up: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.affine = nn.Linear(w_dim, cin)
        self.demodulate, self.up, self.padding = demodulate, up, k // 2
        self.scale = 1 / (cin * k * k) ** 0.5

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, cin, h, wd = x.shape
        style = self.affine(w)  # (B, cin)
        weight = self.scale * self.weight * style[:, None, :, None, None]  # (B, cout, cin, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            h, wd = 2 * h, 2 * wd
        out = F.conv2d(
            x.reshape(1, b * cin, h, wd),
            weight.reshape(-1, cin, *weight.shape[3:]),
            padding=self.padding,
            groups=b,
        )
        return out.reshape(b, -1, h, wd)


class StyleGAN2Like(nn.Module):
    """Mapping MLP z → w; a learned constant 4×4 input; modulated convs (8×8, 16×16) with noise;
    toRGB (modulated 1×1, no demodulation) at each resolution, summed with upsampling."""

    def __init__(self, z_dim: int = 8, w_dim: int = 8, ch: int = 8) -> None:
        super().__init__()
        self.mapping = nn.Sequential(
            nn.Linear(z_dim, w_dim), nn.LeakyReLU(0.2), nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2)
        )
        self.const = nn.Parameter(torch.randn(1, ch, 4, 4))
        self.conv0 = ModulatedConv2d(ch, ch, 3, w_dim)
        self.torgb0 = ModulatedConv2d(ch, 3, 1, w_dim, demodulate=False)
        self.convs = nn.ModuleList(ModulatedConv2d(ch, ch, 3, w_dim, up=True) for _ in range(2))
        self.torgbs = nn.ModuleList(ModulatedConv2d(ch, 3, 1, w_dim, demodulate=False)
                                    for _ in range(2))  # fmt: skip
        self.noise_strength = nn.Parameter(torch.zeros(3))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        x = F.leaky_relu(self.conv0(self.const.expand(z.shape[0], -1, -1, -1), w), 0.2)
        rgb = self.torgb0(x, w)
        for i, (conv, torgb) in enumerate(zip(self.convs, self.torgbs, strict=True)):
            x = conv(x, w)
            x = F.leaky_relu(x + self.noise_strength[i] * torch.randn_like(x[:, :1]), 0.2)
            rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
            rgb = rgb + torgb(x, w)
        return rgb


def stylegan2(z_dim: int = 8, w_dim: int = 8, ch: int = 8) -> nn.Module:
    return StyleGAN2Like(z_dim, w_dim, ch)


# --------------------------------------------------------------------------- example inputs

#: Per architecture: the factory spec for ``--arch`` and one sample's input shape.
SHAPES: dict[str, tuple[str, tuple[int, ...]]] = {
    "hifigan": ("corpus:hifigan", (16, 8)),  # 16 mel bins, 8 frames → 512 samples
    "hifigan_param": ("corpus:hifigan_param", (16, 8)),
    "cyclegan": ("corpus:cyclegan", (3, 16, 16)),
    "esrgan": ("corpus:esrgan", (3, 8, 8)),
    "esrgan_ps": ("corpus:esrgan", (3, 8, 8)),
    "swinsr": ("corpus:swinsr", (3, 8, 8)),
    "grouped": ("corpus:grouped", (8, 1, 1)),
}
#: ``--arch-kwargs`` per architecture (default: none).
KWARGS: dict[str, dict[str, Any]] = {"esrgan_ps": {"upsampler": "pixelshuffle"}}


def build(name: str, seed: int = 0) -> nn.Module:
    """The architecture ``name`` of :data:`SHAPES` with seeded random weights, in eval mode."""
    factory = globals()[SHAPES[name][0].split(":", 1)[1]]
    torch.manual_seed(seed)
    model: nn.Module = factory(**KWARGS.get(name, {}))
    return model.eval()


def example_inputs(name: str, n: int, seed: int = 1) -> torch.Tensor:
    """``n`` samples for ``name``: latents for the grouped generator, mel-like or image-like data
    (smooth, non-white spectra) for the others."""
    shape = SHAPES[name][1]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g)
    if shape[-1] > 1:  # data: smoothed along its grid, a coloured spectrum like real mels/images
        pool = F.avg_pool1d if len(shape) == 2 else F.avg_pool2d
        x = pool(x, 3, 1, 1)
    return x.contiguous()


# --------------------------------------------------------------------------- save helpers


def state_dict_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, unshared CPU clones of the state dict (what safetensors requires)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def save_zip(model: nn.Module, path: Path) -> Path:
    """``torch.save(model.state_dict())`` (zip)."""
    torch.save(state_dict_of(model), path)
    return path


def save_legacy(model: nn.Module, path: Path) -> Path:
    """The pre-1.6 (non-zip) pickle format."""
    torch.save(state_dict_of(model), path, _use_new_zipfile_serialization=False)
    return path


def save_safetensors(model: nn.Module, path: Path) -> Path:
    """``safetensors.torch.save_file`` on contiguous clones (no metadata: needs ``--arch``)."""
    save_file(state_dict_of(model), str(path))
    return path


def save_nested(model: nn.Module, path: Path, key: str) -> Path:
    """``{key: state_dict}`` plus bookkeeping, as training scripts save (``generator`` for
    HiFi-GAN, ``params`` / ``params_ema`` for BasicSR, ``netG_state_dict`` for many GANs)."""
    torch.save({key: state_dict_of(model), "steps": 1000, "epoch": 3}, path)
    return path


def save_lightning(module: nn.Module, path: Path) -> Path:
    """A Lightning-style checkpoint: every submodule's weights under its attribute prefix in
    ``state_dict``, with the trainer's bookkeeping (weights-only loadable)."""
    sd = state_dict_of(module)
    ids = list(range(sum(1 for k in sd if not k.endswith(("_mean", "_var", "_tracked")))))
    adam = {i: {"step": torch.tensor(1250.0), "exp_avg": torch.zeros(1)} for i in ids}
    ckpt = {
        "epoch": 4,
        "global_step": 1250,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": sd,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 4}}}},
        "optimizer_states": [
            {"state": adam, "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": ids}]}
        ],
        "lr_schedulers": [],
        "hyper_parameters": {"nz": 8, "lr": 2e-4},
    }
    torch.save(ckpt, path)
    return path


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``torch.jit.trace(model, example)`` saved with ``torch.jit.save``."""
    with torch.no_grad(), warnings.catch_warnings():  # deprecated, and still what many ship
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path))
    return path


#: Writers by format name; ``nested:KEY`` is :func:`save_nested` with that key.
WRITERS: dict[str, Callable[[nn.Module, Path], Path]] = {
    "zip": save_zip,
    "legacy": save_legacy,
    "safetensors": save_safetensors,
}


def save(model: nn.Module, folder: Path, fmt: str) -> Path:
    """Write ``model`` into ``folder`` in format ``fmt`` (a :data:`WRITERS` name or
    ``nested:KEY``) and return the path."""
    stem = fmt.replace(":", "_")
    if fmt.startswith("nested:"):
        return save_nested(model, folder / f"{stem}.pth", fmt.split(":", 1)[1])
    suffix = ".safetensors" if fmt == "safetensors" else ".pth"
    return WRITERS[fmt](model, folder / f"{stem}{suffix}")

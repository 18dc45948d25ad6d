"""Convolutions called functionally: modulated ones listed with their call site, fixed ones
analysed like module convolutions (checked against the dense reference), on the CLI too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dense_reference import dense_sdr
from torch import nn
from typer.testing import CliRunner

from genaudit.analysis.sdr import run_sdr
from genaudit.analysis.stretch import run_stretch
from genaudit.analysis.transforms import make_transform
from genaudit.cli import app
from genaudit.model.functional import PER_SAMPLE_REASON
from genaudit.model.hooks import has_hooks
from genaudit.model.inputs import latent_source
from genaudit.model.layers import walk_layers

CPU = torch.device("cpu")
THIS = Path(__file__).name
runner = CliRunner()


class ModulatedConv(nn.Module):
    """StyleGAN2: weight × style per sample, demodulated, one grouped conv for the batch."""

    def __init__(self, c_in: int, c_out: int, w_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3))
        self.affine = nn.Linear(w_dim, c_in)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        wt = self.weight[None] * (self.affine(w) + 1)[:, None, :, None, None]
        wt = wt * torch.rsqrt(wt.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        x = x.reshape(1, -1, *x.shape[2:])
        y = F.conv2d(x, wt.reshape(-1, *wt.shape[2:]), padding=1, groups=b)  # MODULATED
        return y.reshape(b, -1, *y.shape[2:])


class ToRGB(nn.Module):
    """1×1 conv with a fixed weight: the parameter itself, or scaled (equalised lr)."""

    def __init__(self, c_in: int, equalised: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, c_in, 1, 1))
        self.scale = 1 / c_in**0.5 if equalised else None
        self.seen: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            self.seen.append(x.detach().clone())
        if self.scale is None:
            return F.conv2d(x, self.weight)
        return F.conv2d(x, self.weight * self.scale)


class Block(nn.Module):
    def __init__(self, c: int, w_dim: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.conv = ModulatedConv(c, c, w_dim)
        self.register_buffer("blur", torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)
        self.torgb = ToRGB(c, equalised=up)
        self.seen: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0)
            if self.seen is not None:
                self.seen.append(x.detach().clone())
            kernel = self.blur.expand(x.shape[1], 1, 3, 3)  # fixed, from a buffer
            x = F.conv2d(x, kernel, padding=1, groups=x.shape[1])
        return torch.relu(self.conv(x, w))


class TinyStyleGAN(nn.Module):
    """Mapping MLP → style; const 4×4 → modulated convs (4×4, then 8×8) → toRGB per block."""

    def __init__(self, z_dim: int = 6, c: int = 4) -> None:
        super().__init__()
        self.mapping = nn.Sequential(nn.Linear(z_dim, 8), nn.ReLU(), nn.Linear(8, 8))
        self.const = nn.Parameter(torch.randn(1, c, 4, 4))
        self.b4, self.b8 = Block(c, 8, up=False), Block(c, 8, up=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z)
        x = self.b4(self.const.expand(z.shape[0], -1, -1, -1), w)
        rgb = F.interpolate(self.b4.torgb(x), scale_factor=2.0)
        x = self.b8(x, w)
        return torch.tanh(rgb + self.b8.torgb(x))


class FunctionalTransposeGenerator(nn.Module):
    """z → Linear → 4×4 maps → ``F.conv_transpose2d(x, self.weight)`` → 8×8 → Conv2d."""

    def __init__(self, nz: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(nz, 6 * 16)
        self.weight = nn.Parameter(torch.randn(6, 4, 4, 4))
        self.out = nn.Conv2d(4, 1, 3, padding=1)
        self.seen: list[torch.Tensor] | None = None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(z)).view(-1, 6, 4, 4)
        if self.seen is not None:
            self.seen.append(x.detach().clone())
        x = F.conv_transpose2d(x, self.weight, stride=2, padding=1)
        return torch.tanh(self.out(torch.relu(x)))


def tiny_stylegan() -> TinyStyleGAN:
    torch.manual_seed(0)
    return TinyStyleGAN()


def functional_transpose() -> FunctionalTransposeGenerator:
    torch.manual_seed(0)
    return FunctionalTransposeGenerator()


def _line(marker: str) -> int:
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# {marker}"))


def test_modulated_convs_are_listed_with_reason_and_call_site() -> None:
    model = tiny_stylegan()
    records = walk_layers(model, latent_source((6,), seed=1).batch(0, 2))
    by_name = {r.name: r for r in records}
    site = f"{THIS}:{_line('MODULATED')}"
    for name in ("b4.conv", "b8.conv"):
        r = by_name[name]
        assert r.type == "conv2d (functional)" and r.analysis == "skipped"
        assert r.reason is not None and r.reason.startswith(PER_SAMPLE_REASON)
        assert r.site is not None and r.site.endswith(site) and site in r.reason
        assert r.input_shape[0] == 4 and r.groups == 1  # one sample's shapes, not the folded batch
    fixed = ["b4.torgb", "b8", "b8.torgb"]  # parameter path, blur of a buffer, equalised lr
    for name in fixed:
        assert by_name[name].analysis == "sdr", by_name[name]
    assert by_name["b8"].groups == 4
    # execution order, and levels assigned like any convolution's
    assert [r.name for r in records if r.is_conv] == ["b4.conv", "b4.torgb", "b8", "b8.conv",
                                                      "b8.torgb"]  # fmt: skip
    assert by_name["b8.torgb"].level == "image" and by_name["b4.conv"].level == "coarse"
    assert not has_hooks(model) and model.training


def _check_against_dense(model: nn.Module, layer, v: np.ndarray, w: torch.Tensor) -> None:
    r = layer.record
    ref = dense_sdr(v, w.detach().double().numpy(), transposed=r.transposed, stride=r.stride,
                    dilation=r.dilation, groups=r.groups)  # fmt: skip
    assert layer.values is not None
    keep = ~np.isnan(ref)
    assert layer.values[np.isfinite(layer.values)].size == keep.sum()
    got = np.full_like(ref, np.nan)
    rows = np.arange(ref.shape[0])[:, None]
    got[rows, layer.input_index] = layer.values
    np.testing.assert_allclose(got[keep], ref[keep], rtol=1e-6)


def test_fixed_functional_convs_match_the_dense_reference() -> None:
    model = tiny_stylegan()
    source = latent_source((6,), seed=1)
    records = walk_layers(model, source.batch(0, 2))
    result = run_sdr(model, records, source, num_samples=24, batch_size=8, device=CPU)
    layers = {x.record.name: x for x in result.layers}
    assert {x.record.name for x in result.layers if x.analysis == "sdr"} == {
        "b4.torgb", "b8", "b8.torgb"
    }  # fmt: skip
    assert result.notes and result.notes[0].startswith("2 functional convolutions were not")
    assert "notes" in result.to_dict()
    model.b8.seen, model.b8.torgb.seen = [], []
    with torch.no_grad():
        model(*source.batch(0, 24))
    blur = model.b8.blur.expand(4, 1, 3, 3)
    _check_against_dense(model, layers["b8"], model.b8.seen[0].double().numpy(), blur)
    torgb = model.b8.torgb
    assert torgb.scale is not None
    v = torgb.seen[0].double().numpy()
    _check_against_dense(model, layers["b8.torgb"], v, torgb.weight * torgb.scale)
    assert not has_hooks(model)


def test_functional_transpose_conv_matches_the_dense_reference() -> None:
    model = functional_transpose()
    source = latent_source((5,), seed=2)
    records = walk_layers(model, source.batch(0, 2))
    assert [(r.name, r.type, r.level) for r in records] == [
        ("fc", "Linear", "linear"),
        ("weight", "conv_transpose2d (functional)", "fine"),
        ("out", "Conv2d", "image"),
    ]
    result = run_sdr(model, records, source, num_samples=20, batch_size=7, device=CPU)
    assert result.notes == () and "notes" not in result.to_dict()
    model.seen = []
    with torch.no_grad():
        model(*source.batch(0, 20))
    _check_against_dense(model, result.layers[1], model.seen[0].double().numpy(), model.weight)
    # the weight as the op received it, not only equal by chance: a scaled copy changes nothing
    assert result.layers[1].summary is not None and result.layers[1].summary.defined == 24


def test_mode_removed_and_flags_restored_when_the_forward_raises() -> None:
    model = functional_transpose()
    model.train()
    with pytest.raises(RuntimeError):
        walk_layers(model, (torch.randn(2, 7),))  # wrong latent size: the Linear raises
    assert model.training and not has_hooks(model)
    assert torch._C._len_torch_function_stack() == 0
    records = walk_layers(model, latent_source((5,), seed=0).batch(0, 2))
    assert torch._C._len_torch_function_stack() == 0 and model.training
    assert records[1].is_functional and not records[0].is_functional


def test_stretch_intervenes_at_functional_convs() -> None:
    model = tiny_stylegan()
    source = latent_source((6,), seed=1)
    records = walk_layers(model, source.batch(0, 2))
    result = run_stretch(model, records, None, source, transform=make_transform("stretch", 1.5),
                         num_samples=4, batch_size=2, keep_samples=0)  # fmt: skip
    names = [x.name for x in result.layers]
    assert names == ["b4.torgb", "b8.conv", "b8.torgb"]  # last of coarse, fine, image
    rel = {x.name: x.rel_mse for x in result.layers}
    assert all(np.isfinite(v) and v > 0 for v in rel.values())
    assert len(set(rel.values())) == 3
    # the same as stretching the output of b8's toRGB op by hand
    t = make_transform("stretch", 1.5)
    z = source.batch(0, 4)[0]
    with torch.no_grad():
        target = t(model(z))
        plain = model.b8.torgb.forward
        model.b8.torgb.forward = lambda x: t(plain(x))  # type: ignore[method-assign]
        by_hand = ((model(z) - target) ** 2).mean().item()
        del model.b8.torgb.forward
    assert result.layers[2].mse == pytest.approx(by_hand, rel=1e-5)
    assert torch._C._len_torch_function_stack() == 0 and not has_hooks(model)


def test_plain_models_get_no_functional_records() -> None:
    from genaudit.io import registry as zoo

    model = zoo.build("dcgan_generator", {"ngf": 4, "nz": 6, "image_size": 32})
    records = walk_layers(model, latent_source((6, 1, 1), seed=0).batch(0, 2))
    assert not any(r.is_functional for r in records)
    assert all("site" not in r.to_dict() and "op_keys" not in r.to_dict() for r in records)


def _save(tmp_path: Path, factory) -> str:
    path = tmp_path / "g.pth"
    torch.save(factory().state_dict(), path)
    return str(path)


def test_cli_layers_and_sdr_show_functional_convs(tmp_path: Path) -> None:
    path = _save(tmp_path, tiny_stylegan)
    arch = ["--arch", "test_functional_convs:tiny_stylegan"]
    table = runner.invoke(app, ["layers", path, *arch])
    assert table.exit_code == 0, table.output
    assert "conv2d (functional)" in table.stdout and "weight varies" in table.stdout
    out = runner.invoke(app, ["sdr", path, *arch, "--num-samples", "8", "--json", "-"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)["results"]
    layers = {x["name"]: x for x in doc["layers"]}
    assert layers["b8.torgb"]["analysis"] == "sdr" and layers["b8.torgb"]["summary"]["pairs"] == 12
    assert layers["b4.conv"]["analysis"] == "skipped"
    assert layers["b4.conv"]["reason"].startswith(PER_SAMPLE_REASON) and THIS in layers[
        "b4.conv"]["reason"]  # fmt: skip
    assert doc["notes"] == [
        "2 functional convolutions were not analysed (b4.conv, b8.conv): see each layer's reason"
    ]
    assert "2 functional convolutions were not analysed" in out.stderr
    check = runner.invoke(app, ["check", path, *arch, "--num-samples", "8"])
    assert check.exit_code in (0, 1), check.output

"""Realistic generator shapes (tests/corpus.py) audited end to end through the command line.

Each shape is saved in the formats its users save it in, then listed with ``genaudit layers`` and
measured with ``genaudit sdr --json - --pairs``. Per-pair SDRs of chosen layers are checked
against the dense reference on activations captured independently with plain forward hooks.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import corpus
import numpy as np
import pytest
import torch
from dense_reference import dense_sdr
from torch import nn
from typer.testing import CliRunner

from genaudit.cli import app

runner = CliRunner()
N = 16  # samples in every input file; all of them are used

# Per shape: the formats it is saved in, the format the loader must detect for each, the
# state key it must choose, and the layers checked against the dense reference.
FORMATS: dict[str, list[str]] = {
    "hifigan": ["zip", "legacy", "safetensors", "nested:generator"],  # HiFi-GAN: {"generator": sd}
    "hifigan_param": ["zip", "safetensors"],
    "cyclegan": ["zip", "legacy", "safetensors"],  # CycleGAN: latest_net_G_A.pth, a plain sd
    "esrgan": ["nested:params", "nested:params_ema", "safetensors"],  # BasicSR
    "esrgan_ps": ["zip", "safetensors"],
    "swinsr": ["zip", "safetensors", "nested:params"],
    "grouped": ["zip", "legacy", "safetensors", "nested:netG_state_dict"],
}
DETECTED = {"zip": "torch-zip", "legacy": "torch-legacy", "safetensors": "safetensors"}
CHECKED: dict[str, list[str]] = {
    "hifigan": ["ups.0", "resblocks.0.convs1.2", "ups.1", "conv_post"],  # stride 8, dilation 5
    "hifigan_param": ["ups.0", "resblocks.1.convs1.1"],
    "cyclegan": ["model.1", "model.4", "model.12", "model.15"],  # padded, strided, output_padding
    "esrgan": ["body.0.rdb1.conv5", "conv_up1.1"],  # dense concat; fed an nn.Upsample output
    "esrgan_ps": ["conv_up1.0", "conv_up2.0"],  # before PixelShuffle
    "swinsr": ["layers.0.dwconv", "upsample.0"],  # depthwise (groups = channels)
    "grouped": ["main.3", "main.6"],  # grouped ConvTranspose2d, groups 2 and 4
}
# What `genaudit layers` must list, in execution order: (count, first, last).
INVENTORY: dict[str, tuple[int, str, str]] = {
    "hifigan": (28, "conv_pre", "conv_post"),
    "hifigan_param": (28, "conv_pre", "conv_post"),
    "cyclegan": (10, "model.1", "model.19"),
    "esrgan": (21, "conv_first", "conv_last"),
    "esrgan_ps": (21, "conv_first", "conv_last"),
    "swinsr": (14, "conv_first", "conv_last"),
    "grouped": (4, "main.0", "main.9"),
}
RTOL = 1e-5  # float32 activations and weights against a float64 reference
# The default run: each shape in the format it is most often shipped in, and each format at least
# once; the other combinations run with `pytest -m slow`.
DEFAULT = {
    ("hifigan", "nested:generator"), ("hifigan", "legacy"), ("hifigan_param", "safetensors"),
    ("cyclegan", "zip"), ("esrgan", "nested:params_ema"), ("esrgan_ps", "safetensors"),
    ("swinsr", "nested:params"), ("grouped", "zip"), ("grouped", "nested:netG_state_dict"),
}  # fmt: skip
CASES = [
    pytest.param(shape, fmt, id=f"{shape}-{fmt}",
                 marks=() if (shape, fmt) in DEFAULT else pytest.mark.slow)
    for shape, fmts in FORMATS.items()
    for fmt in fmts
]  # fmt: skip


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


def arch_args(shape: str) -> list[str]:
    spec = corpus.SHAPES[shape][0]
    kwargs = corpus.KWARGS.get(shape)
    return ["--arch", spec, *(["--arch-kwargs", json.dumps(kwargs)] if kwargs else [])]


def input_args(shape: str, folder: Path) -> list[str]:
    path = folder / f"{shape}_inputs.pt"
    torch.save(corpus.example_inputs(shape, N), path)
    # the grouped generator is fed latents; the others are fed data (mels, images)
    return ["--latents" if shape == "grouped" else "--inputs", str(path)]


@functools.cache
def reference(shape: str) -> dict[str, np.ndarray]:
    """Dense per-pair SDR of the CHECKED layers, on activations and effective weights (weight
    norm applied) captured with plain hooks while the model runs on the inputs."""
    model = corpus.build(shape)
    mods = dict(model.named_modules())
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def hook(name: str) -> Any:
        def capture(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen[name] = (args[0].detach().double().numpy(), m.weight.detach().double().numpy())

        return capture

    handles = [mods[n].register_forward_hook(hook(n)) for n in CHECKED[shape]]
    with torch.no_grad():
        model(corpus.example_inputs(shape, N))
    for h in handles:
        h.remove()
    out = {}
    for name, (v, w) in seen.items():
        m = mods[name]
        assert isinstance(m, nn.modules.conv._ConvNd)
        out[name] = dense_sdr(v, w, transposed=m.transposed, stride=m.stride,
                              dilation=m.dilation, groups=m.groups)  # fmt: skip
    return out


def check_against_reference(shape: str, doc: dict[str, Any]) -> None:
    layers = {x["name"]: x for x in doc["results"]["layers"]}
    for name, ref in reference(shape).items():
        pairs = layers[name]["pairs"]  # (C_out, C_in / groups), and each pair's input channel
        sdr, channel = np.array(pairs["sdr"], dtype=float), np.array(pairs["in_channel"])
        got = np.full(ref.shape, np.nan)  # the dense reference has NaN where no pair exists
        np.put_along_axis(got, channel, sdr, axis=1)
        np.testing.assert_allclose(got, ref, rtol=RTOL, err_msg=f"{shape} {name}")


@pytest.mark.parametrize(("shape", "fmt"), CASES)
def test_layers_and_sdr_in_every_format(shape: str, fmt: str, tmp_path: Path) -> None:
    path = corpus.save(corpus.build(shape), tmp_path, fmt)
    args = [str(path), *arch_args(shape), *input_args(shape, tmp_path)]

    listed = run("layers", *args, "--json", "-")
    assert listed.exit_code == 0, listed.output
    names = [x["name"] for x in json.loads(listed.stdout)["results"]["layers"]]
    count, first, last = INVENTORY[shape]
    assert (len(names), names[0], names[-1]) == (count, first, last), names

    result = run("sdr", *args, "--num-samples", str(N), "--pairs", "--json", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ckpt = doc["checkpoint"]
    if fmt.startswith("nested:"):
        assert (ckpt["format"], ckpt["state_key"]) == ("torch-zip", fmt.split(":", 1)[1])
    else:
        assert (ckpt["format"], ckpt["state_key"]) == (DETECTED[fmt], "")
    assert [x["name"] for x in doc["results"]["layers"]] == names
    for layer in doc["results"]["layers"]:
        if layer["analysis"] == "sdr":
            assert layer["summary"]["defined"] == layer["summary"]["pairs"] > 0, layer["name"]
        else:
            assert layer["analysis"] == "trace" and layer["trace_ratio"] > 0, layer["name"]
    check_against_reference(shape, doc)


def test_reference_check_can_fail(tmp_path: Path) -> None:
    # other weights than the reference's: the same comparison must reject them
    path = corpus.save_zip(corpus.build("grouped", seed=7), tmp_path / "other.pth")
    args = [str(path), *arch_args("grouped"), *input_args("grouped", tmp_path)]
    doc = json.loads(run("sdr", *args, "--num-samples", str(N), "--pairs", "--json", "-").stdout)
    with pytest.raises(AssertionError):
        check_against_reference("grouped", doc)


def test_hifigan_config_from_arch_kwargs(tmp_path: Path) -> None:
    config = {"upsample_rates": [4, 4], "upsample_kernel_sizes": [8, 8],
              "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]]}  # fmt: skip
    torch.manual_seed(0)
    path = corpus.save_zip(corpus.hifigan(**config), tmp_path / "g.pth")
    mel = tmp_path / "mel.pt"
    torch.save(torch.randn(4, 16, 8), mel)
    res = run("layers", str(path), "--arch", "corpus:hifigan", "--arch-kwargs", json.dumps(config),
              "--inputs", str(mel), "--json", "-")  # fmt: skip
    assert res.exit_code == 0, res.output
    layers = json.loads(res.stdout)["results"]["layers"]
    ups = [x for x in layers if x["name"].startswith("ups.")]
    assert [x["output_shape"] for x in ups] == [[8, 32], [4, 128]]
    assert layers[-1]["name"] == "conv_post" and layers[-1]["output_shape"] == [1, 128]
    # the default config's weights do not fit this one: one error, exit 3
    res = run("layers", str(path), "--arch", "corpus:hifigan", "--inputs", str(mel))
    assert res.exit_code == 3 and "do not fit" in res.stderr


def test_basicsr_prefers_ema_weights(tmp_path: Path) -> None:
    params, ema = corpus.build("esrgan", seed=0), corpus.build("esrgan", seed=1)
    path = tmp_path / "net_g.pth"
    torch.save({"params": corpus.state_dict_of(params), "params_ema": corpus.state_dict_of(ema)},
               path)  # fmt: skip
    args = [str(path), *arch_args("esrgan"), *input_args("esrgan", tmp_path)]
    doc = json.loads(run("sdr", *args, "--num-samples", "8", "--json", "-").stdout)
    assert doc["checkpoint"]["state_key"] == "params_ema"
    doc = json.loads(run("sdr", *args, "--num-samples", "8", "--state-key", "params",
                         "--json", "-").stdout)  # fmt: skip
    assert doc["checkpoint"]["state_key"] == "params"


def test_lightning_checkpoint_through_the_whole_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = corpus.save_lightning(corpus.lit_gan(), tmp_path / "epoch=4-step=1250.ckpt")
    res = run("sdr", str(path), "--arch", "corpus:lit_gan", "--module", "generator",
              "--num-samples", "8", "--json", "-")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["checkpoint"]["state_key"] == "state_dict"
    assert doc["checkpoint"]["module"] == "generator"
    layers = doc["results"]["layers"]
    assert [x["name"] for x in layers] == ["net.0", "net.3", "net.6"]
    assert [x["level"] for x in layers] == ["projection", "fine", "image"]


def test_torchscript_needs_trust_and_then_gives_the_same_numbers(tmp_path: Path) -> None:
    model = corpus.build("cyclegan")
    script = corpus.save_torchscript(model, corpus.example_inputs("cyclegan", 2),
                                     tmp_path / "g.pt")  # fmt: skip
    plain = corpus.save_zip(model, tmp_path / "g.pth")
    inputs = input_args("cyclegan", tmp_path)
    refused = run("layers", str(script), *arch_args("cyclegan"), *inputs)
    assert refused.exit_code == 3 and "TorchScript" in refused.stderr
    common = [*arch_args("cyclegan"), *inputs, "--num-samples", "8", "--json", "-"]
    trusted = run("sdr", str(script), "--trust-checkpoint", *common)
    assert trusted.exit_code == 0, trusted.output
    doc = json.loads(trusted.stdout)
    assert doc["checkpoint"]["format"] == "torchscript" and doc["checkpoint"]["trusted"] is True
    same = json.loads(run("sdr", str(plain), *common).stdout)
    assert doc["results"]["layers"] == same["results"]["layers"]


def test_stylegan2_like_generator_runs(tmp_path: Path) -> None:
    # the mapping MLP and the style affines are ordinary Linear layers: trace method
    torch.manual_seed(0)
    path = corpus.save_safetensors(corpus.stylegan2(), tmp_path / "g.safetensors")
    res = run("sdr", str(path), "--arch", "corpus:stylegan2", "--num-samples", "8", "--json", "-")
    assert res.exit_code == 0, res.output
    layers = {x["name"]: x for x in json.loads(res.stdout)["results"]["layers"]}
    for name in ("mapping.0", "mapping.2", "conv0.affine", "torgbs.1.affine"):
        assert layers[name]["level"] == "linear" and layers[name]["trace_ratio"] > 0, name


# --------------------------------------------------------------------------- without workarounds


def test_cyclegan_ends_at_image_despite_its_reflection_padding(tmp_path: Path) -> None:
    path = corpus.save(corpus.build("cyclegan"), tmp_path, "zip")
    args = [str(path), *arch_args("cyclegan"), *input_args("cyclegan", tmp_path)]
    layers = json.loads(run("layers", *args, "--json", "-").stdout)["results"]["layers"]
    assert layers[-1]["input_shape"] == [4, 22, 22] and layers[-1]["level"] == "image"


@pytest.mark.parametrize("how", [[], ["--select", "generator"], ["--strip-prefix", "generator."]])
def test_lightning_checkpoint_with_the_generator_architecture(
    how: list[str], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    gan = corpus.lit_gan()
    path = corpus.save_lightning(gan, tmp_path / "last.ckpt")
    res = run("sdr", str(path), "--arch", "corpus:dcgan_generator", *how, "--num-samples", "8",
              "--json", "-")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    ckpt = doc["checkpoint"]
    discriminator_keys = len(gan.discriminator.state_dict())
    assert (ckpt["key_prefix"], ckpt["ignored_keys"]) == ("generator.", discriminator_keys)
    assert f"keys under generator. ({discriminator_keys} other keys ignored)" in res.stderr
    # the same numbers as the whole module's generator
    whole = run("sdr", str(path), "--arch", "corpus:lit_gan", "--module", "generator",
                "--num-samples", "8", "--json", "-")  # fmt: skip
    assert json.loads(whole.stdout)["results"]["layers"] == doc["results"]["layers"]


def test_hifigan_from_a_file_and_a_config_json(tmp_path: Path) -> None:
    config = {**corpus.HIFIGAN_CONFIG, "upsample_rates": [4, 4], "upsample_kernel_sizes": [8, 8]}
    torch.manual_seed(0)
    path = corpus.save_nested(corpus.hifigan(**config), tmp_path / "g_00100000", "generator")
    (tmp_path / "config.json").write_text(json.dumps(config))
    mel = tmp_path / "mel.pt"
    torch.save(torch.randn(4, 16, 8), mel)
    source = Path(corpus.__file__)
    res = run("layers", str(path), "--arch", f"{source}:HifiGanGenerator", "--arch-config",
              str(tmp_path / "config.json"), "--inputs", str(mel), "--json", "-")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["checkpoint"]["state_key"] == "generator"
    assert doc["checkpoint"]["arch_config"]["upsample_rates"] == [4, 4]
    ups = [x for x in doc["results"]["layers"] if x["name"].startswith("ups.")]
    assert [x["output_shape"] for x in ups] == [[8, 32], [4, 128]]


def test_torchscript_with_trust_alone_gives_the_python_models_numbers(tmp_path: Path) -> None:
    model = corpus.build("hifigan")
    script = corpus.save_torchscript(model, corpus.example_inputs("hifigan", 2), tmp_path / "g.pt")
    plain = corpus.save_zip(model, tmp_path / "g.pth")
    inputs = [*input_args("hifigan", tmp_path), "--num-samples", "8", "--pairs", "--json", "-"]
    trusted = run("sdr", str(script), "--trust-checkpoint", *inputs)
    assert trusted.exit_code == 0, trusted.output
    ours = json.loads(run("sdr", str(plain), *arch_args("hifigan"), *inputs).stdout)
    got = {x["name"]: x for x in json.loads(trusted.stdout)["results"]["layers"]}
    assert list(got) == [x["name"] for x in ours["results"]["layers"]]
    for layer in ours["results"]["layers"]:
        other = got[layer["name"]]
        assert (other["type"], other["level"]) == (layer["type"], layer["level"])
        np.testing.assert_allclose(other["pairs"]["sdr"], layer["pairs"]["sdr"], rtol=1e-5)


def test_stylegan2_modulated_convolutions_are_listed_not_skipped_silently(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = corpus.save_safetensors(corpus.stylegan2(), tmp_path / "g.safetensors")
    res = run("layers", str(path), "--arch", "corpus:stylegan2", "--all-rows", "--json", "-")
    assert res.exit_code == 0, res.output
    layers = {x["name"]: x for x in json.loads(res.stdout)["results"]["layers"]}
    for name in ("conv0", "convs.0", "convs.1", "torgbs.0", "torgb0"):
        layer = layers[name]
        assert layer["type"] == "conv2d (functional)" and layer["analysis"] == "skipped", name
        assert layer["reason"].startswith("not analysed: weight varies per sample (modulated)")
        assert "corpus.py:" in layer["reason"], layer["reason"]

"""Trusted TorchScript archives audited without --arch: scripted and traced generators turned into
Python modules with real layers, whose inventory and SDR equal the eager model's."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import corpus
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from typer.testing import CliRunner

from genaudit.analysis.sdr import run_sdr
from genaudit.cli import app
from genaudit.errors import CheckpointError
from genaudit.model.inputs import latent_source
from genaudit.model.layers import walk_layers
from genaudit.model.loading import LoadOptions, load_model

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

runner = CliRunner()
CPU = torch.device("cpu")
SAMPLES = ("--num-samples", "16", "--batch-size", "8")


class Generator(nn.Module):
    """DCGAN-like: ConvTranspose2d + BatchNorm + ReLU, a Conv2d output."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(8, 16, 4, 1, 0, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(True),
            nn.Conv2d(8, 1, 3, 1, 1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Vocoder(nn.Module):
    """1-D, vocoder-like: weight-normalised Conv1d, ConvTranspose1d stride 4, dilated residual."""

    def __init__(self) -> None:
        super().__init__()
        wn = parametrizations.weight_norm
        self.pre = wn(nn.Conv1d(4, 8, 7, padding=3))
        self.up = wn(nn.ConvTranspose1d(8, 4, 8, 4, 2))
        self.res = wn(nn.Conv1d(4, 4, 3, padding=3, dilation=3))
        self.post = wn(nn.Conv1d(4, 1, 7, padding=3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(nn.functional.leaky_relu(self.pre(x), 0.1))
        x = x + self.res(nn.functional.leaky_relu(x, 0.1))
        return torch.tanh(self.post(x))


class Padded(nn.Module):
    """Convolutions that pad their own input (``padding_mode``), which TorchScript lowers to
    ``pad`` + an unpadded convolution, next to padding modules before unpadded convolutions,
    whose layers are fed the padded map."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(2)
        self.first = nn.Conv2d(3, 4, 5)  # fed the reflection-padded map
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.circular = nn.Conv2d(4, 4, 3, padding=(2, 1), padding_mode="circular")
        self.pad_again = nn.ReplicationPad2d(1)
        self.replicate = nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate")  # padded twice
        self.circ_pad = nn.CircularPad2d(1)
        self.last = nn.Conv2d(4, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(self.pad(x)))
        x = torch.relu(self.circular(torch.relu(self.reflect(x))))
        x = torch.relu(self.replicate(self.pad_again(x)))
        return self.last(self.circ_pad(x))


# case → (model factory, how it is compiled, latent shape, extra CLI arguments)
CASES: dict[str, tuple[Callable[[], nn.Module], str, tuple[int, ...], tuple[str, ...]]] = {
    "scripted-dcgan": (Generator, "script", (8, 1, 1), ()),
    "traced-dcgan": (Generator, "trace", (8, 1, 1), ()),
    "traced-vocoder": (Vocoder, "trace", (4, 16), ("--z-shape", "4,16")),
    "scripted-padded": (Padded, "script", (3, 8, 8), ("--z-shape", "3,8,8")),
    "traced-padded": (Padded, "trace", (3, 8, 8), ("--z-shape", "3,8,8")),
    "traced-cyclegan": (corpus.cyclegan, "trace", (3, 16, 16), ("--z-shape", "3,16,16")),
}


def _eager(cls: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    for m in model.modules():  # batch statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, nn.Module]]:
    folder = tmp_path_factory.mktemp("ts")
    out = {}
    for case, (cls, how, shape, _) in CASES.items():
        model = _eager(cls)
        example = torch.randn(2, *shape)
        compiled = torch.jit.script(model) if how == "script" else torch.jit.trace(model, example)
        path = folder / f"{case}.pt"
        torch.jit.save(compiled, str(path))
        out[case] = (path, model)
    return out


def _convs(model: nn.Module) -> dict[str, str]:
    """Convolution class by dotted name (``ParametrizedConv1d`` counts as ``Conv1d``)."""
    return {
        name: type(m).__name__.removeprefix("Parametrized")
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    }


def _json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    assert "WARNING: --trust-checkpoint" in result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("case", CASES)
def test_converted_module_is_the_archive(case: str, archives: dict) -> None:
    path, eager = archives[case]
    loaded = load_model(path, LoadOptions(trust_checkpoint=True))
    assert loaded.format == "torchscript" and loaded.trusted and loaded.arch == "<torchscript>"
    x = torch.randn(3, *CASES[case][2][:-1], CASES[case][2][-1] * 2)  # another size than traced
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        out = loaded.model(x)
        torch.testing.assert_close(out, scripted(x), rtol=0, atol=0)
        torch.testing.assert_close(out, eager(x), rtol=1e-6, atol=1e-6)
    real, wanted = _convs(loaded.model), _convs(eager)
    assert real == wanted
    seen: list[str] = []
    for name, module in loaded.model.named_modules():
        if name in real:
            module.register_forward_hook(lambda m, a, o, name=name: seen.append(name))
    loaded.model(x)
    assert seen and set(seen) == set(real)


@pytest.mark.parametrize("case", CASES)
def test_layers_and_sdr_equal_the_eager_model(case: str, archives: dict) -> None:
    path, eager = archives[case]
    _, _, shape, extra = CASES[case]
    layers_doc = _json("layers", str(path), "--trust-checkpoint", *extra)
    assert layers_doc["checkpoint"]["format"] == "torchscript"
    assert layers_doc["checkpoint"]["trusted"] is True
    source = latent_source(shape, seed=0)
    records = walk_layers(eager, source.batch(0, 2))
    got = [
        (x["name"], x["type"], x["input_shape"], x["output_shape"])
        for x in layers_doc["results"]["layers"]
    ]
    want = [(r.name, r.type, list(r.input_shape), list(r.output_shape)) for r in records]
    assert got == want

    doc = _json("sdr", str(path), "--trust-checkpoint", *SAMPLES, "--pairs", *extra)
    assert doc["checkpoint"]["format"] == "torchscript" and doc["checkpoint"]["trusted"] is True
    reference = run_sdr(eager, records, source, num_samples=16, batch_size=8, device=CPU)
    assert [x["name"] for x in doc["results"]["layers"]] == [
        x.record.name for x in reference.layers
    ]
    for layer, ref in zip(doc["results"]["layers"], reference.layers, strict=True):
        assert layer["analysis"] == ref.analysis, layer["name"]
        if ref.analysis == "trace":
            assert layer["trace_ratio"] == pytest.approx(ref.ratio, rel=1e-6, abs=1e-6)
        else:
            assert ref.values is not None
            np.testing.assert_allclose(
                np.array(layer["pairs"]["sdr"], dtype=float), ref.values, rtol=1e-6, atol=1e-6
            )


@pytest.mark.parametrize("case", ["scripted-padded", "traced-padded"])
def test_only_a_layers_own_padding_is_folded_into_it(case: str, archives: dict) -> None:
    path, eager = archives[case]
    model = load_model(path, LoadOptions(trust_checkpoint=True)).model
    modes = {name: m.padding_mode for name, m in model.named_modules() if name in _convs(eager)}
    assert modes == {name: m.padding_mode for name, m in eager.named_modules() if name in modes}
    assert modes["first"] == modes["last"] == "zeros"  # their padding modules stay in the graph


def test_refused_without_the_flag(archives: dict) -> None:
    path, _ = archives["traced-dcgan"]
    result = runner.invoke(app, ["layers", str(path)])
    assert result.exit_code == 3
    assert "TorchScript archive" in result.stderr and "--trust-checkpoint" in result.stderr
    assert "--arch too" not in result.stderr and "hooks cannot see" not in result.stderr


def test_arch_still_loads_only_the_weights(archives: dict, tmp_path: Path) -> None:
    from genaudit.io import registry as zoo

    kwargs = {"ngf": 4, "nz": 8, "image_size": 32}
    torch.manual_seed(1)
    model = zoo.build("dcgan_generator", kwargs).eval()
    path = tmp_path / "registry.pt"
    torch.jit.script(model).save(str(path))
    doc = _json("layers", str(path), "--trust-checkpoint", "--arch", "dcgan_generator",
                "--arch-kwargs", json.dumps(kwargs))  # fmt: skip
    assert doc["checkpoint"]["arch"] == "dcgan_generator"
    assert doc["checkpoint"]["format"] == "torchscript" and doc["checkpoint"]["trusted"] is True
    # and without --arch the same layers come from the archive itself
    names = [x["name"] for x in doc["results"]["layers"]]
    own = _json("layers", str(path), "--trust-checkpoint")
    assert [x["name"] for x in own["results"]["layers"]] == names
    assert own["checkpoint"]["arch"] == "<torchscript>"


class Branchy(nn.Module):
    """Which layer runs depends on the input: not a graph genaudit can rebuild."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if bool(z.sum() > 0):
            return self.a(z)
        return self.b(z)


def test_unconvertible_graph_is_exit_3_suggesting_arch(tmp_path: Path) -> None:
    path = tmp_path / "branchy.pt"
    torch.jit.script(Branchy()).save(str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_model(path, LoadOptions(trust_checkpoint=True))
    result = runner.invoke(app, ["layers", str(path), "--trust-checkpoint"])
    assert result.exit_code == 3, result.output
    assert "--arch" in result.stderr and "internal error" not in result.stderr


def test_module_option_picks_a_scripted_submodule(archives: dict) -> None:
    path, _ = archives["scripted-dcgan"]
    doc = _json("layers", str(path), "--trust-checkpoint", "--module", "main")
    assert [x["name"] for x in doc["results"]["layers"]] == ["0", "3", "6"]
    result = runner.invoke(app, ["layers", str(path), "--trust-checkpoint", "--module", "nope"])
    assert result.exit_code == 2 and "no submodule 'nope'" in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "bad-code"])
def test_corrupt_archive_is_exit_3(damage: str, archives: dict, tmp_path: Path) -> None:
    path, _ = archives["traced-dcgan"]
    broken = tmp_path / "broken.pt"
    if damage == "truncated":
        broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a well-formed zip whose compiled code does not parse
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename.endswith(".py"):
                    data = b"def forward(self, :\n"
                dst.writestr(info, data)
    result = runner.invoke(app, ["layers", str(broken), "--trust-checkpoint"])
    assert result.exit_code == 3, result.output
    assert "internal error" not in result.stderr

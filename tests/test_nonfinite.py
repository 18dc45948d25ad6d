"""NaN and infinity are reported as such: in weights (exit 3), in inputs from samplers and
generators (exit 3) and in the activations reaching a layer (the layer's own reason; exit 4
when no layer is left) — never as "undefined" like a dead kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from genaudit.analysis.sdr import NONFINITE_REASON, run_sdr
from genaudit.analysis.stretch import run_stretch
from genaudit.analysis.transforms import make_transform
from genaudit.cli import app
from genaudit.errors import ExitCode, InvalidInputError, ModelInputError, NumericalError
from genaudit.io import registry as zoo
from genaudit.io.writing import save_safetensors
from genaudit.model.inputs import generated_source, latent_source, sampler_source
from genaudit.model.layers import walk_layers

CPU = torch.device("cpu")
runner = CliRunner()


def nan_sampler(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """A sampler whose sample 3 of every block holds a NaN (``--sampler test_nonfinite:…``)."""
    z = torch.randn((n, 8, 1, 1), generator=gen)
    if n > 3:
        z[3, 0] = float("nan")
    return z


class Blowup(nn.Module):
    """Multiplies its input by ``factor`` (inf: every non-zero value becomes infinite)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _generator() -> nn.Module:
    torch.manual_seed(0)
    return zoo.build("dcgan_generator", {"ngf": 4, "nz": 8, "image_size": 16}).eval()


def _records(model: nn.Module, shape: tuple[int, ...]) -> list:
    return walk_layers(model, latent_source(shape).batch(0, 2))


@pytest.mark.parametrize("kind", ["weight", "bias"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_weights_name_the_first_layer(kind: str, value: float) -> None:
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 6, 4, 1, 0), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1),
        nn.Conv2d(3, 2, 3, padding=1),
    ).eval()  # fmt: skip
    records = _records(model, (4, 1, 1))
    with torch.no_grad():
        getattr(model[2], kind).view(-1)[0] = value
        model[3].weight.view(-1)[1] = value
    source = latent_source((4, 1, 1))
    with pytest.raises(InvalidInputError, match=f"layer 2 .Conv2d. has 1 NaN or infinite {kind}"):
        run_sdr(model, records, source, num_samples=4, batch_size=4, device=CPU)
    stretch = make_transform("stretch", 1.5)
    with pytest.raises(InvalidInputError, match="layer 2 "):
        run_stretch(model, records, None, source, transform=stretch, num_samples=4, batch_size=4)


def test_nonfinite_weights_in_a_checkpoint_exit_3(tmp_path: Path) -> None:
    model = _generator()
    state = model.state_dict()
    state["main.3.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_safetensors(state, path, arch="dcgan_generator",
                     arch_kwargs={"ngf": 4, "nz": 8, "image_size": 16})  # fmt: skip
    for command in ("sdr", "stretch", "check"):
        res = runner.invoke(app, [command, str(path), "--num-samples", "4", "--device", "cpu"])
        assert res.exit_code == ExitCode.INVALID_INPUT, res.output
        assert "layer main.3" in res.stderr and "NaN or infinite weight" in res.stderr
        assert "Traceback" not in res.output


def test_nan_from_a_sampler_is_refused() -> None:
    source = sampler_source("test_nonfinite:nan_sampler", seed=0)
    assert torch.isfinite(source.batch(0, 3)[0]).all()  # the NaN is not among these
    with pytest.raises(ModelInputError, match=r"returned NaN or infinite values \(sample 3\)"):
        source.batch(0, 8)
    with pytest.raises(ModelInputError, match=r"\(sample 67\)"):
        source.batch(66, 70)  # sample 3 of the second block


def test_nan_from_a_sampler_exits_3(tmp_path: Path) -> None:
    model = _generator()
    path = tmp_path / "g.safetensors"
    save_safetensors(model.state_dict(), path, arch="dcgan_generator",
                     arch_kwargs={"ngf": 4, "nz": 8, "image_size": 16})  # fmt: skip
    args = ["sdr", str(path), "--sampler", "test_nonfinite:nan_sampler", "--num-samples", "8"]
    res = runner.invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == ExitCode.INVALID_INPUT, res.output
    assert "--sampler test_nonfinite:nan_sampler returned NaN or infinite" in res.stderr


def test_nan_from_a_generator_is_refused() -> None:
    gen = nn.Sequential(nn.ConvTranspose2d(4, 2, 4, 1, 0), Blowup(float("nan"))).eval()
    source = generated_source(gen, latent_source((4, 1, 1)), CPU)
    with pytest.raises(ModelInputError, match=r"generator's output holds NaN .*\(sample 5\)"):
        source.batch(5, 9)


def test_a_layer_producing_inf_gives_its_successors_their_own_reason() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1), Blowup(float("inf")), nn.Conv2d(6, 3, 3, padding=1),
        nn.Flatten(), nn.Linear(48, 5),
    ).eval()  # fmt: skip
    records = _records(model, (4, 4, 4))
    assert [r.analysis for r in records] == ["sdr", "sdr", "trace"]
    result = run_sdr(model, records, latent_source((4, 4, 4)), num_samples=6, batch_size=4,
                     device=CPU)  # fmt: skip
    first, conv, linear = result.layers
    assert first.analysis == "sdr" and first.summary is not None
    assert first.summary.undefined == 0
    for layer in (conv, linear):
        assert layer.analysis == "skipped" and layer.reason == NONFINITE_REASON
        assert layer.samples == 6
        assert "undefined" not in json.dumps(layer.to_dict())
        assert layer.to_dict()["reason"].startswith("non-finite activations")


def test_nothing_analysable_when_every_layer_gets_nonfinite_input() -> None:
    model = nn.Sequential(
        Blowup(float("nan")), nn.ConvTranspose2d(4, 6, 4, 1, 0), nn.Conv2d(6, 3, 3, padding=1),
    ).eval()  # fmt: skip
    records = _records(model, (4, 1, 1))
    match = r"non-finite activations .* reach layer 1 and 1 more"
    with pytest.raises(NumericalError, match=match) as e:
        run_sdr(model, records, latent_source((4, 1, 1)), num_samples=4, batch_size=4,
                device=CPU)  # fmt: skip
    assert e.value.exit_code == ExitCode.NOTHING_TO_ANALYSE


def test_finite_models_are_unaffected() -> None:
    model = _generator()
    records = _records(model, (8, 1, 1))
    result = run_sdr(model, records, latent_source((8, 1, 1)), num_samples=8, batch_size=4,
                     device=CPU)  # fmt: skip
    assert all(x.reason != NONFINITE_REASON for x in result.layers)
    assert all(x.analysis != "skipped" for x in result.layers)


def test_the_gate_names_nonfinite_layers_instead_of_undefined() -> None:
    import io

    from rich.console import Console

    from genaudit import gate
    from genaudit.report.tables import verdict_table

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1), Blowup(float("inf")), nn.Conv2d(6, 3, 3, padding=1),
    ).eval()  # fmt: skip
    records = _records(model, (4, 4, 4))
    result = run_sdr(model, records, latent_source((4, 4, 4)), num_samples=6, batch_size=4,
                     device=CPU)  # fmt: skip
    metrics = gate.collect_metrics(result, None)
    rule = gate.parse_rule_flag("sdr.sd_log10:2::1.0")
    targets = gate.resolve_targets([rule], records)
    [e] = gate.evaluate_rules(targets, metrics)
    assert e.status == "fail" and e.reason == NONFINITE_REASON
    assert "has no value at layer 2: non-finite activations" in e.message()
    assert e.shown_value == "non-finite" and e.to_dict()["reason"] == NONFINITE_REASON
    verdict = gate.GateResult((rule,), (e,), (), fail_on_warn=False)
    console = Console(width=120, record=True, color_system=None, file=io.StringIO())
    console.print(verdict_table(verdict, "gate", width=120))
    text = console.export_text()
    assert "non-finite" in text and "undefined" not in text

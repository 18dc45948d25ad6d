"""The Python API: the same numbers as the command line, any kind of inputs, no side effects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import genaudit
from genaudit.cli import app
from genaudit.errors import GenauditError, UsageError
from genaudit.report.export import to_json

ROOT = Path(__file__).resolve().parents[1]
GEN = str(ROOT / "fixtures" / "dcgan64_generator.safetensors")
N, B = 24, 8


@pytest.fixture(scope="module")
def latents(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, str]:
    z = torch.randn(N, 64, 1, 1, generator=torch.Generator().manual_seed(5))
    path = tmp_path_factory.mktemp("z") / "z.pt"
    torch.save(z, path)
    return z, str(path)


def cli_results(*args: str) -> dict:
    res = CliRunner().invoke(app, [*args, "--json", "-"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["results"]


def test_sdr_gives_the_command_lines_numbers(latents: tuple[torch.Tensor, str]) -> None:
    z, path = latents
    cli = cli_results("sdr", GEN, "--latents", path, "--num-samples", str(N),
                      "--batch-size", str(B), "--pairs", "--device", "cpu")  # fmt: skip
    model = genaudit.load(GEN)
    result = genaudit.sdr(model, z, num_samples=N, batch_size=B)
    assert json.loads(to_json(result.to_dict(pairs=True))) == cli  # as the CLI writes JSON


def test_stretch_gives_the_command_lines_numbers(latents: tuple[torch.Tensor, str]) -> None:
    z, path = latents
    cli = cli_results("stretch", GEN, "--latents", path, "--num-samples", str(N),
                      "--batch-size", str(B), "--layers", "fine,coarse", "--factor", "1.25",
                      "--device", "cpu")  # fmt: skip
    result = genaudit.stretch(genaudit.load(GEN), z, layers="fine,coarse", factor=1.25,
                              num_samples=N, batch_size=B)  # fmt: skip
    assert json.loads(to_json(result.to_dict())) == cli
    rows = result.to_rows()
    assert [r["layer"] for r in rows] == [x["name"] for x in cli["layers"]]


def test_every_kind_of_inputs_gives_the_same_numbers(latents: tuple[torch.Tensor, str]) -> None:
    z, _ = latents
    model = genaudit.load(GEN)
    kw = {"num_samples": 16, "batch_size": B, "layers": ["fine", "image"]}
    want = genaudit.sdr(model, z, **kw).to_dict(pairs=True)
    batches = list(z.split(5))
    for inputs in ((z,), batches, iter(batches), [(b,) for b in batches]):
        assert genaudit.sdr(model, inputs, **kw).to_dict(pairs=True) == want

    def sampler(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.randn(n, 64, 1, 1, generator=gen, device=device)

    def pairs(result: genaudit.api.SDRResult) -> np.ndarray:
        return np.concatenate([layer.values.ravel() for layer in result.layers])

    drawn = pairs(genaudit.sdr(model, sampler, seed=3, **kw))
    # sample k does not depend on the batch size; another seed draws other samples
    again = pairs(genaudit.sdr(model, sampler, seed=3, num_samples=16, batch_size=4,
                               layers=["fine", "image"]))  # fmt: skip
    np.testing.assert_allclose(again, drawn, rtol=1e-6)
    other = pairs(genaudit.sdr(model, sampler, seed=4, **kw))
    assert np.abs(other - drawn).max() > 1e-3


def test_the_model_and_torch_are_left_as_they_were() -> None:
    model = genaudit.load(GEN).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    z = torch.randn(8, 64, 1, 1)
    rng = torch.get_rng_state()
    genaudit.sdr(model, z, batch_size=4)
    genaudit.stretch(model, z, batch_size=4)
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng) and torch.is_grad_enabled()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too
    assert all(p.requires_grad for p in model.parameters())


def test_rows_and_data_frames() -> None:
    result = genaudit.sdr(genaudit.load(GEN), torch.randn(8, 64, 1, 1), batch_size=8)
    rows = result.to_rows()
    assert [r["layer"] for r in rows] == [x.record.name for x in result.layers]
    assert rows[0]["analysis"] == "trace" and rows[1]["analysis"] == "sdr"
    pairs = result.to_rows(pairs=True)
    assert len(pairs) == sum(r["pairs"] for r in rows)
    assert set(pairs[0]) == {"layer", "level", "out_channel", "in_channel", "sdr", "log10_sdr"}
    pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert list(frame["layer"]) == [r["layer"] for r in rows]
    assert len(result.to_pandas(pairs=True)) == len(pairs)


def test_errors_are_genaudits_and_speak_in_keyword_arguments(tmp_path: Path) -> None:
    model = genaudit.load(GEN)
    with pytest.raises(UsageError, match="not understood"):
        genaudit.sdr(model, "z.pt")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="do not share a batch dimension"):
        genaudit.sdr(model, (torch.randn(4, 64, 1, 1), torch.randn(3)))
    with pytest.raises(GenauditError) as info:
        genaudit.sdr(model, torch.randn(4, 64, 1, 1), layers="nope")
    assert info.value.exit_code == 2
    with pytest.raises(GenauditError) as info:
        genaudit.load(tmp_path / "missing.pt")
    assert info.value.exit_code == 3
    with pytest.raises(GenauditError) as info:
        genaudit.load(GEN, arch="dcgan_generator", arch_kwargs={"nz": 7, "nc": 1, "ngf": 16})
    assert "arch_kwargs=" in "\n".join(info.value.lines("api"))
    with pytest.raises(UsageError, match="unknown limits"):
        genaudit.load(GEN, limits={"bytes": 5})


def test_load_takes_the_command_lines_options(tmp_path: Path) -> None:
    gan = nn.ModuleDict({"generator": genaudit.load(GEN), "critic": nn.Linear(3, 3)})
    path = tmp_path / "gan.pt"
    torch.save({"state_dict": gan.state_dict(), "epoch": 1}, path)
    loaded = genaudit.load_checkpoint(path, arch="dcgan_generator",
                                      arch_kwargs={"nz": 64, "nc": 1, "ngf": 16})  # fmt: skip
    assert (loaded.key_prefix, loaded.ignored_keys) == ("generator.", 2)
    model = genaudit.load(path, arch="dcgan_generator", select="generator",
                          arch_kwargs={"nz": 64, "nc": 1, "ngf": 16})  # fmt: skip
    assert not model.training
    z = torch.randn(2, 64, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(z), gan["generator"].eval()(z))


def test_importing_genaudit_is_cheap() -> None:
    code = "import sys, genaudit; print('torch' in sys.modules, sorted(genaudit.__all__)[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("False"), out.stdout

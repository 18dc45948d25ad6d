"""`genaudit layers` and the command line's shared behaviour: exit codes, messages, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, ROOT
from safetensors.torch import save_file
from typer.testing import CliRunner

from genaudit.cli import app
from genaudit.io import registry as zoo

runner = CliRunner()
FIXTURE_FILES = sorted(FIXTURES.glob("*.safetensors"))


def run(*args: str):
    return runner.invoke(app, list(args))


def test_fixtures_present() -> None:
    names = {p.name for p in FIXTURE_FILES}
    assert {"dcgan64_generator.safetensors", "vae64_decoder.safetensors"} <= names


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_layers_on_every_fixture(path: Path) -> None:
    result = run("layers", str(path))
    assert result.exit_code == 0, result.output
    assert "image" in result.stdout or "readout" in result.stdout
    doc = json.loads(run("layers", str(path), "--json", "-").stdout)
    layers = doc["results"]["layers"]
    assert layers and layers[-1]["level"] in ("image", "readout", "linear")
    assert doc["checkpoint"]["format"] == "safetensors"
    assert len(doc["checkpoint"]["sha256"]) == 64


def test_dcgan_fixture_levels() -> None:
    doc = json.loads(
        run("layers", str(FIXTURES / "dcgan64_generator.safetensors"), "--json", "-").stdout
    )
    levels = [layer["level"] for layer in doc["results"]["layers"]]
    assert levels == ["projection", "coarse", "intermediate", "fine", "image"]
    assert doc["schema_version"] == 1 and doc["command"] == "layers"
    assert doc["config"]["seed"] == 0 and doc["config"]["inputs"]["kind"] == "latent"


def test_json_file_and_stdout_table(tmp_path: Path) -> None:
    out = tmp_path / "layers.json"
    result = run("layers", str(FIXTURES / "dcgan64_generator.safetensors"), "--json", str(out))
    assert result.exit_code == 0
    assert "projection" in result.stdout  # the table still goes to stdout
    assert json.loads(out.read_text())["results"]["layers"][0]["analysis"] == "trace"


def _small_checkpoint(tmp_path: Path) -> Path:
    model = zoo.build("dcgan_generator", {"ngf": 4, "nz": 8, "image_size": 16})
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_arch_flags_for_weight_only_file(tmp_path: Path) -> None:
    path = _small_checkpoint(tmp_path)
    result = run("layers", str(path))
    assert result.exit_code == 3
    assert "does not say which architecture" in result.stderr
    ok = run("layers", str(path), "--arch", "dcgan_generator", "--arch-kwargs",
             '{"ngf": 4, "nz": 8, "image_size": 16}')  # fmt: skip
    assert ok.exit_code == 0, ok.output
    bad = run("layers", str(path), "--arch", "dcgan_generator", "--arch-kwargs", "{nz: 8}")
    assert bad.exit_code == 2 and "not valid JSON" in bad.stderr
    unknown = run("layers", str(path), "--arch", "stylegan9")
    assert unknown.exit_code == 3 and "dcgan_generator" in unknown.stderr


def test_user_arch_with_module_and_inputs(tmp_path: Path) -> None:
    model = zoo.build("vae", {"nef": 4, "ngf": 4, "nz": 6, "image_size": 16})
    path = tmp_path / "vae.pt"
    torch.save({"model": model.state_dict(), "step": 10}, path)
    common = ["--arch", "vae", "--arch-kwargs", '{"nef": 4, "ngf": 4, "nz": 6, "image_size": 16}']
    result = run("layers", str(path), *common, "--module", "decoder", "--json", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["checkpoint"]["state_key"] == "model"
    assert next(x["name"] for x in doc["results"]["layers"]) == "fc"
    data = tmp_path / "x.pt"
    torch.save(torch.rand(5, 3, 16, 16), data)
    enc = run("layers", str(path), *common, "--module", "encoder", "--inputs", str(data))
    assert enc.exit_code == 0, enc.output
    missing = run("layers", str(path), *common, "--module", "generator")
    assert missing.exit_code == 2 and "decoder, encoder" in missing.stderr


def test_toy_arch_by_import_path(tmp_path: Path) -> None:
    import toy_models

    path = tmp_path / "toy.pth"
    torch.save(toy_models.reordered(8).state_dict(), path)
    result = run("layers", str(path), "--arch", "toy_models:reordered", "--json", "-")
    assert result.exit_code == 0, result.output
    names = [x["name"] for x in json.loads(result.stdout)["results"]["layers"]]
    assert names == ["early", "middle", "late"]
    missing = run("layers", str(path), "--arch", "no_such_module_xyz:Gen")
    assert missing.exit_code == 3 and "cannot import" in missing.stderr


@pytest.mark.parametrize(
    ("make", "code", "needle"),
    [
        (lambda p: p, 3, "does not exist"),
        (lambda p: (p.mkdir(), p)[1], 3, "directory"),
        (lambda p: (p.write_bytes(b""), p)[1], 3, "empty"),
        (lambda p: (p.write_bytes(b"\x00garbage" * 10), p)[1], 3, "not a readable checkpoint"),
    ],
    ids=["missing", "directory", "empty", "garbage"],
)
def test_bad_paths(tmp_path: Path, make, code: int, needle: str) -> None:
    path = make(tmp_path / "model.pt")
    result = run("layers", str(path))
    assert result.exit_code == code, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 2


def test_usage_errors() -> None:
    fx = str(FIXTURES / "dcgan64_generator.safetensors")
    assert run("layers").exit_code == 2
    assert run("layers", fx, "--device", "tpu").exit_code == 2
    assert run("layers", fx, "--z-shape", "a,b").exit_code == 2
    result = run("layers", fx, "--json", f"{fx}/x.json")  # a parent that is a file
    assert result.exit_code == 2 and "is not a folder" in result.stderr
    assert run("layers", fx, "--z-shape", "7").exit_code == 3  # does not fit the model


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = run("--debug", "layers", str(tmp_path / "missing.pt"))
    assert result.exit_code != 0 and result.exception is not None


def test_config_levels_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "genaudit.toml").write_text('seed = 3\n[levels]\n"main.3" = "fine"\n')
    monkeypatch.chdir(tmp_path)
    fx = str(FIXTURES / "dcgan64_generator.safetensors")
    doc = json.loads(run("layers", fx, "--json", "-").stdout)
    assert doc["results"]["layers"][1]["level"] == "fine"
    assert doc["config"]["seed"] == 3
    (tmp_path / "genaudit.toml").write_text("colour = 'red'\n")
    result = run("layers", fx)
    assert result.exit_code == 2 and "unknown key" in result.stderr


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and "genaudit" in result.stdout


def test_entry_point_subprocess() -> None:
    fx = str(FIXTURES / "dcgan64_generator.safetensors")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "genaudit", "layers", fx, "--json", "-"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"]["layers"][0]["level"] == "projection"
    proc = subprocess.run(
        [sys.executable, "-m", "genaudit", "layers", "/no/such/file.pt"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 3 and "Traceback" not in proc.stderr


def test_archs_lists_the_registry() -> None:
    result = run("archs")
    assert result.exit_code == 0
    for name in ("dcgan_generator", "dcgan_discriminator", "vae_encoder", "vae_decoder", "vae"):
        assert name in result.stdout
    doc = json.loads(run("archs", "--json", "-").stdout)
    assert doc["dcgan_generator"]["kwargs"]["nz"] == 100

"""`genaudit sdr` and `genaudit stretch` through the command line: exports, selection, codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genaudit.cli import app
from genaudit.io import registry as zoo
from genaudit.io.writing import save_safetensors

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_sdr_table_and_levels(gen: str) -> None:
    result = run("sdr", gen, "--num-samples", "16", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    for word in ("projection", "coarse", "fine", "image", "trace method", "per level"):
        assert word in result.stdout


def test_sdr_json_csv_and_pairs(gen: str, tmp_path: Path) -> None:
    j, c = tmp_path / "r.json", tmp_path / "r.csv"
    result = run("sdr", gen, "--num-samples", "16", "--json", str(j), "--csv", str(c), "--pairs")
    assert result.exit_code == 0, result.output
    doc = json.loads(j.read_text())
    assert doc["command"] == "sdr" and doc["config"]["num_samples"] == 16
    assert doc["checkpoint"]["arch"] == "dcgan_generator"
    layers = doc["results"]["layers"]
    assert layers[0]["analysis"] == "trace" and layers[0]["trace_ratio"] > 0
    fine = next(x for x in layers if x["level"] == "fine")
    s = fine["summary"]
    assert s["pairs"] == 8 * 4 and s["defined"] + s["undefined"] == s["pairs"]
    assert sum(s["histogram"]) == s["defined"]
    assert len(doc["results"]["histogram_edges_log10"]) == len(s["histogram"]) + 1
    assert np.array(fine["pairs"]["sdr"]).shape == (4, 8)
    rows = list(csv.DictReader(io.StringIO(c.read_text())))
    assert list(rows[0]) == ["layer", "level", "out_channel", "in_channel", "sdr", "log10_sdr"]
    assert len(rows) == sum(x["summary"]["pairs"] for x in layers if x["analysis"] == "sdr")
    fine_rows = [r for r in rows if r["layer"] == fine["name"]]
    v = np.array([float(r["sdr"]) for r in fine_rows])
    assert np.isclose(np.median(v), s["median_sdr"])
    assert np.isclose(np.mean(np.log10(v)), s["mean_log10_sdr"])


def test_sdr_json_stdout_only(gen: str) -> None:
    result = run("sdr", gen, "--num-samples", "8", "--json", "-")
    assert result.exit_code == 0
    json.loads(result.stdout)  # nothing else on stdout


def test_sdr_json_byte_identical(gen: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("sdr", gen, "--num-samples", "16", "--seed", "4", "--json", str(a)).exit_code == 0
    assert run("sdr", gen, "--num-samples", "16", "--seed", "4", "--json", str(b)).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_sdr_batch_size_invariance(gen: str) -> None:
    docs = [
        json.loads(run("sdr", gen, "--num-samples", "24", "--batch-size", bs, "--json", "-").stdout)
        for bs in ("5", "24")
    ]
    x, y = (d["results"]["layers"] for d in docs)
    for p, q in zip(x, y, strict=True):
        if p["analysis"] == "sdr":
            assert np.isclose(
                p["summary"]["mean_log10_sdr"], q["summary"]["mean_log10_sdr"], rtol=1e-9
            )
        else:
            assert np.isclose(p["trace_ratio"], q["trace_ratio"], rtol=1e-9)


def test_sdr_layer_selection(gen: str) -> None:
    doc = json.loads(
        run("sdr", gen, "--num-samples", "8", "--layers", "fine,image", "--json", "-").stdout
    )
    assert [x["level"] for x in doc["results"]["layers"]] == ["fine", "image"]
    doc = json.loads(run("sdr", gen, "--num-samples", "8", "--layers", "main.3", "--layers", "0",
                         "--json", "-").stdout)  # fmt: skip
    assert [x["name"] for x in doc["results"]["layers"]] == ["main.0", "main.3"]
    bad = run("sdr", gen, "--layers", "middle")
    assert bad.exit_code == 2 and "no layer matches 'middle'" in bad.stderr


def test_sdr_undefined_and_skipped(tmp_path: Path) -> None:
    import toy_models

    # a dead filter (zero kernel) gives undefined pairs; a 2-sample grid is skipped
    model = toy_models.conv1d_pair()
    with torch.no_grad():
        model[0].weight[1].zero_()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    x = tmp_path / "x.pt"
    torch.save(torch.randn(10, 2, 16), x)
    res = run(
        "sdr", str(path), "--arch", "toy_models:conv1d_pair", "--inputs", str(x), "--json", "-"
    )
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout)["results"]["layers"][0]["summary"]
    assert first["undefined"] == 2 and first["defined"] == 4
    x2 = tmp_path / "x2.pt"
    torch.save(torch.randn(10, 2, 2), x2)
    res = run("sdr", str(path), "--arch", "toy_models:conv1d_pair", "--inputs", str(x2))
    assert res.exit_code == 4 and "non-zero frequenc" in res.stderr


def test_sdr_needs_data_for_discriminator(tmp_path: Path) -> None:
    kw = {"ndf": 4, "image_size": 16}
    path = tmp_path / "d.safetensors"
    save_safetensors(zoo.build("dcgan_discriminator", kw).state_dict(), path,
                     arch="dcgan_discriminator", arch_kwargs=kw)  # fmt: skip
    result = run("sdr", str(path))
    assert result.exit_code == 2 and "--inputs" in result.stderr
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((12, 3, 16, 16), dtype=np.float32))
    result = run("sdr", str(path), "--inputs", str(x), "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["num_samples"] == 12


def test_sdr_tolerance_and_config(
    gen: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        "[tool.genaudit]\nnum_samples = 8\n[tool.genaudit.sdr]\ntolerance = 0.5\n"
    )
    doc = json.loads(run("sdr", gen, "--json", "-").stdout)
    assert doc["config"]["tolerance"] == 0.5 and doc["config"]["num_samples"] == 8
    doc = json.loads(run("sdr", gen, "--tolerance", "0.01", "--json", "-").stdout)
    assert doc["results"]["generic_tolerance_log10"] == 0.01
    assert run("sdr", gen, "--tolerance", "-1").exit_code == 2
    (tmp_path / "pyproject.toml").write_text("[tool.genaudit.sdr]\ntolerence = 0.5\n")
    res = run("sdr", gen)
    assert res.exit_code == 2 and "tolerence" in res.stderr


def test_sdr_two_stdout_targets(gen: str) -> None:
    assert run("sdr", gen, "--json", "-", "--csv", "-").exit_code == 2


def test_stretch_cli(gen: str, tmp_path: Path) -> None:
    png = tmp_path / "grid.png"
    c = tmp_path / "s.csv"
    result = run("stretch", gen, "--num-samples", "8", "--grid", str(png), "--csv", str(c),
                 "--grid-samples", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "grid_diff.png").is_file()
    rows = list(csv.DictReader(io.StringIO(c.read_text())))
    assert [r["level"] for r in rows] == ["projection", "coarse", "fine", "image"]  # 32×32: 2 res.
    rel = [float(r["rel_mse"]) for r in rows]
    assert rel[-1] == min(rel) and rel[-1] < 0.01  # only tanh after the image-level conv
    doc = json.loads(
        run("stretch", gen, "--num-samples", "8", "--layer", "fine", "--json", "-").stdout
    )
    (only,) = doc["results"]["layers"]
    assert only["level"] == "fine"
    assert np.isclose(only["rel_mse"], only["mse"] / only["baseline"])
    assert doc["results"]["transform"] == {"name": "stretch", "param": 1.5, "axis": "horizontal"}


def test_stretch_errors(gen: str) -> None:
    assert run("stretch", gen, "--factor", "0").exit_code == 2
    assert run("stretch", gen, "--axis", "diagonal").exit_code == 2
    assert run("stretch", gen, "--transform", "rotate").exit_code == 2
    assert run("stretch", gen, "--grid", "-").exit_code == 2
    res = run("stretch", gen, "--layer", "nowhere")
    assert res.exit_code == 2 and "nowhere" in res.stderr


def test_trusted_export_program_is_audited(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = zoo.build("dcgan_generator", {"ngf": 4, "nz": 8, "image_size": 16}).eval()
    z = torch.randn(2, 8, 1, 1)
    path = tmp_path / "g.pt2"
    torch.export.save(torch.export.export(model, (z,)), path)
    refused = run("layers", str(path))
    assert refused.exit_code == 3 and "--trust-checkpoint" in refused.stderr
    res = run("sdr", str(path), "--trust-checkpoint", "--num-samples", "4", "--batch-size", "2",
              "--json", "-")  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["checkpoint"]["trusted"] is True and doc["checkpoint"]["format"] == "torch-export"
    assert [x["level"] for x in doc["results"]["layers"]] == ["projection", "fine", "image"]
    assert "WARNING" in res.stderr


def test_trusted_pickled_module(tmp_path: Path) -> None:
    model = zoo.build("dcgan_generator", {"ngf": 4, "nz": 8, "image_size": 16})
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    refused = run("sdr", str(path))
    assert refused.exit_code == 3 and "pickled" in refused.stderr
    res = run("sdr", str(path), "--trust-checkpoint", "--num-samples", "4", "--json", "-")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["checkpoint"]["format"] == "pickled-module"

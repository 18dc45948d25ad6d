"""Options every command shares: --layers (and --layer), --csv, output folders, --quiet."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genaudit.cli import app

runner = CliRunner()
N = ("--num-samples", "16", "--batch-size", "8")


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("command", ["layers", "sdr", "stretch"])
@pytest.mark.parametrize("flag", ["--layers", "--layer"])
def test_layer_selection_has_one_spelling_and_an_alias(gen: str, command: str, flag: str) -> None:
    res = run(command, gen, *(N if command != "layers" else ()), flag, "fine,image", "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    layers = doc["results"]["layers"]
    levels = [x.get("level") or x["record"]["level"] for x in layers]
    assert levels == ["fine", "image"]


def test_layer_selection_is_repeatable_with_indices_and_globs(gen: str) -> None:
    res = run("layers", gen, "--layers", "0", "--layers", "main.[69]", "--json", "-")
    assert res.exit_code == 0, res.output
    names = [x["name"] for x in json.loads(res.stdout)["results"]["layers"]]
    assert names == ["main.0", "main.6", "main.9"]
    bad = run("layers", gen, "--layers", "nowhere")
    assert bad.exit_code == 2 and "no layer matches 'nowhere'" in bad.stderr


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_wherever_there_is_a_table(gen: str, tmp_path: Path) -> None:
    rows = _csv(run("layers", gen, "--csv", "-").stdout)
    assert [r["level"] for r in rows] == ["projection", "coarse", "fine", "image"]
    assert rows[1]["kernel_size"] == "4x4" and rows[1]["analysis"] == "sdr"
    rows = _csv(run("archs", "--csv", "-").stdout)
    assert {"dcgan_generator", "vae_decoder"} <= {r["arch"] for r in rows}
    rows = _csv(run("sdr", gen, *N, "--csv", "-").stdout)
    assert rows and set(rows[0]) >= {"layer", "level", "out_channel", "in_channel", "sdr"}
    rows = _csv(run("stretch", gen, *N, "--csv", "-").stdout)
    assert [r["level"] for r in rows] == ["projection", "coarse", "fine", "image"]
    res = run("check", gen, *N, "--csv", str(tmp_path / "check.csv"))
    assert res.exit_code in (0, 1), res.output
    rows = _csv((tmp_path / "check.csv").read_text())
    assert rows and {r["status"] for r in rows} <= {"pass", "warn", "fail"}
    assert all(r["model"] == gen for r in rows)


def test_missing_output_folders_are_created(gen: str, tmp_path: Path) -> None:
    base = tmp_path / "audit" / "nested"
    res = run("check", gen, *N, "--no-default-rules", "--rule", "sdr.sd_log10:all::10",
              "--write-baseline", str(base / "baseline.json"),
              "--junit", str(base / "junit.xml"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((base / "baseline.json").read_text())["kind"] == "genaudit-baseline"
    assert (base / "junit.xml").read_text().startswith("<?xml")
    res = run("sdr", gen, *N, "--json", str(tmp_path / "a" / "b" / "sdr.json"))
    assert res.exit_code == 0 and (tmp_path / "a" / "b" / "sdr.json").is_file()


def test_a_failed_run_creates_no_folder(gen: str, tmp_path: Path) -> None:
    res = run("sdr", gen, *N, "--layers", "nowhere", "--json", str(tmp_path / "new" / "x.json"))
    assert res.exit_code == 2
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [(("stretch", "--grid", "grid.gif"), "--grid"), (("sdr", "--plot", "hist.bmp"), "--plot")],
)
def test_picture_formats_that_cannot_be_written_are_refused(
    gen: str, tmp_path: Path, args: tuple[str, ...], flag: str
) -> None:
    command, option, name = args
    res = run(command, gen, *N, option, str(tmp_path / name))
    assert res.exit_code == 2
    assert flag in res.stderr and "use one of" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_quiet_silences_notes_not_errors(gen: str) -> None:
    # shifting a 32-pixel-wide output by 32 pixels: every sample becomes its border, so the
    # baseline is 0 and a note explains why rel_mse is undefined
    args = ("stretch", gen, *N, "--layers", "image", "--transform", "shift", "--factor", "32")
    loud, quiet, after = run(*args), run("--quiet", *args), run(*args, "-q")
    assert loud.exit_code == quiet.exit_code == after.exit_code == 0, loud.output
    assert quiet.stdout == loud.stdout == after.stdout
    assert "note: the transform leaves the output unchanged" in loud.stderr
    assert quiet.stderr == after.stderr == ""
    err = run("-q", "sdr", gen, "--layers", "nowhere")
    assert err.exit_code == 2 and err.stderr.startswith("error:")


def test_progress_bars_are_silent_when_stderr_is_not_a_terminal(gen: str) -> None:
    for args in (("sdr", gen, *N), ("stretch", gen, *N), ("check", gen, *N)):
        res = run(*args)
        assert res.exit_code in (0, 1), res.output
        assert "sampling" not in res.stderr and "━" not in res.stderr


@pytest.mark.parametrize("seed", ["0", str(2**44), str(2**64 - 1)])
def test_every_64_bit_seed_works(gen: str, seed: str) -> None:
    res = run("sdr", gen, "--num-samples", "4", "--batch-size", "4", "--seed", seed, "--json", "-")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["config"]["seed"] == int(seed)

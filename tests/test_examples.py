"""The scripts in examples/: the SGD drift toy drifts, the penalty runs write loadable snapshots."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import ROOT
from typer.testing import CliRunner

from genaudit.cli import app

EXAMPLES = ROOT / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["fixed", "trained"])
def test_sgd_drifts_a_generic_pair_away_from_genericity(
    mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.set_num_threads(1)  # tiny convolutions: a second thread only spins (reset per test)
    drift = load("sgd_drift")
    small = ["--n", "32", "--k1-size", "5", "--steps", "200", "--every", "100"]
    (run,) = drift.main([*small, "--mode", mode, "--seed", "2"])
    assert run.steps == (0, 100, 200)
    assert abs(run.before) < 0.15, run  # independent random kernels: about generic
    assert run.rel_error[-1] < 0.05, run  # the target is fitted
    assert abs(run.after) > abs(run.before) + 0.2, run  # ... by a non-generic pair
    # the sign the analysis predicts: k2 inverts a fixed k1; trained layers share the spectrum
    assert (run.after < 0) if mode == "fixed" else (run.after > 0), run
    assert abs(run.after - run.expected) < 0.15, run
    assert "drift:" in capsys.readouterr().out
    (again,) = drift.main([*small, "--mode", mode, "--seed", "2"])
    assert again == run  # seeded


def test_penalty_runs_write_snapshots_genaudit_loads(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    torch.set_num_threads(1)
    penalty = load("train_penalty")
    out = tmp_path / "runs"
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:  # the script switches deterministic algorithms on, as make_fixtures.py does
        summary = penalty.main(["--quick", "--out", str(out), "--steps", "2", "--every", "1"])
    finally:
        torch.use_deterministic_algorithms(deterministic)
    for run in ("plain", "penalty"):
        snaps = sorted((out / run).glob("vae64_decoder_step*.safetensors"))
        assert [p.name[-17:-12] for p in snaps] == ["00000", "00001", "00002"]
        assert set(summary["runs"][run]["snapshots"]) == {"0", "1", "2"}
        result = CliRunner().invoke(app, ["layers", str(snaps[-1]), "--json", "-"])
        assert result.exit_code == 0, result.output
        levels = [layer["level"] for layer in json.loads(result.stdout)["results"]["layers"]]
        assert levels[-1] == "image" and "fine" in levels
    assert summary["runs"]["penalty"]["penalty"] is not None
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_penalty_runs_refuse_the_fixtures_folder() -> None:
    penalty = load("train_penalty")
    with pytest.raises(SystemExit):
        penalty.parse_args(["--quick", "--out", str(ROOT / "fixtures")])

"""Genericity over training: ``genaudit track`` on snapshots, and the Tracker in a training loop."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import genaudit
from genaudit.analysis.tracking import TRACK_CSV_HEADER, Tracker, lightning_callback
from genaudit.cli import app
from genaudit.errors import UsageError
from genaudit.io.snapshots import find_snapshots, step_of

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
STEPS = (0, 125, 500, 2000)
SNAPS = [str(FIXTURES / f"vae64_decoder_step{s:05d}.safetensors") for s in STEPS]
FLAGS = ("--num-samples", "16", "--batch-size", "8", "--device", "cpu", "--seed", "3")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def invoke(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, ["track", *args])
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict[str, str]]]:
    """JSON and CSV of the four fixture snapshots, named out of order."""
    out = tmp_path_factory.mktemp("track")
    shuffled = [SNAPS[2], SNAPS[0], SNAPS[3], SNAPS[1]]
    code, _, err = invoke(*shuffled, *FLAGS, "--json", str(out / "t.json"),
                          "--csv", str(out / "t.csv"))  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "t.json").read_text())
    rows = list(csv.DictReader(io.StringIO((out / "t.csv").read_text())))
    return doc, rows


def test_steps_are_read_from_names() -> None:
    assert step_of("vae64_decoder_step00125.safetensors") == 125
    assert step_of("epoch=3-step=1250.ckpt") == 1250
    assert step_of("runs/7/last.pt") is None
    assert step_of("model-step42.safetensors.index.json") == 42


def test_snapshots_are_ordered_by_step(tracked: tuple[dict, list[dict[str, str]]]) -> None:
    doc, rows = tracked
    assert doc["command"] == "track"
    assert [s["step"] for s in doc["snapshots"]] == list(STEPS)
    assert [Path(s["path"]).name for s in doc["snapshots"]] == [Path(p).name for p in SNAPS]
    assert all(len(s["sha256"]) == 64 for s in doc["snapshots"])
    assert len({s["sha256"] for s in doc["snapshots"]}) == 4
    assert tuple(rows[0]) == TRACK_CSV_HEADER
    levels = list(doc["snapshots"][0]["levels"])
    assert len(rows) == 4 * len(levels)  # one row per snapshot and level
    assert [int(r["step"]) for r in rows[:: len(levels)]] == list(STEPS)
    for row in rows:  # the CSV carries the JSON's numbers
        level = doc["snapshots"][STEPS.index(int(row["step"]))]["levels"][row["level"]]
        assert float(row["median_sdr"]) == pytest.approx(level["median_sdr"], rel=1e-12)


def test_a_snapshot_has_the_numbers_of_sdr_and_stretch(
    tracked: tuple[dict, list[dict[str, str]]],
) -> None:
    doc, _ = tracked
    snap = doc["snapshots"][2]
    assert snap["step"] == 500
    for cmd in ("sdr", "stretch"):
        res = CliRunner().invoke(app, [cmd, SNAPS[2], *FLAGS, "--json", "-"])
        assert res.exit_code == 0, res.output
        one = json.loads(res.stdout)
        assert one["checkpoint"]["sha256"] == snap["sha256"]
        if cmd == "sdr":
            for lv in one["results"]["levels"]:
                if lv["summary"] is None:
                    continue
                mine = snap["levels"][lv["level"]]
                assert mine["median_sdr"] == lv["summary"]["median_sdr"]
                assert mine["sd_log10_sdr"] == lv["summary"]["sd_log10_sdr"]
                assert mine["generic_fraction"] == lv["summary"]["generic_fraction"]
            for layer in one["results"]["layers"]:
                if layer["analysis"] == "sdr":
                    mine = snap["layers"][layer["name"]]
                    assert mine["median_sdr"] == layer["summary"]["median_sdr"]
        else:
            for layer in one["results"]["layers"]:
                assert snap["levels"][layer["level"]]["stretch_layer"] == layer["name"]
                assert snap["levels"][layer["level"]]["stretch_rel_mse"] == layer["rel_mse"]


def test_a_folder_a_glob_tables_and_plot(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for p in (SNAPS[3], SNAPS[1]):
        shutil.copy(p, folder)
    (folder / "notes.txt").write_text("not a checkpoint")
    plot = ["--plot", str(tmp_path / "out" / "trend.png")] if HAS_MATPLOTLIB else []
    code, out, err = invoke(str(folder), *FLAGS, "--no-stretch", *plot)
    assert code == 0, err
    assert "2 snapshots, steps 125 to 2000, 16 samples each" in out
    assert "rel_mse" not in out and "fine: 1 layer: features.5" in out
    assert out.index("step00125") < out.index("step02000")
    if HAS_MATPLOTLIB:
        assert (tmp_path / "out" / "trend.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = invoke(str(folder / "*_step*.safetensors"), *FLAGS, "--csv", "-")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted({int(r["step"]) for r in rows}) == [125, 2000]
    assert all(r["stretch_layer"] for r in rows if r["level"] == "fine")


def test_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in ([str(empty)], [str(tmp_path / "nothing*.pt")]):
        code, _, err = invoke(*args)
        assert code == 2 and "error:" in err, err
    code, _, _ = invoke()  # no argument at all
    assert code == 2
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(SNAPS[0], a / "g_step5.safetensors")
    shutil.copy(SNAPS[1], b / "h_step5.safetensors")
    code, _, err = invoke(str(a / "g_step5.safetensors"), str(b / "h_step5.safetensors"))
    assert code == 2 and "both have step 5" in err
    code, _, err = invoke(SNAPS[0], SNAPS[0])
    assert code == 2 and "named twice" in err
    shutil.copy(SNAPS[0], tmp_path / "last.safetensors")
    code, _, err = invoke(SNAPS[1], str(tmp_path / "last.safetensors"))
    assert code == 2 and "cannot tell the step" in err
    mixed = str(FIXTURES / "dcgan64_generator.safetensors")  # "64": step 64, after step 0
    code, _, err = invoke(SNAPS[0], mixed, *FLAGS)
    assert code == 3 and "dcgan64_generator.safetensors does not fit the model" in err, err
    code, _, err = invoke(SNAPS[0], str(tmp_path / "missing_step9.safetensors"), *FLAGS)
    assert code == 3, err


def test_names_without_steps_keep_their_order(tmp_path: Path) -> None:
    for name in ("last.pt", "best.pt"):
        (tmp_path / name).write_bytes(b"")
    found = find_snapshots([str(tmp_path / "last.pt"), str(tmp_path / "best.pt")])
    assert [(Path(s.path).name, s.step) for s in found] == [("last.pt", 0), ("best.pt", 1)]


# --------------------------------------------------------------------------- Tracker


def small_generator() -> torch.nn.Module:
    from genaudit.io import registry as zoo

    torch.manual_seed(0)
    return zoo.build("dcgan_generator", {"ngf": 4, "nz": 8, "image_size": 32})


def test_tracker_in_a_training_loop() -> None:
    model = small_generator()
    model.train()
    drawn = []

    def sampler(batch: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        drawn.append(batch)
        return torch.randn(batch, 8, 1, 1, generator=gen, device=device)

    logged: list[tuple[int, dict[str, float]]] = []
    tracker = genaudit.Tracker(
        model, sampler, every=3, num_samples=8, batch_size=8, levels=("coarse", "fine"),
        log=lambda step, metrics: logged.append((step, metrics)),
    )  # fmt: skip
    calls = len(drawn)
    fixed = tracker.source.batch(0, 8)[0].clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    z = torch.randn(8, 8, 1, 1)
    for step in range(7):
        opt.zero_grad()
        model(z).square().mean().backward()
        opt.step()
        tracker.step(step)
        assert model.training
        assert torch.is_grad_enabled()
    assert len(drawn) == calls  # the inputs were drawn once, at construction
    assert torch.equal(tracker.source.batch(0, 8)[0], fixed)
    assert [p.step for p in tracker.history] == [0, 3, 6]
    assert [s for s, _ in logged] == [0, 3, 6]
    keys = set(logged[0][1])
    assert {"sdr/fine/median", "sdr/fine/sd_log10", "sdr/fine/generic",
            "stretch/fine/rel_mse"} <= keys  # fmt: skip
    assert all(math.isfinite(v) for _, m in logged for v in m.values())
    rows = tracker.to_rows()
    assert {r["step"] for r in rows} == {0, 3, 6}
    assert {"level", "median_sdr", "stretch_rel_mse"} <= set(rows[0])
    # the same weights and the same inputs give the same numbers
    again = tracker.measure(6)
    assert again.levels == tracker.history[2].levels
    assert tracker(7) is None and len(tracker.history) == 4


def test_tracker_levels_and_no_stretch() -> None:
    model = small_generator()
    tracker = Tracker(model, torch.randn(16, 8, 1, 1), every=1, levels=["fine"],
                      stretch=False, batch_size=8)  # fmt: skip
    point = tracker.step(0)
    assert point is not None and list(point.levels) == ["fine"]
    assert set(point.flat()) == {"sdr/fine/median", "sdr/fine/sd_log10", "sdr/fine/generic"}
    assert tracker.num_samples == 16
    pd = pytest.importorskip("pandas")
    assert isinstance(tracker.to_pandas(), pd.DataFrame)
    with pytest.raises(UsageError):
        Tracker(model, torch.randn(4, 8, 1, 1), every=0)


def test_lightning_callback_needs_lightning() -> None:
    have = any(importlib.util.find_spec(m) for m in ("lightning", "pytorch_lightning"))
    if have:
        callback = lightning_callback(torch.randn(8, 8, 1, 1), every=10)
        assert hasattr(callback, "on_train_batch_end")
    else:
        with pytest.raises(UsageError, match="Lightning"):
            lightning_callback(torch.randn(8, 8, 1, 1))

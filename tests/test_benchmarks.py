"""The benchmark scripts run end to end in their reduced (--quick) form (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"


def test_quick_benchmarks_run(tmp_path: Path) -> None:
    runs = {
        "bench_sdr.py": ("--scaling",),
        "bench_stretch.py": ("--no-memory",),  # its memory children work as bench_sdr's do
    }
    procs = {}  # both at once: each is mostly interpreter start-up
    for script, extra in runs.items():
        out = str(tmp_path / f"{script}.json")
        procs[script] = subprocess.Popen(
            [sys.executable, str(BENCHMARKS / script), "--quick", "--device", "cpu",
             "--out", out, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    docs = {}
    for script, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        assert "vs forward" in stdout
        docs[script] = json.loads((tmp_path / f"{script}.json").read_text())

    for doc in docs.values():
        assert doc["machine"]["torch"] and doc["machine"]["cpu"]
        assert [row["num_samples"] for row in doc["sizes"]] == [16, 32]
        assert all(row["forward_s"]["min"] > 0 for row in doc["sizes"])

    sdr = docs["bench_sdr.py"]
    dense = sdr["sizes"][-1]
    assert dense["dense_max_rel_diff"] < 1e-8  # the dense reference agrees with sdr
    assert {"speedup_end_to_end", "speedup_pair_stage"} <= set(dense)
    assert all(row["memory"]["sdr"]["peak_rss_mib"] > 0 for row in sdr["sizes"])
    assert "sdr_over_forward" in sdr["targets"] and len(sdr["scaling"]) == 3

    stretch = docs["bench_stretch.py"]["sizes"][0]
    assert stretch["budget_forward_passes"] == stretch["layers"] + 1


def test_startup_benchmark_runs_and_nothing_imports_torch(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    res = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_startup.py"), "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "vs floor" in res.stdout
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["case"].startswith("floor") and len(rows) > 10
    assert all(r["imports_torch"] is False for r in rows[1:])


def run_quick(script: str, out: Path) -> subprocess.CompletedProcess:
    """``benchmarks/SCRIPT --quick --out OUT``; fails the test on a non-zero exit."""
    res = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_end_to_end_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    res = run_quick("bench_e2e.py", out)
    assert "vs forward" in res.stdout
    [row] = json.loads(out.read_text())["sizes"]
    assert row["num_samples"] == 32 and row["plain_s"]["min"] > 0 and row["genaudit_s"]["min"] > 0
    assert {"startup_s", "load_s", "forward_s", "spectra_s", "pairs_s"} <= set(row["stages"])


def test_deep_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "deep.json"
    res = run_quick("bench_deep.py", out)
    assert "per layer kind" in res.stdout
    models = {m["model"]: m for m in json.loads(out.read_text())["models"]}
    assert set(models) == {"vocoder", "transformer"}
    expected = {"vocoder": {"Conv1d", "ConvTranspose1d"}, "transformer": {"Linear", "Conv2d"}}
    for name, m in models.items():
        assert m["forward_s"]["min"] > 0 and m["sdr_s"]["min"] > 0 and m["stream_s"]["min"] > 0
        kinds = {k["kind"]: k for k in m["kinds"]}
        assert expected[name] <= set(kinds)
        for kind in expected[name]:
            row = kinds[kind]
            assert row["forward_s"] > 0 and row["hooks_s"] > 0 and row["forward_share"] > 0
            assert isinstance(row["over_2x"], bool)
    assert models["vocoder"]["layers_by_kind"]["ConvTranspose1d"] == 4

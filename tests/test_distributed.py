"""`sdr` over several processes (torchrun, gloo on the CPU) equals a single-process run.

One real 2-process job through ``python -m torch.distributed.run``; the sharding, the reduce and
the silence of the other ranks are also checked in-process with a stand-in for the collectives.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, ROOT
from torch import Tensor
from typer.testing import CliRunner

from genaudit.analysis import distributed
from genaudit.analysis.accumulators import SpectrumAccumulator
from genaudit.analysis.distributed import (
    BACKEND_ENV,
    DistributedRun,
    LaunchEnv,
    choose_backend,
    launch_env,
    shard_ranges,
)
from genaudit.analysis.sdr import collect_statistics
from genaudit.cli import app
from genaudit.errors import UsageError
from genaudit.io import registry as zoo
from genaudit.model.inputs import latent_source
from genaudit.model.layers import walk_layers

CPU = torch.device("cpu")
GENERATOR = str(FIXTURES / "dcgan64_generator.safetensors")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pairs(doc: dict) -> dict[str, np.ndarray]:
    out = {}
    for layer in doc["results"]["layers"]:
        if "pairs" in layer:
            out[layer["name"]] = np.array(layer["pairs"]["sdr"], dtype=float)
        elif layer["analysis"] == "trace":
            out[layer["name"]] = np.array([layer["trace_ratio"]], dtype=float)
    return out


def test_two_gloo_processes_match_one(tmp_path: Path, monkeypatch) -> None:
    # one thread per process in both runs, so every batch is computed the same way
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", BACKEND_ENV: "gloo"}
    env.pop("WORLD_SIZE", None)
    port = _free_port()
    env["MASTER_PORT"] = str(port)
    args = ["sdr", GENERATOR, "--num-samples", "32", "--batch-size", "8", "--pairs"]
    launcher = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"),
        *("--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "genaudit"),
    ]
    proc = subprocess.run(
        [*launcher, *args, "--json", "dist.json", "--csv", "-"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    single = CliRunner().invoke(app, [*args, "--json", "single.json"])
    assert single.exit_code == 0, single.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.json", "single.json"]

    dist_doc = json.loads((tmp_path / "dist.json").read_text())
    single_doc = json.loads((tmp_path / "single.json").read_text())
    assert dist_doc["results"]["world_size"] == 2 and single_doc["results"]["world_size"] == 1
    got, expected = _pairs(dist_doc), _pairs(single_doc)
    assert list(got) == list(expected) and len(got) == 5
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=0, err_msg=name)
    for a, b in zip(dist_doc["results"]["layers"], single_doc["results"]["layers"], strict=True):
        assert a["samples"] == b["samples"] == 32

    # stdout holds rank 0's CSV once: the other rank printed nothing
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0][0] == "layer" and sum(r == rows[0] for r in rows) == 1
    assert len(rows) - 1 == sum(v.size for k, v in expected.items() if k != "main.0")


# --------------------------------------------------------------------------- in-process


@pytest.mark.parametrize(("n", "block", "world"), [(32, 8, 2), (50, 8, 3), (7, 8, 2), (9, 1, 4)])
def test_shards_cover_every_sample_once(n: int, block: int, world: int) -> None:
    seen: list[int] = []
    for rank in range(world):
        for lo, hi in shard_ranges(n, block, rank, world):
            assert 0 <= lo < hi <= n
            seen.extend(range(lo, hi))
    assert sorted(seen) == list(range(n))
    assert shard_ranges(n, block) == [(0, n)]


def test_shards_deal_whole_blocks_round_robin() -> None:
    assert shard_ranges(40, 8, 0, 2) == [(0, 8), (16, 24), (32, 40)]
    assert shard_ranges(40, 8, 1, 2) == [(8, 16), (24, 32)]
    assert shard_ranges(8, 8, 1, 2) == []  # fewer blocks than ranks


def test_launch_environment() -> None:
    assert launch_env({}) is None
    assert launch_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    assert launch_env(env) == LaunchEnv(4, 3, 1)
    with pytest.raises(UsageError):
        launch_env({"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"})
    with pytest.raises(UsageError):
        launch_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_backend_choice() -> None:
    assert choose_backend(CPU, {}) == "gloo"
    assert choose_backend(torch.device("cuda", 0), {}) == "nccl"
    assert choose_backend(torch.device("cuda", 0), {BACKEND_ENV: "GLOO"}) == "gloo"
    with pytest.raises(UsageError):
        choose_backend(CPU, {BACKEND_ENV: "nccl"})
    with pytest.raises(UsageError):
        choose_backend(CPU, {BACKEND_ENV: "mpi4"})


class LoneRank(DistributedRun):
    """A rank whose collectives see only itself (the other ranks' sums are added by the test)."""

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor.clone()

    def all_reduce_max(self, tensor: Tensor) -> Tensor:
        return tensor.clone()


def test_rank_shards_add_up_to_the_single_process_sums() -> None:
    torch.manual_seed(0)
    model = zoo.build("dcgan_generator", {"ngf": 4, "nz": 8, "image_size": 32}).eval()
    source = latent_source((8, 1, 1), seed=2)
    records = walk_layers(model, source.batch(0, 2))
    kw = {"num_samples": 40, "batch_size": 8, "device": CPU}
    whole = collect_statistics(model, records, source, **kw)
    parts = [
        collect_statistics(model, records, source, **kw, group=LoneRank(2, rank, rank, "gloo"))
        for rank in range(2)
    ]
    assert [p.world_size for p in parts] == [2, 2]
    for index, acc in whole.accumulators.items():
        counts = [p.accumulators[index].count for p in parts]
        assert counts == [24, 16]  # blocks 0, 2, 4 and 1, 3
        if isinstance(acc, SpectrumAccumulator):
            total = sum(p.accumulators[index].power_sum for p in parts)  # type: ignore[misc]
            torch.testing.assert_close(total, acc.power_sum, rtol=1e-12, atol=0)
        torch.testing.assert_close(parts[0].weights[index], whole.weights[index])
    # a rank without samples holds zero sums of the right shapes, and still sees the weights
    empty = collect_statistics(
        model, records, source, num_samples=8, batch_size=8, device=CPU,
        group=LoneRank(2, 1, 1, "gloo"),
    )  # fmt: skip
    for index, acc in empty.accumulators.items():
        assert acc.count == 0 and index in empty.weights
        if isinstance(acc, SpectrumAccumulator):
            assert acc.power_sum is not None and not acc.power_sum.any()


def test_other_ranks_print_and_write_nothing(tmp_path: Path, monkeypatch) -> None:
    @contextmanager
    def group(env: LaunchEnv | None, device: torch.device) -> Iterator[DistributedRun]:
        assert env == LaunchEnv(2, 1, 1)
        yield LoneRank(2, 1, 1, "gloo")

    monkeypatch.setattr(distributed, "launch_env", lambda: LaunchEnv(2, 1, 1))
    monkeypatch.setattr(distributed, "process_group", group)
    j, c, p = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    args = ["sdr", GENERATOR, "--num-samples", "16", "--batch-size", "4",
            "--json", str(j), "--csv", str(c)]  # fmt: skip
    if importlib.util.find_spec("matplotlib") is not None:
        args += ["--plot", str(p)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert list(tmp_path.iterdir()) == []

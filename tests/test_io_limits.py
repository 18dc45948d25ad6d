"""Allocation limits (genaudit/io/limits.py): hostile files are refused with exit 3, quickly and
without allocating what they declare. Each hostile file is run through the command line in a
fresh interpreter, which reports its exit code and how much its peak memory grew."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

from genaudit.errors import ArchitectureError, CheckpointError, StateDictMismatchError
from genaudit.io import registry as zoo
from genaudit.io.formats import probe_format
from genaudit.io.limits import LIMITS, limit
from genaudit.io.reading import read_checkpoint
from genaudit.model.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
MAX_GROWTH_MB = 300

# Runs `genaudit layers FILE` in-process after torch is imported, and prints the exit code, the
# output and how far the peak resident size grew (ru_maxrss is in KiB on Linux).
_PROBE = """
import json, resource, sys
import torch
from typer.testing import CliRunner
from genaudit.cli import app
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = CliRunner().invoke(app, ["layers", *sys.argv[1:]])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
grew_mb = (after - before) / 1024
print(json.dumps({"code": result.exit_code, "output": result.output, "grew_mb": grew_mb}))
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> dict:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True, text=True, env=environ, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["seconds"] = time.monotonic() - start
    return out


def assert_refused(out: dict, *needles: str) -> None:
    assert out["code"] == 3, out["output"]
    lines = [line for line in out["output"].splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error:"), out["output"]
    assert "Traceback" not in out["output"]
    for needle in needles:
        assert needle in out["output"]
    assert out["grew_mb"] < MAX_GROWTH_MB, out


def write_bomb(path: Path, megabytes: int = 1024) -> Path:
    """A torch-zip look-alike whose data.pkl inflates from a few MB to ``megabytes`` MB."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("archive/version", "3\n")
        with zf.open("archive/data.pkl", "w", force_zip64=True) as member:
            for _ in range(megabytes):
                member.write(chunk)
    return path


def write_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# ---------------------------------------------------------------------------------------------
# Zip archives


def test_deflate_bomb_refused_from_the_directory(tmp_path: Path) -> None:
    bomb = write_bomb(tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 8 << 20
    out = run_cli(str(bomb))
    assert_refused(out, "zip bomb", LIMITS["zip_ratio"][0])
    assert out["seconds"] < 60


def test_zip_total_size_limit_is_overridable(tmp_path: Path) -> None:
    path = tmp_path / "G.pt"
    torch.save({"w": torch.zeros(64, 64)}, path)
    assert probe_format(path).format == "torch-zip"
    variable = LIMITS["checkpoint_bytes"][0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(variable, "1000")
        with pytest.raises(CheckpointError, match="would unpack to more than 1000 bytes"):
            probe_format(path)
        mp.setenv(variable, "-5")
        with pytest.raises(CheckpointError, match="not a positive integer"):
            limit("checkpoint_bytes")
    assert probe_format(path).format == "torch-zip"


def test_ratio_limit_is_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = write_bomb(tmp_path / "bomb.pt", megabytes=16)
    with pytest.raises(CheckpointError, match="zip bomb"):
        probe_format(bomb)
    monkeypatch.setenv(LIMITS["zip_ratio"][0], "1000000")
    with pytest.raises(CheckpointError, match="corrupt pickle"):  # past the limit: all zeros
        probe_format(bomb)


def test_limits_are_overridable_by_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from genaudit.cli import app
    from genaudit.io.limits import limits_set
    from genaudit.model.loading import LoadOptions

    bomb = write_bomb(tmp_path / "bomb.pt", megabytes=16)
    with limits_set({"zip_ratio": 1_000_000}), pytest.raises(CheckpointError, match="corrupt"):
        probe_format(bomb)  # past the limit: a pickle of zeros
    with pytest.raises(CheckpointError, match="zip bomb") as info:  # back to the default
        probe_format(bomb)
    assert "--limit zip-ratio=N (now 100)" in info.value.hint
    # the flag wins over the environment variable, for this load only
    monkeypatch.setenv(LIMITS["zip_ratio"][0], "1000000")
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_model(bomb, LoadOptions(limits=(("zip_ratio", 100),)))
    monkeypatch.delenv(LIMITS["zip_ratio"][0])
    runner = CliRunner()
    res = runner.invoke(app, ["layers", str(bomb), "--limit", "zip-ratio=1M"])
    assert res.exit_code == 3 and "corrupt pickle" in res.stderr, res.output
    res = runner.invoke(app, ["layers", str(bomb), "--limit", "zip-ratio=0"])
    assert res.exit_code == 2 and "positive integer" in res.output, res.output
    res = runner.invoke(app, ["layers", str(bomb), "--limit", "ratio=5"])
    assert res.exit_code == 2 and "checkpoint-bytes, zip-ratio" in res.output, res.output


# ---------------------------------------------------------------------------------------------
# Safetensors


def test_safetensors_tensor_larger_than_the_file(tmp_path: Path) -> None:
    n = 1 << 28  # 1 GiB of float32 declared, 16 bytes stored
    path = write_safetensors(
        tmp_path / "G.safetensors",
        {"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}},
        bytes(16),
    )
    assert_refused(run_cli(str(path)), "beyond the end of the file")


def test_safetensors_header_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "G.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, str(path))
    monkeypatch.setenv(LIMITS["safetensors_header_bytes"][0], "10")
    with pytest.raises(CheckpointError, match="over the limit of 10"):
        read_checkpoint(path)
    monkeypatch.delenv(LIMITS["safetensors_header_bytes"][0])
    assert read_checkpoint(path).obj["w"].shape == (3,)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "needs 8 bytes"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "run backwards"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [True, 4]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}, "data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 2**70]}, "beyond the end"),
        ({"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}, "needs more bytes"),
        ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, "shape"),
        ({"dtype": None, "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"shape": [1], "data_offsets": [0, 4]}, 'no "dtype"'),
        ([1, 2], "not a JSON object"),
    ],
)
def test_safetensors_bad_entries(tmp_path: Path, entry: object, match: str) -> None:
    path = write_safetensors(tmp_path / "G.safetensors", {"w": entry}, bytes(8))
    with pytest.raises(CheckpointError, match=match) as info:
        read_checkpoint(path)
    assert "\n" not in info.value.message


def test_safetensors_overlap_and_metadata(tmp_path: Path) -> None:
    overlap = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
    }
    with pytest.raises(CheckpointError, match="overlap"):
        read_checkpoint(write_safetensors(tmp_path / "a.safetensors", overlap, bytes(8)))
    bad_meta = {"__metadata__": {"k": 1}}
    with pytest.raises(CheckpointError, match="__metadata__"):
        read_checkpoint(write_safetensors(tmp_path / "b.safetensors", bad_meta))


# ---------------------------------------------------------------------------------------------
# Legacy torch.save files


def test_legacy_storage_larger_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "G.pt"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    assert probe_format(path).format == "torch-legacy"
    data = path.read_bytes()
    # The storage's element count is the BININT1 4 right before NONE, TUPLE, … BINPERSID.
    old = b"K\x04Ntq"
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, b"J" + struct.pack("<i", 1 << 30) + b"Ntq"))
    assert_refused(run_cli(str(path)), "storages declare 4294967296 bytes")


def test_legacy_files_still_load(tmp_path: Path) -> None:
    path = tmp_path / "G.pt"
    sd = {
        "w": torch.arange(6.0),
        "v": torch.arange(10.0)[2:5],
        "d": torch.ones(2, dtype=torch.int64),
    }
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    loaded = read_checkpoint(path).obj
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert pickle.HIGHEST_PROTOCOL >= 2  # the legacy format pickles with protocol 2


# ---------------------------------------------------------------------------------------------
# Registry architectures


def registry_file(path: Path, kwargs: object) -> Path:
    metadata = {"genaudit.arch": "dcgan_generator", "genaudit.arch_kwargs": json.dumps(kwargs)}
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"ngf": 1024}, "do not fit the model"),  # used to allocate ~3 GB first
        ({"ngf": -3}, "ngf=-3 is outside"),  # used to crash (exit 70)
        ({"nz": 10**40}, "is outside"),
    ],
)
def test_registry_kwargs_refused_without_allocating(
    tmp_path: Path, kwargs: dict, needle: str
) -> None:
    out = run_cli(str(registry_file(tmp_path / "G.safetensors", kwargs)))
    assert_refused(out, needle)
    assert out["seconds"] < 60


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"image_size": 4096, "ngf": 4096}, ArchitectureError, "over the limit"),
        ({"nz": 2.5}, ArchitectureError, "must be an integer"),
        ({"nz": True}, ArchitectureError, "must be an integer"),
        ({"nz": "8"}, ArchitectureError, "must be an integer"),
        ({"image_size": 100}, ArchitectureError, "image_size must be"),
        ({"image_size": 64, "bogus": 1}, ArchitectureError, "takes no argument"),
        ({"image_size": 16, "ngf": 4, "nz": 8}, StateDictMismatchError, "do not fit"),
    ],
)
def test_registry_kwargs_refused_in_process(
    tmp_path: Path, kwargs: dict, error: type[Exception], needle: str
) -> None:
    with pytest.raises(error, match=needle) as info:
        load_model(registry_file(tmp_path / "G.safetensors", kwargs))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("raw", ["[" * 100_000 + "]" * 100_000, '{"nz": ' + "9" * 5000 + "}"])
def test_registry_kwargs_bad_json(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "G.safetensors"
    metadata = {"genaudit.arch": "dcgan_generator", "genaudit.arch_kwargs": raw}
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)


def test_registry_kwargs_from_the_api(tmp_path: Path) -> None:
    with pytest.raises(ArchitectureError, match="is outside"):
        zoo.build("dcgan_generator", {"ngf": 0})
    meta = zoo.build_meta("dcgan_generator", {"ngf": 1024})
    assert all(p.device.type == "meta" for p in meta.parameters())
    path = tmp_path / "G.safetensors"
    model = zoo.build("dcgan_generator", {"image_size": 16, "ngf": 4, "nz": 8})
    from genaudit.io.writing import save_safetensors

    save_safetensors(
        model.state_dict(), path, arch="dcgan_generator",
        arch_kwargs={"image_size": 16, "ngf": 4, "nz": 8},
    )  # fmt: skip
    loaded = load_model(path).model
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    expected = model.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in loaded.state_dict().items())

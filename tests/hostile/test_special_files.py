"""Symlinks, FIFOs and device files given as checkpoints: refused quickly, nothing runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .gadgets import payloads, write_container
from .runner import assert_refused, layers, run_cli

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX special files")


@posix_only
def test_symlink_to_gadget_file_is_refused_like_the_file(tmp_path: Path) -> None:
    marker, out = tmp_path / "marker", tmp_path / "out.json"
    target = write_container("torch-zip", payloads(marker)["exec"], tmp_path / "evil.pt")
    (link := tmp_path / "innocent.pt").symlink_to(target)
    assert "refusing to load" in assert_refused(layers(link, out), out, marker).output


@posix_only
def test_symlink_to_directory_without_index(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    (tmp_path / "d").mkdir()
    write_container("torch-zip", payloads(tmp_path / "marker")["exec"], tmp_path / "d" / "x.pt")
    (link := tmp_path / "ckpt").symlink_to(tmp_path / "d", target_is_directory=True)
    assert "shard index" in assert_refused(layers(link, out), out, tmp_path / "marker").output


@posix_only
def test_dangling_symlink(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    (link := tmp_path / "gone.pt").symlink_to(tmp_path / "nowhere.pt")
    assert "does not exist" in assert_refused(layers(link, out), out).output


@posix_only
def test_fifo_does_not_hang(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    os.mkfifo(fifo := tmp_path / "pipe.pt")
    try:
        assert "not a regular file" in assert_refused(layers(fifo, out), out).output
    finally:  # unblock a reader, should one be waiting, so that no thread is left behind
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo) else None
        if fd is not None:
            os.close(fd)


def _has_reader(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        return True
    except OSError:  # ENXIO: nobody has it open for reading
        return False


@posix_only
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_device_files(device: str, tmp_path: Path) -> None:
    if not Path(device).exists():
        pytest.skip(f"no {device}")
    out = tmp_path / "out.json"
    assert "not a regular file" in assert_refused(layers(device, out), out).output
    (link := tmp_path / "zero.pt").symlink_to(device)
    assert "not a regular file" in assert_refused(layers(link, out), out).output


@posix_only
def test_fifo_shard_in_an_index(tmp_path: Path) -> None:
    import json

    out = tmp_path / "out.json"
    os.mkfifo(tmp_path / "model-00001.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "model-00001.safetensors"}}))
    outcome = run_cli(layers(index, out))
    assert outcome.exit_code == 3 and not out.exists(), outcome.output

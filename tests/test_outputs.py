"""Outputs: written all or nothing, in place for devices and FIFOs, through links to files, and
write failures reported in one line (exit 2 when foreseen, 3 when the writing fails)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genaudit import files
from genaudit.cli import app
from genaudit.files import OutputError, staged_outputs, write_atomic

runner = CliRunner()
N = ("--num-samples", "8", "--batch-size", "8")


def run(*args: str):
    return runner.invoke(app, list(args))


def leftovers(folder: Path) -> list[str]:
    """Temporaries and backups that a run left in ``folder``."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


def one_line_error(result, code: int, needle: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0]


# ------------------------------------------------------------------ non-regular targets


def test_dev_null_is_written_in_place(gen: str) -> None:
    before = os.stat("/dev/null")
    result = run("sdr", gen, *N, "--json", "/dev/null", "--csv", "/dev/null")
    assert result.exit_code == 0, result.output
    after = os.stat("/dev/null")
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert Path("/dev/null").is_char_device()


def read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as fh:
            into.append(fh.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def test_a_fifo_is_written_in_place(gen: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    thread = read_fifo(fifo, got)
    result = run("layers", gen, "--json", str(fifo))
    thread.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert json.loads(got[0])["command"] == "layers"
    assert fifo.is_fifo() and leftovers(tmp_path) == []


def test_a_link_to_a_fifo_is_written_in_place(gen: str, tmp_path: Path) -> None:
    fifo, link = tmp_path / "pipe", tmp_path / "link.csv"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    got: list[bytes] = []
    thread = read_fifo(fifo, got)
    result = run("layers", gen, "--csv", str(link))
    thread.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert got[0].startswith(b"index,layer,")
    assert link.is_symlink() and fifo.is_fifo() and leftovers(tmp_path) == []


def test_a_link_to_a_file_is_written_through(gen: str, tmp_path: Path) -> None:
    real = tmp_path / "data" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    result = run("layers", gen, "--json", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text())["command"] == "layers"
    assert leftovers(tmp_path) == []


def test_a_link_to_dev_null_stays_a_link(tmp_path: Path) -> None:
    link = tmp_path / "out.json"
    link.symlink_to("/dev/null")
    write_atomic(link, "{}")
    assert link.is_symlink() and Path("/dev/null").is_char_device()


# ------------------------------------------------------------------ all or nothing


def test_a_failing_second_output_leaves_nothing(
    gen: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "b.csv").write_text("the old csv")
    calls = []
    real_write = files.write_all

    def second_fails(fd: int, data: bytes) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(fd, data)

    monkeypatch.setattr(files, "write_all", second_fails)
    result = run(
        "sdr", gen, *N, "--json", str(tmp_path / "a.json"), "--csv", str(tmp_path / "b.csv")
    )
    one_line_error(result, 3, f"cannot write {tmp_path / 'b.csv'}: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]
    assert (tmp_path / "b.csv").read_text() == "the old csv"


def test_a_failing_rename_restores_the_files_renamed_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("old a")
    real_replace = os.replace
    renamed = []

    def second_fails(src: str, dst: str) -> None:
        renamed.append(dst)
        if len(renamed) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", second_fails)
    with pytest.raises(OutputError, match="Input/output error"), staged_outputs() as out:
        out.add(tmp_path / "a.txt", "new a")
        out.add(tmp_path / "sub" / "b.txt", "new b")
    monkeypatch.undo()
    assert (tmp_path / "a.txt").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt"]


def test_an_error_inside_the_block_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyError), staged_outputs() as out:
        out.add(tmp_path / "new" / "a.txt", "a")
        raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []  # the folder made for it is gone too


def test_a_long_name_that_fits_is_written(tmp_path: Path) -> None:
    name = "x" * 250 + ".csv"  # fits NAME_MAX; a temporary named after it in full would not
    write_atomic(tmp_path / name, "a,b\n")
    assert (tmp_path / name).read_text() == "a,b\n" and leftovers(tmp_path) == []


# ------------------------------------------------------------------ errors


def test_a_name_too_long_is_refused_before_the_analysis(gen: str, tmp_path: Path) -> None:
    target = tmp_path / ("x" * 300 + ".json")
    result = run("sdr", gen, *N, "--json", str(target))
    one_line_error(result, 2, "file name too long")
    assert list(tmp_path.iterdir()) == []


def test_a_grid_whose_difference_file_name_is_too_long(gen: str, tmp_path: Path) -> None:
    target = tmp_path / ("x" * 247 + ".png")  # fits; x…_diff.png does not
    result = run("stretch", gen, *N, "--grid", str(target))
    one_line_error(result, 2, "file name too long")


@pytest.mark.parametrize("target", ["/proc/self/out.json", "/sys/out.json"])
def test_a_kernel_folder_is_refused_before_the_analysis(gen: str, target: str) -> None:
    result = run("sdr", gen, *N, "--json", target)
    one_line_error(result, 2, "takes no files")


def test_two_options_naming_one_file(gen: str, tmp_path: Path) -> None:
    same = str(tmp_path / "x.out")
    result = run("sdr", gen, *N, "--json", same, "--csv", same)
    one_line_error(result, 2, "both write")


def test_a_full_stdout_is_a_one_line_error(gen: str, tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "genaudit", "sdr", gen, *N, "--csv", "-",
             "--json", str(tmp_path / "a.json")],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=300,
        )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: cannot write standard output: No space left on device"
    ]
    assert list(tmp_path.iterdir()) == []  # the JSON file is not left either


def test_a_full_device_as_a_file(gen: str, tmp_path: Path) -> None:
    result = run("layers", gen, "--json", "/dev/full", "--csv", str(tmp_path / "a.csv"))
    one_line_error(result, 3, "cannot write /dev/full: No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_write_errors_are_also_os_errors(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "d", "x")
    assert isinstance(info.value, OutputError) and info.value.exit_code == 3


def genaudit_with_stdout(stdout: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "genaudit", *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
    )  # fmt: skip


def test_a_table_on_a_full_stdout() -> None:
    with open("/dev/full", "wb") as full:
        proc = genaudit_with_stdout(full.fileno(), "archs")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == "error: cannot write standard output: No space left on device\n"


def test_a_closed_pipe_on_stdout() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = genaudit_with_stdout(write_end, "archs", "--json", "-")
    finally:
        os.close(write_end)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == "error: cannot write standard output: Broken pipe\n"


def test_check_writes_no_baseline_when_another_output_fails(gen: str, tmp_path: Path) -> None:
    args = ("check", gen, *N, "--no-default-rules", "--rule", "sdr.mean_log10:all:-100:100")
    baseline, doc = str(tmp_path / "b.json"), str(tmp_path / "c.json")
    result = run(*args, "--write-baseline", baseline, "--json", doc, "--junit", "/dev/full")
    assert result.exit_code == 3, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: cannot write /dev/full: No space left on device"
    )
    assert "wrote baseline" not in result.stderr and list(tmp_path.iterdir()) == []
    result = run(*args, "--write-baseline", baseline, "--json", doc, "--junit", "/dev/null")
    assert result.exit_code == 0, result.output
    assert f"note: wrote baseline {baseline}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "c.json"]


def test_dev_stdout_on_a_file_keeps_the_order_of_stdout(tmp_path: Path) -> None:
    link = tmp_path / "out.json"
    link.symlink_to("/dev/stdout")
    with open(tmp_path / "stdout.txt", "wb") as fh:
        proc = genaudit_with_stdout(fh.fileno(), "archs", "--json", str(link))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "stdout.txt").read_text()
    assert text.startswith("{\n") and "architectures for --arch NAME" in text  # JSON, then table
    assert link.is_symlink()

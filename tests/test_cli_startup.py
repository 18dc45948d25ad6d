"""Start-up: help, version and usage errors answer without torch; --debug and Ctrl-C.

These run the real entry point in subprocesses (a fresh interpreter each), because what is
imported and how signals are handled are properties of the whole process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = str(ROOT / "fixtures" / "dcgan64_generator.safetensors")
COMMANDS = ("layers", "sdr", "stretch", "compare", "check", "track", "archs")

# Runs ``main(argv)`` for each argv in one interpreter and reports, after each, its exit code
# and whether torch (or, under Typer 0.29, pydantic) had been imported by then.
PROBE = """
import json, sys
from genaudit.cli import main
report = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    report.append([argv, code, "torch" in sys.modules, "pydantic" in sys.modules])
sys.__stdout__.write("\\nREPORT " + json.dumps(report) + "\\n")
"""


def probe(argvs: list[list[str]], tmp_path: Path) -> list[list]:
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT ") :])


def assert_light(argvs: list[list[str]], exit_code: int, tmp_path: Path) -> None:
    """Each argv exits with ``exit_code`` and imports neither torch nor pydantic."""
    for argv, code, torch_loaded, pydantic_loaded in probe(argvs, tmp_path):
        assert code == exit_code, argv
        assert not torch_loaded, f"{argv} imported torch"
        assert not pydantic_loaded, f"{argv} imported pydantic"


def test_help_and_version_do_not_import_torch(tmp_path: Path) -> None:
    argvs = [["--help"], ["--version"], ["-h"]] + [[cmd, "--help"] for cmd in COMMANDS]
    assert_light(argvs, 0, tmp_path)


USAGE_ERRORS = [
    ["sdr", FIXTURE, "--bogus"],
    ["sdr"],
    ["nosuchcommand"],
    ["sdr", FIXTURE, "--num-samples", "0"],
    ["sdr", FIXTURE, "--num-samples", "many"],
    ["sdr", FIXTURE, "--batch-size", "-3"],
    ["sdr", FIXTURE, "--seed", "-1"],
    ["sdr", FIXTURE, "--seed", str(2**64)],
    ["sdr", FIXTURE, "--device", "tpu"],
    ["sdr", FIXTURE, "--z-shape", "a,b"],
    ["sdr", FIXTURE, "--z-dist", "cauchy"],
    ["sdr", FIXTURE, "--arch-kwargs", "{nope"],
    ["sdr", FIXTURE, "--tolerance", "0"],
    ["sdr", FIXTURE, "--plot", "out.gif"],
    ["sdr", FIXTURE, "--json", "-", "--csv", "-"],
    ["stretch", FIXTURE, "--axis", "diagonal"],
    ["stretch", FIXTURE, "--factor", "0"],
    ["stretch", FIXTURE, "--factor", "nan"],
    ["stretch", FIXTURE, "--transform", "rotate"],
    ["stretch", FIXTURE, "--grid", "out.gif"],
    ["stretch", FIXTURE, "--grid-samples", "0"],
    ["layers", FIXTURE, "--label-format", "bits"],
    ["compare", FIXTURE, FIXTURE, "--pair", "main.3"],
    ["compare", FIXTURE, FIXTURE, "--pair", "=main.3"],
    ["check", FIXTURE, "--rule", "sdr.nope:all::1"],
    ["check", FIXTURE, "--write-baseline", "-"],
    ["track", FIXTURE, FIXTURE],  # one snapshot named twice
    ["track", "no_such_folder/*.safetensors"],
    ["track", FIXTURE, "--factor", "0"],
]


def test_usage_errors_exit_2_without_importing_torch(tmp_path: Path) -> None:
    assert_light(USAGE_ERRORS, 2, tmp_path)


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "genaudit", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=300,
    )  # fmt: skip


def test_usage_error_message_is_click_usage(tmp_path: Path) -> None:
    res = run_cli("stretch", FIXTURE, "--axis", "diagonal", cwd=tmp_path)
    assert res.returncode == 2
    assert "Usage: genaudit stretch" in res.stderr
    assert "'diagonal' is not one of 'horizontal', 'vertical', 'depth', 'both'" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_version(tmp_path: Path) -> None:
    from genaudit import __version__

    res = run_cli("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"genaudit {__version__}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_prints_the_traceback_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    missing = str(tmp_path / "missing.safetensors")
    args = ["--debug", "layers", missing] if where == "before" else ["layers", missing, "--debug"]
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    assert "Traceback (most recent call last)" in res.stderr
    assert "CheckpointError" in res.stderr
    plain = run_cli("layers", missing, cwd=tmp_path)
    assert plain.returncode == 3
    assert "Traceback" not in plain.stderr
    assert plain.stderr.startswith("error: ") and len(plain.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize("delay", [0.2, 0.3, 0.45, 0.8, 1.5, 3.0])
def test_ctrl_c_at_any_moment_prints_interrupted_and_exits_130(
    tmp_path: Path, delay: float
) -> None:
    """SIGINT while Python starts genaudit, while torch imports, while loading, while sampling.

    The job is long enough (many samples) that it is still running at every delay.
    """
    cmd = [sys.executable, "-m", "genaudit", "sdr", FIXTURE, "--num-samples", "200000",
           "--json", str(tmp_path / "out.json")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)  # fmt: skip
    time.sleep(delay)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted", stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stdout == ""
    assert not (tmp_path / "out.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.json")]


def test_help_is_grouped_and_fits_80_columns(tmp_path: Path) -> None:
    top = run_cli("--help", cwd=tmp_path, env={"COLUMNS": "80"}).stdout
    listed = top.split("Commands:")[1]
    assert all(cmd in listed for cmd in COMMANDS)
    assert "..." not in listed and "…" not in listed  # summaries are never cut
    sdr = run_cli("sdr", "--help", cwd=tmp_path, env={"COLUMNS": "80"}).stdout
    for section in ("Arguments:", "Analysis:", "Model:", "Inputs:", "Run:", "Output:", "Options:"):
        assert section in sdr
    for metavar in ("MODEL", "--json FILE|-", "--num-samples INT", "--latents FILE"):
        assert metavar in sdr
    assert max(len(line) for line in sdr.splitlines()) <= 80
    compare = run_cli("compare", "--help", cwd=tmp_path, env={"COLUMNS": "80"}).stdout
    assert "Decoder:" in compare and "Encoder:" in compare
    assert "--decoder-latents FILE" in compare and "--encoder-inputs, --inputs FILE" in compare


def _stderr_on_a_terminal(args: list[str], cwd: Path) -> bytes:
    """Run genaudit with stderr on a pseudo-terminal; return what it wrote there."""
    import pty
    import select

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "genaudit", *args], stdout=subprocess.PIPE, stderr=follower,
        cwd=cwd, env={**os.environ, "TERM": "xterm", "COLUMNS": "80"},
    )  # fmt: skip
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.communicate(timeout=120)
    os.close(leader)
    return seen


@pytest.mark.parametrize(
    ("command", "label"), [("sdr", b"sampling"), ("stretch", b"stretch"), ("check", b"sampling")]
)
def test_progress_bar_on_a_terminal_and_not_with_quiet(
    tmp_path: Path, command: str, label: bytes
) -> None:
    args = [command, FIXTURE, "--num-samples", "1024"]
    assert label in _stderr_on_a_terminal(args, tmp_path)
    assert label not in _stderr_on_a_terminal([*args, "--quiet"], tmp_path)

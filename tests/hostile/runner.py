"""Run the command line in-process, with a deadline, and check how it refused."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from genaudit.cli import app

REFUSED = 3
USAGE = 2


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    output: str
    exception: BaseException | None


def run_cli(args: list[str], timeout: float = 30.0) -> Outcome:
    """``genaudit ARGS`` in a worker thread; fails the test if it has not finished by ``timeout``
    (a loader blocked on a FIFO or a device file)."""
    box: list[Outcome] = []

    def work() -> None:
        result = CliRunner().invoke(app, args)
        box.append(Outcome(result.exit_code, result.output, result.exception))

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"genaudit {' '.join(args)} still running after {timeout}s"
    return box[0]


def message_lines(outcome: Outcome) -> list[str]:
    """The output lines other than warnings (which --allow-global and --trust-checkpoint add)."""
    return [ln for ln in outcome.output.splitlines() if ln.strip() and not ln.startswith("WARNING")]


def assert_refused(
    args: list[str], out: Path, marker: Path | None = None, code: int = REFUSED
) -> Outcome:
    """Run ``args`` (which write ``--json out``) and check the refusal: exit ``code``, one or
    two lines without a traceback, no output file, no marker."""
    outcome = run_cli(args)
    assert outcome.exit_code == code, outcome.output
    lines = message_lines(outcome)
    assert 1 <= len(lines) <= 2, outcome.output
    assert "Traceback" not in outcome.output
    assert not isinstance(outcome.exception, (AssertionError, TypeError, AttributeError))
    assert not out.exists(), "an output file was written for a refused input"
    if marker is not None:
        assert not marker.exists(), "the payload ran"
    return outcome


def layers(path: Path | str, out: Path, *extra: str) -> list[str]:
    """``layers PATH --json OUT [EXTRA…]``."""
    return ["layers", str(path), "--json", str(out), *extra]

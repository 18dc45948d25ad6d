"""The command line: the ``genaudit`` script and ``python -m genaudit``.

Importing this package imports Typer and Rich only. Each command imports the analyses (and torch
with them) when it runs, so that ``--help``, ``--version`` and usage errors answer at once.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, NoReturn

from ..errors import ExitCode


class Interrupted(BaseException):
    """Raised by the SIGINT handler of :func:`main`.

    Not a ``KeyboardInterrupt``, so that no library on the way (Click turns those into its own
    exit) gets to print anything: it reaches :func:`main`, which prints one line.
    """


class _Signals:
    """Whether Ctrl-C was pressed in this run (see :func:`raise_if_interrupted`)."""

    interrupted = False


SIGNALS = _Signals()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    SIGNALS.interrupted = True
    raise Interrupted


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` again if Ctrl-C was pressed.

    A library that catches every exception (some do while importing compiled extensions) can
    swallow the first ``Interrupted``; the command line calls this after each batch and before
    writing any output, so the run still stops, leaves no output, and reports the interruption.
    """
    if SIGNALS.interrupted:
        raise Interrupted


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the ``genaudit`` script and ``python -m genaudit``."""
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        code = _run(argv)
        raise_if_interrupted()
    except (Interrupted, KeyboardInterrupt):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt this
        sys.stderr.write("interrupted\n")
        code = int(ExitCode.INTERRUPTED)
    finally:
        signal.signal(signal.SIGINT, previous)
    sys.stdout.flush()
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """Run the app without Click's standalone handling, and map what comes out to exit codes."""
    import typer

    from ..errors import GenauditError
    from .root import STATE, app, click_exception_class

    click_exception = click_exception_class()
    try:
        rv: Any = app(args=argv, prog_name="genaudit", standalone_mode=False)
    except click_exception as exc:  # bad flag or option value: Click's usage message
        exc.show()  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        sys.stderr.write("aborted\n")
        return 1
    except Exception as exc:  # only with --debug: the commands map errors themselves otherwise
        raise_if_interrupted()  # an error that follows a swallowed Ctrl-C is the interruption
        if not STATE.debug:
            raise
        import traceback

        traceback.print_exception(exc)
        if isinstance(exc, GenauditError):
            return int(exc.exit_code)
        return int(ExitCode.INTERNAL)
    return rv if isinstance(rv, int) else 0


def __getattr__(name: str) -> Any:
    # ``from genaudit.cli import app`` (tests, documentation tools) gets every command registered
    if name == "app":
        from .root import app

        return app
    raise AttributeError(name)

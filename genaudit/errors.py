"""One exception hierarchy and the exit codes the command line maps it to (see the README)."""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Literal


class ExitCode(IntEnum):
    """Process exit codes of every genaudit command."""

    OK = 0
    GATE_FAILED = 1
    USAGE = 2
    INVALID_INPUT = 3
    NOTHING_TO_ANALYSE = 4
    INTERNAL = 70
    INTERRUPTED = 130  # the shell's convention: 128 + SIGINT


OptionStyle = Literal["cli", "api"]
_OPTION = re.compile("\u27e6([A-Za-z_][A-Za-z0-9_]*)\u27e7")


def option(name: str) -> str:
    """Name one of the user's options in a message, e.g. ``option("arch_kwargs")``.

    Code below the command line never spells a flag: the command line shows the option as
    ``--arch-kwargs``, the Python API as the keyword ``arch_kwargs=`` (:func:`render_options`).
    """
    return f"\u27e6{name}\u27e7"


def render_options(text: str, style: OptionStyle = "cli") -> str:
    """Replace the options named by :func:`option` with flags or keyword arguments."""
    if style == "cli":
        return _OPTION.sub(lambda m: "--" + m.group(1).replace("_", "-"), text)
    return _OPTION.sub(lambda m: m.group(1) + "=", text)


class GenauditError(Exception):
    """Base class: a problem the user can act on, shown as one or two plain lines.

    ``message`` says what is wrong; ``hint`` (optional) says what to do about it. Both may name
    the user's options (:func:`option`); ``options`` lists them, and :meth:`lines` phrases them
    for the command line (the default) or the Python API.
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(render_options(message))
        self.raw_message = message
        self.raw_hint = hint

    @property
    def message(self) -> str:
        return render_options(self.raw_message)

    @property
    def hint(self) -> str | None:
        return None if self.raw_hint is None else render_options(self.raw_hint)

    @property
    def options(self) -> tuple[str, ...]:
        """The options the message and hint name, in order (each once)."""
        text = self.raw_message + " " + (self.raw_hint or "")
        return tuple(dict.fromkeys(_OPTION.findall(text)))

    def lines(self, style: OptionStyle = "cli") -> list[str]:
        """The message and, when there is one, the hint, with options phrased for ``style``."""
        raw = [self.raw_message] if not self.raw_hint else [self.raw_message, self.raw_hint]
        return [render_options(line, style) for line in raw]


class UsageError(GenauditError):
    """Bad flags, configuration or selection (exit 2)."""

    exit_code = ExitCode.USAGE


class InvalidInputError(GenauditError):
    """A file or value given by the user cannot be used (exit 3)."""

    exit_code = ExitCode.INVALID_INPUT


class CheckpointError(InvalidInputError):
    """A checkpoint is missing, empty, corrupt, unsupported or mismatched (exit 3)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose loading would run code, refused without --trust-checkpoint (exit 3)."""


class StateDictMismatchError(CheckpointError):
    """The weights do not fit the rebuilt architecture (exit 3)."""


class ArchitectureError(InvalidInputError):
    """The architecture cannot be resolved or built (exit 3)."""


class ModelInputError(InvalidInputError):
    """Latents, inputs or a sampler do not fit the model (exit 3)."""


class NothingToAnalyseError(GenauditError):
    """No layer the requested analysis applies to, or a numerical failure (exit 4)."""

    exit_code = ExitCode.NOTHING_TO_ANALYSE


class NumericalError(NothingToAnalyseError):
    """A computation produced no usable number (exit 4)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), cut to
    ``limit`` characters: what an error message quotes of a library's or user code's failure."""
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"

"""One exception hierarchy and the exit codes the command line maps it to (see the README)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of every genaudit command."""

    OK = 0
    GATE_FAILED = 1
    USAGE = 2
    INVALID_INPUT = 3
    NOTHING_TO_ANALYSE = 4
    INTERNAL = 70
    INTERRUPTED = 130  # the shell's convention: 128 + SIGINT


class GenauditError(Exception):
    """Base class: a problem the user can act on, shown as one or two plain lines.

    ``message`` says what is wrong; ``hint`` (optional) says what to do about it.
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def lines(self) -> list[str]:
        """The message and, when there is one, the hint: what the CLI prints."""
        return [self.message] if not self.hint else [self.message, self.hint]


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

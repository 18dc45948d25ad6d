"""The Typer app, its help layout, the run state (``--debug``, ``--quiet``) and error mapping."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from ..errors import ExitCode, GenauditError, UsageError, first_line
from . import raise_if_interrupted

if TYPE_CHECKING:
    from rich.console import Console

    from ..files import OutputSet

F = TypeVar("F", bound=Callable[..., Any])

# Help sections, in the order they are shown; options name theirs with ``rich_help_panel``.
SECTIONS = (
    "Arguments", "Analysis", "Model", "Inputs", "Decoder", "Encoder", "Run", "Output", "Options",
)  # fmt: skip


@dataclass
class RunState:
    """What the root options and every command's ``--debug``/``--quiet`` set for this run."""

    debug: bool = False
    quiet: bool = False


STATE = RunState()


def click_exception_class() -> type[Exception]:
    """Click's ``ClickException``, from Typer's own copy of Click or the standalone one."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    raise RuntimeError("Typer without ClickException")  # pragma: no cover


@dataclass(frozen=True)
class PlainCoercion:
    """Conversion of the plain option types this command line declares (str, int, float, bool,
    an Enum of choices, and lists of those), with the option's min/max.

    Typer 0.29 converts every option value through a pydantic ``TypeAdapter``; importing
    pydantic for that costs as much as the whole of ``genaudit --help``. These types need no
    more than what Click always did, so :func:`use_plain_coercion` installs this instead where
    Typer has such a hook; elsewhere Typer's own conversion runs, with the same results.
    """

    annotation: Any
    minimum: float | None = None
    maximum: float | None = None

    SUPPORTED = (str, int, float, bool)

    @classmethod
    def handles(cls, annotation: Any) -> bool:
        element = _element_type(annotation)
        return element in cls.SUPPORTED or (isinstance(element, type) and issubclass(element, Enum))

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if param.multiple or param.nargs == -1:
            if value is None:
                return ()
            if isinstance(value, str):
                raise typer.BadParameter("Value must be an iterable.", ctx=ctx, param=param)
            return [self.one(v, param, ctx) for v in value]
        return None if value is None else self.one(value, param, ctx)

    def one(self, value: Any, param: Any, ctx: Any) -> Any:
        kind = _element_type(self.annotation)
        if isinstance(kind, type) and issubclass(kind, Enum):
            for member in kind:
                if value == member or value == member.value:
                    return member
            choices = ", ".join(repr(m.value) for m in kind)
            raise typer.BadParameter(f"{value!r} is not one of {choices}.", ctx=ctx, param=param)
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise typer.BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)
        if kind is str:
            return value if isinstance(value, str) else str(value)
        try:
            number = kind(value)
        except (TypeError, ValueError):
            name = "integer" if kind is int else "float"
            raise typer.BadParameter(
                f"{value!r} is not a valid {name}.", ctx=ctx, param=param
            ) from None
        low, high = self.minimum, self.maximum
        if (low is not None and number < low) or (high is not None and number > high):
            bounds = " and ".join(
                text
                for text in (low is not None and f"x>={low}", high is not None and f"x<={high}")
                if text
            )
            raise typer.BadParameter(
                f"{number} is not in the range {bounds}.", ctx=ctx, param=param
            )
        return number


def _element_type(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if getattr(annotation, "__origin__", None) is list and args and len(args) == 1:
        return args[0]
    return annotation


def use_plain_coercion(params: Iterable[Any]) -> None:
    """Install :class:`PlainCoercion` on parameters of the plain types, where Typer converts
    values through a replaceable runtime object (Typer 0.29); a no-op elsewhere."""
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue
        if PlainCoercion.handles(descriptor.annotation):
            info = descriptor.parameter_info
            param._runtime_param = PlainCoercion(
                descriptor.annotation, getattr(info, "min", None), getattr(info, "max", None)
            )


class SectionedCommand(TyperCommand):
    """Plain-text help with the options grouped in sections (model, inputs, analysis, output).

    Typer groups options only in its Rich help, whose import alone costs more than the whole
    plain help; this keeps the grouping without it.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        use_plain_coercion(params)
        return params

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                panel = "Arguments"
                # Typer ≥ 0.29 appends the Python type (``MODEL <list[str]>``): the metavar says it
                record = (re.sub(r"\s+<[^<>]*>$", "", record[0]), record[1])
            else:
                panel = getattr(param, "rich_help_panel", None) or "Options"
            sections.setdefault(panel, []).append(record)
        order = {name: k for k, name in enumerate(SECTIONS)}
        for panel in sorted(sections, key=lambda p: order.get(p, len(order))):
            with formatter.section(panel):
                formatter.write_dl(sections[panel])


# Every command: the module that defines it (imported only when the command is used) and the
# line ``genaudit --help`` lists, in the order of a typical session.
COMMANDS: dict[str, tuple[str, str]] = {
    "layers": ("inventory", "Inventory: every audited layer, in run order."),
    "sdr": ("sdr", "Spectral density ratio of every (filter, map) pair."),
    "stretch": ("stretch", "Stretch hidden layers vs. stretching the output."),
    "compare": ("compare", "Decoder vs. encoder genericity, mirrored layers."),
    "check": ("check", "CI gate: rules, baseline drift, exit codes."),
    "track": ("track", "Genericity over training: snapshots ordered by step."),
    "archs": ("inventory", "The registry of standard architectures."),
}
# Filled by @command when a command's module is imported: name → (function, help).
_REGISTERED: dict[str, tuple[Callable[..., Any], str | None]] = {}


class RootGroup(TyperGroup):
    """The commands, loaded lazily: ``genaudit --help`` imports none of them, and
    ``genaudit sdr …`` imports only the module of ``sdr``."""

    _loaded: dict[str, Any]

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        use_plain_coercion(params)
        return params

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        loaded = self.__dict__.setdefault("_loaded", {})
        if cmd_name not in loaded:
            loaded[cmd_name] = build_command(cmd_name)
        return loaded[cmd_name]

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in COMMANDS.items()])


def build_command(name: str) -> Any:
    """Import the command's module and turn its function into a Click command."""
    import importlib

    module, summary = COMMANDS[name]
    importlib.import_module(f"{__package__}.{module}")
    fn, help_text = _REGISTERED[name]
    single = typer.Typer(
        add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
        context_settings=CONTEXT_SETTINGS,
    )  # fmt: skip
    single.command(name, cls=SectionedCommand, short_help=summary, help=help_text)(fn)
    return typer.main.get_command(single)


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


DebugOpt = Annotated[
    bool,
    typer.Option(
        "--debug",
        help="Show the traceback of an error instead of one or two lines.",
        rich_help_panel="Options",
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars or notes on stderr (errors and warnings still are shown).",
        rich_help_panel="Options",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"genaudit {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="genaudit",
    cls=RootGroup,
    help="Audit trained PyTorch generators for independent mechanisms: spectral density ratios "
    "of every (filter, activation map) pair, stretch interventions on hidden layers, and a CI "
    "gate (after Besserve et al., AAAI 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)


@app.callback()
def root(
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Audit trained PyTorch generators for independent mechanisms."""
    STATE.debug = debug
    STATE.quiet = quiet


def command(name: str, *, help: str | None = None) -> Callable[[F], F]:
    """Register a command (listed in :data:`COMMANDS`) with sectioned help,
    ``--debug``/``--quiet`` and error mapping; ``help`` defaults to the function's docstring."""
    if name not in COMMANDS:
        raise ValueError(f"command {name!r} is not listed in COMMANDS")

    def decorate(fn: F) -> F:
        _REGISTERED[name] = (_with_general_options(handle_errors(fn)), help)
        return fn

    return decorate


def _with_general_options(fn: F) -> F:
    """Add ``--debug`` and ``--quiet`` after the command too (they also work before it)."""
    sig = inspect.signature(fn, eval_str=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter("debug", keyword, default=False, annotation=DebugOpt),
        inspect.Parameter("quiet", keyword, default=False, annotation=QuietOpt),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, quiet: bool = False, **kwargs: Any) -> Any:
        STATE.debug = STATE.debug or debug
        STATE.quiet = STATE.quiet or quiet
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*sig.parameters.values(), *extra]
    )
    return wrapper  # type: ignore[return-value]


def handle_errors(fn: F) -> F:
    """Map library errors to a one- or two-line message on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click_exception_class()):
            raise
        except GenauditError as exc:
            if STATE.debug:
                raise
            print_error(exc.lines())
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            # in-process runs (tests); the script's SIGINT handler raises ``Interrupted`` instead
            _stderr_line("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except Exception as exc:
            # an error that follows a Ctrl-C some library swallowed is the interruption
            raise_if_interrupted()
            if STATE.debug:
                raise
            first = first_line(exc)
            print_error(
                [
                    f"{type(exc).__name__}: {first}",
                    "rerun with --debug for the traceback, and please report it",
                ],
                prefix="internal error",
            )
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper  # type: ignore[return-value]


def print_error(lines: Iterable[str], prefix: str = "error", head: str = "") -> None:
    """``error: what is wrong`` and ``hint: what to do`` on stderr (plain text: no Rich
    console is needed, or imported, to report a usage error)."""
    for k, line in enumerate(lines):
        _stderr_line(f"{prefix}: {head}{line}" if k == 0 else f"hint: {line}")


def _stderr_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    """Tables on stdout: the terminal's width (or ``COLUMNS``), 120 columns when piped. A
    failing stdout (a full device, a closed pipe) is ``cannot write standard output`` (exit 3)."""
    from rich.console import Console

    probe = Console()
    width = probe.width if probe.is_terminal or "COLUMNS" in os.environ else 120
    return Console(highlight=False, width=width, file=GuardedStdout())  # type: ignore[arg-type]


class GuardedStdout:
    """The current ``sys.stdout``, whose write failures are ``OutputError`` (exit 3) rather
    than an internal error (see :func:`write_stdout`)."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except OSError as exc:
            raise _stdout_failed(exc) from None

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except OSError as exc:
            raise _stdout_failed(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(sys.stdout, name)


def _stdout_failed(exc: OSError) -> Exception:
    from ..files import cannot_write

    _silence_stdout()
    return cannot_write("-", exc)


def note(text: str) -> None:
    """A note on stderr, unless ``--quiet``."""
    if not STATE.quiet:
        _stderr_line(f"note: {text}")


def warning(text: str) -> None:
    """A warning on stderr, even with ``--quiet``."""
    _stderr_line(f"WARNING: {text}")


# Outputs that may go to stdout with "-"; the others need a file name.
_STREAMABLE = ("json", "csv", "junit")


def check_outputs(**targets: str | None) -> None:
    """Refuse (exit 2), before any work, output options that cannot be written: two of them on
    stdout, ``-`` where a file is needed, two naming one file, an unwritable or odd place (see
    :func:`~genaudit.report.export.check_destination`), a picture format that cannot be
    written, or ``--plot`` without matplotlib. Keys are option names (``write_baseline``)."""
    from ..report.export import (
        GRID_SUFFIXES,
        PLOT_SUFFIXES,
        check_destination,
        check_suffix,
        difference_path,
    )

    flags = {name: "--" + name.replace("_", "-") for name in targets}
    to_stdout = [flags[name] for name, target in targets.items() if target == "-"]
    if len(to_stdout) > 1:
        raise UsageError(f"only one of {' and '.join(to_stdout)} can write to stdout (-)")
    files: dict[str, str] = {}  # where each file goes → the flag that writes it
    for name, target in targets.items():
        if target == "-" and name not in _STREAMABLE:
            raise UsageError(f"{flags[name]} needs a file name, not -")
        check_destination(target, flags[name])
        if not target or target == "-":
            continue
        paths = [target, str(difference_path(target))] if name == "grid" else [target]
        for path in paths:
            if path != target:
                check_destination(path, flags[name])
            key = os.path.realpath(path)
            if key in files and os.path.exists(key) and not _is_regular(key):
                continue  # e.g. /dev/null twice
            if key in files:
                raise UsageError(f"{files[key]} and {flags[name]} both write {path}")
            files[key] = flags[name]
    check_suffix(targets.get("grid"), "--grid", GRID_SUFFIXES)
    check_suffix(targets.get("plot"), "--plot", PLOT_SUFFIXES)
    if targets.get("plot"):
        from ..report.plots import require_matplotlib

        require_matplotlib()


def _is_regular(path: str) -> bool:
    import stat

    return stat.S_ISREG(os.stat(path).st_mode)


def write_stdout(data: bytes) -> None:
    """Write ``data`` to standard output and flush it: the writer of ``-`` outputs.

    A failure (a full device, a closed pipe) is an ``OutputError`` (exit 3); standard output is
    then pointed at the null device, so that nothing more fails on the way out.
    """
    try:
        sys.stdout.flush()  # what was printed before comes first
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:  # a text-only stream (some test harnesses)
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
    except OSError as exc:
        raise _stdout_failed(exc) from None


def _silence_stdout() -> None:
    """Point standard output's file descriptor at the null device (after a write to it failed,
    its buffered rest would fail again when the interpreter flushes it on exit)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


@contextlib.contextmanager
def outputs() -> Iterator[OutputSet]:
    """The outputs of a command, all or nothing: ``with outputs() as out: out.add(target,
    text)`` (``-``: standard output). Files are staged beside their targets and renamed into
    place when the block ends without an error; on an error (or Ctrl-C) every temporary is
    removed and no file is changed. Standard output is written after every file's temporary
    is complete and before the renames: a full disk leaves stdout empty, and a stdout that
    fails (a closed pipe, a full device) leaves every file unchanged (see
    :mod:`genaudit.files`). Write failures are ``cannot write FILE: REASON`` (exit 3)."""
    from ..files import staged_outputs

    with staged_outputs(stdout=write_stdout) as out:
        yield out
        raise_if_interrupted()  # before any output


def emit(target: str, text: str) -> None:
    """Write one output, ``text``, to ``target`` all or nothing; ``-`` means standard output.
    Commands with several outputs stage them together with :func:`outputs`."""
    raise_if_interrupted()
    with outputs() as out:
        out.add(target, text)

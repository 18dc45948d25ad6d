"""Options shared by several commands, declared once and grouped in the help.

A command names the groups it takes (``with_options(MODEL, INPUTS, RUN)``); each group becomes
one frozen dataclass argument of the command (``load: LoadFlags`` …), so no command repeats the
twenty options, and a misspelled name is an error at import, never a silent ``None``. The same
group can be added twice with a prefix (``compare``: ``--decoder-arch`` and ``--encoder-arch``).
Values are checked here, without torch, so that a bad value fails before anything is loaded.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from ..errors import UsageError
from ..values import MAX_SEED, check_device, parse_json_kwargs, parse_shape

F = TypeVar("F", bound=Callable[..., Any])


class ZDist(str, Enum):
    normal = "normal"
    uniform = "uniform"


class LabelFormat(str, Enum):
    int = "int"
    onehot = "onehot"


class Axis(str, Enum):
    horizontal = "horizontal"
    vertical = "vertical"
    depth = "depth"
    both = "both"


class TransformName(str, Enum):
    stretch = "stretch"
    shift = "shift"


def _value(x: Any) -> Any:
    return x.value if isinstance(x, Enum) else x


def _bad(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Turn a ``UsageError`` of a value check into Click's usage message (exit 2)."""

    @functools.wraps(fn)
    def callback(value: Any) -> Any:
        if value is None:
            return None
        try:
            return fn(value)
        except UsageError as exc:
            raise typer.BadParameter(exc.message) from None

    return callback


@_bad
def _check_shape(value: str) -> str:
    parse_shape(value)
    return value


@_bad
def _check_kwargs(value: str) -> str:
    if not value.startswith("@"):
        parse_json_kwargs(value)
    return value


@_bad
def _check_limits(value: list[str]) -> list[str]:
    from ..io.limits import parse_limit

    for text in value:
        parse_limit(text)
    return value


@_bad
def _check_select(value: str) -> str:
    if any(not part for part in value.removesuffix(".").split(".")):
        raise UsageError(f"{value!r} is not a dotted key path (e.g. generator or model.netG)")
    return value


@_bad
def _check_device(value: str) -> str:
    return check_device(value)


@_bad
def _check_seed(value: int) -> int:
    if not 0 <= value <= MAX_SEED:
        raise UsageError(f"the seed must be an integer from 0 to 2**64 - 1, got {value}")
    return value


# --------------------------------------------------------------------------- option table


@dataclass(frozen=True)
class Spec:
    """One shared option: its field, flag, type, default, help and section."""

    name: str
    type: Any
    default: Any
    help: str
    metavar: str | None = None
    flag: str | None = None  # default: --name-with-dashes
    extra: dict[str, Any] = field(default_factory=dict)

    def option(self, prefix: str, panel: str, aliases: Sequence[str] = ()) -> Any:
        flag = self.flag or "--" + self.name.replace("_", "-")
        decls = [flag.replace("--", "--" + prefix, 1), *aliases]
        info = typer.Option(
            *decls, help=self.help, metavar=self.metavar, rich_help_panel=panel, **self.extra
        )
        return Annotated[self.type, info]


@dataclass(frozen=True)
class LoadFlags:
    """How to turn the checkpoint into a model."""

    arch: str | None = None
    arch_kwargs: str | None = None
    arch_config: str | None = None
    state_key: str | None = None
    strip_prefix: str | None = None
    select: str | None = None
    module: str | None = None
    allow_global: tuple[str, ...] = ()
    trust_checkpoint: bool = False
    limit: tuple[str, ...] = ()


@dataclass(frozen=True)
class InputFlags:
    """What to feed the model."""

    latents: tuple[str, ...] = ()
    sampler: str | None = None
    z_shape: str | None = None
    z_dist: str = "normal"
    num_classes: int | None = None
    label_format: str = "int"
    inputs: str | None = None
    generator: str | None = None


@dataclass(frozen=True)
class RunFlags:
    """Sampling and device; None means 'not given' (configuration, then defaults, apply)."""

    seed: int | None = None
    device: str | None = None
    batch_size: int | None = None
    num_samples: int | None = None
    config: str | None = None


_LOAD = (
    Spec("arch", str | None, None, "Architecture: a registered name (see genaudit archs), "
         "pkg.module:Factory or path/to/file.py:Factory.", "NAME|MODULE:FACTORY"),
    Spec("arch_kwargs", str | None, None, "Keyword arguments for the architecture: a JSON "
         "object, or @FILE.json.", "JSON", extra={"callback": _check_kwargs}),
    Spec("arch_config", str | None, None, "JSON file of one configuration object, passed as "
         "Factory(config) (config.key and config['key'] both work).", "FILE.json"),
    Spec("state_key", str | None, None, "Dotted key of the state dict inside a nested "
         "checkpoint.", "KEY"),
    Spec("strip_prefix", str | None, None, "Keep only the weight names that start with this "
         "prefix, and remove it; the other names are ignored.", "PREFIX"),
    Spec("select", str | None, None, "Audit the weights under this key path, e.g. generator "
         "or model.netG (the same as --strip-prefix generator.).", "PATH",
         extra={"callback": _check_select}),
    Spec("module", str | None, None, "Audit this submodule (dotted path, e.g. decoder).",
         "PATH"),
    Spec("allow_global", list[str] | None, None, "Allow an inert class (e.g. "
         "argparse.Namespace) in a weights-only file. Repeatable.", "NAME"),
    Spec("trust_checkpoint", bool, False, "Load code-bearing checkpoints (pickled modules, "
         ".pt2). Code in the file WILL run."),
    Spec("limit", list[str] | None, None, "Raise a limit on what the file may make genaudit "
         "allocate: checkpoint-bytes, zip-ratio or safetensors-header-bytes, e.g. "
         "checkpoint-bytes=128G. Repeatable.", "NAME=VALUE", extra={"callback": _check_limits}),
)  # fmt: skip
_INPUTS = (
    Spec("latents", list[str] | None, None, "File of latents (.pt, .npy, .safetensors); "
         "repeat for each positional input.", "FILE"),
    Spec("sampler", str | None, None, "pkg.module:function or path/to/file.py:function, "
         "called as fn(batch_size, generator, device).", "MODULE:FUNCTION"),
    Spec("z_shape", str | None, None, "Latent shape without the batch dimension, e.g. 100 or "
         "100,1,1.", "SHAPE", extra={"callback": _check_shape}),
    Spec("z_dist", ZDist, ZDist.normal, "Latent distribution (uniform: on [-1, 1])."),
    Spec("num_classes", int | None, None, "Conditional generator: number of classes (labels "
         "are the second input).", "INT", extra={"min": 1}),
    Spec("label_format", LabelFormat, LabelFormat.int, "Labels as int indices or onehot "
         "vectors."),
    Spec("inputs", str | None, None, "File of data samples, for encoders and "
         "discriminators.", "FILE"),
    Spec("generator", str | None, None, "For encoders and discriminators: feed the outputs "
         "of this generator checkpoint.", "MODEL"),
)  # fmt: skip
_RUN = (
    Spec("seed", int | None, None, "Seed of the private random generator (default: 0).",
         "INT", extra={"callback": _check_seed}),
    Spec("device", str | None, None, "auto, cpu, cuda or cuda:N (default: auto).", "DEVICE",
         extra={"callback": _check_device}),
    Spec("batch_size", int | None, None, "Samples per forward pass (default: 64).", "INT",
         extra={"min": 1}),
    Spec("num_samples", int | None, None, "Number of samples (default: 512).", "INT",
         extra={"min": 1}),
    Spec("config", str | None, None, "Configuration file (default: genaudit.toml, or "
         "[tool.genaudit] in pyproject.toml).", "FILE"),
)  # fmt: skip


@dataclass(frozen=True)
class Group:
    """A group of shared options, passed to the command as one dataclass argument."""

    cls: type
    specs: tuple[Spec, ...]
    panel: str
    param: str
    prefix: str = ""  # flag prefix, e.g. "decoder-"
    aliases: tuple[tuple[str, str], ...] = ()  # (field, extra flag)

    def only(self, *names: str) -> Group:
        """The same group with only these options (the others keep their defaults)."""
        unknown = set(names) - {s.name for s in self.specs}
        if unknown:
            raise ValueError(f"no such option(s): {sorted(unknown)}")
        return Group(self.cls, tuple(s for s in self.specs if s.name in names), self.panel,
                     self.param, self.prefix, self.aliases)  # fmt: skip

    def prefixed(self, prefix: str, param: str, panel: str, **aliases: str) -> Group:
        """The same options as ``--PREFIX-NAME``, e.g. ``--decoder-arch``."""
        return Group(self.cls, self.specs, panel, param, prefix + "-",
                     tuple(aliases.items()))  # fmt: skip

    def argname(self, spec: Spec) -> str:
        return self.prefix.replace("-", "_") + spec.name

    def parameters(self) -> list[inspect.Parameter]:
        alias = dict(self.aliases)
        return [
            inspect.Parameter(
                self.argname(s), inspect.Parameter.KEYWORD_ONLY, default=s.default,
                annotation=s.option(self.prefix, self.panel, [alias[s.name]] if s.name in alias
                                    else []),
            )
            for s in self.specs
        ]  # fmt: skip

    def build(self, kwargs: dict[str, Any]) -> Any:
        """Pop this group's values from ``kwargs`` into its dataclass."""
        defaults = {f.name: f.default for f in fields(self.cls)}
        values = {}
        for s in self.specs:
            v = _value(kwargs.pop(self.argname(s)))
            if isinstance(v, list | tuple):
                v = tuple(v)
            elif v is None and isinstance(defaults[s.name], tuple):
                v = ()  # a repeatable option not given
            values[s.name] = v
        return self.cls(**values)


MODEL = Group(LoadFlags, _LOAD, "Model", "load")
INPUTS = Group(InputFlags, _INPUTS, "Inputs", "inputs")
RUN = Group(RunFlags, _RUN, "Run", "run")


def with_options(*groups: Group) -> Callable[[F], F]:
    """Add the groups' options to a command; it receives one dataclass per group."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        taken = {g.param for g in groups}
        missing = taken - set(sig.parameters)
        if missing:
            raise TypeError(f"{fn.__name__} lacks the group parameter(s) {sorted(missing)}")
        own = [p for name, p in sig.parameters.items() if name not in taken]
        extra = [p for g in groups for p in g.parameters()]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for g in groups:
                kwargs[g.param] = g.build(kwargs)
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


# --------------------------------------------------------------------------- single options


@_bad
def _check_factor(value: float) -> float:
    from ..values import check_positive_finite

    return check_positive_finite(value, "the factor")


@_bad
def _check_tolerance(value: float) -> float:
    from ..values import check_positive_finite

    return check_positive_finite(value, "the tolerance")


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL", show_default=False,
        help="Checkpoint: .safetensors (or a sharded index), torch state dict, Lightning .ckpt …",
    ),
]  # fmt: skip
LayersOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--layers", "--layer", metavar="SELECTOR", rich_help_panel="Analysis",
        help="Layers: level names (projection, coarse, intermediate, fine, image, readout, "
        "linear), dotted names, globs or indices; repeatable or comma-separated.",
    ),
]  # fmt: skip
ToleranceOpt = Annotated[
    float | None,
    typer.Option(
        "--tolerance", metavar="FLOAT", rich_help_panel="Analysis", callback=_check_tolerance,
        help="A pair is generic when |log10 SDR| <= this (default: 0.1).",
    ),
]  # fmt: skip
FactorOpt = Annotated[
    float,
    typer.Option(
        "--factor", metavar="FLOAT", rich_help_panel="Analysis", callback=_check_factor,
        help="Stretch factor s, from 1e-6 to 1e6 (with --transform shift: the shift in "
        "pixels).",
    ),
]  # fmt: skip
JsonOpt = Annotated[
    str | None,
    typer.Option(
        "--json", metavar="FILE|-", rich_help_panel="Output",
        help="Write the JSON report to FILE, or - for stdout (then nothing else goes there).",
    ),
]  # fmt: skip
CsvOpt = Annotated[
    str | None,
    typer.Option(
        "--csv", metavar="FILE|-", rich_help_panel="Output",
        help="Write the table as tidy CSV to FILE, or - for stdout.",
    ),
]  # fmt: skip
PlotOpt = Annotated[
    str | None,
    typer.Option(
        "--plot", metavar="FILE.png", rich_help_panel="Output",
        help="Draw log10-SDR histograms to FILE (.png, .pdf or .svg; needs genaudit[plot]).",
    ),
]  # fmt: skip
AllRowsOpt = Annotated[
    bool,
    typer.Option(
        "--all-rows", rich_help_panel="Output",
        help="One table row per layer even in a large model (by default, a model of more than "
        "32 layers gets one row per role and level; --layers lists what it selects).",
    ),
]  # fmt: skip

"""Command line: parse → config → analysis → report/export → exit code. No maths here."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console

from . import __version__, zoo
from .compare import compare_results
from .config import Settings, load_settings
from .errors import ExitCode, GenauditError, UsageError
from .export import check_destination, emit, envelope, to_csv, to_json
from .layers import select_layers, walk_layers
from .model import (
    InputOptions,
    LoadedModel,
    LoadOptions,
    generated_source,
    load_model,
    make_input_source,
    parse_json_kwargs,
    parse_shape,
    resolve_device,
    trial_forward,
)
from .pictures import write_stretch_grids
from .plots import plot_comparison, plot_sdr, require_matplotlib
from .report import (
    archs_table,
    comparison_table,
    layers_table,
    levels_table,
    sdr_table,
    stretch_table,
)
from .sdr import DEFAULT_TOLERANCE, SDRResult, run_sdr
from .stretch import choose_stretch_layers, run_stretch
from .transforms import make_transform

app = typer.Typer(
    name="genaudit",
    help="Audit trained PyTorch generators for independent mechanisms (Besserve et al. 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    """Tables on stdout: the terminal's width, or 160 columns when piped (no truncation)."""
    probe = Console()
    return Console(highlight=False, width=probe.width if probe.is_terminal else 160)


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and isinstance(root.obj, dict) and root.obj.get("debug"))


def handle_errors(fn: F) -> F:
    """Map library errors to a one- or two-line message on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except GenauditError as exc:
            if _debug():
                raise
            err = stderr_console()
            lines = exc.lines()
            err.print(f"error: {lines[0]}", markup=False)
            for line in lines[1:]:
                err.print(f"hint: {line}", markup=False)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            stderr_console().print("interrupted", markup=False)
            raise typer.Exit(130) from None
        except Exception as exc:
            if _debug():
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            err = stderr_console()
            err.print(f"internal error: {type(exc).__name__}: {first}", markup=False)
            err.print(
                "hint: rerun with --debug for the traceback, and please report it", markup=False
            )
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        import torch

        typer.echo(f"genaudit {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """genaudit: spectral density ratios, stretch interventions and a CI gate for generators."""
    ctx.obj = {"debug": debug}


# --------------------------------------------------------------------------- shared options

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Checkpoint: .safetensors (or sharded index), torch state dict, Lightning .ckpt …",
        show_default=False,
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture: a registered name (see `genaudit archs`) or pkg.module:Factory.",
    ),
]
ArchKwargsOpt = Annotated[
    str | None,
    typer.Option("--arch-kwargs", help="JSON object of keyword arguments for the architecture."),
]
StateKeyOpt = Annotated[
    str | None,
    typer.Option("--state-key", help="Dotted key of the state dict inside a nested checkpoint."),
]
StripPrefixOpt = Annotated[
    str | None, typer.Option("--strip-prefix", help="Prefix to remove from every weight name.")
]
ModuleOpt = Annotated[
    str | None, typer.Option("--module", help="Audit this submodule (dotted path, e.g. decoder).")
]
AllowGlobalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-global",
        help="Allow an inert type (e.g. argparse.Namespace) in a weights-only file. Repeatable.",
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint",
        help="Load code-bearing checkpoints (pickled modules, .pt2). Code in the file WILL run.",
    ),
]
LatentsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--latents",
        help="File of latents (.pt, .npy, .safetensors); repeat for each positional input.",
    ),
]
SamplerOpt = Annotated[
    str | None,
    typer.Option(
        "--sampler", help="pkg.module:function called as fn(batch_size, generator, device)."
    ),
]
ZShapeOpt = Annotated[
    str | None, typer.Option("--z-shape", help="Latent shape without batch, e.g. 100 or 100,1,1.")
]
ZDistOpt = Annotated[
    str, typer.Option("--z-dist", help="Latent distribution: normal or uniform (on [-1, 1]).")
]
NumClassesOpt = Annotated[
    int | None,
    typer.Option(
        "--num-classes",
        help="Conditional generator: number of classes (labels are the second input).",
    ),
]
LabelFormatOpt = Annotated[
    str, typer.Option("--label-format", help="Labels as int indices or onehot vectors.")
]
GeneratorOpt = Annotated[
    str | None,
    typer.Option(
        "--generator",
        help="For encoders and discriminators: feed the outputs of this generator checkpoint "
        "(self-describing genaudit safetensors, or loaded with the same --trust-checkpoint).",
    ),
]
InputsOpt = Annotated[
    str | None,
    typer.Option("--inputs", help="File of data samples, for encoders and discriminators."),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Seed of the private random generator [default: 0].")
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N [default: auto].")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Samples per forward pass [default: 64].")
]
NumSamplesOpt = Annotated[
    int | None, typer.Option("--num-samples", help="Number of samples [default: 512].")
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="Configuration file (default: genaudit.toml or [tool.genaudit] in pyproject.toml).",
    ),
]
JsonOpt = Annotated[
    str | None,
    typer.Option(
        "--json",
        help="Write the JSON report to FILE, or - for stdout (then nothing else goes there).",
    ),
]


@dataclass(frozen=True)
class Prepared:
    """A loaded model on its device, its input source and the effective settings."""

    loaded: LoadedModel
    source: Any
    settings: Settings
    device: Any
    config: dict[str, Any]
    table: dict[str, Any]


def prepare(
    model_path: str,
    *,
    arch: str | None,
    arch_kwargs: str | None,
    state_key: str | None,
    strip_prefix: str | None,
    module: str | None,
    allow_global: list[str] | None,
    trust_checkpoint: bool | None,
    latents: list[str] | None,
    sampler: str | None,
    z_shape: str | None,
    z_dist: str | None,
    num_classes: int | None,
    label_format: str | None,
    inputs: str | None,
    generator: str | None,
    seed: int | None,
    device: str | None,
    source: Any = None,
    batch_size: int | None,
    num_samples: int | None,
    config: str | None,
) -> Prepared:
    """Everything the commands share: settings, checkpoint, model on device, confirmed inputs."""
    settings, table = load_settings(config)
    settings = settings.with_flags(
        seed=seed, device=device, batch_size=batch_size, num_samples=num_samples
    )
    dev = resolve_device(settings.device)
    load_opts = LoadOptions(
        arch=arch,
        arch_kwargs=parse_json_kwargs(arch_kwargs),
        state_key=state_key,
        strip_prefix=strip_prefix,
        module=module,
        allow_globals=tuple(allow_global or ()),
        trust_checkpoint=bool(trust_checkpoint),
    )
    loaded = load_model(model_path, load_opts)
    if loaded.trusted:
        stderr_console().print(
            f"WARNING: {model_path} was loaded with --trust-checkpoint: code stored in it has run "
            "in this process. This is recorded in the report.",
            style="bold red",
            markup=False,
        )
    model = loaded.model.to(dev)
    input_opts = InputOptions(
        latents=tuple(latents or ()),
        sampler=sampler,
        z_shape=parse_shape(z_shape),
        z_dist=z_dist or "normal",
        num_classes=num_classes,
        label_format=label_format or "int",
        inputs=inputs,
        seed=settings.seed,
    )
    if source is not None:
        pass  # given by the caller (compare: the decoder's outputs)
    elif generator is not None:
        if inputs or latents or sampler:
            raise UsageError("--generator is an alternative to --inputs, --latents and --sampler")
        gen = load_model(generator, LoadOptions(trust_checkpoint=bool(trust_checkpoint)))
        gen_model = gen.model.to(dev)
        gen_source = make_input_source(gen_model, replace(input_opts, inputs=None))
        trial_forward(gen_model, gen_source, dev)
        source = generated_source(gen_model, gen_source, dev)
        source.description["generator"] = gen.describe()
    else:
        source = make_input_source(model, input_opts)
    trial_forward(model, source, dev)
    cfg = {
        **settings.to_dict(),
        "load": {
            "arch": arch,
            "arch_kwargs": load_opts.arch_kwargs,
            "state_key": state_key,
            "strip_prefix": strip_prefix,
            "module": module,
            "allow_globals": list(load_opts.allow_globals),
            "trust_checkpoint": bool(trust_checkpoint),
        },
        "inputs": source.description,
    }
    return Prepared(loaded, source, settings, dev, cfg, table)


_COMMON = (
    "arch", "arch_kwargs", "state_key", "strip_prefix", "module", "allow_global",
    "trust_checkpoint", "latents", "sampler", "z_shape", "z_dist", "num_classes", "label_format",
    "inputs", "generator", "seed", "device", "batch_size", "num_samples", "config",
)  # fmt: skip


def _common(values: dict[str, Any]) -> dict[str, Any]:
    """The shared options of a command, from its ``locals()`` (absent ones are None)."""
    return {k: values.get(k) for k in _COMMON}


def _split(values: list[str] | None) -> list[str]:
    """Repeatable options that also accept comma-separated lists."""
    return [v.strip() for item in values or () for v in item.split(",") if v.strip()]


@app.command("layers")
@handle_errors
def layers_cmd(
    model: ModelArg,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    state_key: StateKeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    module: ModuleOpt = None,
    allow_global: AllowGlobalOpt = None,
    trust_checkpoint: TrustOpt = False,
    latents: LatentsOpt = None,
    sampler: SamplerOpt = None,
    z_shape: ZShapeOpt = None,
    z_dist: ZDistOpt = "normal",
    num_classes: NumClassesOpt = None,
    label_format: LabelFormatOpt = "int",
    inputs: InputsOpt = None,
    generator: GeneratorOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Inventory: every Linear and convolution layer in execution order, with shapes, level
    and which analysis applies."""
    check_destination(json_out, "--json")
    prep = prepare(model, **_common(locals()))
    first = next(prep.source.batches(min(2, prep.source.available or 2), 2, prep.device))
    records = walk_layers(prep.loaded.model, first, prep.settings.levels)
    if json_out:
        doc = envelope(
            "layers",
            str(prep.device),
            prep.config,
            checkpoint=prep.loaded.describe(),
            results={"layers": [r.to_dict() for r in records]},
        )
        emit(json_out, to_json(doc))
    if json_out != "-":
        title = f"{Path(model).name}: {len(records)} layers ({prep.loaded.arch})"
        stdout_console().print(layers_table(records, title=title))


@app.command("archs")
@handle_errors
def archs_cmd(
    json_out: JsonOpt = None,
) -> None:
    """The registry of standard architectures usable with --arch NAME, and their arguments."""
    check_destination(json_out, "--json")
    entries = [zoo.get(name) for name in zoo.list_architectures()]
    if json_out:
        doc = {e.name: {"summary": e.summary, "kwargs": e.defaults()} for e in entries}
        emit(json_out, to_json(doc))
    if json_out != "-":
        stdout_console().print(archs_table(entries))


LayersOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--layers",
        help="Layers to analyse: level names, dotted names, globs or indices; repeatable or "
        "comma-separated [default: all].",
    ),
]
PlotOpt = Annotated[
    str | None,
    typer.Option("--plot", help="Write log10-SDR histograms to FILE.png (needs genaudit[plot])."),
]
CsvOpt = Annotated[
    str | None, typer.Option("--csv", help="Write a tidy CSV to FILE (- for stdout).")
]


def _progress(total: int, label: str) -> Any:
    """A progress bar on stderr (silent when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = stderr_console()
    return Progress(
        f"[progress.description]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _one_stdout(*targets: str | None) -> None:
    if sum(t == "-" for t in targets) > 1:
        raise UsageError("only one of --json and --csv can write to stdout (-)")


@app.command("sdr")
@handle_errors
def sdr_cmd(
    model: ModelArg,
    layers: LayersOpt = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance", help="A pair is generic when |log10 SDR| <= this [default: 0.1]."
        ),
    ] = None,
    pairs: Annotated[
        bool, typer.Option("--pairs", help="Include every pair's SDR in the JSON.")
    ] = False,
    plot: PlotOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    state_key: StateKeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    module: ModuleOpt = None,
    allow_global: AllowGlobalOpt = None,
    trust_checkpoint: TrustOpt = False,
    latents: LatentsOpt = None,
    sampler: SamplerOpt = None,
    z_shape: ZShapeOpt = None,
    z_dist: ZDistOpt = "normal",
    num_classes: NumClassesOpt = None,
    label_format: LabelFormatOpt = "int",
    inputs: InputsOpt = None,
    generator: GeneratorOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    num_samples: NumSamplesOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
    csv_out: CsvOpt = None,
) -> None:
    """Spectral density ratio of every (filter, activation map) pair of every convolution layer,
    summarised per layer and per level; the trace method for Linear layers and 1×1 inputs."""
    from . import distributed

    _one_stdout(json_out, csv_out)
    check_destination(json_out, "--json")
    check_destination(csv_out, "--csv")
    check_destination(plot, "--plot")
    if plot:
        require_matplotlib()
    launch = distributed.launch_env()  # set by torchrun; None for a single process
    if launch is not None:
        distributed.bind_local_device(launch)  # before loading: "cuda" is cuda:LOCAL_RANK
    prep = prepare(model, **_common(locals()))
    tol = sdr_tolerance(prep.table, tolerance)
    if prep.source.description["kind"] == "probe":
        raise UsageError(
            f"{Path(model).name} is fed data ({prep.loaded.arch}), and no data was given",
            "pass --inputs FILE with samples of shape "
            + "×".join(map(str, prep.source.description["shape"])),
        )
    first = next(prep.source.batches(min(2, prep.source.available or 2), 2, prep.device))
    records = walk_layers(prep.loaded.model, first, prep.settings.levels)
    chosen = select_layers(records, _split(layers))
    n = _sample_count(prep, num_samples)
    with distributed.process_group(launch, prep.device) as group:
        sdr_args = {"num_samples": n, "batch_size": prep.settings.batch_size,
                    "device": prep.device, "tolerance": tol, "group": group}  # fmt: skip
        if group is not None and not group.is_main:
            # the other ranks share the work, then stay silent: rank 0 writes every output
            run_sdr(prep.loaded.model, chosen, prep.source, **sdr_args)
            return
        with _progress(n, "sampling") as bar:
            task = bar.add_task("sampling", total=n)
            result = run_sdr(
                prep.loaded.model, chosen, prep.source, **sdr_args,
                progress=lambda k: bar.advance(task, k),
            )  # fmt: skip
    if result.oom_halvings:
        stderr_console().print(
            f"note: out of memory on {prep.device} at batch size {result.batch_size}: halved "
            f"{result.oom_halvings} time(s), continued with batch size "
            f"{result.batch_size_final} from the same sample",
            markup=False,
        )
    config_doc = {**prep.config, "num_samples": n, "layers": _split(layers) or ["all"],
                  "tolerance": tol, "pairs": pairs}  # fmt: skip
    if json_out:
        doc = envelope(
            "sdr", str(prep.device), config_doc, checkpoint=prep.loaded.describe(),
            results=result.to_dict(pairs=pairs),
        )  # fmt: skip
        emit(json_out, to_json(doc))
    if csv_out:
        emit(csv_out, to_csv(SDRResult.CSV_HEADER, result.csv_rows()))
    if plot:
        plot_sdr(result, plot, title=f"{Path(model).name}: log10 SDR per layer ({n} samples)")
    if "-" not in (json_out, csv_out):
        out = stdout_console()
        title = (
            f"{Path(model).name}: SDR per layer, {n} samples. mean, SD, percentiles and histogram "
            f"are of log10 SDR; generic: |log10 SDR| ≤ {tol:g}"
        )
        out.print(sdr_table(result, title=title))
        out.print()
        out.print(levels_table(result, title="per level (pairs of all its layers pooled)"))


def sdr_tolerance(table: dict[str, Any], flag: float | None) -> float:
    """The genericity tolerance: flag, else ``[sdr] tolerance`` in the configuration, else 0.1."""
    value = flag
    if value is None:
        section = table.get("sdr", {})
        if not isinstance(section, dict):
            raise UsageError("[sdr] in the configuration must be a table")
        unknown = sorted(set(section) - {"tolerance"})
        if unknown:
            raise UsageError(
                f"unknown key(s) in [sdr]: {', '.join(unknown)}", "valid keys: tolerance"
            )
        value = section.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(f"the SDR tolerance must be a positive number (got {value!r})")
    return float(value)


@app.command("stretch")
@handle_errors
def stretch_cmd(
    model: ModelArg,
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            help="Where to intervene: a level (the last conv of it that runs), a dotted name, a "
            "glob or an index; repeatable or comma-separated "
            "[default: every hidden level and image].",
        ),
    ] = None,
    factor: Annotated[
        float,
        typer.Option(
            "--factor", help="Stretch factor s (the shift in pixels with --transform shift)."
        ),
    ] = 1.5,
    axis: Annotated[
        str, typer.Option("--axis", help="horizontal (last axis), vertical, depth (3-D) or both.")
    ] = "horizontal",
    transform: Annotated[
        str, typer.Option("--transform", help="Intervention: stretch, or shift (a sanity check).")
    ] = "stretch",
    grid: Annotated[
        str | None,
        typer.Option(
            "--grid", help="Write the sample grid to FILE.png and differences to FILE_diff.png."
        ),
    ] = None,
    grid_samples: Annotated[
        int, typer.Option("--grid-samples", help="Columns of the picture grid.")
    ] = 8,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    state_key: StateKeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    module: ModuleOpt = None,
    allow_global: AllowGlobalOpt = None,
    trust_checkpoint: TrustOpt = False,
    latents: LatentsOpt = None,
    sampler: SamplerOpt = None,
    z_shape: ZShapeOpt = None,
    z_dist: ZDistOpt = "normal",
    num_classes: NumClassesOpt = None,
    label_format: LabelFormatOpt = "int",
    inputs: InputsOpt = None,
    generator: GeneratorOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    num_samples: NumSamplesOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
    csv_out: CsvOpt = None,
) -> None:
    """Stretch the activation maps of hidden layers and compare with stretching the output
    (mse, do-nothing baseline, rel_mse = mse / baseline; DESIGN §5)."""
    _one_stdout(json_out, csv_out)
    check_destination(json_out, "--json")
    check_destination(csv_out, "--csv")
    check_destination(grid, "--grid")
    if grid is not None and grid == "-":
        raise UsageError("--grid needs a file name (PNG), not -")
    if grid_samples < 1:
        raise UsageError("--grid-samples must be at least 1")
    op = make_transform(transform, factor, axis)
    prep = prepare(model, **_common(locals()))
    first = next(prep.source.batches(min(2, prep.source.available or 2), 2, prep.device))
    records = walk_layers(prep.loaded.model, first, prep.settings.levels)
    chosen = choose_stretch_layers(records, _split(layer))
    n = _sample_count(prep, num_samples)
    result = run_stretch(
        prep.loaded.model, records, chosen, prep.source, transform=op, num_samples=n,
        batch_size=prep.settings.batch_size, device=prep.device,
        keep_samples=grid_samples if grid else 0,
    )  # fmt: skip
    written: tuple[Path, ...] = ()
    if grid:
        written = write_stretch_grids(result, grid)
    config_doc = {**prep.config, "num_samples": n, "layers": _split(layer) or ["default"],
                  "transform": op.to_dict(), "grid": grid}  # fmt: skip
    if json_out:
        doc = envelope(
            "stretch", str(prep.device), config_doc, checkpoint=prep.loaded.describe(),
            results=result.to_dict(),
        )  # fmt: skip
        emit(json_out, to_json(doc))
    if csv_out:
        emit(csv_out, to_csv(*result.csv_rows()))
    if "-" not in (json_out, csv_out):
        out = stdout_console()
        title = f"{Path(model).name}: {op.describe()} at hidden layers vs. the output, {n} samples"
        out.print(stretch_table(result, title=title))
        for path in written:
            out.print(f"wrote {path}", markup=False)
    for note in result.notes:
        stderr_console().print(f"note: {note}", markup=False)


def _sample_count(prep: Prepared, flag: int | None) -> int:
    """--num-samples, else the configured default capped by what input files hold."""
    n = prep.settings.num_samples
    if prep.source.available is not None and flag is None:
        n = min(n, prep.source.available)
    return n


@app.command("compare")
@handle_errors
def compare_cmd(
    decoder: Annotated[
        str, typer.Argument(metavar="DECODER", help="Generator / decoder checkpoint.")
    ],
    encoder: Annotated[
        str, typer.Argument(metavar="ENCODER", help="Encoder (or discriminator) checkpoint.")
    ],
    decoder_module: Annotated[
        str | None, typer.Option("--decoder-module", help="Submodule of DECODER to audit.")
    ] = None,
    encoder_module: Annotated[
        str | None, typer.Option("--encoder-module", help="Submodule of ENCODER to audit.")
    ] = None,
    decoder_arch: Annotated[
        str | None,
        typer.Option("--decoder-arch", help="Architecture of DECODER (when not recorded in it)."),
    ] = None,
    encoder_arch: Annotated[
        str | None,
        typer.Option("--encoder-arch", help="Architecture of ENCODER (when not recorded in it)."),
    ] = None,
    decoder_arch_kwargs: Annotated[
        str | None,
        typer.Option("--decoder-arch-kwargs", help="JSON keyword arguments for --decoder-arch."),
    ] = None,
    encoder_arch_kwargs: Annotated[
        str | None,
        typer.Option("--encoder-arch-kwargs", help="JSON keyword arguments for --encoder-arch."),
    ] = None,
    inputs: Annotated[
        str | None,
        typer.Option("--inputs", help="Data for the encoder [default: the decoder's outputs]."),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option("--tolerance", help="Generic when |log10 SDR| <= this [default: 0.1]."),
    ] = None,
    plot: PlotOpt = None,
    trust_checkpoint: TrustOpt = False,
    z_shape: ZShapeOpt = None,
    z_dist: ZDistOpt = "normal",
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    num_samples: NumSamplesOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Decoder versus encoder (paper Sec. 4.2): log10-SDR distributions of mirrored layers side
    by side, with two-sample tests. The encoder is fed the decoder's outputs unless --inputs."""
    check_destination(json_out, "--json")
    check_destination(plot, "--plot")
    if plot:
        require_matplotlib()
    shared = {**_common(locals()), "generator": None, "inputs": None}
    dec_opts = {"arch": decoder_arch, "arch_kwargs": decoder_arch_kwargs, "module": decoder_module}
    dec = prepare(decoder, **{**shared, **dec_opts})
    # the encoder sees data (--inputs) or, by default, the decoder's own outputs
    fed = None if inputs else generated_source(dec.loaded.model, dec.source, dec.device)
    enc_opts = {"arch": encoder_arch, "arch_kwargs": encoder_arch_kwargs, "module": encoder_module,
                "inputs": inputs, "z_shape": None, "source": fed}  # fmt: skip
    enc = prepare(encoder, **{**shared, **enc_opts})
    tol = sdr_tolerance(dec.table, tolerance)
    results = []
    for prep, _name in ((dec, decoder), (enc, encoder)):
        first = next(prep.source.batches(min(2, prep.source.available or 2), 2, prep.device))
        records = walk_layers(prep.loaded.model, first, prep.settings.levels)
        n = _sample_count(prep, num_samples)
        results.append(
            run_sdr(prep.loaded.model, records, prep.source, num_samples=n,
                    batch_size=prep.settings.batch_size, device=prep.device, tolerance=tol)
        )  # fmt: skip
    comparison = compare_results(results[0], results[1])
    if plot:
        plot_comparison(comparison, plot, title=f"{Path(decoder).name} vs {Path(encoder).name}")
    if json_out:
        doc = envelope(
            "compare", str(dec.device),
            {"decoder": dec.config, "encoder": enc.config, "tolerance": tol},
            checkpoint={"decoder": dec.loaded.describe(), "encoder": enc.loaded.describe()},
            results={"comparison": comparison.to_dict(), "decoder": results[0].to_dict(),
                     "encoder": results[1].to_dict()},
        )  # fmt: skip
        emit(json_out, to_json(doc))
    if json_out != "-":
        title = (f"decoder {Path(decoder).name} vs encoder {Path(encoder).name}: log10 SDR of "
                 "mirrored layers")  # fmt: skip
        stdout_console().print(comparison_table(comparison, title=title))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``genaudit`` script and ``python -m genaudit``."""
    app(args=argv, prog_name="genaudit")


from . import cli_check  # noqa: E402, F401  (registers the check command)

if __name__ == "__main__":  # pragma: no cover
    main()

"""What the commands share once they run: checkpoint → model on its device → confirmed inputs.

Imported by a command when it runs (it imports torch through the model loader).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..config import Settings, load_settings
from ..errors import UsageError
from ..io.limits import parse_limit
from ..model.inputs import (
    InputOptions,
    InputSource,
    feeding,
    generated_source,
    make_input_source,
    trial_forward,
)
from ..model.layers import LayerRecord, walk_layers
from ..model.loading import LoadedModel, LoadOptions, load_model, resolve_device
from ..model.user_code import read_arch_config
from ..values import parse_json_kwargs, parse_shape
from . import raise_if_interrupted
from .options import InputFlags, LoadFlags, RunFlags
from .root import STATE, note, stderr_console, warning


@dataclass(frozen=True)
class AuditRun:
    """One command's audit: the checkpoint loaded into a model on its device, the inputs it is
    fed (confirmed by a trial forward pass), the effective settings, and the layer walk."""

    loaded: LoadedModel
    source: InputSource
    settings: Settings
    device: torch.device
    config: dict[str, Any]
    table: dict[str, Any]

    def first_records(self) -> list[LayerRecord]:
        """The audited layers, from a dry run on the first two inputs."""
        first = self.source.first_batch(self.device)
        return walk_layers(self.loaded.model, first, self.settings.levels)

    def sample_count(self, flag: int | None) -> int:
        """``--num-samples``, else the configured default capped by what input files hold."""
        n = self.settings.num_samples
        if self.source.available is not None and flag is None:
            n = min(n, self.source.available)
        return n

    def require_data(self, model_path: str) -> None:
        """Data-fed models (encoders, discriminators) need samples, not probe noise."""
        if self.source.description["kind"] == "probe":
            shape = "×".join(map(str, self.source.description["shape"]))
            raise UsageError(
                f"{Path(model_path).name} is fed data ({self.loaded.arch}), and no data was given",
                f"pass --inputs FILE with samples of shape {shape}, or --generator MODEL",
            )


def read_kwargs(text: str | None, what: str) -> dict[str, Any]:
    """``--arch-kwargs``: a JSON object, or ``@FILE`` holding one."""
    if text is not None and text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{what} {path}: cannot read it ({exc.__class__.__name__})") from None
        return parse_json_kwargs(text, f"{what} {path}")
    return parse_json_kwargs(text, what)


def weights_line(loaded: LoadedModel) -> str:
    """Which weights were loaded, when a key prefix was removed or keys were ignored."""
    where = "the top level" if not loaded.state_key else loaded.state_key
    ignored = f" ({loaded.ignored_keys} other keys ignored)" if loaded.ignored_keys else ""
    return f"weights: {where}, keys under {loaded.key_prefix}{ignored}"


def load_settings_for(run: RunFlags) -> tuple[Settings, dict[str, Any]]:
    """Configuration file (or ``--config``) under the command-line flags."""
    settings, table = load_settings(run.config)
    settings = settings.with_flags(
        seed=run.seed, device=run.device, batch_size=run.batch_size, num_samples=run.num_samples
    )
    return settings, table


def open_audit(
    model_path: str,
    load: LoadFlags,
    inputs: InputFlags,
    run: RunFlags,
    *,
    source: InputSource | None = None,
    flag_prefix: str = "",
) -> AuditRun:
    """Settings, checkpoint, model on its device and inputs confirmed by a trial forward pass.

    ``source`` overrides the inputs (compare feeds the encoder the decoder's outputs).
    """
    settings, table = load_settings_for(run)
    dev = resolve_device(settings.device)
    load_opts = LoadOptions(
        arch=load.arch,
        arch_kwargs=read_kwargs(load.arch_kwargs, f"--{flag_prefix}arch-kwargs"),
        arch_config=None
        if load.arch_config is None
        else read_arch_config(load.arch_config, f"--{flag_prefix}arch-config"),
        state_key=load.state_key,
        strip_prefix=load.strip_prefix,
        select=load.select,
        module=load.module,
        allow_globals=load.allow_global,
        trust_checkpoint=load.trust_checkpoint,
        limits=tuple(parse_limit(text) for text in load.limit),
    )
    if load.trust_checkpoint:
        warning(
            f"--{flag_prefix}trust-checkpoint: code stored in {model_path} may run in this "
            "process when it is loaded. This is recorded in the report."
        )
    if load.allow_global:
        warning(
            f"--{flag_prefix}allow-global {', '.join(load.allow_global)}: the weights-only loader "
            f"may construct these classes from {model_path}. This is recorded in the report."
        )
    loaded = load_model(model_path, load_opts)
    if loaded.key_prefix or loaded.ignored_keys:
        note(weights_line(loaded))
    model = loaded.model.to(dev)
    input_opts = InputOptions(
        latents=inputs.latents,
        sampler=inputs.sampler,
        z_shape=parse_shape(inputs.z_shape, f"--{flag_prefix}z-shape"),
        z_dist=inputs.z_dist,
        num_classes=inputs.num_classes,
        label_format=inputs.label_format,
        inputs=inputs.inputs,
        seed=settings.seed,
    )
    if source is not None:
        pass
    elif inputs.generator is not None:
        if inputs.inputs or inputs.latents or inputs.sampler:
            raise UsageError(
                f"--{flag_prefix}generator is an alternative to --{flag_prefix}inputs, "
                f"--{flag_prefix}latents and --{flag_prefix}sampler"
            )
        gen = load_model(
            inputs.generator,
            LoadOptions(trust_checkpoint=load.trust_checkpoint, limits=load_opts.limits),
        )
        gen_model = gen.model.to(dev)
        gen_source = make_input_source(gen_model, replace(input_opts, inputs=None))
        trial_forward(gen_model, gen_source, dev)
        source = generated_source(gen_model, gen_source, dev)
        source.description["generator"] = gen.describe()
    else:
        source = make_input_source(model, input_opts)
    source = feeding(model, source)
    trial_forward(model, source, dev)
    cfg = {
        **settings.to_dict(),
        "load": {
            "arch": load.arch,
            "arch_kwargs": load_opts.arch_kwargs,
            "arch_config": load.arch_config,
            "state_key": load.state_key,
            "strip_prefix": load.strip_prefix,
            "select": load.select,
            "module": load.module,
            "allow_globals": list(load_opts.allow_globals),
            "trust_checkpoint": load.trust_checkpoint,
            "limits": dict(load_opts.limits),
        },
        "inputs": source.description,
    }
    return AuditRun(loaded, source, settings, dev, cfg, table)


@contextmanager
def progress(label: str, total: int) -> Iterator[Any]:
    """A progress bar on stderr; yields ``advance(k)``. Silent when stderr is not a terminal
    or with ``--quiet``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = stderr_console()
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=STATE.quiet or not console.is_terminal,
    )
    with bar:
        task = bar.add_task(label, total=total)

        def advance(k: int) -> None:
            raise_if_interrupted()
            bar.advance(task, k)

        yield advance

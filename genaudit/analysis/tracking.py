"""Genericity over training: per-level SDR and stretch metrics of snapshots or of a live model.

:func:`measure` runs the SDR analysis and the stretch interventions on one state of a model and
keeps, per level, the median SDR, the SD of log10 SDR, the generic fraction and the rel_mse of
the level's stretch layer (``genaudit track`` reports these for a series of checkpoints).
:class:`Tracker` does the same inside a training loop, every N steps, on inputs drawn once::

    tracker = Tracker(generator, torch.randn(256, 100, 1, 1), every=500, log=wandb.log_dict)
    for step, batch in enumerate(loader):
        ...  # one optimisation step
        tracker.step(step)
    tracker.to_pandas()

:func:`lightning_callback` wraps a Tracker in a Lightning ``Callback`` (Lightning is optional).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import api
from ..config import DEFAULT_TOLERANCE, Settings
from ..errors import UsageError, option
from ..model.inputs import InputSource
from .frames import data_frame
from .sdr import LayerSDR, LevelSDR, SDRResult
from .stretch import StretchResult

__all__ = ["TRACK_CSV_HEADER", "TrackPoint", "Tracker", "lightning_callback", "measure"]

_DEFAULTS = Settings()
NAN = math.nan
#: Samples a Tracker measures by default: fewer than the command line's 512, since it runs often.
TRACKER_SAMPLES = 256

#: One row per (snapshot, level) of ``genaudit track --csv`` and :meth:`Tracker.to_rows`.
TRACK_CSV_HEADER = (
    "step", "snapshot", "level", "median_sdr", "sd_log10_sdr", "generic_fraction",
    "stretch_layer", "stretch_rel_mse",
)  # fmt: skip
#: The numbers a level has at every point, in the order of the tables and plots.
LEVEL_METRICS = ("median_sdr", "sd_log10_sdr", "generic_fraction", "stretch_rel_mse")
#: The short names of :data:`LEVEL_METRICS` in the flat keys given to a log callback.
LOG_NAMES = {
    "median_sdr": "sdr/{level}/median",
    "sd_log10_sdr": "sdr/{level}/sd_log10",
    "generic_fraction": "sdr/{level}/generic",
    "stretch_rel_mse": "stretch/{level}/rel_mse",
}


@dataclass(frozen=True)
class TrackPoint:
    """The metrics of one state of the model: ``levels`` maps a level to its numbers (keys of
    :data:`LEVEL_METRICS`, plus ``layers`` and ``stretch_layer``); ``layers`` maps a layer's
    name to its own (level, median SDR, SD and generic fraction of log10 SDR, trace ratio,
    stretch rel_mse)."""

    step: int
    levels: dict[str, dict[str, Any]]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshot: str = ""

    def flat(self) -> dict[str, float]:
        """The level metrics under flat keys (``sdr/fine/median``, ``sdr/fine/sd_log10``,
        ``sdr/fine/generic``, ``stretch/fine/rel_mse``), what a metrics logger takes; NaN
        (a statistic that does not apply) is left out."""
        out: dict[str, float] = {}
        for level, metrics in self.levels.items():
            for name, key in LOG_NAMES.items():
                value = metrics.get(name, NAN)
                if isinstance(value, float) and math.isfinite(value):
                    out[key.format(level=level)] = value
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One tidy row per level (the columns of :data:`TRACK_CSV_HEADER`)."""
        return [
            {"step": self.step, "snapshot": self.snapshot, "level": level,
             **{name: m.get(name, NAN) for name in LEVEL_METRICS[:3]},
             "stretch_layer": m.get("stretch_layer") or "",
             "stretch_rel_mse": m.get("stretch_rel_mse", NAN)}
            for level, m in self.levels.items()
        ]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "levels": self.levels, "layers": self.layers}


def _level_numbers(level: LevelSDR) -> dict[str, Any]:
    s = level.summary
    if s is not None:
        return {"median_sdr": s.median_sdr, "sd_log10_sdr": s.sd_log10,
                "generic_fraction": s.generic_fraction, "pairs": s.defined}  # fmt: skip
    ratios = [r for r in level.trace_ratios if r is not None and math.isfinite(r)]
    # a level of trace-method layers only: its ratio in the median's place, as the tables do
    median = float(np.median(ratios)) if ratios else NAN
    return {"median_sdr": median, "sd_log10_sdr": NAN, "generic_fraction": NAN, "pairs": 0}


def _layer_numbers(layer: LayerSDR) -> dict[str, Any]:
    s = layer.summary
    return {
        "level": layer.record.level,
        "analysis": layer.analysis,
        "median_sdr": s.median_sdr if s else NAN,
        "sd_log10_sdr": s.sd_log10 if s else NAN,
        "generic_fraction": s.generic_fraction if s else NAN,
        "trace_ratio": NAN if layer.ratio is None else float(layer.ratio),
    }


def summarise(
    sdr: SDRResult, stretch: StretchResult | None, step: int = 0, snapshot: str = ""
) -> TrackPoint:
    """Per-level and per-layer metrics of one SDR result and (optionally) one stretch result."""
    levels: dict[str, dict[str, Any]] = {}
    for level in sdr.levels:
        levels[level.level] = {**_level_numbers(level), "layers": list(level.layers),
                               "stretch_layer": None, "stretch_rel_mse": NAN}  # fmt: skip
    layers = {layer.record.name: _layer_numbers(layer) for layer in sdr.layers}
    for r in stretch.layers if stretch is not None else ():
        entry = levels.setdefault(
            r.level, {"median_sdr": NAN, "sd_log10_sdr": NAN, "generic_fraction": NAN,
                      "pairs": 0, "layers": []},
        )  # fmt: skip
        entry["stretch_layer"], entry["stretch_rel_mse"] = r.name, r.rel_mse
        layers.setdefault(r.name, {"level": r.level})["stretch_rel_mse"] = r.rel_mse
    for numbers in layers.values():
        numbers.setdefault("stretch_rel_mse", NAN)
    return TrackPoint(step, levels, layers, snapshot)


def measure(
    model: nn.Module,
    inputs: api.Inputs,
    *,
    step: int = 0,
    snapshot: str = "",
    levels: Sequence[str] | None = None,
    stretch: bool = True,
    factor: float = 1.5,
    num_samples: int | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    device: str | torch.device | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    level_overrides: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> TrackPoint:
    """SDR and (unless ``stretch`` is False) stretch metrics of ``model``, per level and layer.

    Parameters
    ----------
    model : nn.Module
        The model as it is now; it is left as it was (see :mod:`genaudit.api`).
    inputs
        Its inputs (see :func:`genaudit.api.as_source`).
    step, snapshot
        Recorded in the point: the training step and the checkpoint's name.
    levels : sequence of str, optional
        Only these levels (default: every level).
    stretch, factor
        Whether to run the stretch interventions (the default layers: the last convolution of
        each level), and the stretch factor.
    num_samples, batch_size, device, tolerance, level_overrides, progress
        As for :func:`genaudit.api.sdr`; ``progress`` is called for both analyses.

    Returns
    -------
    TrackPoint
    """
    chosen = list(levels) if levels else None
    common: dict[str, Any] = {
        "num_samples": num_samples, "batch_size": batch_size, "device": device,
        "level_overrides": level_overrides, "progress": progress,
    }  # fmt: skip
    sdr = api.sdr(model, inputs, layers=chosen, tolerance=tolerance, **common)
    stretched = (
        api.stretch(model, inputs, layers=chosen, factor=factor, **common) if stretch else None
    )
    return summarise(sdr, stretched, step, snapshot)


def _fixed(inputs: api.Inputs, seed: int, num_samples: int | None) -> tuple[InputSource, int]:
    """The inputs drawn once, as tensors on the CPU, and how many samples they hold."""
    source = api.as_source(inputs, seed=seed, num_samples=num_samples)
    n = num_samples or min(source.available or TRACKER_SAMPLES, TRACKER_SAMPLES)
    if source.available is not None and n > source.available:
        raise UsageError(
            f"{n} samples asked for, but the inputs hold {source.available}",
            f"pass {option('num_samples')} {source.available} or fewer",
        )
    drawn = tuple(t.detach().cpu().clone() for t in source.batch(0, n))
    fixed = api.as_source(drawn if len(drawn) > 1 else drawn[0])
    fixed.description = {**source.description, "num_samples": n, "fixed": True}
    return fixed, n


class Tracker:
    """Genericity metrics of a model during training, every ``every`` steps, on fixed inputs.

    Parameters
    ----------
    model : nn.Module
        The model being trained; it is measured in eval mode and left as it was (training
        flags, random state, grad mode, device).
    inputs
        Its inputs (see :func:`genaudit.api.as_source`); drawn once, here, so that every
        measurement sees the same samples.
    every : int
        Measure at the steps that are multiples of ``every`` (step 0 included).
    log : callable, optional
        Called as ``log(step, metrics)`` after each measurement, ``metrics`` with flat keys
        such as ``sdr/fine/median`` (see :meth:`TrackPoint.flat`).
    levels : sequence of str, optional
        Only these levels (default: every level).
    stretch : bool
        Also run the stretch interventions (rel_mse of each level's stretch layer).
    num_samples, batch_size, factor, tolerance, seed, device, level_overrides
        As for :func:`genaudit.api.sdr` and :func:`genaudit.api.stretch`; ``num_samples``
        defaults to every sample of tensor inputs up to 256, else 256.

    Attributes
    ----------
    history : list of TrackPoint
        One point per measurement, in step order.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: api.Inputs,
        *,
        every: int = 100,
        log: Callable[[int, dict[str, float]], Any] | None = None,
        levels: Sequence[str] | None = None,
        stretch: bool = True,
        num_samples: int | None = None,
        batch_size: int = _DEFAULTS.batch_size,
        factor: float = 1.5,
        tolerance: float = DEFAULT_TOLERANCE,
        seed: int = 0,
        device: str | torch.device | None = None,
        level_overrides: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(f"{option('every')} must be a positive integer (got {every!r})")
        if log is not None and not callable(log):
            raise UsageError(f"{option('log')} must be a callable log(step, metrics)")
        self.model = model
        self.every = every
        self.log = log
        self.levels = tuple(levels) if levels else None
        self.stretch = stretch
        self.options: dict[str, Any] = {
            "batch_size": batch_size, "factor": factor, "tolerance": tolerance,
            "device": device, "level_overrides": level_overrides,
        }  # fmt: skip
        self.source, self.num_samples = _fixed(inputs, seed, num_samples)
        self.history: list[TrackPoint] = []

    def due(self, step: int) -> bool:
        """Whether :meth:`step` measures at ``step``."""
        return step % self.every == 0

    def step(self, step: int) -> TrackPoint | None:
        """Call once per training step: measure when ``step`` is a multiple of ``every``.

        Returns
        -------
        TrackPoint or None
            The new point (also appended to :attr:`history` and logged), or None.
        """
        return self.measure(step) if self.due(step) else None

    __call__ = step

    def measure(self, step: int) -> TrackPoint:
        """Measure now, whatever the step."""
        point = measure(
            self.model, self.source, step=int(step), levels=self.levels, stretch=self.stretch,
            num_samples=self.num_samples, **self.options,
        )  # fmt: skip
        self.history.append(point)
        if self.log is not None:
            self.log(int(step), point.flat())
        return point

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (measurement, level): step, level, median_sdr, sd_log10_sdr,
        generic_fraction, stretch_layer, stretch_rel_mse."""
        rows = [row for point in self.history for row in point.rows()]
        for row in rows:
            row.pop("snapshot", None)
        return rows

    def to_pandas(self) -> Any:
        """:meth:`to_rows` as a ``pandas.DataFrame`` (pandas is optional: a UsageError
        without it)."""
        return data_frame(self.to_rows())


def lightning_callback(
    inputs: api.Inputs, *, module: str | None = None, every: int = 100, **options: Any
) -> Any:
    """A Lightning ``Callback`` that runs a :class:`Tracker` after training batches.

    Lightning (``lightning`` or ``pytorch_lightning``) is imported here, when this is called;
    genaudit does not depend on it.

    Parameters
    ----------
    inputs
        The generator's inputs (see :class:`Tracker`).
    module : str, optional
        Dotted path of the generator inside the LightningModule (e.g. ``generator``); default:
        the LightningModule itself.
    every : int
        Measure every ``every`` global steps.
    **options
        The other keyword arguments of :class:`Tracker`. Without ``log``, the metrics go to
        the trainer's logger (``trainer.logger.log_metrics``).

    Returns
    -------
    Callback
        With the tracker (created when fitting starts) as its ``tracker`` attribute.
    """
    base = _lightning_callback_class()

    class GenericityTracking(base):  # type: ignore[misc, valid-type]
        """Measures the generator's genericity every ``every`` global steps."""

        def __init__(self) -> None:
            super().__init__()
            self.tracker: Tracker | None = None
            self._last = -1

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            model = pl_module.get_submodule(module) if module else pl_module
            log = options.pop("log", None) or _logger_of(trainer)
            self.tracker = Tracker(model, inputs, every=every, log=log, **options)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            step = int(trainer.global_step)
            if self.tracker is not None and step != self._last:  # once per optimiser step
                self._last = step
                self.tracker.step(step)

    return GenericityTracking()


def _lightning_callback_class() -> type:
    import importlib

    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            callback: type = importlib.import_module(name).Callback
        except ImportError:
            continue
        return callback
    raise UsageError(
        "the Lightning callback needs Lightning, which is not installed",
        "python3 -m pip install lightning, or call Tracker.step in your training loop",
    )


def _logger_of(trainer: Any) -> Callable[[int, dict[str, float]], Any] | None:
    def log(step: int, metrics: dict[str, float]) -> None:
        logger = getattr(trainer, "logger", None)
        if logger is not None:
            logger.log_metrics(metrics, step=step)

    return log

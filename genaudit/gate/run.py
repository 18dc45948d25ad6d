"""One model through the gate: targets, one SDR pass and one stretch run, verdict and drift."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import NothingToAnalyseError
from .baseline import (
    baseline_document,
    check_baseline_settings,
    check_fingerprint,
    compare_drift,
    drift_layers,
    fingerprint,
    read_baseline,
)
from .metrics import MetricTable, collect_metrics
from .rules import CheckConfig
from .targets import Plan, Target, plan_analyses, resolve_targets
from .verdict import GateResult, evaluate_rules

if TYPE_CHECKING:  # the gate is importable without torch
    import torch

    from ..analysis.sdr import SDRResult
    from ..analysis.stretch import StretchResult
    from ..analysis.transforms import Transform
    from ..model.inputs import InputSource
    from ..model.layers import LayerRecord
    from ..model.loading import LoadedModel

# ``progress(label, total)``: a context that yields ``advance(k)``, or None to show nothing.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None] | None]]


@dataclass(frozen=True)
class RunSettings:
    """How the gate's analyses run: inputs, batches, device, SDR tolerance, stretch intervention."""

    seed: int
    num_samples: int
    batch_size: int
    device: torch.device
    tolerance: float
    transform: Transform

    def to_dict(self) -> dict[str, Any]:
        """What a baseline records of these settings, and a later run is compared on."""
        return {"seed": self.seed, "num_samples": self.num_samples, "tolerance": self.tolerance,
                "stretch": self.transform.to_dict()}  # fmt: skip


@dataclass(frozen=True)
class GateRun:
    """The verdict on one model, what it rests on, and the baseline document to store: only
    when one was asked for and the gate did not fail (a failed gate never replaces one)."""

    result: GateResult
    metrics: MetricTable
    fingerprint: dict[str, Any]
    baseline_document: str | None


def stretch_transform(cfg: CheckConfig) -> Transform:
    """The intervention of the stretch rules, from ``[check.stretch]`` (exit 2 when invalid)."""
    from ..analysis.transforms import make_transform

    return make_transform("stretch", float(cfg.stretch["factor"]), str(cfg.stretch["axis"]))


def run_gate(
    loaded: LoadedModel,
    records: Sequence[LayerRecord],
    source: InputSource,
    settings: RunSettings,
    cfg: CheckConfig,
    *,
    name: str,
    for_baseline: bool = False,
    progress: Progress | None = None,
) -> GateRun:
    """Check one model: its rules' targets, the baseline (when configured), one SDR pass and at
    most one stretch run covering both, then evaluation and drift.

    ``name`` (the checkpoint's file name) is for messages. ``for_baseline``: the analyses also
    cover every analysable layer, so that the result can serve as a baseline. A stretch run that
    only default rules need and that does not apply drops those rules, with a note.
    """
    fp = fingerprint(loaded.arch, loaded.arch_kwargs, loaded.module, records, loaded.arch_config)
    targets = resolve_targets(cfg.rules, records)
    run_config = settings.to_dict()
    notes: list[str] = []
    base = read_baseline(cfg.baseline) if cfg.baseline else None
    compared: dict[str, set[str]] = {}
    if base is not None:
        check_fingerprint(base, fp)
        notes += check_baseline_settings(base, run_config, cfg.drift)
        compared = drift_layers(base, cfg.drift)
    if not targets and not compared:
        raise NothingToAnalyseError(
            f"no rule applies to {name}: none of its layers has the metrics the rules bound",
            "configure [[check.rules]] for this model's layers (see genaudit layers MODEL)",
        )
    plan = plan_analyses(targets, records, compared=compared, every_layer=for_baseline)
    sdr, stretch, targets, analysis_notes = _analyse(
        plan, targets, loaded, records, source, settings, progress or _silent
    )
    notes += analysis_notes
    metrics = collect_metrics(sdr, stretch)
    evaluations = evaluate_rules(targets, metrics)
    drift = compare_drift(base, metrics, cfg.drift) if base is not None else []
    if not evaluations and not drift:
        raise NothingToAnalyseError(f"nothing to check in {name}")
    result = GateResult(
        cfg.rules, tuple(evaluations), tuple(drift), cfg.fail_on_warn,
        baseline=cfg.baseline, notes=tuple(notes),
    )  # fmt: skip
    document = None
    if for_baseline and result.verdict != "fail":
        document = baseline_document(fp, loaded.describe(), run_config, metrics)
    return GateRun(result, metrics, fp, document)


def _analyse(
    plan: Plan,
    targets: list[Target],
    loaded: LoadedModel,
    records: Sequence[LayerRecord],
    source: InputSource,
    settings: RunSettings,
    progress: Progress,
) -> tuple[SDRResult | None, StretchResult | None, list[Target], list[str]]:
    """The plan's SDR pass and stretch run, the targets left, and notes on the runs."""
    from ..analysis.sdr import run_sdr
    from ..analysis.stretch import run_stretch

    n = settings.num_samples
    notes: list[str] = []
    sdr_result: SDRResult | None = None
    if plan.sdr:
        with progress("sampling", n) as advance:
            sdr_result = run_sdr(
                loaded.model, list(plan.sdr), source, num_samples=n,
                batch_size=settings.batch_size, device=settings.device,
                tolerance=settings.tolerance, progress=advance,
            )  # fmt: skip
    stretch_result: StretchResult | None = None
    if plan.stretch:
        try:
            with progress("stretch", n) as advance:
                stretch_result = run_stretch(
                    loaded.model, records, list(plan.stretch), source,
                    transform=settings.transform, num_samples=n,
                    batch_size=settings.batch_size, device=settings.device, keep_samples=0,
                    progress=advance,
                )  # fmt: skip
            notes += stretch_result.notes
        except NothingToAnalyseError as exc:
            if plan.stretch_required:
                raise
            notes.append(f"the default stretch rule does not apply: {exc.message}")
            targets = [t for t in targets if t.rule.family != "stretch"]
    return sdr_result, stretch_result, targets, notes


def _silent(label: str, total: int) -> AbstractContextManager[None]:
    return nullcontext()

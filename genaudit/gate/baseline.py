"""Baselines: architecture fingerprints, baseline documents, reading them back, and drift."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .. import __version__
from ..errors import InvalidInputError
from ..report.export import SCHEMA_VERSION, to_json
from .metrics import METRICS, MetricTable, fmt_value

if TYPE_CHECKING:  # the gate is importable without torch
    from ..model.layers import LayerRecord

BASELINE_KIND = "genaudit-baseline"

# Absolute tolerances of the baseline comparison; metrics not listed are not compared unless
# configured. Runs with the same seed and sample count are deterministic, so any drift is the
# checkpoint's; the tolerances are about a third to half of the distance between a warning
# threshold and a generic layer.
DEFAULT_DRIFT: dict[str, float] = {
    "sdr.mean_log10": 0.05,
    "sdr.sd_log10": 0.05,
    "sdr.generic_fraction": 0.15,
    "sdr.undefined_fraction": 0.1,
    "trace.log10": 0.05,
    "stretch.rel_mse": 0.1,
}

# Why a baseline cannot be used: "unreadable" (missing, not a baseline, damaged or of another
# schema) or "architecture" (made from another architecture).
BaselineProblem = Literal["unreadable", "architecture"]
DriftStatus = Literal["pass", "fail"]


class BaselineError(InvalidInputError):
    """A baseline that cannot be used for this checkpoint (exit 3); ``problem`` says why, so
    that the caller can say what to do about it."""

    def __init__(self, message: str, problem: BaselineProblem) -> None:
        super().__init__(message)
        self.problem: BaselineProblem = problem


def fingerprint(
    arch: str,
    arch_kwargs: Mapping[str, Any],
    module: str | None,
    records: Sequence[LayerRecord],
    arch_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Architecture identity: arch name, kwargs and configuration object (when one was given),
    audited submodule, and every layer's name, type and input / output shapes in execution
    order."""
    return {
        "arch": arch,
        "arch_kwargs": dict(sorted(arch_kwargs.items())),
        **({} if arch_config is None else {"arch_config": json.loads(json.dumps(arch_config))}),
        "module": module,
        "layers": [_layer_text(r) for r in records],
    }


def _layer_text(r: LayerRecord) -> str:
    """``name Type in-shape → out-shape``: one layer of a fingerprint."""
    shape_in, shape_out = ("×".join(map(str, s)) for s in (r.input_shape, r.output_shape))
    return f"{r.name} {r.type} {shape_in} → {shape_out}"


@dataclass(frozen=True)
class Baseline:
    """A baseline file as read back: where it came from, its fingerprint, settings and metrics."""

    path: str
    fingerprint: dict[str, Any]
    config: dict[str, Any]
    metrics: MetricTable
    checkpoint: dict[str, Any]


def baseline_document(
    fp: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    config: Mapping[str, Any],
    metrics: MetricTable,
) -> str:
    """The JSON text of a baseline (byte-identical for identical inputs)."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": BASELINE_KIND,
        "genaudit_version": __version__,
        "fingerprint": dict(fp),
        "checkpoint": {"path": checkpoint.get("path"), "sha256": checkpoint.get("sha256")},
        "config": dict(config),
        "metrics": metrics.to_dict(),
    }
    return to_json(doc)


def read_baseline(path: str) -> Baseline:
    """Read a baseline document back (exit 3 when missing or not one)."""
    p = Path(path)
    if not p.is_file():
        raise BaselineError(f"baseline {path} does not exist", "unreadable")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"baseline {path} is not valid JSON: {exc}", "unreadable") from None
    if not isinstance(doc, dict) or doc.get("kind") != BASELINE_KIND:
        raise BaselineError(f"{path} is not a genaudit baseline", "unreadable")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise BaselineError(
            f"baseline {path} has schema version {doc.get('schema_version')!r}; this genaudit "
            f"reads version {SCHEMA_VERSION}",
            "unreadable",
        )
    try:
        metrics = MetricTable.from_dict(doc["metrics"])
        fp, config = doc["fingerprint"], doc.get("config", {})
        if not isinstance(fp, dict) or not isinstance(config, dict):
            raise ValueError("not a table")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BaselineError(
            f"baseline {path} is damaged (bad metrics or fingerprint)", "unreadable"
        ) from None
    return Baseline(path, fp, config, metrics, dict(doc.get("checkpoint") or {}))


def check_fingerprint(baseline: Baseline, current: Mapping[str, Any]) -> None:
    """Refuse (exit 3) a baseline made from a different architecture, saying what differs."""
    old = baseline.fingerprint
    for key in ("arch", "arch_kwargs", "arch_config", "module"):  # a missing key is None
        if old.get(key) != current.get(key):
            raise BaselineError(
                f"baseline {baseline.path} was made from a different architecture: {key} "
                f"{json.dumps(old.get(key), sort_keys=True)} there, "
                f"{json.dumps(current.get(key), sort_keys=True)} here",
                "architecture",
            )
    a, b = list(old.get("layers") or []), list(current.get("layers") or [])
    for k in range(max(len(a), len(b))):
        there = str(a[k]) if k < len(a) else "nothing"
        here = str(b[k]) if k < len(b) else "nothing"
        if there != here:
            raise BaselineError(
                f"baseline {baseline.path} was made from a different architecture: layer {k} is "
                f"{there} there, {here} here",
                "architecture",
            )


def check_baseline_settings(
    baseline: Baseline, config: Mapping[str, Any], drift: Mapping[str, float]
) -> list[str]:
    """Refuse settings that make values incomparable; return notes on harmless differences."""
    old = baseline.config
    compared = {m for values in baseline.metrics.layers.values() for m in values
                if math.isfinite(drift.get(m, math.inf))}  # fmt: skip
    if any(m.startswith("stretch.") for m in compared) and old.get("stretch") != config["stretch"]:
        raise InvalidInputError(
            f"baseline {baseline.path} was made with stretch {old.get('stretch')}, this run uses "
            f"{config['stretch']}",
            "use the same [check.stretch] settings, or write a new baseline",
        )
    if "sdr.generic_fraction" in compared and old.get("tolerance") != config["tolerance"]:
        raise InvalidInputError(
            f"baseline {baseline.path} counts generic pairs with tolerance "
            f"{old.get('tolerance')}, this run with {config['tolerance']}",
            "use the same [sdr] tolerance, or write a new baseline",
        )
    notes = []
    for key in ("seed", "num_samples"):
        if old.get(key) != config[key]:
            notes.append(
                f"the baseline was made with {key} = {old.get(key)}, this run uses {config[key]}: "
                "part of any drift is sampling noise"
            )
    return notes


@dataclass(frozen=True)
class DriftCheck:
    """One metric of one layer against its baseline value."""

    metric: str
    layer: str
    baseline: float
    value: float
    tolerance: float
    status: DriftStatus

    @property
    def delta(self) -> float:
        return self.value - self.baseline

    def message(self) -> str:
        return (
            f"{self.metric} at {self.layer} drifted from {fmt_value(self.baseline)} to "
            f"{fmt_value(self.value)} (change {fmt_value(self.delta, '{:+.4g}')}, "
            f"allowed ±{self.tolerance:g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "layer": self.layer,
            "baseline": self.baseline,
            "value": self.value,
            "delta": self.delta,
            "tolerance": self.tolerance,
            "status": self.status,
        }


def drift_layers(baseline: Baseline, drift: Mapping[str, float]) -> dict[str, set[str]]:
    """Per layer of the baseline, the metrics compared (those with a finite tolerance)."""
    out: dict[str, set[str]] = {}
    for layer, values in baseline.metrics.layers.items():
        metrics = {m for m in values if m in METRICS and math.isfinite(drift.get(m, math.inf))}
        if metrics:
            out[layer] = metrics
    return out


def compare_drift(
    baseline: Baseline, current: MetricTable, drift: Mapping[str, float]
) -> list[DriftCheck]:
    """``|value − baseline| <= tolerance`` per layer and compared metric; NaN only equals NaN."""
    checks = []
    for layer, metrics in drift_layers(baseline, drift).items():
        for metric in (m for m in METRICS if m in metrics):
            old = baseline.metrics.layers[layer][metric]
            new = current.layers.get(layer, {}).get(metric, math.nan)
            tol = drift[metric]
            if math.isnan(old) or math.isnan(new):
                ok = math.isnan(old) and math.isnan(new)
            else:
                ok = abs(new - old) <= tol
            checks.append(DriftCheck(metric, layer, old, new, tol, "pass" if ok else "fail"))
    return checks


def drift_help() -> str:
    """One line per default drift tolerance, for ``--help``."""
    return "\n".join(f"  {m:<24} ±{t:g}" for m, t in DEFAULT_DRIFT.items())

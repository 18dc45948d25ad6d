"""The verdict: each rule's value against its bounds, and what they and the drift add up to."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ExitCode, OptionStyle, option, render_options
from .baseline import DriftCheck
from .metrics import MetricTable, fmt_value
from .rules import Rule
from .targets import Target, TargetKind

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class Evaluation:
    """A rule's verdict at one layer or level."""

    rule: Rule
    kind: TargetKind
    name: str
    value: float
    status: Status
    layer: str | None = None  # the layer intervened at, for a level's stretch metric
    reason: str | None = None  # why there is no value (a skipped layer), when known

    @property
    def shown_value(self) -> str:
        """The value as tables show it: ``non-finite`` or ``skipped`` when a reason is known."""
        if math.isnan(self.value) and self.reason:
            return "non-finite" if "non-finite" in self.reason else "skipped"
        return fmt_value(self.value)

    @property
    def where(self) -> str:
        return f"level {self.name}" if self.kind == "level" else f"layer {self.name}"

    def message(self) -> str:
        r = self.rule
        at = self.where + (f" ({self.layer})" if self.layer and self.layer != self.name else "")
        if math.isnan(self.value) and self.reason:
            return f"{r.metric} has no value at {at}: {self.reason} (required {r.bound_text()})"
        if math.isnan(self.value):
            return f"{r.metric} is undefined at {at} (required {r.bound_text()})"
        if self.status == "pass":
            return f"{r.metric} = {fmt_value(self.value)} at {at} ({r.bound_text()})"
        if r.max is not None and self.value > r.max:
            side = f"above the maximum {r.max:g}"
        else:
            side = f"below the minimum {r.min:g}"
        return f"{r.metric} = {fmt_value(self.value)} at {at}: {side}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.index,
            "metric": self.rule.metric,
            "kind": self.kind,
            "target": self.name,
            "layer": self.layer,
            "value": self.value,
            "reason": self.reason,
            "min": self.rule.min,
            "max": self.rule.max,
            "severity": self.rule.severity,
            "status": self.status,
            "message": self.message(),
        }


def _value(t: Target, metrics: MetricTable) -> float:
    if t.rule.family == "stretch" or t.kind == "layer":
        assert t.layer is not None
        return metrics.layers.get(t.layer.name, {}).get(t.rule.metric, math.nan)
    return metrics.levels.get(t.name, {}).get(t.rule.metric, math.nan)


def evaluate_rules(targets: Sequence[Target], metrics: MetricTable) -> list[Evaluation]:
    """Each target's value against its rule's bounds; an undefined (NaN) value never passes."""
    out = []
    for t in targets:
        value = float(_value(t, metrics))
        r = t.rule
        ok = (
            not math.isnan(value)
            and (r.min is None or value >= r.min)
            and (r.max is None or value <= r.max)
        )
        layer = t.layer.name if t.layer is not None else None
        reason = None
        if math.isnan(value):
            by_layer = t.rule.family == "stretch" or t.kind == "layer"
            if by_layer and layer is not None:
                reason = metrics.reason("layer", layer)
            else:
                reason = metrics.reason(t.kind, t.name)
        status: Status = "pass" if ok else r.severity
        out.append(Evaluation(r, t.kind, t.name, value, status, layer, reason))
    return out


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: rule evaluations, drift checks, and what they add up to."""

    rules: tuple[Rule, ...]
    evaluations: tuple[Evaluation, ...]
    drift: tuple[DriftCheck, ...]
    fail_on_warn: bool
    baseline: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[Evaluation, ...]:
        return tuple(e for e in self.evaluations if e.status == "fail")

    @property
    def warned(self) -> tuple[Evaluation, ...]:
        return tuple(e for e in self.evaluations if e.status == "warn")

    @property
    def drifted(self) -> tuple[DriftCheck, ...]:
        return tuple(d for d in self.drift if d.status == "fail")

    @property
    def verdict(self) -> Status:
        """``fail`` (exit 1), ``warn`` (passed with warnings, exit 0) or ``pass``."""
        if self.failed or self.drifted or (self.fail_on_warn and self.warned):
            return "fail"
        return "warn" if self.warned else "pass"

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.GATE_FAILED if self.verdict == "fail" else ExitCode.OK

    def summary_line(self, style: OptionStyle) -> str:
        """The verdict and the counts in one line; ``style`` phrases the options it names for
        the command line (``"cli"``) or the Python API (``"api"``)."""
        n = len(self.evaluations)
        parts = [f"{n - len(self.failed) - len(self.warned)} passed"]
        if self.warned:
            parts.append(f"{len(self.warned)} warning(s)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        text = f"{n} check(s) of {len(self.rules)} rule(s): {', '.join(parts)}"
        if self.baseline is not None:
            text += (f"; drift against {self.baseline}: {len(self.drift)} value(s), "
                     f"{len(self.drifted)} beyond tolerance")  # fmt: skip
        head = {"pass": "PASSED", "warn": "PASSED with warnings", "fail": "FAILED"}[self.verdict]
        if self.verdict == "fail" and self.fail_on_warn and not self.failed and not self.drifted:
            head = f"FAILED (warnings count as failures: {option('fail_on_warn')})"
        return render_options(f"{head}: {text}", style)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": int(self.exit_code),
            "fail_on_warn": self.fail_on_warn,
            "counts": {
                "checks": len(self.evaluations),
                "pass": len(self.evaluations) - len(self.failed) - len(self.warned),
                "warn": len(self.warned),
                "fail": len(self.failed),
                "drift_checks": len(self.drift),
                "drift_fail": len(self.drifted),
            },
            "rules": [r.to_dict() for r in self.rules],
            "evaluations": [e.to_dict() for e in self.evaluations],
            "drift": None if self.baseline is None else {
                "baseline": self.baseline,
                "checks": [d.to_dict() for d in self.drift],
            },
            "notes": list(self.notes),
        }  # fmt: skip

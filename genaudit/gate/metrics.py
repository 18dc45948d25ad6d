"""The metrics a gate rule can bound, their values per layer and level, and how one is shown."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the gate is importable without torch
    from ..analysis.sdr import SDRResult, Summary
    from ..analysis.stretch import StretchResult

# "sdr": a layer's pairs, or a level's pairs pooled; "trace": a trace-method ratio; "stretch":
# the stretch intervention at a layer
Family = Literal["sdr", "trace", "stretch"]


@dataclass(frozen=True)
class Metric:
    """A number genaudit reports that a rule can bound."""

    name: str
    family: Family
    description: str


_METRIC_LIST = (
    Metric("sdr.mean_log10", "sdr", "mean of log10 SDR over the defined pairs (0 = generic)"),
    Metric("sdr.abs_mean_log10", "sdr", "|mean log10 SDR|: systematic departure from genericity"),
    Metric("sdr.sd_log10", "sdr", "standard deviation of log10 SDR over the pairs"),
    Metric("sdr.median", "sdr", "median SDR (linear scale, 1 = generic)"),
    Metric("sdr.p5_log10", "sdr", "5th percentile of log10 SDR"),
    Metric("sdr.p25_log10", "sdr", "25th percentile of log10 SDR"),
    Metric("sdr.p75_log10", "sdr", "75th percentile of log10 SDR"),
    Metric("sdr.p95_log10", "sdr", "95th percentile of log10 SDR"),
    Metric("sdr.generic_fraction", "sdr", "fraction of pairs with |log10 SDR| <= the tolerance"),
    Metric("sdr.undefined_fraction", "sdr", "fraction of pairs with no SDR (dead kernel/channel)"),
    Metric("sdr.undefined", "sdr", "number of pairs with no SDR"),
    Metric("trace.ratio", "trace", "trace-method ratio of a Linear layer or 1×1-fed conv"),
    Metric("trace.log10", "trace", "log10 of the trace-method ratio"),
    Metric("trace.abs_log10", "trace", "|log10 trace-method ratio|"),
    Metric("stretch.rel_mse", "stretch", "stretch error relative to not intervening (0 = perfect)"),
    Metric("stretch.mse", "stretch", "mean squared stretch error of intervening at the layer"),
)
METRICS: dict[str, Metric] = {m.name: m for m in _METRIC_LIST}


def fmt_value(x: float | None, spec: str = "{:.4g}") -> str:
    """A metric value as tables, messages and summaries show it (``undefined`` for NaN)."""
    if x is None or not math.isfinite(x):
        return "undefined" if x is None or math.isnan(x) else str(x)
    return spec.format(x)


def summary_metrics(s: Summary | None) -> dict[str, float]:
    """Every ``sdr.*`` metric of one layer's or level's summary (NaN when not defined)."""
    nan = math.nan
    if s is None:
        return {m.name: nan for m in _METRIC_LIST if m.family == "sdr"}
    p = s.percentiles_log10
    return {
        "sdr.mean_log10": s.mean_log10,
        "sdr.abs_mean_log10": abs(s.mean_log10),
        "sdr.sd_log10": s.sd_log10,
        "sdr.median": s.median_sdr,
        "sdr.p5_log10": p.get("p5", nan),
        "sdr.p25_log10": p.get("p25", nan),
        "sdr.p75_log10": p.get("p75", nan),
        "sdr.p95_log10": p.get("p95", nan),
        "sdr.generic_fraction": s.generic_fraction,
        "sdr.undefined_fraction": s.undefined / s.pairs if s.pairs else nan,
        "sdr.undefined": float(s.undefined),
    }


def trace_metrics(ratio: float | None) -> dict[str, float]:
    """Every ``trace.*`` metric of one trace-method ratio."""
    r = math.nan if ratio is None else float(ratio)
    log = math.log10(r) if math.isfinite(r) and r > 0 else math.nan
    return {"trace.ratio": r, "trace.log10": log, "trace.abs_log10": abs(log)}


@dataclass(frozen=True)
class MetricTable:
    """Metric values per layer (dotted name) and per level, in execution / level order."""

    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Why a layer or level has no values, keyed ``"layer NAME"`` / ``"level NAME"`` (e.g. a layer
    #: skipped because non-finite activations reached it); not part of the saved table.
    reasons: dict[str, str] = field(default_factory=dict)

    def reason(self, kind: str, name: str) -> str | None:
        """Why the ``kind`` (``layer`` or ``level``) ``name`` has no values, when known."""
        return self.reasons.get(f"{kind} {name}")

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "levels": self.levels}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> MetricTable:
        def table(part: Any) -> dict[str, dict[str, float]]:
            if not isinstance(part, Mapping):
                raise ValueError("not a table")
            return {
                str(name): {str(k): math.nan if v is None else float(v) for k, v in values.items()}
                for name, values in part.items()
            }

        return cls(table(doc.get("layers", {})), table(doc.get("levels", {})))


def collect_metrics(sdr: SDRResult | None, stretch: StretchResult | None) -> MetricTable:
    """Metric values of everything that was analysed (levels only when fully analysed)."""
    layers: dict[str, dict[str, float]] = {}
    levels: dict[str, dict[str, float]] = {}
    reasons: dict[str, str] = {}
    if sdr is not None:
        for layer in sdr.layers:
            if layer.analysis == "sdr":
                layers[layer.record.name] = summary_metrics(layer.summary)
            elif layer.analysis == "trace":
                layers[layer.record.name] = trace_metrics(layer.ratio)
            elif layer.reason:
                reasons[f"layer {layer.record.name}"] = layer.reason
                at = f"level {layer.record.level}"
                reasons.setdefault(at, f"layer {layer.record.name} skipped: {layer.reason}")
        for pooled in sdr.levels:
            if pooled.summary is not None:
                levels[pooled.level] = summary_metrics(pooled.summary)
    if stretch is not None:
        for r in stretch.layers:
            layers.setdefault(r.name, {}).update(
                {"stretch.rel_mse": r.rel_mse, "stretch.mse": r.mse}
            )
    return MetricTable(layers, levels, reasons)


def metrics_help() -> str:
    """One line per metric, for ``--help`` and the docs."""
    return "\n".join(f"  {m.name:<24} {m.description}" for m in _METRIC_LIST)

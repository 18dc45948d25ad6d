"""The CI gate (``genaudit check``): rules on reported metrics, baselines with allowed drift,
and the formats CI systems read (JUnit XML, GitHub annotations and step summaries).

Data flow: configuration → :class:`CheckConfig` (rules, drift tolerances) → :func:`resolve_targets`
(each rule × the layers or levels it selects) → :func:`plan_analyses` (which layers need SDR
statistics and which need a stretch intervention, so that one sampling pass serves every rule)
→ :func:`collect_metrics` → :func:`evaluate_rules` and :func:`compare_drift` →
:class:`GateResult`. No Typer here; ``cli_check.py`` is the thin command on top.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import InvalidInputError, NothingToAnalyseError, UsageError
from ..model.levels import ALL_LEVELS, HIDDEN_LEVELS, matches_layer
from ..report.export import SCHEMA_VERSION, to_json

if TYPE_CHECKING:  # the gate's rules and help text are importable without torch
    import xml.etree.ElementTree as ET

    from ..analysis.sdr import SDRResult, Summary
    from ..analysis.stretch import StretchResult
    from ..model.layers import LayerRecord

# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """A number genaudit reports that a rule can bound."""

    name: str
    family: str  # "sdr" (a layer's pairs, or a level's pairs pooled), "trace" or "stretch"
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

SELECT_WORDS = ("all", "hidden")
SEVERITIES = ("fail", "warn")
DEFAULT_STRETCH = {"factor": 1.5, "axis": "horizontal"}

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
    if sdr is not None:
        for layer in sdr.layers:
            if layer.analysis == "sdr":
                layers[layer.record.name] = summary_metrics(layer.summary)
            elif layer.analysis == "trace":
                layers[layer.record.name] = trace_metrics(layer.ratio)
        for level in sdr.levels:
            if level.summary is not None:
                levels[level.level] = summary_metrics(level.summary)
    if stretch is not None:
        for r in stretch.layers:
            layers.setdefault(r.name, {}).update(
                {"stretch.rel_mse": r.rel_mse, "stretch.mse": r.mse}
            )
    return MetricTable(layers, levels)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """``min <= metric <= max`` on the selected layers or levels; ``severity`` fail or warn."""

    metric: str
    select: tuple[str, ...]
    min: float | None
    max: float | None
    severity: str
    source: str  # "default", the configuration file, or "--rule"
    index: int = 0  # 1-based position in the effective rule list

    @property
    def family(self) -> str:
        return METRICS[self.metric].family

    def bound_text(self) -> str:
        if self.min is not None and self.max is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        if self.max is not None:
            return f"<= {self.max:g}"
        return f">= {self.min:g}"

    def describe(self) -> str:
        return f"{self.metric} {self.bound_text()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "metric": self.metric,
            "select": list(self.select),
            "min": self.min,
            "max": self.max,
            "severity": self.severity,
            "source": self.source,
        }


def _rule(metric: str, select: str, *, max: float, severity: str) -> Rule:
    return Rule(metric, (select,), None, max, severity, "default")


# The default rules (docs/ci.md explains each threshold and the measurements).
DEFAULT_RULES: tuple[Rule, ...] = (
    # intervening at a hidden level must remove at least half of the do-nothing stretch error
    _rule("stretch.rel_mse", "hidden", max=0.5, severity="fail"),
    # a hidden level whose pairs sit a factor 2 (0.3 in log10) off generic on average
    _rule("sdr.abs_mean_log10", "hidden", max=0.3, severity="fail"),
    # ... or whose average pair is outside the generic tolerance (0.1)
    _rule("sdr.abs_mean_log10", "hidden", max=0.1, severity="warn"),
    # pairs spread over more than a factor 2 at one SD (independent kernels: SD ≈ 0.07)
    _rule("sdr.sd_log10", "hidden", max=0.3, severity="warn"),
    # a quarter of the pairs without an SDR: dead kernels or dead channels
    _rule("sdr.undefined_fraction", "all", max=0.25, severity="warn"),
    # Linear layers and 1×1-fed convs: a factor 2 off generic
    _rule("trace.abs_log10", "all", max=0.3, severity="warn"),
)

_RULE_KEYS = ("metric", "select", "min", "max", "severity")
_CHECK_KEYS = ("rules", "drift", "default_rules", "fail_on_warn", "baseline", "stretch")


def _metric_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in METRICS:
        raise UsageError(
            f"{where}: unknown metric {value!r}", f"valid metrics: {', '.join(sorted(METRICS))}"
        )
    return value


def _bound(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _selectors(value: Any, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise UsageError(
                f"{where}: select must be a string or a list of strings, got {value!r}",
                'e.g. select = "fine", select = ["coarse", "main.*"] or select = "all"',
            )
        out += [s.strip() for s in str(item).split(",") if s.strip()]
    if not out:
        raise UsageError(f"{where}: select is empty", "use all, hidden, levels, names or indices")
    return tuple(dict.fromkeys(out))


def make_rule(
    metric: Any,
    select: Any,
    min: Any,
    max: Any,
    severity: Any,
    *,
    source: str,
    where: str,
) -> Rule:
    """Validate one rule's fields (exit 2 on anything wrong, naming the valid values)."""
    name = _metric_name(metric, where)
    lo, hi = _bound(min, "min", where), _bound(max, "max", where)
    if lo is None and hi is None:
        raise UsageError(f"{where}: give min, max or both")
    if lo is not None and hi is not None and lo > hi:
        raise UsageError(f"{where}: min {lo:g} is greater than max {hi:g}")
    if severity not in SEVERITIES:
        raise UsageError(f"{where}: unknown severity {severity!r}", "use fail or warn")
    return Rule(name, _selectors(select, where), lo, hi, str(severity), source)


def parse_rule_table(entry: Any, where: str, source: str) -> Rule:
    """One ``[[check.rules]]`` table."""
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where} must be a table with keys {', '.join(_RULE_KEYS)}")
    unknown = sorted(set(entry) - set(_RULE_KEYS))
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(unknown)}", f"valid keys: {', '.join(_RULE_KEYS)}"
        )
    if "metric" not in entry:
        raise UsageError(f"{where}: metric is missing")
    return make_rule(
        entry["metric"], entry.get("select", "all"), entry.get("min"), entry.get("max"),
        entry.get("severity", "fail"), source=source, where=where,
    )  # fmt: skip


def parse_rule_flag(text: str) -> Rule:
    """``--rule METRIC:SELECT:MIN:MAX:SEVERITY``; empty or missing fields take their defaults
    (select all, no bound, fail), e.g. ``stretch.rel_mse:fine::0.3`` or ``sdr.sd_log10::::warn``."""
    where = f"--rule {text!r}"
    parts = text.split(":")
    if len(parts) > 5 or not parts[0].strip():
        raise UsageError(
            f"{where} is not METRIC:SELECT:MIN:MAX:SEVERITY",
            "e.g. --rule stretch.rel_mse:fine::0.3",
        )
    parts += [""] * (5 - len(parts))
    metric, select, lo, hi, severity = (p.strip() for p in parts)

    def number(value: str, key: str) -> float | None:
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{where}: {key} must be a number, got {value!r}") from None

    return make_rule(metric, select or "all", number(lo, "min"), number(hi, "max"),
                     severity or "fail", source="--rule", where=where)  # fmt: skip


@dataclass(frozen=True)
class CheckConfig:
    """Everything the gate needs from configuration and flags."""

    rules: tuple[Rule, ...]
    drift: dict[str, float]
    fail_on_warn: bool
    baseline: str | None
    stretch: dict[str, Any]
    default_rules: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": [r.to_dict() for r in self.rules],
            "default_rules": self.default_rules,
            "drift": dict(self.drift),
            "fail_on_warn": self.fail_on_warn,
            "baseline": self.baseline,
            "stretch": dict(self.stretch),
        }


def _flag_bool(section: Mapping[str, Any], key: str, where: str) -> bool | None:
    if key not in section:
        return None
    value = section[key]
    if not isinstance(value, bool):
        raise UsageError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def parse_check_config(
    table: Mapping[str, Any],
    *,
    config_file: str | None = None,
    rule_flags: Sequence[str] = (),
    default_rules: bool | None = None,
    fail_on_warn: bool | None = None,
    baseline: str | None = None,
) -> CheckConfig:
    """The ``check`` section of the configuration with command-line flags over it.

    Rules from the file replace the defaults unless ``default_rules = true``; ``--rule`` flags
    add to whichever rules are in force; ``--[no-]default-rules`` wins over the file.
    """
    where = "[check]" if config_file is None else f"[check] in {config_file}"
    section = table.get("check", {})
    if not isinstance(section, Mapping):
        raise UsageError(f"{where} must be a table")
    unknown = sorted(set(section) - set(_CHECK_KEYS))
    if unknown:
        raise UsageError(
            f"unknown key(s) in {where}: {', '.join(unknown)}",
            f"valid keys: {', '.join(_CHECK_KEYS)}",
        )
    raw_rules = section.get("rules", [])
    if not isinstance(raw_rules, list):
        raise UsageError(f"{where}: rules must be an array of tables ([[check.rules]])")
    source = config_file or "configuration"
    file_rules = [
        parse_rule_table(entry, f"rule {k} ([[check.rules]] #{k}) in {source}", source)
        for k, entry in enumerate(raw_rules, start=1)
    ]
    flag_rules = [parse_rule_flag(text) for text in rule_flags]
    use_defaults = _flag_bool(section, "default_rules", where)
    if default_rules is not None:
        use_defaults = default_rules
    if use_defaults is None:
        use_defaults = not file_rules
    rules = [*(DEFAULT_RULES if use_defaults else ()), *file_rules, *flag_rules]
    if not rules:
        raise UsageError(
            "no rules to check: the default rules are off and none are configured",
            "add [[check.rules]] tables or --rule flags, or drop default_rules = false",
        )
    numbered = tuple(
        Rule(r.metric, r.select, r.min, r.max, r.severity, r.source, k)
        for k, r in enumerate(rules, start=1)
    )
    drift = dict(DEFAULT_DRIFT)
    raw_drift = section.get("drift", {})
    if not isinstance(raw_drift, Mapping):
        raise UsageError(f"{where}: drift must be a table of metric = tolerance")
    for key, value in raw_drift.items():
        name = _metric_name(key, f"[check.drift] in {source}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise UsageError(
                f"[check.drift] in {source}: the tolerance of {name} must be a number >= 0 "
                f"(inf switches the comparison off), got {value!r}"
            )
        drift[name] = float(value)
    drift = {m: drift[m] for m in METRICS if m in drift}
    stretch = dict(DEFAULT_STRETCH)
    raw_stretch = section.get("stretch", {})
    if not isinstance(raw_stretch, Mapping):
        raise UsageError(f"{where}: stretch must be a table with keys factor, axis")
    bad = sorted(set(raw_stretch) - set(DEFAULT_STRETCH))
    if bad:
        raise UsageError(
            f"unknown key(s) in [check.stretch] in {source}: {', '.join(bad)}",
            "valid keys: axis, factor",
        )
    if "factor" in raw_stretch:
        stretch["factor"] = _bound(raw_stretch["factor"], "factor", "[check.stretch]")
    if "axis" in raw_stretch:
        if not isinstance(raw_stretch["axis"], str):
            raise UsageError("[check.stretch]: axis must be a string such as horizontal")
        stretch["axis"] = raw_stretch["axis"]
    warn_fails = _flag_bool(section, "fail_on_warn", where)
    if fail_on_warn is not None:
        warn_fails = fail_on_warn
    base = baseline
    if base is None and "baseline" in section:
        if not isinstance(section["baseline"], str) or not section["baseline"]:
            raise UsageError(f"{where}: baseline must be a file name")
        path = Path(section["baseline"])
        if config_file is not None and not path.is_absolute():
            path = Path(config_file).parent / path  # relative to the configuration file
        base = str(path)
    return CheckConfig(numbered, drift, bool(warn_fails), base, stretch, bool(use_defaults))


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One rule evaluated at one layer or level. ``layer`` is the layer whose value is read
    (for a level: the last convolution of the level that runs, for stretch metrics)."""

    rule: Rule
    kind: str  # "layer" or "level"
    name: str
    layer: LayerRecord | None = None


def _applies(rule: Rule, record: LayerRecord) -> bool:
    family = rule.family
    if family == "sdr":
        return record.analysis == "sdr"
    if family == "trace":
        return record.analysis == "trace"
    return record.is_conv and len(record.output_shape) >= 2


def _rule_targets(rule: Rule, records: Sequence[LayerRecord], strict: bool) -> list[Target]:
    present = [lv for lv in ALL_LEVELS if any(r.level == lv for r in records)]
    targets: list[Target] = []
    matched: list[LayerRecord] = []
    for sel in rule.select:
        if sel == "hidden" or sel in ALL_LEVELS:
            wanted = [lv for lv in HIDDEN_LEVELS if lv in present] if sel == "hidden" else [sel]
            if strict and (not wanted or (sel != "hidden" and sel not in present)):
                raise UsageError(
                    f"rule {rule.index} ({rule.describe()}): this model has no level {sel!r}",
                    f"its levels: {', '.join(present)}; or select all, hidden, layer names, "
                    "globs or indices",
                )
            for level in wanted:
                members = [r for r in records if r.level == level]
                matched += members
                if rule.family == "sdr":
                    if any(r.analysis == "sdr" for r in members):
                        targets.append(Target(rule, "level", level))
                elif rule.family == "trace":
                    targets += [Target(rule, "layer", r.name, r) for r in members
                                if _applies(rule, r)]  # fmt: skip
                elif any(r.is_conv for r in members):
                    from ..analysis.stretch import choose_stretch_layers

                    last = choose_stretch_layers(records, [level])[-1]
                    if _applies(rule, last):
                        targets.append(Target(rule, "level", level, last))
            continue
        if sel == "all":
            hits = list(records)
        else:
            hits = [r for r in records if matches_layer(r, sel)]
            if not hits and strict:
                raise UsageError(
                    f"rule {rule.index} ({rule.describe()}): no layer or level matches {sel!r}",
                    f"levels: {', '.join(present)} (and all, hidden); layers: "
                    f"{', '.join(r.name for r in records)}; or an index 0–{len(records) - 1}",
                )
        matched += hits
        targets += [Target(rule, "layer", r.name, r) for r in hits if _applies(rule, r)]
    unique = list({(t.kind, t.name): t for t in targets}.values())
    if not unique and strict:
        if matched and all(r.analysis == "skipped" for r in matched):
            reasons = "; ".join(f"{r.name}: {r.reason}" for r in matched)
            raise NothingToAnalyseError(
                f"rule {rule.index} ({rule.describe()}): none of the selected layers can be "
                f"analysed ({reasons})"
            )
        families = {"sdr": "convolutions fed maps larger than 1×1",
                    "trace": "Linear layers and convolutions fed 1×1 maps",
                    "stretch": "convolutions (their output maps)"}  # fmt: skip
        raise UsageError(
            f"rule {rule.index} ({rule.describe()}): {rule.metric} does not apply to any layer "
            f"selected by {', '.join(rule.select)!r}",
            f"{rule.family}.* metrics apply to {families[rule.family]}",
        )
    return sorted(unique, key=lambda t: _target_order(t, records))


def _target_order(t: Target, records: Sequence[LayerRecord]) -> tuple[int, int]:
    if t.kind == "level":
        return (0, ALL_LEVELS.index(t.name))
    return (1, next(r.index for r in records if r.name == t.name))


def resolve_targets(rules: Sequence[Rule], records: Sequence[LayerRecord]) -> list[Target]:
    """Every rule × the layers or levels it selects, for this model.

    A rule's level names evaluate the level (its pairs pooled; stretch: the level's last
    convolution), ``hidden`` means the hidden levels present (coarse, intermediate, fine);
    ``all``, dotted names, globs and indices evaluate each layer where the metric is defined.
    A configured rule that selects nothing, or nothing its metric applies to, is an error
    (exit 2); a default rule then simply does not apply.
    """
    targets: list[Target] = []
    for rule in rules:
        targets += _rule_targets(rule, records, strict=rule.source != "default")
    return targets


# --------------------------------------------------------------------------- baselines


BASELINE_KIND = "genaudit-baseline"


def fingerprint(
    arch: str, arch_kwargs: Mapping[str, Any], module: str | None, records: Sequence[LayerRecord]
) -> dict[str, Any]:
    """Architecture identity: arch name and kwargs, audited submodule, and every layer's name,
    type and input / output shapes in execution order."""
    return {
        "arch": arch,
        "arch_kwargs": dict(sorted(arch_kwargs.items())),
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
    """Read a baseline written by ``--write-baseline`` (exit 3 when missing or not one)."""
    p = Path(path)
    hint = "write one with: genaudit check MODEL --write-baseline FILE"
    if not p.is_file():
        raise InvalidInputError(f"baseline {path} does not exist", hint)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"baseline {path} is not valid JSON: {exc}", hint) from None
    if not isinstance(doc, dict) or doc.get("kind") != BASELINE_KIND:
        raise InvalidInputError(f"{path} is not a genaudit baseline", hint)
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise InvalidInputError(
            f"baseline {path} has schema version {doc.get('schema_version')!r}; this genaudit "
            f"reads version {SCHEMA_VERSION}",
            hint,
        )
    try:
        metrics = MetricTable.from_dict(doc["metrics"])
        fp, config = doc["fingerprint"], doc.get("config", {})
        if not isinstance(fp, dict) or not isinstance(config, dict):
            raise ValueError("not a table")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidInputError(
            f"baseline {path} is damaged (bad metrics or fingerprint)", hint
        ) from None
    return Baseline(path, fp, config, metrics, dict(doc.get("checkpoint") or {}))


def check_fingerprint(baseline: Baseline, current: Mapping[str, Any]) -> None:
    """Refuse (exit 3) a baseline made from a different architecture, saying what differs."""
    old = baseline.fingerprint
    hint = "a baseline only compares checkpoints of one architecture: write a new one with " \
        "--write-baseline"  # fmt: skip
    for key in ("arch", "arch_kwargs", "module"):
        if old.get(key) != current.get(key):
            raise InvalidInputError(
                f"baseline {baseline.path} was made from a different architecture: {key} "
                f"{json.dumps(old.get(key), sort_keys=True)} there, "
                f"{json.dumps(current.get(key), sort_keys=True)} here",
                hint,
            )
    a, b = list(old.get("layers") or []), list(current.get("layers") or [])
    for k in range(max(len(a), len(b))):
        there = str(a[k]) if k < len(a) else "nothing"
        here = str(b[k]) if k < len(b) else "nothing"
        if there != here:
            raise InvalidInputError(
                f"baseline {baseline.path} was made from a different architecture: layer {k} is "
                f"{there} there, {here} here",
                hint,
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
    status: str  # "pass" or "fail"

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


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Plan:
    """Which layers one SDR pass and one stretch run must cover."""

    sdr: tuple[LayerRecord, ...]
    stretch: tuple[LayerRecord, ...]
    stretch_required: bool  # False when only default rules need the stretch run


def plan_analyses(
    targets: Sequence[Target],
    records: Sequence[LayerRecord],
    *,
    compared: Mapping[str, set[str]] | None = None,
    every_layer: bool = False,
) -> Plan:
    """Layers whose statistics the targets, the drift comparison (``compared``: layer →
    metrics) and, with ``every_layer`` (writing a baseline), every analysable layer need."""
    by_name = {r.name: r for r in records}
    sdr: dict[int, LayerRecord] = {}
    stretch: dict[int, LayerRecord] = {}
    required = False
    for t in targets:
        family = t.rule.family
        if family == "stretch":
            assert t.layer is not None
            stretch[t.layer.index] = t.layer
            required = required or t.rule.source != "default"
        elif t.kind == "level":
            sdr.update((r.index, r) for r in records if r.level == t.name and r.analysis == "sdr")
        elif t.layer is not None:
            sdr[t.layer.index] = t.layer
    for layer, metrics in (compared or {}).items():
        r = by_name.get(layer)
        if r is None:
            continue
        if any(m.startswith("stretch.") for m in metrics):
            stretch[r.index] = r
            required = True
        if any(not m.startswith("stretch.") for m in metrics):
            sdr[r.index] = r
    if every_layer:
        sdr.update((r.index, r) for r in records if r.analysis != "skipped")
    return Plan(
        tuple(sdr[i] for i in sorted(sdr)), tuple(stretch[i] for i in sorted(stretch)), required
    )


# --------------------------------------------------------------------------- evaluation


def fmt_value(x: float | None, spec: str = "{:.4g}") -> str:
    if x is None or not math.isfinite(x):
        return "undefined" if x is None or math.isnan(x) else str(x)
    return spec.format(x)


@dataclass(frozen=True)
class Evaluation:
    """A rule's verdict at one layer or level."""

    rule: Rule
    kind: str
    name: str
    value: float
    status: str  # "pass", "warn" or "fail"
    layer: str | None = None  # the layer intervened at, for a level's stretch metric

    @property
    def where(self) -> str:
        return f"level {self.name}" if self.kind == "level" else f"layer {self.name}"

    def message(self) -> str:
        r = self.rule
        at = self.where + (f" ({self.layer})" if self.layer and self.layer != self.name else "")
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
        out.append(Evaluation(r, t.kind, t.name, value, "pass" if ok else r.severity, layer))
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
    def verdict(self) -> str:
        """``fail`` (exit 1), ``warn`` (passed with warnings, exit 0) or ``pass``."""
        if self.failed or self.drifted or (self.fail_on_warn and self.warned):
            return "fail"
        return "warn" if self.warned else "pass"

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "fail" else 0

    def summary_line(self) -> str:
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
            head = "FAILED (warnings count as failures: --fail-on-warn)"
        return f"{head}: {text}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
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


# --------------------------------------------------------------------------- CI formats


def junit_xml(suites: Sequence[tuple[str, GateResult | str]]) -> str:
    """JUnit XML: one ``<testsuite>`` per checkpoint, one ``<testcase>`` per rule × layer/level
    and per drift value.

    A fail is a ``<failure>``; a warning passes and carries its message in ``<system-out>``
    (with ``fail_on_warn`` it is a ``<failure type="warning">``). A checkpoint that could not be
    checked (a string: the error message) is one testcase with an ``<error>``.
    """
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="genaudit check")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for name, result in suites:
        if isinstance(result, str):
            ts = ET.SubElement(root, "testsuite", name=name, tests="1", failures="0",
                               errors="1", skipped="0", time="0")  # fmt: skip
            case = ET.SubElement(ts, "testcase", classname="genaudit.check", name=name, time="0")
            ET.SubElement(case, "error", message=result, type="error").text = result
            totals["tests"] += 1
            totals["errors"] += 1
            continue
        failures = len(result.failed) + len(result.drifted)
        if result.fail_on_warn:
            failures += len(result.warned)
        tests = len(result.evaluations) + len(result.drift)
        totals["tests"] += tests
        totals["failures"] += failures
        ts = ET.SubElement(root, "testsuite", name=name, tests=str(tests),
                           failures=str(failures), errors="0", skipped="0", time="0")  # fmt: skip
        _junit_cases(ts, result)
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _junit_cases(ts: ET.Element, result: GateResult) -> None:
    import xml.etree.ElementTree as ET

    for e in result.evaluations:
        case = ET.SubElement(
            ts, "testcase", classname=f"genaudit.check.{e.rule.metric}",
            name=f"rule {e.rule.index}: {e.rule.describe()} [{e.where}]", time="0",
        )  # fmt: skip
        if e.status == "fail" or (e.status == "warn" and result.fail_on_warn):
            kind = "failure" if e.status == "fail" else "warning"
            node = ET.SubElement(case, "failure", message=e.message(), type=kind)
            node.text = f"{e.message()} (rule {e.rule.index}, severity {e.rule.severity})"
        elif e.status == "warn":
            ET.SubElement(case, "system-out").text = f"WARNING: {e.message()}"
    for d in result.drift:
        case = ET.SubElement(
            ts, "testcase", classname=f"genaudit.drift.{d.metric}",
            name=f"drift: {d.metric} within ±{d.tolerance:g} [layer {d.layer}]", time="0",
        )  # fmt: skip
        if d.status == "fail":
            ET.SubElement(case, "failure", message=d.message(), type="drift").text = d.message()


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(result: GateResult, file: str | None = None) -> list[str]:
    """GitHub Actions workflow commands (``::error`` / ``::warning``) for every fail, warning
    and drift beyond tolerance."""
    where = f"file={_escape_property(file)}," if file else ""
    lines = []
    for e in result.evaluations:
        if e.status == "pass":
            continue
        level = "error" if e.status == "fail" or result.fail_on_warn else "warning"
        title = _escape_property(f"genaudit check: {e.rule.metric} [{e.where}]")
        lines.append(f"::{level} {where}title={title}::{_escape_data(e.message())}")
    for d in result.drifted:
        title = _escape_property(f"genaudit check: drift of {d.metric} [layer {d.layer}]")
        lines.append(f"::error {where}title={title}::{_escape_data(d.message())}")
    return lines


def github_error(message: str, file: str | None = None) -> str:
    """The annotation for a checkpoint that could not be checked at all."""
    where = f"file={_escape_property(file)}," if file else ""
    return f"::error {where}title=genaudit check%3A error::{_escape_data(message)}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def step_summary(result: GateResult, model: str) -> str:
    """Markdown for ``$GITHUB_STEP_SUMMARY``: verdict, then a table of every check."""
    head = {"pass": "✅ passed", "warn": "⚠️ passed with warnings", "fail": "❌ failed"}
    lines = [
        f"## genaudit check `{_md(model)}`: {head[result.verdict]}",
        "",
        _md(result.summary_line()),
        "",
        "| rule | layer / level | value | bound | severity | result |",
        "|---:|---|---:|---|---|---|",
    ]
    for e in result.evaluations:
        mark = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**"}[e.status]
        lines.append(
            f"| {e.rule.index} | {_md(e.where)} | {fmt_value(e.value)} | "
            f"`{_md(e.rule.describe())}` | {e.rule.severity} | {mark} |"
        )
    if result.baseline is not None:
        lines += ["", f"Drift against `{_md(result.baseline)}`: {len(result.drift)} value(s), "
                      f"{len(result.drifted)} beyond tolerance."]  # fmt: skip
        if result.drifted:
            lines += ["", "| metric | layer | baseline | value | change | allowed |",
                      "|---|---|---:|---:|---:|---:|"]  # fmt: skip
            for d in result.drifted:
                values = " | ".join(
                    fmt_value(x, spec)
                    for x, spec in (
                        (d.baseline, "{:.4g}"),
                        (d.value, "{:.4g}"),
                        (d.delta, "{:+.4g}"),
                    )
                )
                lines.append(f"| `{d.metric}` | {_md(d.layer)} | {values} | ±{d.tolerance:g} |")
    for note in result.notes:
        lines += ["", f"> {_md(note)}"]
    return "\n".join(lines) + "\n\n"


def step_summary_error(model: str, message: str) -> str:
    """Markdown for ``$GITHUB_STEP_SUMMARY`` when a checkpoint could not be checked."""
    return f"## genaudit check `{_md(model)}`: ❌ error\n\n{_md(message)}\n\n"


# --------------------------------------------------------------------------- documentation


def metrics_help() -> str:
    """One line per metric, for ``--help`` and the docs."""
    return "\n".join(f"  {m.name:<24} {m.description}" for m in _METRIC_LIST)


def default_rules_help() -> str:
    """One line per default rule, for ``--help`` and the docs."""
    return "\n".join(
        f"  {r.severity:<5} {r.describe():<32} select {', '.join(r.select)}" for r in DEFAULT_RULES
    )


def drift_help() -> str:
    return "\n".join(f"  {m:<24} ±{t:g}" for m, t in DEFAULT_DRIFT.items())

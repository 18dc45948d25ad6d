"""Gate rules: the defaults, rules from configuration and flags, and the gate's configuration."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from ..config import check_keys
from ..errors import UsageError, option
from .baseline import DEFAULT_DRIFT
from .metrics import METRICS, Family

Severity = Literal["fail", "warn"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
DEFAULT_STRETCH = {"factor": 1.5, "axis": "horizontal"}


@dataclass(frozen=True)
class Rule:
    """``min <= metric <= max`` on the selected layers or levels; ``severity`` fail or warn."""

    metric: str
    select: tuple[str, ...]
    min: float | None
    max: float | None
    severity: Severity
    source: str  # "default", the configuration file, or "--rule"
    index: int = 0  # 1-based position in the effective rule list

    @property
    def family(self) -> Family:
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


def _rule(metric: str, select: str, *, max: float, severity: Severity) -> Rule:
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
    return Rule(name, _selectors(select, where), lo, hi, cast(Severity, severity), source)


def parse_rule_table(entry: Any, where: str, source: str) -> Rule:
    """One ``[[check.rules]]`` table."""
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where} must be a table with keys {', '.join(_RULE_KEYS)}")
    check_keys(entry, _RULE_KEYS, where)
    if "metric" not in entry:
        raise UsageError(f"{where}: metric is missing")
    return make_rule(
        entry["metric"], entry.get("select", "all"), entry.get("min"), entry.get("max"),
        entry.get("severity", "fail"), source=source, where=where,
    )  # fmt: skip


def parse_rule_flag(text: str) -> Rule:
    """``--rule METRIC:SELECT:MIN:MAX:SEVERITY``; empty or missing fields take their defaults
    (select all, no bound, fail), e.g. ``stretch.rel_mse:fine::0.3`` or ``sdr.sd_log10::::warn``."""
    where = f"{option('rule')} {text!r}"
    parts = text.split(":")
    if len(parts) > 5 or not parts[0].strip():
        raise UsageError(
            f"{where} is not METRIC:SELECT:MIN:MAX:SEVERITY",
            f"e.g. {option('rule')} stretch.rel_mse:fine::0.3",
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
    check_keys(section, _CHECK_KEYS, where)
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
            f"add [[check.rules]] tables or {option('rule')} flags, or drop default_rules = false",
        )
    numbered = tuple(
        Rule(r.metric, r.select, r.min, r.max, r.severity, r.source, k)
        for k, r in enumerate(rules, start=1)
    )
    drift = _drift(section, where, source)
    stretch = _stretch(section, where, source)
    warn_fails = _fail_on_warn(section, where, fail_on_warn)
    base = _baseline(section, where, config_file, baseline)
    return CheckConfig(numbered, drift, bool(warn_fails), base, stretch, bool(use_defaults))


def _drift(section: Mapping[str, Any], where: str, source: str) -> dict[str, float]:
    """``[check.drift]`` over the default tolerances, in metric order."""
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
    return {m: drift[m] for m in METRICS if m in drift}


def _stretch(section: Mapping[str, Any], where: str, source: str) -> dict[str, Any]:
    """``[check.stretch]`` over the default intervention."""
    stretch = dict(DEFAULT_STRETCH)
    raw_stretch = section.get("stretch", {})
    if not isinstance(raw_stretch, Mapping):
        raise UsageError(f"{where}: stretch must be a table with keys factor, axis")
    check_keys(raw_stretch, DEFAULT_STRETCH, f"[check.stretch] in {source}")
    if "factor" in raw_stretch:
        stretch["factor"] = _bound(raw_stretch["factor"], "factor", "[check.stretch]")
    if "axis" in raw_stretch:
        if not isinstance(raw_stretch["axis"], str):
            raise UsageError("[check.stretch]: axis must be a string such as horizontal")
        stretch["axis"] = raw_stretch["axis"]
    return stretch


def _fail_on_warn(section: Mapping[str, Any], where: str, flag: bool | None) -> bool | None:
    """``fail_on_warn`` of the file, unless the command line says otherwise."""
    value = _flag_bool(section, "fail_on_warn", where)
    return value if flag is None else flag


def _baseline(
    section: Mapping[str, Any], where: str, config_file: str | None, flag: str | None
) -> str | None:
    """The baseline to compare with: the flag's, else the file's (relative to the file)."""
    if flag is not None or "baseline" not in section:
        return flag
    if not isinstance(section["baseline"], str) or not section["baseline"]:
        raise UsageError(f"{where}: baseline must be a file name")
    path = Path(section["baseline"])
    if config_file is not None and not path.is_absolute():
        path = Path(config_file).parent / path  # relative to the configuration file
    return str(path)


def default_rules_help() -> str:
    """One line per default rule, for ``--help`` and the docs."""
    return "\n".join(
        f"  {r.severity:<5} {r.describe():<32} select {', '.join(r.select)}" for r in DEFAULT_RULES
    )

"""The CI gate: metrics, rules, targets, baselines and drift, verdicts and CI formats."""

# Configuration → CheckConfig → resolve_targets → plan_analyses (one SDR pass and one stretch
# run serve every rule) → collect_metrics → evaluate_rules and compare_drift → GateResult;
# run_gate does all of it for one model. No Typer, no printing, no torch at import time.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # names for type checkers and readers; loaded lazily below
    from .baseline import (
        DEFAULT_DRIFT as DEFAULT_DRIFT,
    )
    from .baseline import (
        Baseline as Baseline,
    )
    from .baseline import (
        BaselineError as BaselineError,
    )
    from .baseline import (
        BaselineProblem as BaselineProblem,
    )
    from .baseline import (
        DriftCheck as DriftCheck,
    )
    from .baseline import (
        DriftStatus as DriftStatus,
    )
    from .baseline import (
        baseline_document as baseline_document,
    )
    from .baseline import (
        check_baseline_settings as check_baseline_settings,
    )
    from .baseline import (
        check_fingerprint as check_fingerprint,
    )
    from .baseline import (
        compare_drift as compare_drift,
    )
    from .baseline import (
        drift_help as drift_help,
    )
    from .baseline import (
        drift_layers as drift_layers,
    )
    from .baseline import (
        fingerprint as fingerprint,
    )
    from .baseline import (
        read_baseline as read_baseline,
    )
    from .formats import (
        github_annotations as github_annotations,
    )
    from .formats import (
        github_error as github_error,
    )
    from .formats import (
        junit_xml as junit_xml,
    )
    from .formats import (
        step_summary as step_summary,
    )
    from .formats import (
        step_summary_error as step_summary_error,
    )
    from .formats import (
        write_to_github_actions as write_to_github_actions,
    )
    from .metrics import (
        METRICS as METRICS,
    )
    from .metrics import (
        Family as Family,
    )
    from .metrics import (
        Metric as Metric,
    )
    from .metrics import (
        MetricTable as MetricTable,
    )
    from .metrics import (
        collect_metrics as collect_metrics,
    )
    from .metrics import (
        fmt_value as fmt_value,
    )
    from .metrics import (
        metrics_help as metrics_help,
    )
    from .metrics import (
        summary_metrics as summary_metrics,
    )
    from .metrics import (
        trace_metrics as trace_metrics,
    )
    from .rules import (
        DEFAULT_RULES as DEFAULT_RULES,
    )
    from .rules import (
        CheckConfig as CheckConfig,
    )
    from .rules import (
        Rule as Rule,
    )
    from .rules import (
        Severity as Severity,
    )
    from .rules import (
        default_rules_help as default_rules_help,
    )
    from .rules import (
        parse_check_config as parse_check_config,
    )
    from .rules import (
        parse_rule_flag as parse_rule_flag,
    )
    from .run import (
        GateRun as GateRun,
    )
    from .run import (
        Progress as Progress,
    )
    from .run import (
        RunSettings as RunSettings,
    )
    from .run import (
        run_gate as run_gate,
    )
    from .run import (
        stretch_transform as stretch_transform,
    )
    from .targets import (
        Plan as Plan,
    )
    from .targets import (
        Target as Target,
    )
    from .targets import (
        TargetKind as TargetKind,
    )
    from .targets import (
        plan_analyses as plan_analyses,
    )
    from .targets import (
        resolve_targets as resolve_targets,
    )
    from .verdict import (
        Evaluation as Evaluation,
    )
    from .verdict import (
        GateResult as GateResult,
    )
    from .verdict import (
        Status as Status,
    )
    from .verdict import (
        evaluate_rules as evaluate_rules,
    )

# Each public name and the module it lives in: imported on first use, so that the command
# line's help (which needs only the rules, metrics and drift tables) stays fast.
_EXPORTS: dict[str, str] = {
    "Baseline": "baseline",
    "BaselineError": "baseline",
    "BaselineProblem": "baseline",
    "CheckConfig": "rules",
    "DEFAULT_DRIFT": "baseline",
    "DEFAULT_RULES": "rules",
    "DriftCheck": "baseline",
    "DriftStatus": "baseline",
    "Evaluation": "verdict",
    "Family": "metrics",
    "GateResult": "verdict",
    "GateRun": "run",
    "METRICS": "metrics",
    "Metric": "metrics",
    "MetricTable": "metrics",
    "Plan": "targets",
    "Progress": "run",
    "Rule": "rules",
    "RunSettings": "run",
    "Severity": "rules",
    "Status": "verdict",
    "Target": "targets",
    "TargetKind": "targets",
    "baseline_document": "baseline",
    "check_baseline_settings": "baseline",
    "check_fingerprint": "baseline",
    "collect_metrics": "metrics",
    "compare_drift": "baseline",
    "default_rules_help": "rules",
    "drift_help": "baseline",
    "drift_layers": "baseline",
    "evaluate_rules": "verdict",
    "fingerprint": "baseline",
    "fmt_value": "metrics",
    "github_annotations": "formats",
    "github_error": "formats",
    "junit_xml": "formats",
    "metrics_help": "metrics",
    "parse_check_config": "rules",
    "parse_rule_flag": "rules",
    "plan_analyses": "targets",
    "read_baseline": "baseline",
    "resolve_targets": "targets",
    "run_gate": "run",
    "step_summary": "formats",
    "step_summary_error": "formats",
    "stretch_transform": "run",
    "summary_metrics": "metrics",
    "trace_metrics": "metrics",
    "write_to_github_actions": "formats",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

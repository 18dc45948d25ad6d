"""What each rule selects in a model (layers or levels) and the analyses that cover them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import NothingToAnalyseError, UsageError
from ..model.levels import ALL_LEVELS, HIDDEN_LEVELS, matches_layer
from .metrics import Family
from .rules import Rule

if TYPE_CHECKING:  # the gate is importable without torch
    from ..model.layers import LayerRecord

TargetKind = Literal["layer", "level"]

# What each family of metrics applies to, for the error when a rule applies to nothing.
_APPLIES_TO: dict[Family, str] = {
    "sdr": "convolutions fed maps larger than 1×1",
    "trace": "Linear layers and convolutions fed 1×1 maps",
    "stretch": "convolutions (their output maps)",
}


@dataclass(frozen=True)
class Target:
    """One rule evaluated at one layer or level. ``layer`` is the layer whose value is read
    (for a level: the last convolution of the level that runs, for stretch metrics)."""

    rule: Rule
    kind: TargetKind
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
        raise UsageError(
            f"rule {rule.index} ({rule.describe()}): {rule.metric} does not apply to any layer "
            f"selected by {', '.join(rule.select)!r}",
            f"{rule.family}.* metrics apply to {_APPLIES_TO[rule.family]}",
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

"""genaudit.gate without the command line: rules, configuration errors, targets, evaluation,
drift, baselines, the CI formats (JUnit XML, GitHub annotations, step summary) and a whole run."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from genaudit import gate
from genaudit.errors import ExitCode, InvalidInputError, NothingToAnalyseError, UsageError
from genaudit.io import registry as zoo
from genaudit.model.inputs import InputOptions, InputSource, make_input_source
from genaudit.model.layers import LayerRecord, walk_layers
from genaudit.model.loading import LoadedModel

KW = {"ngf": 4, "nz": 8, "image_size": 32, "nc": 1}


@pytest.fixture(scope="module")
def records() -> list[LayerRecord]:
    """A small DCGAN: projection main.0, coarse main.3, fine main.6, image main.9."""
    torch.manual_seed(0)
    model = zoo.build("dcgan_generator", KW)
    return walk_layers(model, (torch.randn(2, 8, 1, 1),))


def config(check: dict, **flags: object) -> gate.CheckConfig:
    return gate.parse_check_config({"check": check}, config_file="genaudit.toml", **flags)  # type: ignore[arg-type]


def rule(metric: str, select: str = "all", lo: float | None = None, hi: float | None = None,
         severity: gate.Severity = "fail", index: int = 1) -> gate.Rule:  # fmt: skip
    return gate.Rule(metric, (select,), lo, hi, severity, "test", index)


# --------------------------------------------------------------------------- configuration


def test_defaults_apply_without_configuration() -> None:
    cfg = gate.parse_check_config({})
    assert [r.metric for r in cfg.rules] == [r.metric for r in gate.DEFAULT_RULES]
    assert [r.index for r in cfg.rules] == list(range(1, len(gate.DEFAULT_RULES) + 1))
    assert cfg.drift == gate.DEFAULT_DRIFT and not cfg.fail_on_warn and cfg.baseline is None
    assert cfg.stretch == {"factor": 1.5, "axis": "horizontal"}
    assert all(r.metric in gate.METRICS for r in gate.DEFAULT_RULES)


def test_file_rules_replace_defaults_and_flags_add() -> None:
    entry = {"metric": "sdr.sd_log10", "select": ["fine", "main.*"], "max": 0.2}
    cfg = config({"rules": [entry]}, rule_flags=["stretch.rel_mse:fine::0.3:warn"])
    assert [(r.metric, r.select, r.max, r.severity, r.source) for r in cfg.rules] == [
        ("sdr.sd_log10", ("fine", "main.*"), 0.2, "fail", "genaudit.toml"),
        ("stretch.rel_mse", ("fine",), 0.3, "warn", "--rule"),
    ]
    kept = config({"rules": [entry], "default_rules": True})
    assert len(kept.rules) == len(gate.DEFAULT_RULES) + 1
    flag_wins = config({"rules": [entry], "default_rules": True}, default_rules=False)
    assert len(flag_wins.rules) == 1
    assert config({"fail_on_warn": True}).fail_on_warn
    assert not config({"fail_on_warn": True}, fail_on_warn=False).fail_on_warn


def test_drift_stretch_and_baseline_settings(tmp_path: Path) -> None:
    cfg = gate.parse_check_config(
        {"check": {"drift": {"sdr.sd_log10": 0.01, "stretch.mse": math.inf},
                   "stretch": {"factor": 2, "axis": "vertical"}, "baseline": "b.json"}},
        config_file=str(tmp_path / "pyproject.toml"),
    )  # fmt: skip
    assert cfg.drift["sdr.sd_log10"] == 0.01 and cfg.drift["sdr.mean_log10"] == 0.05
    assert math.isinf(cfg.drift["stretch.mse"])
    assert cfg.stretch == {"factor": 2.0, "axis": "vertical"}
    assert cfg.baseline == str(tmp_path / "b.json")  # relative to the configuration file
    assert config({"baseline": "b.json"}, baseline="other.json").baseline == "other.json"


@pytest.mark.parametrize(
    ("check", "words"),
    [
        ({"rules": [{"metric": "sdr.mean", "max": 1}]}, ["unknown metric", "sdr.mean_log10"]),
        ({"rules": [{"metric": "sdr.sd_log10", "min": 0.5, "max": 0.1}]}, ["min 0.5", "max 0.1"]),
        ({"rules": [{"metric": "sdr.sd_log10", "max": "0.3"}]}, ["max must be a number"]),
        ({"rules": [{"metric": "sdr.sd_log10", "max": True}]}, ["max must be a number"]),
        ({"rules": [{"metric": "sdr.sd_log10", "max": math.nan}]}, ["finite"]),
        ({"rules": [{"metric": "sdr.sd_log10"}]}, ["give min, max or both"]),
        ({"rules": [{"metric": "sdr.sd_log10", "max": 1, "severity": "error"}]}, ["severity"]),
        ({"rules": [{"metric": "sdr.sd_log10", "max": 1, "levels": "fine"}]},
         ["unknown key(s) in rule 1 ([[check.rules]] #1) in genaudit.toml: levels",
          "valid keys: max, metric, min, select, severity"]),
        ({"rules": [{"max": 1}]}, ["metric is missing"]),
        ({"rules": [{"metric": "sdr.sd_log10", "max": 1, "select": []}]}, ["select is empty"]),
        ({"rules": {"metric": "sdr.sd_log10"}}, ["array of tables"]),
        ({"rule": []}, ["unknown key(s) in [check] in genaudit.toml: rule",
                        "valid keys: baseline, default_rules, drift, fail_on_warn, rules"]),
        ({"drift": {"sdr.spread": 0.1}}, ["unknown metric 'sdr.spread'"]),
        ({"drift": {"sdr.sd_log10": -1}}, ["number >= 0"]),
        ({"stretch": {"scale": 2}}, ["unknown key(s) in [check.stretch] in genaudit.toml: scale",
                                     "valid keys: axis, factor"]),
        ({"fail_on_warn": "yes"}, ["true or false"]),
        ({"default_rules": False}, ["no rules to check"]),
    ],
)  # fmt: skip
def test_configuration_errors(check: dict, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        config(check)
    assert info.value.exit_code == ExitCode.USAGE
    text = " ".join(info.value.lines())
    for word in words:
        assert word in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stretch.rel_mse:fine::0.3", ("stretch.rel_mse", ("fine",), None, 0.3, "fail")),
        ("sdr.sd_log10::::warn", None),
        ("sdr.generic_fraction:coarse,fine:0.5", ("sdr.generic_fraction", ("coarse", "fine"),
                                                  0.5, None, "fail")),
    ],
)  # fmt: skip
def test_rule_flags(text: str, expected: tuple | None) -> None:
    if expected is None:
        with pytest.raises(UsageError, match="give min, max or both"):
            gate.parse_rule_flag(text)
        return
    r = gate.parse_rule_flag(text)
    assert (r.metric, r.select, r.min, r.max, r.severity) == expected


@pytest.mark.parametrize("text", ["", "a:b:c:d:e:f", "sdr.sd_log10:all:low", "nope:all::1"])
def test_bad_rule_flags(text: str) -> None:
    with pytest.raises(UsageError):
        gate.parse_rule_flag(text)


# --------------------------------------------------------------------------- targets


def names(targets: list[gate.Target]) -> list[tuple[str, str]]:
    return [(t.kind, t.name) for t in targets]


def test_selection(records: list[LayerRecord]) -> None:
    assert [r.level for r in records] == ["projection", "coarse", "fine", "image"]
    hidden = gate.resolve_targets([rule("sdr.sd_log10", "hidden", hi=1)], records)
    assert names(hidden) == [("level", "coarse"), ("level", "fine")]
    every = gate.resolve_targets([rule("sdr.sd_log10", "all", hi=1)], records)
    assert names(every) == [("layer", "main.3"), ("layer", "main.6"), ("layer", "main.9")]
    glob = gate.resolve_targets([rule("sdr.sd_log10", "main.[36]", hi=1)], records)
    assert names(glob) == [("layer", "main.3"), ("layer", "main.6")]
    index = gate.resolve_targets([rule("trace.ratio", "0", lo=0.5)], records)
    assert names(index) == [("layer", "main.0")]
    trace_level = gate.resolve_targets([rule("trace.ratio", "projection", lo=0.5)], records)
    assert names(trace_level) == [("layer", "main.0")]
    (stretch,) = gate.resolve_targets([rule("stretch.rel_mse", "fine", hi=0.5)], records)
    assert (stretch.kind, stretch.name, stretch.layer.name) == ("level", "fine", "main.6")  # type: ignore[union-attr]
    both = gate.resolve_targets([rule("stretch.rel_mse", "hidden", hi=1)], records)
    assert [t.layer.name for t in both] == ["main.3", "main.6"]  # type: ignore[union-attr]


def test_selection_errors(records: list[LayerRecord]) -> None:
    with pytest.raises(UsageError) as info:
        gate.resolve_targets([rule("sdr.sd_log10", "middle", hi=1)], records)
    assert "no layer or level matches 'middle'" in info.value.message
    assert "projection, coarse, fine, image" in str(info.value.hint)
    assert "main.0, main.3" in str(info.value.hint)
    with pytest.raises(UsageError, match="no level 'intermediate'"):
        gate.resolve_targets([rule("sdr.sd_log10", "intermediate", hi=1)], records)
    with pytest.raises(UsageError) as info:
        gate.resolve_targets([rule("sdr.sd_log10", "projection", hi=1)], records)
    assert "does not apply" in info.value.message and "1×1" in str(info.value.hint)
    # a default rule whose level is absent, or whose metric does not apply, just drops out
    default = gate.Rule("sdr.sd_log10", ("intermediate",), None, 1.0, "warn", "default", 1)
    assert gate.resolve_targets([default], records) == []


def test_plan_one_pass(records: list[LayerRecord]) -> None:
    targets = gate.resolve_targets(
        [rule("sdr.sd_log10", "fine", hi=1), rule("trace.ratio", "all", lo=0),
         rule("stretch.rel_mse", "coarse", hi=1)], records,
    )  # fmt: skip
    plan = gate.plan_analyses(targets, records)
    assert [r.name for r in plan.sdr] == ["main.0", "main.6"]
    assert [r.name for r in plan.stretch] == ["main.3"] and plan.stretch_required
    more = gate.plan_analyses(targets, records, compared={"main.9": {"sdr.mean_log10"}})
    assert [r.name for r in more.sdr] == ["main.0", "main.6", "main.9"]
    every = gate.plan_analyses([], records, every_layer=True)
    assert [r.name for r in every.sdr] == [r.name for r in records] and not every.stretch
    defaults = gate.resolve_targets(gate.DEFAULT_RULES, records)
    assert not gate.plan_analyses(defaults, records).stretch_required


# --------------------------------------------------------------------------- evaluation


def test_evaluation_bounds_and_nan(records: list[LayerRecord]) -> None:
    rules = [rule("sdr.sd_log10", "fine", hi=0.1, index=1),
             rule("sdr.generic_fraction", "fine", lo=0.9, severity="warn", index=2),
             rule("sdr.mean_log10", "fine", lo=-0.1, hi=0.1, index=3),
             rule("stretch.rel_mse", "fine", hi=0.5, index=4)]  # fmt: skip
    targets = gate.resolve_targets(rules, records)
    metrics = gate.MetricTable(
        layers={"main.6": {"stretch.rel_mse": math.nan}},
        levels={"fine": {"sdr.sd_log10": 0.1, "sdr.generic_fraction": 0.5,
                         "sdr.mean_log10": -0.2}},
    )  # fmt: skip
    e = gate.evaluate_rules(targets, metrics)
    assert [x.status for x in e] == ["pass", "warn", "fail", "fail"]  # bounds are inclusive
    assert "below the minimum 0.9" in e[1].message()
    assert "below the minimum -0.1" in e[2].message()
    assert "undefined" in e[3].message() and "main.6" in e[3].message()
    result = gate.GateResult(tuple(rules), tuple(e[:2]), (), fail_on_warn=False)
    assert (result.verdict, result.exit_code) == ("warn", 0)
    strict = gate.GateResult(tuple(rules), tuple(e[:2]), (), fail_on_warn=True)
    assert (strict.verdict, strict.exit_code) == ("fail", ExitCode.GATE_FAILED)
    assert result.exit_code is ExitCode.OK and strict.to_dict()["exit_code"] == 1
    assert "--fail-on-warn" in strict.summary_line("cli")
    assert "fail_on_warn=" in strict.summary_line("api")
    assert "--" not in strict.summary_line("api") and "\u27e6" not in strict.summary_line("api")
    failed = gate.GateResult(tuple(rules), tuple(e), (), fail_on_warn=False)
    assert failed.exit_code == 1 and failed.to_dict()["counts"]["fail"] == 2


def test_summary_metrics() -> None:
    import numpy as np

    from genaudit.analysis.sdr import Summary

    logs = np.array([-0.2, 0.0, 0.05, 0.3, np.nan])
    m = gate.summary_metrics(Summary.of(logs, 5, 0.1))
    assert set(m) == {k for k, v in gate.METRICS.items() if v.family == "sdr"}
    assert m["sdr.undefined"] == 1 and m["sdr.undefined_fraction"] == pytest.approx(0.2)
    assert m["sdr.abs_mean_log10"] == pytest.approx(abs(np.mean([-0.2, 0, 0.05, 0.3])))
    assert m["sdr.generic_fraction"] == pytest.approx(0.5)
    t = gate.trace_metrics(0.5)
    assert t["trace.log10"] == pytest.approx(-math.log10(2)) == -t["trace.abs_log10"]
    assert math.isnan(gate.trace_metrics(None)["trace.abs_log10"])


# --------------------------------------------------------------------------- baselines


def test_drift_comparison() -> None:
    base = gate.Baseline(
        "b.json", {}, {},
        gate.MetricTable({"a": {"sdr.sd_log10": 0.10, "sdr.mean_log10": math.nan,
                                "stretch.rel_mse": 0.2, "sdr.median": 1.0}}), {},
    )  # fmt: skip
    drift = {**gate.DEFAULT_DRIFT, "stretch.rel_mse": math.inf}
    assert gate.drift_layers(base, drift) == {"a": {"sdr.sd_log10", "sdr.mean_log10"}}
    now = gate.MetricTable({"a": {"sdr.sd_log10": 0.14, "sdr.mean_log10": math.nan}})
    checks = gate.compare_drift(base, now, drift)
    assert [(c.metric, c.status) for c in checks] == [
        ("sdr.mean_log10", "pass"),  # NaN then, NaN now
        ("sdr.sd_log10", "pass"),  # |0.14 − 0.10| <= 0.05
    ]
    moved = gate.MetricTable({"a": {"sdr.sd_log10": 0.2, "sdr.mean_log10": 0.0}})
    checks = gate.compare_drift(base, moved, drift)
    assert [c.status for c in checks] == ["fail", "fail"]
    assert "drifted from 0.1 to 0.2" in checks[1].message()
    result = gate.GateResult((), (), tuple(checks), False, baseline="b.json")
    assert result.exit_code == 1 and result.to_dict()["drift"]["checks"][1]["delta"] == 0.1


def _fp(records: list[LayerRecord], **changes: object) -> dict:
    fp = gate.fingerprint("dcgan_generator", KW, None, records)
    fp.update(changes)
    return fp


def test_baseline_round_trip_and_fingerprint(records: list[LayerRecord], tmp_path: Path) -> None:
    metrics = gate.MetricTable({"main.6": {"sdr.sd_log10": 0.1, "sdr.mean_log10": math.nan}},
                               {"fine": {"sdr.sd_log10": 0.1}})  # fmt: skip
    fp = _fp(records)
    assert fp["layers"][1] == "main.3 ConvTranspose2d 16×4×4 → 8×8×8"
    text = gate.baseline_document(fp, {"path": "g", "sha256": "00"}, {"seed": 0}, metrics)
    assert text == gate.baseline_document(fp, {"path": "g", "sha256": "00"}, {"seed": 0}, metrics)
    path = tmp_path / "b.json"
    path.write_text(text)
    base = gate.read_baseline(str(path))
    assert base.metrics.levels == metrics.levels
    assert math.isnan(base.metrics.layers["main.6"]["sdr.mean_log10"])
    gate.check_fingerprint(base, fp)  # same architecture: fine
    for other, words in [
        (_fp(records, arch="vae_decoder"), "arch"),
        (_fp(records, arch_kwargs={**KW, "ngf": 8}), "arch_kwargs"),
        (_fp(records[:-1]), "layer 3 is main.9"),
        ({**fp, "arch_config": {"resblock": "1"}}, "arch_config"),  # a factory's config object
    ]:
        with pytest.raises(gate.BaselineError) as info:
            gate.check_fingerprint(base, other)
        assert info.value.exit_code == ExitCode.INVALID_INPUT
        assert info.value.problem == "architecture" and info.value.hint is None
        assert "different architecture" in info.value.message and words in info.value.message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('{"kind": "something"}', "not a genaudit baseline"),
        ('{"kind": "genaudit-baseline", "schema_version": 99}', "schema version 99"),
        ('{"kind": "genaudit-baseline", "schema_version": 1, "metrics": 3}', "damaged"),
    ],
)
def test_bad_baselines(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(gate.BaselineError, match=words) as info:
        gate.read_baseline(str(path))
    assert isinstance(info.value, InvalidInputError) and info.value.problem == "unreadable"


def test_baseline_settings_must_match() -> None:
    base = gate.Baseline(
        "b.json", {}, {"seed": 0, "num_samples": 64, "tolerance": 0.1,
                       "stretch": {"name": "stretch", "param": 1.5, "axis": "horizontal"}},
        gate.MetricTable({"a": {"stretch.rel_mse": 0.1, "sdr.generic_fraction": 0.9}}), {},
    )  # fmt: skip
    now = {"seed": 0, "num_samples": 32, "tolerance": 0.1,
           "stretch": {"name": "stretch", "param": 2.0, "axis": "horizontal"}}  # fmt: skip
    with pytest.raises(InvalidInputError, match="stretch"):
        gate.check_baseline_settings(base, now, gate.DEFAULT_DRIFT)
    off = {**gate.DEFAULT_DRIFT, "stretch.rel_mse": math.inf}
    notes = gate.check_baseline_settings(base, now, off)
    assert len(notes) == 1 and "num_samples = 64" in notes[0]
    with pytest.raises(InvalidInputError, match="tolerance"):
        gate.check_baseline_settings(base, {**now, "tolerance": 0.2}, off)


# --------------------------------------------------------------------------- CI formats


def _result(fail_on_warn: bool = False) -> gate.GateResult:
    r1 = rule("sdr.sd_log10", "fine", hi=0.1, index=1)
    r2 = rule("sdr.mean_log10", "main.6", hi=0.1, severity="warn", index=2)
    r3 = rule("stretch.rel_mse", "fine", hi=0.5, index=3)
    evaluations = (
        gate.Evaluation(r1, "level", "fine", 0.05, "pass"),
        gate.Evaluation(r2, "layer", "main.6", 0.2, "warn", "main.6"),
        gate.Evaluation(r3, "level", "fine", 0.9, "fail", "main.6"),
    )
    drift = (gate.DriftCheck("sdr.sd_log10", "main|6", 0.1, 0.3, 0.05, "fail"),
             gate.DriftCheck("sdr.mean_log10", "main.6", 0.1, 0.1, 0.05, "pass"))  # fmt: skip
    return gate.GateResult((r1, r2, r3), evaluations, drift, fail_on_warn, baseline="b.json")


@pytest.mark.parametrize("fail_on_warn", [False, True])
def test_junit(fail_on_warn: bool) -> None:
    result = _result(fail_on_warn)
    root = ET.fromstring(
        gate.junit_xml(
            [("genaudit check g.safetensors", result), ("genaudit check h.pt", "h.pt is corrupt")]
        )
    )
    suite, broken = root.findall("testsuite")
    assert broken.find("testcase/error").get("message") == "h.pt is corrupt"  # type: ignore[union-attr]
    assert root.get("errors") == "1" and root.get("tests") == "6"
    cases = suite.findall("testcase")
    assert len(cases) == 5 == int(suite.get("tests", "0"))
    expected_failures = 3 if fail_on_warn else 2
    assert int(suite.get("failures", "0")) == expected_failures
    assert sum(c.find("failure") is not None for c in cases) == expected_failures
    passed, warned, failed, drifted, steady = cases
    assert passed.find("failure") is None and passed.find("system-out") is None
    assert failed.find("failure").get("message").startswith("stretch.rel_mse = 0.9")  # type: ignore[union-attr]
    assert "rule 3" in failed.get("name", "") and "level fine" in failed.get("name", "")
    if fail_on_warn:
        assert warned.find("failure").get("type") == "warning"  # type: ignore[union-attr]
    else:
        assert warned.find("failure") is None
        assert warned.find("system-out").text.startswith("WARNING: sdr.mean_log10")  # type: ignore[union-attr]
    assert drifted.find("failure").get("type") == "drift"  # type: ignore[union-attr]
    assert (
        steady.find("failure") is None
        and steady.get("classname") == "genaudit.drift.sdr.mean_log10"
    )


def test_github_annotations_and_summary() -> None:
    result = _result()
    lines = gate.github_annotations(result, "ckpt/g,1.safetensors")
    assert len(lines) == 3
    assert lines[0].startswith("::warning file=ckpt/g%2C1.safetensors,title=genaudit check%3A ")
    assert lines[0].endswith("::sdr.mean_log10 = 0.2 at layer main.6: above the maximum 0.1")
    assert lines[1].startswith("::error ") and "stretch.rel_mse" in lines[1]
    assert lines[2].startswith("::error ") and "drift of sdr.sd_log10" in lines[2]
    assert all("\n" not in line for line in lines)
    strict = gate.github_annotations(_result(fail_on_warn=True))
    assert strict[0].startswith("::error title=")
    md = gate.step_summary(result, "g.safetensors", "cli")
    assert md.startswith("## genaudit check `g.safetensors`: ❌ failed\n")
    assert "| 3 | level fine | 0.9 | `stretch.rel_mse <= 0.5` | fail | **FAIL** |" in md
    assert "| 2 | layer main.6 | 0.2 | `sdr.mean_log10 <= 0.1` | warn | **warn** |" in md
    assert "| `sdr.sd_log10` | main\\|6 | 0.1 | 0.3 | +0.2 | ±0.05 |" in md
    assert md.endswith("\n\n")


def test_github_actions_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Annotations only on GitHub Actions; the step summary wherever its file is named."""
    summary = tmp_path / "summary.md"
    stream = io.StringIO()
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
    gate.write_to_github_actions(["::error ::x"], "## md\n", stream)
    assert stream.getvalue() == "" and not summary.exists()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    gate.write_to_github_actions(["::error ::x", "::warning ::y"], "## md\n", stream)
    gate.write_to_github_actions([], "## more\n", stream)
    assert stream.getvalue() == "::error ::x\n::warning ::y\n"
    assert summary.read_text() == "## md\n## more\n"  # appended


def test_help_lists_everything() -> None:
    text = gate.metrics_help() + gate.default_rules_help() + gate.drift_help()
    for name in gate.METRICS:
        assert name in text
    docs = (Path(__file__).parent.parent / "docs" / "ci.md").read_text(encoding="utf-8")
    for name in gate.METRICS:
        assert f"`{name}`" in docs
    for r in gate.DEFAULT_RULES:
        assert r.metric in docs


def test_nothing_to_analyse_is_exit_4(records: list[LayerRecord]) -> None:
    from dataclasses import replace

    skipped = [replace(r, analysis="skipped", reason="too small") for r in records]
    with pytest.raises(NothingToAnalyseError) as info:
        gate.resolve_targets([rule("sdr.mean_log10", "all", hi=1)], skipped)
    assert info.value.exit_code == ExitCode.NOTHING_TO_ANALYSE


def test_json_safe_to_dict() -> None:
    doc = _result().to_dict()
    json.dumps(doc, allow_nan=False)
    assert doc["verdict"] == "fail" and doc["counts"] == {
        "checks": 3, "pass": 1, "warn": 1, "fail": 1, "drift_checks": 2, "drift_fail": 1,
    }  # fmt: skip


# --------------------------------------------------------------------------- running the gate


@pytest.fixture(scope="module")
def small() -> tuple[LoadedModel, InputSource, list[LayerRecord]]:
    """The small DCGAN as the command line would hand it to the gate."""
    torch.manual_seed(0)
    model = zoo.build("dcgan_generator", KW).eval()
    source = make_input_source(model, InputOptions(seed=0))
    loaded = LoadedModel(model, Path("g.safetensors"), "00", "safetensors", None,
                         "dcgan_generator", KW, None, False)  # fmt: skip
    return loaded, source, walk_layers(model, next(source.batches(2, 2)))


def _settings(cfg: gate.CheckConfig) -> gate.RunSettings:
    return gate.RunSettings(seed=0, num_samples=8, batch_size=4, device=torch.device("cpu"),
                            tolerance=0.1, transform=gate.stretch_transform(cfg))  # fmt: skip


def test_run_gate_writes_and_compares_a_baseline(
    small: tuple[LoadedModel, InputSource, list[LayerRecord]], tmp_path: Path
) -> None:
    loaded, source, records = small
    rules = ["sdr.sd_log10:fine::10", "stretch.rel_mse:fine::100"]
    cfg = gate.parse_check_config({}, rule_flags=rules, default_rules=False)
    shown: list[tuple[str, int]] = []

    @contextmanager
    def progress(label: str, total: int) -> Iterator[None]:
        shown.append((label, total))
        yield None

    run = gate.run_gate(loaded, records, source, _settings(cfg), cfg, name="g.safetensors",
                        for_baseline=True, progress=progress)  # fmt: skip
    assert shown == [("sampling", 8), ("stretch", 8)]
    assert run.result.verdict == "pass" and len(run.result.evaluations) == 2
    assert run.fingerprint == gate.fingerprint("dcgan_generator", KW, None, records)
    # writing a baseline analyses every layer, not only those the rules select
    assert set(run.metrics.layers) == {r.name for r in records}
    assert run.baseline_document is not None
    path = tmp_path / "b.json"
    path.write_text(run.baseline_document)
    again = gate.parse_check_config({}, rule_flags=rules, default_rules=False, baseline=str(path))
    same = gate.run_gate(loaded, records, source, _settings(again), again, name="g.safetensors")
    assert same.baseline_document is None  # not asked for
    assert same.result.drift and not same.result.drifted  # the same run: no drift at all
    assert same.result.to_dict()["drift"]["baseline"] == str(path)


def test_run_gate_failures(small: tuple[LoadedModel, InputSource, list[LayerRecord]]) -> None:
    loaded, source, records = small
    cfg = gate.parse_check_config({}, rule_flags=["sdr.generic_fraction:fine:1.5"],
                                  default_rules=False)  # fmt: skip
    run = gate.run_gate(loaded, records, source, _settings(cfg), cfg, name="g.safetensors",
                        for_baseline=True)  # fmt: skip
    assert run.result.verdict == "fail" and run.result.exit_code is ExitCode.GATE_FAILED
    assert run.baseline_document is None  # a failed gate never replaces a baseline
    missing = gate.parse_check_config({}, baseline="nowhere.json")
    with pytest.raises(gate.BaselineError, match=r"nowhere\.json does not exist"):
        gate.run_gate(loaded, records, source, _settings(missing), missing, name="g")
    image_only = gate.Rule("sdr.sd_log10", ("intermediate",), None, 1.0, "warn", "default", 1)
    nothing = gate.CheckConfig((image_only,), {}, False, None, dict(cfg.stretch), True)
    with pytest.raises(NothingToAnalyseError, match=r"no rule applies to g\.safetensors"):
        gate.run_gate(loaded, records, source, _settings(nothing), nothing, name="g.safetensors")

"""The verdict in the formats CI systems read: JUnit XML, GitHub annotations, step summaries."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from ..errors import OptionStyle
from .metrics import fmt_value
from .verdict import GateResult

if TYPE_CHECKING:  # xml.etree is imported when a report is written
    import xml.etree.ElementTree as ET


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


def step_summary(result: GateResult, model: str, style: OptionStyle) -> str:
    """Markdown for ``$GITHUB_STEP_SUMMARY``: verdict, then a table of every check; ``style``
    phrases the options the verdict names (see :meth:`GateResult.summary_line`)."""
    head = {"pass": "✅ passed", "warn": "⚠️ passed with warnings", "fail": "❌ failed"}
    lines = [
        f"## genaudit check `{_md(model)}`: {head[result.verdict]}",
        "",
        _md(result.summary_line(style)),
        "",
        "| rule | layer / level | value | bound | severity | result |",
        "|---:|---|---:|---|---|---|",
    ]
    for e in result.evaluations:
        mark = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**"}[e.status]
        lines.append(
            f"| {e.rule.index} | {_md(e.where)} | {e.shown_value} | "
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


def write_to_github_actions(annotations: Sequence[str], summary: str, stream: TextIO) -> None:
    """The one place the gate reads the environment: on GitHub Actions (``GITHUB_ACTIONS`` is
    ``true``) the annotations go to ``stream`` (stderr, where the runner reads them); where
    ``GITHUB_STEP_SUMMARY`` names a file, ``summary`` is appended to it."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in annotations:
            stream.write(line + "\n")
        stream.flush()
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a", encoding="utf-8") as fh:
            fh.write(summary)

"""``genaudit check``: the CI gate on a checkpoint (rules, baselines, JUnit, annotations).

Options → configuration and rules (checked before anything is loaded) → model and inputs →
:func:`genaudit.gate.run_gate` (one SDR pass and at most one stretch run, verdict, drift) →
verdict table / JSON / CSV / JUnit / GitHub annotations and step summary → exit code.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from .. import gate
from ..config import load_settings
from ..errors import GenauditError, UsageError
from .options import (
    INPUTS,
    MODEL,
    RUN,
    CsvOpt,
    InputFlags,
    JsonOpt,
    LoadFlags,
    RunFlags,
    with_options,
)
from .root import STATE, check_outputs, command, note, outputs, print_error, stdout_console

if TYPE_CHECKING:
    from .common import AuditRun

CHECK_HELP = f"""Gate a checkpoint in CI: check rules on genaudit's metrics, and drift against a
baseline. Exit 0: passed (warnings allowed); 1: a fail rule was violated, a value drifted
beyond its tolerance, or a warning with --fail-on-warn; 2: usage or configuration error;
3: invalid input (checkpoint, baseline of another architecture); 4: nothing analysable.

Rules come from [[tool.genaudit.check.rules]] in pyproject.toml, [[check.rules]] in
genaudit.toml or --config FILE (keys metric, select, min, max, severity), and from --rule
flags. Rules in a file replace the default rules unless default_rules = true; --rule adds.
Selections: all (each layer), hidden (the coarse, intermediate and fine levels present),
a level (its pairs pooled), dotted names, globs, indices. Default rules (hidden = the hidden
levels present):

\b
{gate.default_rules_help()}

Metrics:

\b
{gate.metrics_help()}

Drift tolerances of --baseline (absolute, per layer; [check.drift] overrides, inf = off):

\b
{gate.drift_help()}

See docs/ci.md for the reasons behind the defaults and for CI recipes."""

RuleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--rule", metavar="RULE", rich_help_panel="Analysis",
        help="Add a rule METRIC:SELECT:MIN:MAX:SEVERITY (empty fields: all, no bound, fail), "
        "e.g. stretch.rel_mse:fine::0.3 or sdr.sd_log10:hidden::0.2:warn. Repeatable.",
    ),
]  # fmt: skip
ModelsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="MODEL", show_default=False,
        help="Checkpoint(s): .safetensors (or a sharded index), torch state dict, Lightning .ckpt "
        "…; several are checked one after the other with the same rules (the exit code is the "
        "highest of theirs).",
    ),
]  # fmt: skip
CHECK_CSV_HEADER = (
    "model", "rule", "metric", "min", "max", "severity", "kind", "name", "layer", "value",
    "status",
)  # fmt: skip


@command("check", help=CHECK_HELP)
@with_options(MODEL, INPUTS, RUN)
def check_cmd(
    models: ModelsArg,
    load: LoadFlags,
    inputs: InputFlags,
    run: RunFlags,
    rule: RuleOpt = None,
    default_rules: Annotated[
        bool | None,
        typer.Option(
            "--default-rules/--no-default-rules",
            rich_help_panel="Analysis",
            help="Keep or drop the built-in rules (default: on unless the file has rules).",
        ),
    ] = None,
    fail_on_warn: Annotated[
        bool | None,
        typer.Option(
            "--fail-on-warn/--no-fail-on-warn",
            rich_help_panel="Analysis",
            help="Warnings fail the gate too.",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            metavar="FILE",
            rich_help_panel="Analysis",
            help="Compare with this baseline; fail on drift.",
        ),
    ] = None,
    write_baseline: Annotated[
        str | None,
        typer.Option(
            "--write-baseline",
            metavar="FILE",
            rich_help_panel="Output",
            help="Store this run's metrics and architecture fingerprint as a baseline (written "
            "only when the gate passes).",
        ),
    ] = None,
    json_out: JsonOpt = None,
    csv_out: CsvOpt = None,
    all_rows: Annotated[
        bool,
        typer.Option(
            "--all-rows",
            rich_help_panel="Output",
            help="One table row per check even when there are many (by default, more than 32 "
            "checks show the passing checks of each rule in one row).",
        ),
    ] = False,
    junit: Annotated[
        str | None,
        typer.Option(
            "--junit",
            metavar="FILE|-",
            rich_help_panel="Output",
            help="Write a JUnit XML report to FILE (- for stdout): one testsuite per checkpoint.",
        ),
    ] = None,
) -> None:
    check_outputs(json=json_out, csv=csv_out, junit=junit, write_baseline=write_baseline)
    if len(models) > 1 and (json_out or write_baseline):
        raise UsageError(
            f"--json and --write-baseline take one checkpoint; {len(models)} were given",
            "run genaudit check once per checkpoint for these (--junit and --csv handle several)",
        )
    # the configuration and the rules are checked before any checkpoint is read
    settings, table = load_settings(run.config)
    settings = settings.with_flags(
        seed=run.seed, device=run.device, batch_size=run.batch_size, num_samples=run.num_samples
    )
    cfg = gate.parse_check_config(
        table, config_file=settings.config_file, rule_flags=tuple(rule or ()),
        default_rules=default_rules, fail_on_warn=fail_on_warn, baseline=baseline,
    )  # fmt: skip
    note(configuration_note(settings.config_file, cfg))
    options = _Options(
        load=load, inputs=inputs, run=run, cfg=cfg, write_baseline=write_baseline,
        json_out=json_out, quiet=any(t == "-" for t in (json_out, csv_out, junit)),
        all_rows=all_rows,
    )  # fmt: skip
    suites: list[tuple[str, gate.GateResult | str]] = []
    codes: list[int] = []
    csv_rows: list[tuple[Any, ...]] = []
    staged: list[tuple[str, str]] = []  # each checkpoint's JSON and baseline, written at the end
    for model in models:
        try:
            result = _check_one(model, options, staged)
        except GenauditError as exc:
            if (len(models) == 1 and not junit and not csv_out) or STATE.debug:
                raise  # mapped to its message and exit code like any other command's error
            _report_error(model, exc, prefix=len(models) > 1)
            suites.append((f"genaudit check {Path(model).name}", " ".join(exc.lines())))
            codes.append(int(exc.exit_code))
            csv_rows.append((model, "", "", "", "", "", "error", "", "", "", " ".join(exc.lines())))
            continue
        suites.append((f"genaudit check {Path(model).name}", result))
        codes.append(result.exit_code)
        csv_rows += [_csv_row(model, e) for e in result.evaluations]
    from ..report.export import to_csv

    with outputs() as out:  # all or nothing
        for target, text in staged:
            out.add(target, text)
        if junit:
            out.add(junit, gate.junit_xml(suites))
        if csv_out:
            out.add(csv_out, to_csv(CHECK_CSV_HEADER, csv_rows))
    if write_baseline and write_baseline in out.written:
        note(f"wrote baseline {write_baseline}")
    if max(codes):
        raise typer.Exit(max(codes))


def configuration_note(config_file: str | None, cfg: gate.CheckConfig) -> str:
    """Which configuration file and which rules the gate uses, e.g. ``configuration:
    pyproject.toml; rules: 2 from the file, 1 from --rule``: a gate that silently ran other
    rules than the user's would pass where theirs fail."""
    if config_file is None:
        where = "none (built-in defaults)"
    else:
        path = Path(config_file)
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(Path.cwd().resolve())
        where = str(path)
    counts: dict[str, int] = {}
    for r in cfg.rules:
        source = {"default": "default", "--rule": "from --rule"}.get(r.source, "from the file")
        counts[source] = counts.get(source, 0) + 1
    order = ("from the file", "default", "from --rule")
    rules = ", ".join(f"{counts[k]} {k}" for k in order if k in counts)
    return f"configuration: {where}; rules: {rules}"


def _csv_row(model: str, e: gate.Evaluation) -> tuple[Any, ...]:
    r = e.rule
    return (model, r.index, r.metric, "" if r.min is None else r.min,
            "" if r.max is None else r.max, r.severity, e.kind, e.name, e.layer or "", e.value,
            e.status)  # fmt: skip


def _report_error(model: str, exc: GenauditError, *, prefix: bool) -> None:
    """What handle_errors prints, naming the checkpoint when there are several; and an
    annotation on GitHub Actions."""
    lines = exc.lines()
    print_error(lines, head=f"{model}: " if prefix else "")
    message = " ".join(lines)
    gate.write_to_github_actions(
        [gate.github_error(message, model)], gate.step_summary_error(model, message), sys.stderr
    )


@dataclass(frozen=True)
class _Options:
    """The command's options, shared by every checkpoint it checks."""

    load: LoadFlags
    inputs: InputFlags
    run: RunFlags
    cfg: gate.CheckConfig
    write_baseline: str | None
    json_out: str | None
    quiet: bool  # something else writes to stdout
    all_rows: bool = False


# What to do about a baseline the gate cannot use, by gate.BaselineError.problem.
BASELINE_HINTS: dict[gate.BaselineProblem, str] = {
    "unreadable": "write one with: genaudit check MODEL --write-baseline FILE",
    "architecture": "a baseline only compares checkpoints of one architecture: write a new one "
    "with --write-baseline",
}


def _check_one(model: str, opts: _Options, staged: list[tuple[str, str]]) -> gate.GateResult:
    """Check one checkpoint: analyses and verdict (:func:`genaudit.gate.run_gate`), then its
    outputs (its JSON and baseline appended to ``staged``); returns the verdict."""
    from ..report.export import envelope, to_json
    from ..report.tables import drift_table, verdict_table
    from .common import open_audit, progress
    from .sdr import sdr_tolerance

    prep: AuditRun = open_audit(model, opts.load, opts.inputs, opts.run)
    cfg, write_baseline = opts.cfg, opts.write_baseline
    tol = sdr_tolerance(prep.table, None)
    transform = gate.stretch_transform(cfg)
    prep.require_data(model)
    records = prep.first_records()
    n = prep.sample_count(opts.run.num_samples)
    settings = gate.RunSettings(
        seed=prep.settings.seed, num_samples=n, batch_size=prep.settings.batch_size,
        device=prep.device, tolerance=tol, transform=transform,
    )  # fmt: skip
    try:
        run = gate.run_gate(
            prep.loaded, records, prep.source, settings, cfg, name=Path(model).name,
            for_baseline=write_baseline is not None, progress=progress,
        )  # fmt: skip
    except gate.BaselineError as exc:
        exc.raw_hint = BASELINE_HINTS[exc.problem]
        raise
    result = run.result
    notes = list(result.notes)
    if write_baseline:
        if run.baseline_document is None:
            notes.append(f"baseline {write_baseline} not written: the gate failed")
        else:
            staged.append((write_baseline, run.baseline_document))
    if opts.json_out:
        config_doc = {**prep.config, "num_samples": n, "tolerance": tol, "check": cfg.to_dict(),
                      "write_baseline": write_baseline}  # fmt: skip
        doc = envelope(
            "check", str(prep.device), config_doc, checkpoint=prep.loaded.describe(),
            results={**result.to_dict(), "fingerprint": run.fingerprint,
                     "metrics": run.metrics.to_dict()},
        )  # fmt: skip
        staged.append((opts.json_out, to_json(doc)))
    if not opts.quiet:
        out = stdout_console()
        title = f"{Path(model).name}: genaudit check, {n} samples, seed {prep.settings.seed}"
        hint = "every check: --all-rows, or --csv / --json"
        rows: Literal["auto", "all"] = "all" if opts.all_rows else "auto"
        out.print(verdict_table(result, title, width=out.width, rows=rows, hint=hint))
        if result.drifted:
            out.print()
            out.print(drift_table(result, width=out.width))
        out.print()
        out.print(result.summary_line("cli"), markup=False, soft_wrap=True)
    for text in notes:
        note(text)
    gate.write_to_github_actions(
        gate.github_annotations(result, model), gate.step_summary(result, model, "cli"), sys.stderr
    )
    return result

"""``genaudit track``: genericity over training, from a series of checkpoints ordered by step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import raise_if_interrupted
from .options import (
    INPUTS,
    MODEL,
    RUN,
    CsvOpt,
    FactorOpt,
    InputFlags,
    JsonOpt,
    LoadFlags,
    RunFlags,
    ToleranceOpt,
    with_options,
)
from .root import check_outputs, command, outputs, stdout_console

SnapshotsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="CKPT...", show_default=False,
        help="Snapshots of one model: files, a folder or a quoted glob; ordered by the last "
        "number in each name (the step), or as given when no name has one.",
    ),
]  # fmt: skip
TrendPlotOpt = Annotated[
    str | None,
    typer.Option(
        "--plot", metavar="FILE.png", rich_help_panel="Output",
        help="Draw each metric over the steps, a line per level, to FILE (.png, .pdf or .svg; "
        "needs genaudit[plot]).",
    ),
]  # fmt: skip


@command("track")
@with_options(MODEL, INPUTS, RUN)
def track_cmd(
    snapshots: SnapshotsArg,
    load: LoadFlags,
    inputs: InputFlags,
    run: RunFlags,
    tolerance: ToleranceOpt = None,
    stretch: Annotated[
        bool,
        typer.Option(
            "--stretch/--no-stretch",
            rich_help_panel="Analysis",
            help="Run the stretch interventions (rel_mse of each level's last convolution).",
        ),
    ] = True,
    factor: FactorOpt = 1.5,
    plot: TrendPlotOpt = None,
    json_out: JsonOpt = None,
    csv_out: CsvOpt = None,
) -> None:
    """Genericity over training: the SDR and stretch metrics of every snapshot of a model, on
    the same inputs, in one table per level (median SDR, SD of log10 SDR, generic fraction,
    stretch rel_mse), with a row per snapshot in step order. The architecture is built from the
    first snapshot; every later one's weights must fit it."""
    check_outputs(json=json_out, csv=csv_out, plot=plot)
    from ..io.snapshots import find_snapshots

    series = find_snapshots(snapshots)  # usage errors before torch is imported

    from ..analysis.tracking import TRACK_CSV_HEADER, TrackPoint, measure
    from ..io.limits import parse_limit
    from ..io.snapshots import reload_snapshot
    from ..model.loading import LoadOptions
    from ..report.export import envelope, to_csv, to_json
    from ..report.trends import plot_trends, trend_tables
    from .common import open_audit, progress
    from .sdr import sdr_tolerance

    prep = open_audit(series[0].path, load, inputs, run)
    tol = sdr_tolerance(prep.table, tolerance)
    prep.require_data(series[0].path)
    n = prep.sample_count(run.num_samples)
    reload_opts = LoadOptions(
        arch=load.arch, arch_kwargs=prep.loaded.arch_kwargs, arch_config=prep.loaded.arch_config,
        state_key=load.state_key, strip_prefix=load.strip_prefix, select=load.select,
        module=load.module, allow_globals=load.allow_global,
        trust_checkpoint=load.trust_checkpoint,
        limits=tuple(parse_limit(text) for text in load.limit),
    )  # fmt: skip
    points: list[TrackPoint] = []
    described: list[dict[str, Any]] = []
    with progress("snapshots", len(series)) as advance:
        for k, snap in enumerate(series):
            loaded = prep.loaded if k == 0 else reload_snapshot(prep.loaded, snap.path, reload_opts)
            point = measure(
                loaded.model, prep.source, step=snap.step, snapshot=snap.name, stretch=stretch,
                factor=factor, num_samples=n, batch_size=prep.settings.batch_size,
                device=prep.device, tolerance=tol, level_overrides=prep.settings.levels,
            )  # fmt: skip
            points.append(point)
            described.append(loaded.describe())
            advance(1)
    raise_if_interrupted()  # before any output
    config_doc = {**prep.config, "num_samples": n, "tolerance": tol, "stretch": stretch,
                  "factor": factor}  # fmt: skip
    with outputs() as outs:  # all or nothing
        if json_out:
            results = [
                {"path": d["path"], "sha256": d["sha256"], "step": p.step, "checkpoint": d,
                 "levels": p.levels, "layers": p.layers}
                for p, d in zip(points, described, strict=True)
            ]  # fmt: skip
            doc = envelope("track", str(prep.device), config_doc, snapshots=results)
            outs.add(json_out, to_json(doc))
        if csv_out:
            rows = [[row[c] for c in TRACK_CSV_HEADER] for p in points for row in p.rows()]
            outs.add(csv_out, to_csv(TRACK_CSV_HEADER, rows))
        if plot:
            title = f"{Path(series[0].path).name} … ({len(series)} snapshots, {n} samples)"
            plot_trends(points, plot, title=title, out=outs, stretch=stretch)
    if "-" not in (json_out, csv_out):
        out = stdout_console()
        out.print(
            f"{len(series)} snapshots, steps {series[0].step} to {series[-1].step}, {n} samples "
            f"each\nSD is of log10 SDR; generic: |log10 SDR| ≤ {tol:g}"
            + (f"; rel_mse: stretch by {factor:g}" if stretch else ""),
            markup=False,
        )
        for table in trend_tables(points, width=out.width, stretch=stretch):
            out.print()
            out.print(table)

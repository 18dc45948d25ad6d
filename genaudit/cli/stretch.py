"""``genaudit stretch``: stretch hidden layers' maps and compare with stretching the output."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..model.levels import split_selectors
from . import raise_if_interrupted
from .options import (
    INPUTS,
    MODEL,
    RUN,
    Axis,
    CsvOpt,
    FactorOpt,
    InputFlags,
    JsonOpt,
    LoadFlags,
    ModelArg,
    RunFlags,
    TransformName,
    with_options,
)
from .root import check_outputs, command, note, outputs, stdout_console

StretchLayersOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--layers", "--layer", metavar="SELECTOR", rich_help_panel="Analysis",
        help="Where to intervene: a level (the last convolution of it that runs), a dotted "
        "name, a glob or an index; repeatable or comma-separated (default: the last convolution "
        "of each level from projection to image).",
    ),
]  # fmt: skip


@command("stretch")
@with_options(MODEL, INPUTS, RUN)
def stretch_cmd(
    model: ModelArg,
    load: LoadFlags,
    inputs: InputFlags,
    run: RunFlags,
    layers: StretchLayersOpt = None,
    factor: FactorOpt = 1.5,
    axis: Annotated[
        Axis,
        typer.Option(
            "--axis",
            rich_help_panel="Analysis",
            help="horizontal (last axis), vertical, depth (3-D) or both.",
        ),
    ] = Axis.horizontal,
    transform: Annotated[
        TransformName,
        typer.Option(
            "--transform",
            rich_help_panel="Analysis",
            help="The intervention: stretch, or shift by whole pixels (a sanity check).",
        ),
    ] = TransformName.stretch,
    grid: Annotated[
        str | None,
        typer.Option(
            "--grid",
            metavar="FILE.png",
            rich_help_panel="Output",
            help="Write the picture grid to FILE and the differences to FILE_diff "
            "(.png, .jpg, .webp or .tif).",
        ),
    ] = None,
    grid_samples: Annotated[
        int,
        typer.Option(
            "--grid-samples",
            metavar="INT",
            min=1,
            rich_help_panel="Output",
            help="Columns (samples) of the picture grid.",
        ),
    ] = 8,
    json_out: JsonOpt = None,
    csv_out: CsvOpt = None,
) -> None:
    """Stretch the activation maps of hidden layers, run the rest of the model unchanged and
    compare with stretching the output: mse, the do-nothing baseline, and rel_mse = mse /
    baseline (0: perfect extrapolation, 1: no better than not intervening)."""
    check_outputs(json=json_out, csv=csv_out, grid=grid)

    from .. import api
    from ..analysis.transforms import make_transform
    from ..report.export import envelope, to_csv, to_json
    from ..report.pictures import write_stretch_grids
    from ..report.tables import stretch_table
    from .common import open_audit, progress

    op = make_transform(transform.value, factor, axis.value)
    prep = open_audit(model, load, inputs, run)
    selectors = split_selectors(layers)
    n = prep.sample_count(run.num_samples)
    with progress("stretch", n) as advance:
        result = api.stretch(
            prep.loaded.model, prep.source, layers=selectors, factor=op.param, axis=op.axis,
            transform=op.name, num_samples=n, batch_size=prep.settings.batch_size,
            device=prep.device, keep_samples=grid_samples if grid else 0,
            level_overrides=prep.settings.levels, progress=advance,
        )  # fmt: skip
    raise_if_interrupted()  # before any output
    written: tuple[Path, ...] = ()
    config_doc = {**prep.config, "num_samples": n, "layers": selectors or ["default"],
                  "transform": op.to_dict(), "grid": grid}  # fmt: skip
    with outputs() as outs:  # all or nothing
        if grid:
            written = write_stretch_grids(result, grid, out=outs)
        if json_out:
            doc = envelope(
                "stretch", str(prep.device), config_doc, checkpoint=prep.loaded.describe(),
                results=result.to_dict(),
            )  # fmt: skip
            outs.add(json_out, to_json(doc))
        if csv_out:
            outs.add(csv_out, to_csv(*result.csv_rows()))
    if "-" not in (json_out, csv_out):
        out = stdout_console()
        title = f"{Path(model).name}: {op.describe()} at hidden layers vs. the output, {n} samples"
        out.print(stretch_table(result, title=title, width=out.width))
        for path in written:
            out.print(f"wrote {path}", markup=False)
    for text in result.notes:
        note(text)

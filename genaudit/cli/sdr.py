"""``genaudit sdr``: the spectral density ratio of every (filter, activation map) pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from ..config import DEFAULT_TOLERANCE, check_keys
from ..errors import UsageError
from ..model.levels import split_selectors
from . import raise_if_interrupted
from .options import (
    INPUTS,
    MODEL,
    RUN,
    AllRowsOpt,
    CsvOpt,
    InputFlags,
    JsonOpt,
    LayersOpt,
    LoadFlags,
    ModelArg,
    PlotOpt,
    RunFlags,
    ToleranceOpt,
    with_options,
)
from .root import check_outputs, command, note, outputs, stdout_console


@command("sdr")
@with_options(MODEL, INPUTS, RUN)
def sdr_cmd(
    model: ModelArg,
    load: LoadFlags,
    inputs: InputFlags,
    run: RunFlags,
    layers: LayersOpt = None,
    tolerance: ToleranceOpt = None,
    pairs: Annotated[
        bool,
        typer.Option(
            "--pairs", help="Include every pair's SDR in the JSON.", rich_help_panel="Output"
        ),
    ] = False,
    plot: PlotOpt = None,
    json_out: JsonOpt = None,
    csv_out: CsvOpt = None,
    all_rows: AllRowsOpt = False,
) -> None:
    """Spectral density ratio (SDR) of every (filter, activation map) pair of every convolution,
    summarised per layer and per level; the trace method for Linear layers and convolutions fed
    1×1 maps. log10 SDR = 0 means the kernel is generic with respect to its input."""
    check_outputs(json=json_out, csv=csv_out, plot=plot)

    from .. import api
    from ..analysis import distributed
    from ..analysis.sdr import SDRResult
    from ..model.layers import select_layers
    from ..report.export import envelope, to_csv, to_json
    from ..report.sdr_tables import levels_table, sdr_table
    from .common import open_audit, progress

    launch = distributed.launch_env()  # set by torchrun; None for a single process
    if launch is not None:
        distributed.bind_local_device(launch)  # before loading: "cuda" is cuda:LOCAL_RANK
    prep = open_audit(model, load, inputs, run)
    tol = sdr_tolerance(prep.table, tolerance)
    prep.require_data(model)
    records = prep.first_records()
    selectors = split_selectors(layers)
    chosen = select_layers(records, selectors)
    n = prep.sample_count(run.num_samples)
    with distributed.process_group(launch, prep.device) as group:
        sdr_args: dict[str, Any] = {
            "layers": chosen, "num_samples": n, "batch_size": prep.settings.batch_size,
            "device": prep.device, "tolerance": tol, "distributed": group,
        }  # fmt: skip
        if group is not None and not group.is_main:
            # the other ranks share the work, then stay silent: rank 0 writes every output
            api.sdr(prep.loaded.model, prep.source, **sdr_args)
            return
        with progress("sampling", n) as advance:
            result = api.sdr(prep.loaded.model, prep.source, **sdr_args, progress=advance)
    if result.oom_halvings:
        note(
            f"out of memory on {prep.device} at batch size {result.batch_size}: halved "
            f"{result.oom_halvings} time(s), continued with batch size "
            f"{result.batch_size_final} from the same sample"
        )
    for text in result.notes:  # e.g. functional convolutions that were not analysed
        note(text)
    config_doc = {**prep.config, "num_samples": n, "layers": selectors or ["all"],
                  "tolerance": tol, "pairs": pairs}  # fmt: skip
    raise_if_interrupted()  # before any output
    with outputs() as outs:  # all or nothing
        if json_out:
            doc = envelope(
                "sdr", str(prep.device), config_doc, checkpoint=prep.loaded.describe(),
                results=result.to_dict(pairs=pairs),
            )  # fmt: skip
            outs.add(json_out, to_json(doc))
        if csv_out:
            outs.add(csv_out, to_csv(SDRResult.CSV_HEADER, result.csv_rows()))
        if plot:
            from ..report.plots import plot_sdr

            title = f"{Path(model).name}: log10 SDR per layer ({n} samples)"
            plot_sdr(result, plot, title=title, out=outs)
    if "-" not in (json_out, csv_out):
        out = stdout_console()
        title = (
            f"{Path(model).name}: SDR per layer, {n} samples. mean, SD, percentiles and histogram "
            f"are of log10 SDR; generic: |log10 SDR| ≤ {tol:g}"
        )
        row_mode = table_rows(all_rows, selectors)
        out.print(sdr_table(result, title=title, width=out.width, rows=row_mode, hint=ROWS_HINT))
        out.print()
        out.print(
            levels_table(
                result, title="per level (pairs of all its layers pooled)", width=out.width
            )
        )


#: What a summarised table's caption says about listing every layer.
ROWS_HINT = "every layer: --all-rows, or pick some with --layers"


def table_rows(all_rows: bool, selectors: list[str]) -> Literal["auto", "all"]:
    """Every layer its own row when asked for, or when the user chose the layers."""
    return "all" if all_rows or selectors else "auto"


def sdr_tolerance(table: dict[str, Any], flag: float | None) -> float:
    """The genericity tolerance: flag, else ``[sdr] tolerance`` in the configuration, else 0.1."""
    value: Any = flag
    if value is None:
        section = table.get("sdr", {})
        if not isinstance(section, dict):
            raise UsageError("[sdr] in the configuration must be a table")
        check_keys(section, ["tolerance"], "[sdr]")
        value = section.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(f"the SDR tolerance must be a positive number (got {value!r})")
    return float(value)

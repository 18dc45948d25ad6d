"""``genaudit layers`` (the audited layers of a model) and ``genaudit archs`` (the registry)."""

from __future__ import annotations

from pathlib import Path

from ..model.levels import split_selectors
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
    RunFlags,
    with_options,
)
from .root import check_outputs, command, outputs, stdout_console
from .sdr import ROWS_HINT, table_rows

LAYER_CSV_HEADER = (
    "index", "layer", "type", "input_shape", "output_shape", "kernel_size", "stride",
    "dilation", "groups", "level", "pairs", "analysis", "reason",
)  # fmt: skip


@command("layers")
@with_options(MODEL, INPUTS, RUN.only("seed", "device", "config"))
def layers_cmd(
    model: ModelArg,
    load: LoadFlags,
    inputs: InputFlags,
    run: RunFlags,
    layers: LayersOpt = None,
    json_out: JsonOpt = None,
    csv_out: CsvOpt = None,
    all_rows: AllRowsOpt = False,
) -> None:
    """Inventory: every Linear and convolution layer in execution order, with shapes, level and
    which analysis applies (SDR, trace method, or skipped and why)."""
    check_outputs(json=json_out, csv=csv_out)

    from ..model.layers import select_layers
    from ..report.export import envelope, to_csv, to_json
    from ..report.tables import layers_table
    from .common import open_audit

    prep = open_audit(model, load, inputs, run)
    selectors = split_selectors(layers)
    records = select_layers(prep.first_records(), selectors)
    with outputs() as outs:  # all or nothing
        if json_out:
            doc = envelope(
                "layers", str(prep.device), prep.config, checkpoint=prep.loaded.describe(),
                results={"layers": [r.to_dict() for r in records]},
            )  # fmt: skip
            outs.add(json_out, to_json(doc))
        if csv_out:
            rows = [
                (r.index, r.name, r.type, _shape(r.input_shape), _shape(r.output_shape),
                 _shape(r.kernel_size), _shape(r.stride), _shape(r.dilation), r.groups, r.level,
                 r.pairs, r.analysis, r.reason or "")
                for r in records
            ]  # fmt: skip
            outs.add(csv_out, to_csv(LAYER_CSV_HEADER, rows))
    if "-" not in (json_out, csv_out):
        out = stdout_console()
        title = f"{Path(model).name}: {len(records)} layers ({prep.loaded.arch})"
        row_mode = table_rows(all_rows, selectors)
        table = layers_table(records, title=title, width=out.width, rows=row_mode, hint=ROWS_HINT)
        out.print(table)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


@command("archs")
def archs_cmd(json_out: JsonOpt = None, csv_out: CsvOpt = None) -> None:
    """The registry of standard architectures usable with --arch NAME, and their arguments."""
    check_outputs(json=json_out, csv=csv_out)

    from ..io import registry as zoo
    from ..report.export import to_csv, to_json
    from ..report.tables import archs_table

    entries = [zoo.get(name) for name in zoo.list_architectures()]
    with outputs() as outs:  # all or nothing
        if json_out:
            doc = {e.name: {"summary": e.summary, "kwargs": e.defaults()} for e in entries}
            outs.add(json_out, to_json(doc))
        if csv_out:
            rows = [(e.name, k, repr(v), e.summary) for e in entries
                    for k, v in e.defaults().items()]  # fmt: skip
            outs.add(csv_out, to_csv(("arch", "argument", "default", "summary"), rows))
    if "-" not in (json_out, csv_out):
        out = stdout_console()
        title = "architectures for --arch NAME (keyword arguments via --arch-kwargs JSON)"
        out.print(archs_table(entries, title, width=out.width))

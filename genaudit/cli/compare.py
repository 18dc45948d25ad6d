"""``genaudit compare``: a decoder's genericity against its encoder's, layer by mirrored layer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from . import raise_if_interrupted
from .options import (
    INPUTS,
    MODEL,
    RUN,
    CsvOpt,
    InputFlags,
    JsonOpt,
    LoadFlags,
    PlotOpt,
    RunFlags,
    ToleranceOpt,
    with_options,
)
from .root import check_outputs, command, note, outputs, stdout_console

DECODER_MODEL = MODEL.prefixed("decoder", "decoder_load", "Decoder")
DECODER_INPUTS = INPUTS.prefixed(
    "decoder", "decoder_inputs", "Decoder", z_shape="--z-shape", z_dist="--z-dist"
)
ENCODER_MODEL = MODEL.prefixed("encoder", "encoder_load", "Encoder")
ENCODER_INPUTS = INPUTS.prefixed("encoder", "encoder_inputs", "Encoder", inputs="--inputs")


@command("compare")
@with_options(DECODER_MODEL, DECODER_INPUTS, ENCODER_MODEL, ENCODER_INPUTS, RUN)
def compare_cmd(
    decoder: Annotated[
        str, typer.Argument(metavar="DECODER", help="Generator or decoder checkpoint.")
    ],
    encoder: Annotated[
        str, typer.Argument(metavar="ENCODER", help="Encoder (or discriminator) checkpoint.")
    ],
    decoder_load: LoadFlags,
    decoder_inputs: InputFlags,
    encoder_load: LoadFlags,
    encoder_inputs: InputFlags,
    run: RunFlags,
    pair: Annotated[
        list[str] | None,
        typer.Option(
            "--pair",
            metavar="DECODER_LAYER=ENCODER_LAYER",
            rich_help_panel="Analysis",
            help="Pair these two layers (dotted names, globs, indices or levels naming one "
            "layer each) instead of mirroring automatically; repeatable.",
        ),
    ] = None,
    tolerance: ToleranceOpt = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            rich_help_panel="Run",
            help="--decoder-trust-checkpoint and --encoder-trust-checkpoint together.",
        ),
    ] = False,
    plot: PlotOpt = None,
    json_out: JsonOpt = None,
    csv_out: CsvOpt = None,
) -> None:
    """Decoder versus encoder: the log10-SDR distributions of mirrored layers side by side,
    with a Kolmogorov–Smirnov test and a Brown–Forsythe test of spread. Layers are paired from
    the image end (the decoder's last convolution with the encoder's first, then inwards), and
    each pair must mirror (shapes reversed); --pair pairs layers by hand. The encoder is fed the
    decoder's outputs unless it is given inputs of its own (--inputs, --encoder-latents …)."""
    from ..analysis.compare import parse_pairs

    pairs = parse_pairs(pair or [])
    check_outputs(json=json_out, csv=csv_out, plot=plot)
    if trust_checkpoint:
        decoder_load = replace(decoder_load, trust_checkpoint=True)
        encoder_load = replace(encoder_load, trust_checkpoint=True)

    from ..analysis.compare import compare_results, plan_pairs
    from ..analysis.sdr import run_sdr
    from ..model.inputs import generated_source
    from ..report.export import envelope, to_csv, to_json
    from ..report.layout import layer_range_text
    from ..report.tables import comparison_table
    from .common import open_audit, progress
    from .sdr import sdr_tolerance

    dec = open_audit(decoder, decoder_load, decoder_inputs, run, flag_prefix="decoder-")
    e = encoder_inputs
    own = e.inputs or e.latents or e.sampler or e.z_shape or e.generator  # inputs of its own
    fed = None if own else generated_source(dec.loaded.model, dec.source, dec.device)
    enc = open_audit(encoder, encoder_load, encoder_inputs, run, source=fed, flag_prefix="encoder-")
    enc.require_data(encoder)
    tol = sdr_tolerance(dec.table, tolerance)
    records = {"decoder": dec.first_records(), "encoder": enc.first_records()}
    plan_pairs(records["decoder"], records["encoder"], pairs or None)  # fails before sampling
    results = []
    for prep, side in ((dec, "decoder"), (enc, "encoder")):
        n = prep.sample_count(run.num_samples)
        with progress(side, n) as advance:
            results.append(
                run_sdr(prep.loaded.model, records[side], prep.source, num_samples=n,
                        batch_size=prep.settings.batch_size, device=prep.device, tolerance=tol,
                        progress=advance)
            )  # fmt: skip
    comparison = compare_results(results[0], results[1], pairs=pairs or None)
    raise_if_interrupted()  # before any output
    with outputs() as outs:  # all or nothing
        if plot:
            from ..report.plots import plot_comparison

            title = f"{Path(decoder).name} vs {Path(encoder).name}"
            plot_comparison(comparison, plot, title=title, out=outs)
        if json_out:
            doc = envelope(
                "compare", str(dec.device),
                {"decoder": dec.config, "encoder": enc.config, "tolerance": tol,
                 "pairs": [list(p) for p in pairs]},
                checkpoint={"decoder": dec.loaded.describe(), "encoder": enc.loaded.describe()},
                results={"comparison": comparison.to_dict(), "decoder": results[0].to_dict(),
                         "encoder": results[1].to_dict()},
            )  # fmt: skip
            outs.add(json_out, to_json(doc))
        if csv_out:
            outs.add(csv_out, to_csv(*comparison.csv_rows()))
    if "-" not in (json_out, csv_out):
        out = stdout_console()
        title = (f"decoder {Path(decoder).name} vs encoder {Path(encoder).name}: log10 SDR of "
                 "mirrored layers")  # fmt: skip
        out.print(comparison_table(comparison, title=title, width=out.width))
        for side, names in (("decoder", comparison.unpaired_decoder),
                            ("encoder", comparison.unpaired_encoder)):  # fmt: skip
            if names:
                out.print(f"not paired ({side}): {layer_range_text(names)}", markup=False)
        for lv in comparison.levels:
            if not lv.mirrored:
                out.print(f"paired by hand, shapes do not mirror: {lv.decoder_layer} / "
                          f"{lv.encoder_layer}", markup=False)  # fmt: skip
    for text in comparison.notes:
        note(text)

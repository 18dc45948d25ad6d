"""Decoder versus encoder (paper Sec. 4.2) through the library: which layers are paired (they must
mirror each other), explicit pairs, the two-sample tests, the plots."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, ROOT
from torch import nn

from genaudit.analysis.compare import (
    PAIR_HINT,
    Comparison,
    PairPlan,
    compare_results,
    is_mirror,
    mirror_pairs,
    parse_pairs,
    plan_pairs,
)
from genaudit.analysis.sdr import LayerSDR, SDRResult, Summary, run_sdr
from genaudit.errors import ExitCode, NothingToAnalyseError, UsageError, render_options
from genaudit.io import registry as zoo
from genaudit.model.inputs import InputOptions, InputSource, generated_source, make_input_source
from genaudit.model.layers import LayerRecord, walk_layers
from genaudit.model.loading import LoadOptions, load_model

CPU = torch.device("cpu")
SAMPLES = 64


def _analyse(model: nn.Module, source: InputSource) -> SDRResult:
    first = next(source.batches(2, 2, CPU))
    records = walk_layers(model, first)
    return run_sdr(model, records, source, num_samples=SAMPLES, batch_size=32, device=CPU)


def _pair(decoder: str, encoder: str) -> tuple[SDRResult, SDRResult]:
    """SDR of a fixture decoder on latents and of a fixture encoder on the decoder's outputs."""
    dec = load_model(FIXTURES / f"{decoder}.safetensors", LoadOptions()).model
    enc = load_model(FIXTURES / f"{encoder}.safetensors", LoadOptions()).model
    latents = make_input_source(dec, InputOptions(seed=0))
    return _analyse(dec, latents), _analyse(enc, generated_source(dec, latents, CPU))


def _records(result: SDRResult) -> list[LayerRecord]:
    return [x.record for x in result.layers]


def _names(plan: PairPlan) -> list[tuple[str, str]]:
    return [(p.decoder.name, p.encoder.name) for p in plan.pairs]


def _unanalysed(records: list[LayerRecord]) -> SDRResult:
    """An SDR result that only carries the layer records (for pairings refused before any use)."""
    return SDRResult(tuple(LayerSDR(r, r.analysis) for r in records), (), 0, 0.1)


@pytest.fixture(scope="module")
def vae() -> tuple[SDRResult, SDRResult]:
    return _pair("vae64_decoder", "vae64_encoder")


@pytest.fixture(scope="module")
def dcgan() -> tuple[SDRResult, SDRResult]:
    return _pair("dcgan64_generator", "dcgan64_discriminator")


# --------------------------------------------------------------------------- automatic pairing

VAE_PAIRS = [
    ("features.1", "features.6"),  # 128×4×4 → 64×8×8 and back (the encoder's readout)
    ("features.3", "features.4"),
    ("features.5", "features.2"),
    ("features.7", "features.0"),  # the image layer and the layer that reads the image
]


def test_vae_pairs_automatically_and_mirrors(vae: tuple[SDRResult, SDRResult]) -> None:
    dec, enc = vae
    comparison = compare_results(dec, enc)
    assert comparison.pairing == "automatic"
    assert [(lv.decoder_layer, lv.encoder_layer) for lv in comparison.levels] == VAE_PAIRS
    assert [lv.level for lv in comparison.levels] == ["coarse", "intermediate", "fine", "image"]
    assert all(lv.mirrored for lv in comparison.levels)
    assert comparison.unpaired_decoder == comparison.unpaired_encoder == ()
    by_dec = {x.record.name: x.record for x in dec.layers}
    by_enc = {x.record.name: x.record for x in enc.layers}
    for d, e in VAE_PAIRS:
        assert by_dec[d].input_shape == by_enc[e].output_shape
        assert by_dec[d].output_shape == by_enc[e].input_shape
    # the same plan from the dry run's records alone, before any SDR is computed
    assert _names(plan_pairs(_records(dec), _records(enc))) == VAE_PAIRS


def test_statistics_are_consistent(vae: tuple[SDRResult, SDRResult]) -> None:
    doc = compare_results(*vae).to_dict()
    assert doc["pairing"] == "automatic" and doc["compared_levels"] == 4
    assert doc["unpaired"] == {"decoder": [], "encoder": []} and doc["notes"] == []
    for lv in doc["levels"]:
        assert lv["mirrored"] is True
        assert 0 <= lv["ks_pvalue"] <= 1 and 0 <= lv["levene_pvalue"] <= 1
        ratio = lv["encoder"]["sd_log10_sdr"] / lv["decoder"]["sd_log10_sdr"]
        assert np.isclose(lv["sd_ratio_encoder_over_decoder"], ratio)
        assert lv["decoder_more_generic"] == (ratio > 1)


def test_fixture_decoder_is_more_generic_than_encoder(vae: tuple[SDRResult, SDRResult]) -> None:
    # the paper's Sec. 4.2 observation, as measured on the bundled fixtures (README reports it)
    comparison = compare_results(*vae).to_dict()
    assert comparison["decoder_more_generic_levels"] == comparison["compared_levels"]


def test_csv_rows(vae: tuple[SDRResult, SDRResult]) -> None:
    comparison = compare_results(*vae)
    header, rows = comparison.csv_rows()
    assert header == Comparison.CSV_HEADER and len(rows) == 4
    assert all(len(row) == len(header) for row in rows)
    row = dict(zip(header, rows[0], strict=True))
    assert (row["decoder_layer"], row["encoder_layer"], row["mirrored"]) == (*VAE_PAIRS[0], True)
    assert row["ks_pvalue"] == comparison.levels[0].ks_pvalue


def test_generator_and_discriminator_pair_from_the_image_end(
    dcgan: tuple[SDRResult, SDRResult],
) -> None:
    gen, disc = dcgan
    comparison = compare_results(gen, disc)
    # the generator's projection main.0 (fed 1×1: trace method) is never paired; the
    # discriminator's readout main.11 (128×4×4 → 1×1×1) mirrors nothing and is left unpaired
    assert [(lv.decoder_layer, lv.encoder_layer) for lv in comparison.levels] == [
        ("main.3", "main.8"), ("main.6", "main.5"), ("main.9", "main.2"), ("main.12", "main.0")
    ]  # fmt: skip
    assert all(lv.mirrored for lv in comparison.levels)
    assert comparison.unpaired_decoder == () and comparison.unpaired_encoder == ("main.11",)
    assert comparison.to_dict()["unpaired"] == {"decoder": [], "encoder": ["main.11"]}


def test_swapped_decoder_and_encoder_are_refused(dcgan: tuple[SDRResult, SDRResult]) -> None:
    gen, disc = dcgan
    with pytest.raises(UsageError) as info:
        compare_results(disc, gen)
    err = info.value
    assert err.exit_code == ExitCode.USAGE
    assert err.message == (
        "decoder main.11 (128×4×4 → 1×1×1) does not mirror encoder main.3 (128×4×4 → 64×8×8)"
    )
    assert err.hint is not None and "swapped" in err.hint
    assert "--pair DECODER_LAYER=ENCODER_LAYER" in err.hint and "repeatable" in err.hint
    assert len(err.lines()) == 2 and all("\n" not in line for line in err.lines())


def test_layers_of_other_sizes_are_refused(dcgan: tuple[SDRResult, SDRResult]) -> None:
    _, disc = dcgan
    narrow = zoo.build("dcgan_generator", {"ngf": 8, "nz": 64, "nc": 1, "image_size": 64})
    gen = walk_layers(narrow, (torch.randn(2, 64, 1, 1),))
    message = (
        "decoder main.12 (8×32×32 → 1×64×64) does not mirror encoder main.0 (1×64×64 → 16×32×32)"
    )
    with pytest.raises(UsageError) as info:
        plan_pairs(gen, _records(disc))
    assert info.value.message == message and info.value.hint == render_options(PAIR_HINT)
    assert info.value.options == ("pair",)
    assert info.value.lines("api")[1].startswith("pair layers by hand with pair= DECODER_LAYER")
    with pytest.raises(UsageError, match="does not mirror"):
        compare_results(_unanalysed(gen), disc)


def test_is_mirror_compares_channels_too(vae: tuple[SDRResult, SDRResult]) -> None:
    dec, enc = (_records(r) for r in vae)
    d = next(r for r in dec if r.name == "features.1")
    e = next(r for r in enc if r.name == "features.6")
    assert is_mirror(d, e) and is_mirror(e, d)  # symmetric: each one undoes the other
    assert not is_mirror(d, d)
    assert not is_mirror(d, replace(e, output_shape=(64, 4, 4)))  # same grid, other channels


# --------------------------------------------------------------------------- explicit pairs


def test_explicit_pairs(vae: tuple[SDRResult, SDRResult]) -> None:
    dec, enc = vae
    # a dotted name, an index, a level naming one SDR layer, a glob matching one SDR layer
    pairs = [("image", "0"), ("features.1", "readout"), ("features.[3]", "features.4")]
    comparison = compare_results(dec, enc, pairs=pairs)
    assert comparison.pairing == "explicit"
    assert [(lv.decoder_layer, lv.encoder_layer) for lv in comparison.levels] == [
        ("features.7", "features.0"), ("features.1", "features.6"), ("features.3", "features.4")
    ]  # fmt: skip
    assert all(lv.mirrored for lv in comparison.levels)
    assert comparison.unpaired_decoder == ("features.5",)
    assert comparison.unpaired_encoder == ("features.2",)


def test_explicit_pairs_that_do_not_mirror_are_kept(vae: tuple[SDRResult, SDRResult]) -> None:
    comparison = compare_results(
        *vae, pairs=[("features.1", "features.4"), ("fine", "intermediate")]
    )
    assert [lv.mirrored for lv in comparison.levels] == [False, True]
    assert [lv["mirrored"] for lv in comparison.to_dict()["levels"]] == [False, True]
    _, rows = comparison.csv_rows()
    assert [row[3] for row in rows] == [False, True]


def test_explicit_pairs_across_model_kinds(dcgan: tuple[SDRResult, SDRResult]) -> None:
    gen, disc = dcgan
    comparison = compare_results(gen, disc, pairs=parse_pairs(["main.3=readout"]))
    (lv,) = comparison.levels
    assert (lv.decoder_layer, lv.encoder_layer, lv.mirrored) == ("main.3", "main.11", False)
    assert lv.decoder.pairs == 8192 and lv.encoder.pairs == 128
    with pytest.raises(UsageError, match="'coarse' matches 2 encoder layers") as info:
        compare_results(gen, disc, pairs=[("main.3", "coarse")])
    assert "main.5 [2, coarse], main.8 [3, coarse]" in info.value.message


@pytest.mark.parametrize(
    ("pair", "message", "hint"),
    [
        (("nope", "features.0"), "no decoder layer matches 'nope'",
         "decoder layers with SDR values: features.1 [1, coarse], features.3 [2, intermediate]"),
        (("features.1", "99"), "no encoder layer matches '99'", "features.0 [0, fine]"),
        (("fc", "features.0"), "'fc' names no decoder layer with SDR values: fc (trace)",
         "features.7 [4, image]"),
        (("linear", "features.0"), "'linear' names no decoder layer with SDR values: fc (trace)",
         "features.1 [1, coarse]"),
        (("features.1", "4"), "'4' names no encoder layer with SDR values: fc (trace)",
         "encoder layers with SDR values"),
        (("features.*", "features.0"),
         "'features.*' matches 4 decoder layers with SDR values: features.1 [1, coarse]",
         "name one of them"),
        (("features.[13]", "features.0"), "'features.[13]' matches 2 decoder layers",
         "name one of them"),
    ],
)  # fmt: skip
def test_bad_explicit_pairs(
    vae: tuple[SDRResult, SDRResult], pair: tuple[str, str], message: str, hint: str
) -> None:
    dec, enc = vae
    for call in (
        lambda: plan_pairs(_records(dec), _records(enc), [pair]),
        lambda: compare_results(dec, enc, pairs=[pair]),
    ):
        with pytest.raises(UsageError) as info:
            call()
        assert message in info.value.message
        assert info.value.hint is not None and hint in info.value.hint


def test_the_same_pair_twice_is_refused(vae: tuple[SDRResult, SDRResult]) -> None:
    with pytest.raises(UsageError, match=r"already paired by --pair 1=features\.6"):
        compare_results(*vae, pairs=[("1", "features.6"), ("coarse", "readout")])


def test_layer_skipped_by_the_analysis_is_not_paired(vae: tuple[SDRResult, SDRResult]) -> None:
    # the dry run expected SDR values for features.7, but the analysis skipped it
    dec, enc = vae
    layers = tuple(
        LayerSDR(x.record, "skipped", reason="too small") if x.record.name == "features.7" else x
        for x in dec.layers
    )
    skipped = SDRResult(layers, dec.levels, dec.num_samples, dec.tolerance)
    with pytest.raises(UsageError, match="does not mirror"):  # the image end is gone
        compare_results(skipped, enc)
    with pytest.raises(UsageError, match=r"features.7 \(skipped: too small\)"):
        compare_results(skipped, enc, pairs=[("features.7", "features.0")])


# --------------------------------------------------------------------------- parse_pairs


def test_parse_pairs() -> None:
    assert parse_pairs(None) == [] and parse_pairs([]) == []
    assert parse_pairs(["main.3=main.8", " main.6 = main.5 ,main.9=2", "image=0"]) == [
        ("main.3", "main.8"), ("main.6", "main.5"), ("main.9", "2"), ("image", "0")
    ]  # fmt: skip
    assert parse_pairs(["features.*=main.[0]"]) == [("features.*", "main.[0]")]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("main.3", "expected DECODER_LAYER=ENCODER_LAYER with one '='"),
        ("a=b=c", "with one '='"),
        ("=main.8", "the decoder layer is missing"),
        ("main.3= ", "the encoder layer is missing"),
        ("=", "the decoder layer is missing"),
    ],
)
def test_parse_pairs_errors(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        parse_pairs(["main.3=main.8", value])
    assert info.value.exit_code == ExitCode.USAGE
    assert repr(value.strip()) in info.value.message and "--pair main.3=main.8" in str(
        info.value.hint
    )


def test_compare_module_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "from genaudit.analysis.compare import parse_pairs, plan_pairs\n"
        "assert parse_pairs(['a=b']) == [('a', 'b')]\n"
        "assert 'torch' not in sys.modules and 'genaudit.analysis.sdr' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- edge cases


def test_nothing_to_compare() -> None:
    empty = SDRResult((), (), 0, 0.1)
    assert mirror_pairs((), ()) == PairPlan(())
    with pytest.raises(NothingToAnalyseError):
        plan_pairs((), ())
    with pytest.raises(NothingToAnalyseError):
        compare_results(empty, empty)


def test_pair_without_enough_values_gets_a_note(vae: tuple[SDRResult, SDRResult]) -> None:
    dec, enc = vae

    def thinned(result: SDRResult, name: str) -> SDRResult:
        layers = []
        for x in result.layers:
            if x.record.name == name and x.values is not None:
                values = np.full_like(x.values, np.nan)
                values.flat[0] = 1.0  # one defined value is not a distribution
                logs = np.log10(values).ravel()
                summary = Summary.of(logs, values.size, result.tolerance)
                x = LayerSDR(x.record, "sdr", values=values, input_index=x.input_index,
                             summary=summary, samples=x.samples)  # fmt: skip
            layers.append(x)
        return SDRResult(tuple(layers), result.levels, result.num_samples, result.tolerance)

    comparison = compare_results(thinned(dec, "features.7"), enc)
    assert [lv.decoder_layer for lv in comparison.levels] == ["features.1", "features.3",
                                                              "features.5"]  # fmt: skip
    (note,) = comparison.notes
    assert note.startswith("decoder features.7 / encoder features.0 not compared: 1 and")
    with pytest.raises(NothingToAnalyseError, match="no pair") as info:
        compare_results(thinned(dec, "features.7"), enc, pairs=[("image", "0")])
    assert "features.7" in str(info.value.hint)


# --------------------------------------------------------------------------- plots


def test_comparison_plot(vae: tuple[SDRResult, SDRResult], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from genaudit.report.plots import plot_comparison

    png = tmp_path / "cmp.png"
    plot_comparison(compare_results(*vae), png, title="vae64")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sdr_plot(vae: tuple[SDRResult, SDRResult], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from genaudit.report.plots import plot_sdr

    png = tmp_path / "sdr.png"
    plot_sdr(vae[0], png)
    assert png.stat().st_size > 1000

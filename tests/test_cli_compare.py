"""`genaudit compare` through the command line: mirrored pairing, --pair, per-side flags."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genaudit.cli import app

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEC = str(FIXTURES / "vae64_decoder.safetensors")
ENC = str(FIXTURES / "vae64_encoder.safetensors")
GEN = str(FIXTURES / "dcgan64_generator.safetensors")
DISC = str(FIXTURES / "dcgan64_discriminator.safetensors")
N = ("--num-samples", "64", "--batch-size", "32")
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["compare", *args])


def test_vae_decoder_vs_encoder(tmp_path: Path) -> None:
    out = tmp_path / "report" / "compare.json"  # the folder does not exist yet
    res = run(DEC, ENC, *N, "--json", str(out), "--csv", str(tmp_path / "compare.csv"))
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    comp = doc["results"]["comparison"]
    assert comp["pairing"] == "automatic"
    assert [lv["decoder_layer"] for lv in comp["levels"]] == [
        "features.7", "features.5", "features.3", "features.1",
    ] or [lv["decoder_layer"] for lv in comp["levels"]] == [
        "features.1", "features.3", "features.5", "features.7",
    ]  # fmt: skip
    assert all(lv["mirrored"] for lv in comp["levels"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "compare.csv").read_text())))
    assert len(rows) == len(comp["levels"])
    assert "decoder" in res.stdout and "encoder" in res.stdout


def test_layers_that_do_not_mirror_stop_with_exit_2() -> None:
    # a discriminator given as the decoder: its readout does not mirror the generator's image
    res = run(DISC, GEN, *N, "--decoder-inputs", str(FIXTURES / "missing.pt"))
    assert res.exit_code == 3  # the missing file is reported first
    res = run(DISC, GEN, *N, "--decoder-generator", GEN, "--encoder-z-shape", "64,1,1")
    assert res.exit_code == 2, res.output
    assert "does not mirror" in res.stderr and "--pair" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2


def test_generator_vs_discriminator_reports_the_unpaired_layer() -> None:
    res = run(GEN, DISC, *N)
    assert res.exit_code == 0, res.output
    assert "not paired (encoder): 1 layer: main.11" in res.stdout


def test_pair_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    res = run(DEC, ENC, *N, "--pair", "features.1=features.6", "--pair", "image=0",
              "--json", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    comp = json.loads(out.read_text())["results"]["comparison"]
    assert comp["pairing"] == "explicit"
    pairs = {(lv["decoder_layer"], lv["encoder_layer"]) for lv in comp["levels"]}
    assert pairs == {("features.1", "features.6"), ("features.7", "features.0")}
    odd = run(DEC, ENC, *N, "--pair", "features.1=features.4")
    assert odd.exit_code == 0, odd.output
    assert "paired by hand, shapes do not mirror: features.1 / features.4" in odd.stdout
    bad = run(DEC, ENC, *N, "--pair", "features.1=nosuchlayer")
    assert bad.exit_code == 2 and "nosuchlayer" in bad.stderr


@pytest.mark.parametrize("value", ["features.1", "=features.6", "features.1="])
def test_malformed_pair(value: str) -> None:
    res = run(DEC, ENC, "--pair", value)
    assert res.exit_code == 2


def test_same_model_and_input_flags_for_each_side(tmp_path: Path) -> None:
    # the per-side architecture flags: wrong kwargs for the decoder → its weights do not fit
    res = run(DEC, ENC, *N, "--decoder-arch", "vae_decoder", "--decoder-arch-kwargs",
              '{"ngf": 8}')  # fmt: skip
    assert res.exit_code == 3, res.output
    res = run(DEC, ENC, *N, "--encoder-arch-kwargs", "{nope")
    assert res.exit_code == 2
    # the decoder's latents by the per-side flag and by the shared alias
    for flag in ("--decoder-z-dist", "--z-dist"):
        ok = run(DEC, ENC, *N, flag, "uniform", "--json", str(tmp_path / "z.json"))
        assert ok.exit_code == 0, ok.output
        doc = json.loads((tmp_path / "z.json").read_text())
        assert doc["config"]["decoder"]["inputs"]["dist"] == "uniform"

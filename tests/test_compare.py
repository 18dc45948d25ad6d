"""Decoder versus encoder (paper Sec. 4.2) and the plots, on the VAE fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from typer.testing import CliRunner

from genaudit.cli import app
from genaudit.compare import compare_results, mirror_pairs
from genaudit.errors import NothingToAnalyseError

runner = CliRunner()
DEC = str(FIXTURES / "vae64_decoder.safetensors")
ENC = str(FIXTURES / "vae64_encoder.safetensors")


@pytest.fixture(scope="module")
def compared() -> dict:
    result = runner.invoke(app, ["compare", DEC, ENC, "--num-samples", "64", "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_mirrored_layers_have_matching_shapes(compared: dict) -> None:
    dec = {x["name"]: x for x in compared["results"]["decoder"]["layers"]}
    enc = {x["name"]: x for x in compared["results"]["encoder"]["layers"]}
    levels = compared["results"]["comparison"]["levels"]
    assert [lv["level"] for lv in levels] == ["coarse", "intermediate", "fine", "image"]
    for lv in levels:
        d, e = dec[lv["decoder_layer"]], enc[lv["encoder_layer"]]
        # the encoder layer inverts the decoder layer: its input is the decoder layer's output
        assert e["input_shape"][1:] == d["output_shape"][1:]
        assert e["output_shape"][1:] == d["input_shape"][1:]


def test_statistics_are_consistent(compared: dict) -> None:
    for lv in compared["results"]["comparison"]["levels"]:
        assert 0 <= lv["ks_pvalue"] <= 1 and 0 <= lv["levene_pvalue"] <= 1
        ratio = lv["encoder"]["sd_log10_sdr"] / lv["decoder"]["sd_log10_sdr"]
        assert np.isclose(lv["sd_ratio_encoder_over_decoder"], ratio)
        assert lv["decoder_more_generic"] == (ratio > 1)
    assert compared["config"]["encoder"]["inputs"]["kind"] == "generated"


def test_fixture_decoder_is_more_generic_than_encoder(compared: dict) -> None:
    # the paper's Sec. 4.2 observation, as measured on the bundled fixture (README reports it)
    comparison = compared["results"]["comparison"]
    assert comparison["decoder_more_generic_levels"] == comparison["compared_levels"]


def test_compare_on_data_and_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "faces.npy"
    np.save(data, rng.random((16, 1, 64, 64), dtype=np.float32))
    png = tmp_path / "cmp.png"
    result = runner.invoke(
        app, ["compare", DEC, ENC, "--inputs", str(data), "--num-samples", "16", "--plot", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "coarse" in result.stdout


def test_sdr_plot(tmp_path: Path) -> None:
    png = tmp_path / "sdr.png"
    result = runner.invoke(app, ["sdr", DEC, "--num-samples", "16", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 1000


def test_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_mpl(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    result = runner.invoke(
        app, ["sdr", DEC, "--num-samples", "8", "--plot", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 2 and "genaudit[plot]" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_nothing_to_compare() -> None:
    from genaudit.sdr import SDRResult

    empty = SDRResult((), (), 0, 0.1)
    assert mirror_pairs((), ()) == []
    with pytest.raises(NothingToAnalyseError):
        compare_results(empty, empty)

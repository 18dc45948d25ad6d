"""Reports on a deep model: one row per role and level, the layers without a value by reason.

A small transformer super-resolution network built here (importable as
``--arch test_deep_reports:transformer_sr``): a convolution stem, 12 blocks of 3 transformer
layers (LayerNorm → Linear qkv → attention → Linear proj, zero-initialised so that its trace
ratio is undefined; LayerNorm → Linear fc1 → depthwise 3×3 convolution → Linear fc2), a channel
attention whose two 1×1 convolutions see a 1×2 grid (skipped), a convolution per block, then a
PixelShuffle upsampler: 220 audited layers, 144 of them Linear. ``genaudit layers`` and
``genaudit sdr`` on it fit a screen at 120 columns; ``--layers`` and ``--all-rows`` list every
layer; JSON and CSV stay complete. Goldens of the summarised tables at 80 and 120 columns
(``GENAUDIT_UPDATE_GOLDENS=1 python -m pytest tests/test_deep_reports.py`` rewrites them).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_report import check_fits, check_golden, render
from torch import nn
from typer.testing import CliRunner

from genaudit.analysis.sdr import SDRResult, run_sdr
from genaudit.cli import app
from genaudit.io.writing import save_safetensors
from genaudit.model.layers import LayerRecord, walk_layers
from genaudit.report import grouping, sdr_tables
from genaudit.report import tables as report

runner = CliRunner()
BLOCKS, DEPTH, SAMPLES = 12, 3, 8
ARCH = "test_deep_reports:transformer_sr"
SCREEN = 50  # lines a report on this model may take at 120 columns


class _Attention(nn.Module):
    def __init__(self, c: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, 2 * c)
        self.dwconv = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.fc2 = nn.Linear(2 * c, c)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b = x.shape[0]
        y = self.fc1(x).transpose(1, 2).reshape(b, -1, *hw)
        return self.fc2(F.gelu(self.dwconv(y)).flatten(2).transpose(1, 2))


class _Layer(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(c), _Attention(c)
        self.norm2, self.mlp = nn.LayerNorm(c), _Mlp(c)
        nn.init.zeros_(self.attn.proj.weight)  # zero-initialised: its trace ratio is undefined
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x), hw)


class _ChannelAttention(nn.Module):
    """Squeeze and excite on a 1×2 pooled grid: both convolutions are skipped."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((1, 2))
        self.squeeze = nn.Conv2d(c, c // 2, 1)
        self.excite = nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.excite(F.relu(self.squeeze(self.pool(x)))))
        return x * w.mean(-1, keepdim=True)


class _Block(nn.Module):
    def __init__(self, c: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(c) for _ in range(depth))
        self.ca = _ChannelAttention(c)
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            t = layer(t, (h, w))
        return x + self.conv(self.ca(t.transpose(1, 2).reshape(b, c, h, w)))


class _TransformerSR(nn.Module):
    def __init__(self, c: int, blocks: int, depth: int) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(_Block(c, depth) for _ in range(blocks))
        self.conv_after_body = nn.Conv2d(c, c, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2))
        self.conv_last = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x)
        y = x
        for block in self.blocks:
            y = block(y)
        return self.conv_last(self.upsample(x + self.conv_after_body(y)))


def transformer_sr(c: int = 8, blocks: int = BLOCKS, depth: int = DEPTH) -> nn.Module:
    return _TransformerSR(c, blocks, depth)


LINEAR_ROLES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
LAYERS = 1 + BLOCKS * (DEPTH * 5 + 3) + 3  # 220
LINEAR = BLOCKS * DEPTH * len(LINEAR_ROLES)  # 144


def _inputs() -> torch.Tensor:
    return torch.randn(SAMPLES, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The network's checkpoint and its inputs."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("deep")
    model, x = folder / "sr.safetensors", folder / "x.pt"
    save_safetensors(transformer_sr().state_dict(), model)
    torch.save(_inputs(), x)
    return str(model), str(x)


def cli(*args: str) -> Any:
    result = runner.invoke(app, list(args), env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return result


def _run(command: str, files: tuple[str, str], *extra: str) -> Any:
    model, x = files
    samples = ("--num-samples", str(SAMPLES)) if command == "sdr" else ()
    return cli(command, model, "--arch", ARCH, "--inputs", x, *samples, *extra)


@pytest.fixture(scope="module")
def sdr_run(files: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``genaudit sdr`` once: the table on stdout, JSON and CSV in files."""
    folder = tmp_path_factory.mktemp("out")
    j, c = folder / "sdr.json", folder / "sdr.csv"
    result = _run("sdr", files, "--json", str(j), "--csv", str(c))
    return result.stdout, json.loads(j.read_text()), list(csv.DictReader(c.open()))


def _rows(text: str) -> list[str]:
    """Table lines that start with a row's ``#`` (an index, or a range of them)."""
    return [line for line in text.splitlines() if re.match(r"\s*\d+(–\d+)?  \S", line)]


# --------------------------------------------------------------------------- command line


def test_layers_fits_a_screen(files: tuple[str, str], tmp_path: Path) -> None:
    text = _run("layers", files, "--csv", str(tmp_path / "layers.csv")).stdout
    rows = list(csv.DictReader((tmp_path / "layers.csv").open()))  # the CSV: every layer
    assert len(rows) == LAYERS and rows[-1]["layer"] == "conv_last"
    assert len(text.splitlines()) <= SCREEN, text
    assert f"{LAYERS} layers in 10 rows, one per role (indices as *) and level" in text
    assert "every layer: --all-rows" in text
    for level in ("fine", "image", "linear"):
        assert f" {level} " in text
    for role in LINEAR_ROLES:
        assert re.search(rf"blocks\.\*\.layers\.\*\.{re.escape(role)} ×36 .* Linear ", text)
    assert re.search(r"(?m)^ *4–212 +blocks\.\*\.layers\.\*\.mlp\.dwconv ×36 .* k=3×3 g=16 ", text)
    # the 24 skipped convolutions: one line for their reason, naming their roles
    assert "24 layers not analysed:" in text
    skipped = r"24 skipped: input grid 1×2 has 1 non-zero frequency; the SDR needs at least 2"
    assert re.search(rf"{skipped}\s+\(blocks\.\*\.ca\.squeeze,\s+blocks\.\*\.ca\.excite\)", text)
    assert "blocks.5.layers" not in text  # no layer of a block listed by itself


def test_sdr_fits_a_screen(sdr_run: tuple[str, dict[str, Any], list[Any]]) -> None:
    text, doc, _ = sdr_run
    assert len(text.splitlines()) <= SCREEN, text
    assert len(_rows(text.split("per level")[0])) == 9
    for level in ("fine", "image", "linear"):
        assert re.search(rf"(?m)^{level} ", text.split("per level")[1])
    assert "60 layers without a value:" in text
    assert "36 undefined: zero input variance or zero weights (blocks.*.layers.*.attn.proj)" in text
    assert "24 skipped: input grid 1×2" in text
    # a role of Linear layers: their count, the median ratio and the range, as in the JSON
    ratios = sorted(
        x["trace_ratio"] for x in doc["results"]["layers"] if x["name"].endswith("attn.qkv")
    )
    assert len(ratios) == BLOCKS * DEPTH
    median = (ratios[17] + ratios[18]) / 2
    row = next(line for line in _rows(text) if "attn.qkv" in line)
    assert re.search(
        rf"^ *1–209 +blocks\.\*\.layers\.\*\.attn\.qkv ×36 +linear +36 \(trace\) +{median:.3f} "
        rf"+min–max {ratios[0]:.3f}–{ratios[-1]:.3f}$", row.rstrip()
    ), row  # fmt: skip
    # a role of convolutions: their pairs pooled (16 depthwise pairs per layer)
    assert re.search(r"blocks\.\*\.layers\.\*\.mlp\.dwconv ×36 +fine +576 ", text)


def test_exports_stay_complete(sdr_run: tuple[str, dict[str, Any], list[Any]]) -> None:
    _, doc, rows = sdr_run
    layers = doc["results"]["layers"]
    assert len(layers) == LAYERS
    assert sum(x["type"] == "Linear" for x in layers) == LINEAR
    assert {x["analysis"] for x in layers} == {"sdr", "trace", "skipped"}
    assert sum(x.get("reason", "").startswith("undefined") for x in layers) == 36
    assert set(layers[0]) == {"index", "name", "type", "level", "analysis", "grid",
                              "input_shape", "output_shape", "samples", "summary"}  # fmt: skip
    sdr_layers = {x["name"] for x in layers if x["analysis"] == "sdr"}
    assert {r["layer"] for r in rows} == sdr_layers
    assert list(rows[0]) == list(SDRResult.CSV_HEADER)


def test_a_selection_lists_every_layer(files: tuple[str, str]) -> None:
    names = [f"blocks.{b}.layers.{k}.{role}" for b in range(BLOCKS) for k in range(DEPTH)
             for role in LINEAR_ROLES]  # fmt: skip
    for command in ("layers", "sdr"):
        text = _run(command, files, "--layers", "linear").stdout
        shown = [line.split()[1] for line in _rows(text)]
        assert shown == names, text
        assert "one per role" not in text and "without a value" not in text


@pytest.mark.parametrize("command", ["layers", "sdr"])
def test_all_rows_lists_every_layer(files: tuple[str, str], command: str) -> None:
    text = _run(command, files, "--all-rows").stdout
    table = text.split("per level")[0]
    assert [int(line.split()[0]) for line in _rows(table)] == list(range(LAYERS))
    assert "one per role" not in text


# --------------------------------------------------------------------------- tables


@pytest.fixture(scope="module")
def result() -> tuple[list[LayerRecord], SDRResult]:
    torch.manual_seed(0)
    model, x = transformer_sr(), _inputs()

    class Source:
        available = SAMPLES

        def batch(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
            return (x[start:stop],)

    records = walk_layers(model, (x[:2],))
    cpu = torch.device("cpu")
    return records, run_sdr(model, records, Source(), num_samples=SAMPLES, batch_size=8, device=cpu)


HINT = "every layer: --all-rows"


@pytest.mark.parametrize("width", [80, 120])
def test_golden_summarised_tables(result: tuple[list[LayerRecord], SDRResult], width: int) -> None:
    records, sdr = result
    title = f"sr.safetensors: SDR per layer, {SAMPLES} samples"
    tables = {
        "deep_sdr_table": sdr_tables.sdr_table(sdr, title=title, width=width, hint=HINT),
        "deep_levels_table": sdr_tables.levels_table(sdr, title="per level", width=width),
        "deep_layers_table": report.layers_table(records, title="sr", width=width, hint=HINT),
    }
    for name, table in tables.items():
        check_golden(f"{name}.{width}.txt", check_fits(table, width))


def test_summarised_tables_at_other_widths(result: tuple[list[LayerRecord], SDRResult]) -> None:
    records, sdr = result
    for width in (100, 200):
        check_fits(sdr_tables.sdr_table(sdr, width=width), width)
        check_fits(report.layers_table(records, width=width), width)


def test_small_models_keep_one_row_per_layer(
    result: tuple[list[LayerRecord], SDRResult],
) -> None:
    """Up to ROW_LIMIT layers nothing is summarised: the same table as with every row."""
    records, _ = result
    few = records[: grouping.ROW_LIMIT]
    listed = render(report.layers_table(few, rows="all"), 120)
    assert render(report.layers_table(few), 120) == listed
    assert "one per role" in render(report.layers_table(records[: grouping.ROW_LIMIT + 1]), 120)


def test_too_many_roles_give_one_row_per_level(
    result: tuple[list[LayerRecord], SDRResult],
) -> None:
    records, _ = result
    # every layer a role of its own (no index in the names): one row per level and kind
    unique = [replace(r, name=r.name.replace(".", "_")) for r in records]
    text = render(report.layers_table(unique, width=120), 120)
    assert f"{LAYERS} layers in 3 rows, one per level" in text, text
    assert "144 layers: blocks_0_layers_0_attn_qkv …" in text  # then the last one
    assert "blocks_11_layers_2_mlp_fc2" in text and "blocks_5" not in text


def test_reasons_group_without_their_call_sites(
    result: tuple[list[LayerRecord], SDRResult],
) -> None:
    """Functional convolutions skipped at different call sites: one line for their reason."""
    records, _ = result
    reason = "not analysed: weight varies per sample (modulated)"
    modulated = [
        replace(r, type="conv2d (functional)", analysis="skipped", pairs=0,
                reason=f"{reason} at models/sr.py:{100 + k}")
        if r.name.endswith("dwconv") else r
        for k, r in enumerate(records)
    ]  # fmt: skip
    text = render(report.layers_table(modulated, width=120), 120)
    assert f"36 skipped: {reason} (blocks.*.layers.*.mlp.dwconv)" in text
    assert "models/sr.py" not in text and "60 layers not analysed:" in text
    assert grouping.reason_key(f"{reason} at /a b/c.py:12") == reason
    keep = "input grid 1×2 has 1 non-zero frequency; the SDR needs at least 2"
    assert grouping.reason_key(keep) == keep
    assert grouping.role_pattern("blocks.11.layers.2.attn.qkv") == "blocks.*.layers.*.attn.qkv"


def test_check_fits_a_screen(files: tuple[str, str], tmp_path: Path) -> None:
    model, x = files
    args = ["check", model, "--arch", ARCH, "--inputs", x, "--num-samples", str(SAMPLES),
            "--csv", str(tmp_path / "checks.csv")]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code in (0, 1), result.output
    checks = list(csv.DictReader((tmp_path / "checks.csv").open()))
    text = result.stdout
    assert len(checks) > 100 and len(text.splitlines()) <= SCREEN, text
    assert f"{len(checks)} checks: those of a rule with one result share a row" in text
    linear = [c for c in checks if c["metric"] == "trace.abs_log10" and c["status"] == "pass"]
    assert re.search(rf"{len(linear)} layers .* pass ×{len(linear)}", text.replace("\n", " "))
    full = runner.invoke(app, [*args, "--all-rows"], env={"COLUMNS": "120"})
    rows = [line for line in full.stdout.splitlines() if re.match(r"\d+ ", line)]
    assert len(rows) == len(checks)

"""The report tables at 80, 120 and 200 columns, and the layout helpers that fit them.

The builders are in :mod:`genaudit.report.tables` and :mod:`genaudit.report.sdr_tables`, the
helpers (shortened names, layer ranges) in :mod:`genaudit.report.layout`.

Golden text at 80 and 120 columns for every table (``tests/golden/NAME.WIDTH.txt``), built from
the bundled fixtures through the library on the CPU; at every width: no line wider than the
console, and nothing truncated by rich (numbers are never shortened). A deep synthetic model
checks the per-level layer ranges and the shortening of long layer names.

The golden files are only written on request::

    GENAUDIT_UPDATE_GOLDENS=1 python -m pytest tests/test_report.py
"""

from __future__ import annotations

import difflib
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import nn

from genaudit import gate
from genaudit.analysis.compare import compare_results
from genaudit.analysis.sdr import SDRResult, run_sdr
from genaudit.analysis.stretch import choose_stretch_layers, run_stretch
from genaudit.analysis.transforms import make_transform
from genaudit.io import registry as zoo
from genaudit.model.inputs import InputOptions, generated_source, make_input_source
from genaudit.model.layers import walk_layers
from genaudit.model.loading import LoadOptions, load_model
from genaudit.report import layout, sdr_tables
from genaudit.report import tables as report

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden"
FIXTURES = TESTS.parent / "fixtures"
UPDATE = os.environ.get("GENAUDIT_UPDATE_GOLDENS") == "1"
HOW_TO_UPDATE = "GENAUDIT_UPDATE_GOLDENS=1 python -m pytest tests/test_report.py"
GOLDEN_WIDTHS = (80, 120)
ALL_WIDTHS = (80, 120, 200)
SAMPLES = 64
CPU = torch.device("cpu")


def render(table: Table, width: int) -> str:
    """The table as plain text on a fixed, colourless console; trailing blanks removed."""
    console = Console(
        width=width, color_system=None, force_terminal=False, record=True, file=io.StringIO(),
        legacy_windows=False,
    )  # fmt: skip
    console.print(table)
    lines = console.export_text().splitlines()
    return "".join(line.rstrip() + "\n" for line in lines)


def check_golden(name: str, text: str) -> None:
    """Compare with ``tests/golden/NAME``; with GENAUDIT_UPDATE_GOLDENS=1, (re)write it."""
    path = GOLDEN / name
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"golden file tests/golden/{name} is missing: create it with {HOW_TO_UPDATE}")
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), text.splitlines(True), f"golden/{name}", "rendered"
            )
        )
        pytest.fail(
            f"{name} differs from its golden file:\n{diff}\n"
            f"if the change is intended, rewrite the golden files with {HOW_TO_UPDATE}",
            pytrace=False,
        )


# --------------------------------------------------------------------------- inputs


def _load(name: str, source: Any = None) -> tuple[nn.Module, Any, list[Any]]:
    """A bundled fixture, its inputs (seed 0) and its layer records."""
    model = load_model(FIXTURES / name, LoadOptions()).model
    if source is None:
        source = make_input_source(model, InputOptions(seed=0))
    first = next(source.batches(2, 2, CPU))
    return model, source, walk_layers(model, first)


def _sdr(model: nn.Module, records: list[Any], source: Any) -> SDRResult:
    return run_sdr(model, records, source, num_samples=SAMPLES, batch_size=32, device=CPU)


@pytest.fixture(scope="module")
def tables() -> dict[str, Callable[[int], Table]]:
    """Every table builder, fed results computed once from the fixtures, by width."""
    torch.manual_seed(0)
    stretch_op = make_transform("stretch", 1.5, "horizontal")

    dcgan, dcgan_source, dcgan_records = _load("dcgan64_generator.safetensors")
    dcgan_sdr = _sdr(dcgan, dcgan_records, dcgan_source)
    dcgan_stretch = run_stretch(
        dcgan, dcgan_records, choose_stretch_layers(dcgan_records), dcgan_source,
        transform=stretch_op, num_samples=SAMPLES, batch_size=32, device=CPU, keep_samples=0,
    )  # fmt: skip

    decoder, decoder_source, decoder_records = _load("vae64_decoder.safetensors")
    fed = generated_source(decoder, decoder_source, CPU)
    encoder, encoder_source, encoder_records = _load("vae64_encoder.safetensors", fed)
    comparison = compare_results(
        _sdr(decoder, decoder_records, decoder_source),
        _sdr(encoder, encoder_records, encoder_source),
    )

    # the gate on the VAE decoder at initialisation (it fails the stretch rule), with a rule of
    # two bounds, and its drift from a baseline of the trained decoder (a tolerance of 0.04, as
    # one change is within 1e-5 of the default 0.05)
    init, init_source, init_records = _load("vae64_decoder_step00000.safetensors")
    config = gate.parse_check_config(
        {"check": {"drift": {"sdr.mean_log10": 0.04}}},
        rule_flags=("trace.ratio:all:0.9:1.1:warn",),
    )
    targets = gate.resolve_targets(config.rules, init_records)
    plan = gate.plan_analyses(targets, init_records)
    init_metrics = gate.collect_metrics(
        run_sdr(init, list(plan.sdr), init_source, num_samples=SAMPLES, batch_size=32,
                device=CPU),
        run_stretch(init, init_records, list(plan.stretch), init_source, transform=stretch_op,
                    num_samples=SAMPLES, batch_size=32, device=CPU, keep_samples=0),
    )  # fmt: skip
    trained_metrics = gate.collect_metrics(
        _sdr(decoder, decoder_records, decoder_source),
        run_stretch(decoder, decoder_records, list(plan.stretch), decoder_source,
                    transform=stretch_op, num_samples=SAMPLES, batch_size=32, device=CPU,
                    keep_samples=0),
    )  # fmt: skip
    baseline = gate.Baseline("vae64_decoder.baseline.json", {}, {}, trained_metrics, {})
    verdict = gate.GateResult(
        config.rules, tuple(gate.evaluate_rules(targets, init_metrics)),
        tuple(gate.compare_drift(baseline, init_metrics, config.drift)), config.fail_on_warn,
        baseline=baseline.path,
    )  # fmt: skip
    assert verdict.verdict == "fail" and verdict.drifted

    archs = [zoo.get(name) for name in ("dcgan_discriminator", "dcgan_generator", "vae")]
    sdr_title = (
        f"dcgan64_generator.safetensors: SDR per layer, {SAMPLES} samples. mean, SD, "
        "percentiles and histogram are of log10 SDR; generic: |log10 SDR| ≤ 0.1"
    )
    stretch_title = (
        f"dcgan64_generator.safetensors: {stretch_op.describe()} at hidden layers vs. the "
        f"output, {SAMPLES} samples"
    )
    return {
        "layers_table": lambda w: report.layers_table(
            dcgan_records,
            title="dcgan64_generator.safetensors: 5 layers (dcgan_generator)",
            width=w,
        ),
        "sdr_table": lambda w: sdr_tables.sdr_table(dcgan_sdr, title=sdr_title, width=w),
        "levels_table": lambda w: sdr_tables.levels_table(
            dcgan_sdr, title="per level (pairs of all its layers pooled)", width=w
        ),
        "stretch_table": lambda w: report.stretch_table(
            dcgan_stretch, title=stretch_title, width=w
        ),
        "comparison_table": lambda w: report.comparison_table(
            comparison,
            width=w,
            title="decoder vae64_decoder.safetensors vs encoder vae64_encoder.safetensors: "
            "log10 SDR of mirrored layers",
        ),
        "archs_table": lambda w: report.archs_table(
            archs,
            title="architectures for --arch NAME (keyword arguments via --arch-kwargs JSON)",
            width=w,
        ),
        "verdict_table": lambda w: report.verdict_table(
            verdict,
            f"vae64_decoder_step00000.safetensors: genaudit check, {SAMPLES} samples, seed 0",
            width=w,
        ),
        "drift_table": lambda w: report.drift_table(verdict, width=w),
    }


TABLES = (
    "layers_table", "sdr_table", "levels_table", "stretch_table", "comparison_table",
    "archs_table", "verdict_table", "drift_table",
)  # fmt: skip


# --------------------------------------------------------------------------- checks


def _plain(x: Any) -> str:
    return x.plain if isinstance(x, Text) else str(x or "")


def _columns(table: Table) -> Iterator[tuple[str, str, list[str]]]:
    """``(header, justify, cell texts)`` of every column."""
    for column in table.columns:
        yield _plain(column.header), column.justify, [_plain(c) for c in column.cells]


def _is_numeric(header: str, justify: str) -> bool:
    """Numbers are right-aligned; the percentiles are the one left-aligned numeric column."""
    return justify == "right" or header.startswith("p5")


def check_fits(table: Table, width: int) -> str:
    """Render at ``width``; assert no line is wider, numbers are whole, rich cut nothing."""
    text = render(table, width)
    widest = max(cell_len(line) for line in text.splitlines())
    assert widest <= width, f"a line of {widest} cells at width {width}:\n{text}"
    made = [_plain(table.title), _plain(table.caption)]
    for header, justify, cells in _columns(table):
        made += [header, *cells]
        if not _is_numeric(header, justify):
            continue
        for cell in cells:
            assert "…" not in cell, f"number shortened in column {header!r}: {cell!r}"
            for line in cell.splitlines():
                assert line in text, f"{line!r} of column {header!r} is not shown whole:\n{text}"
    # every "…" shown is one the report wrote (a shortened name, the histogram header):
    # rich truncated nothing
    assert text.count("…") == sum(s.count("…") for s in made), text
    return text


@pytest.mark.parametrize("width", GOLDEN_WIDTHS)
@pytest.mark.parametrize("name", TABLES)
def test_golden(tables: dict[str, Callable[[int], Table]], name: str, width: int) -> None:
    check_golden(f"{name}.{width}.txt", check_fits(tables[name](width), width))


@pytest.mark.parametrize("width", ALL_WIDTHS)
@pytest.mark.parametrize("name", TABLES)
def test_fits_the_width(tables: dict[str, Callable[[int], Table]], name: str, width: int) -> None:
    check_fits(tables[name](width), width)


def test_wide_console_shows_every_column(tables: dict[str, Callable[[int], Table]]) -> None:
    """At 200 columns nothing is left out, and the headers are the complete ones."""
    headers = {
        "layers_table": ["#", "layer", "type", "input → output", "kernel", "level", "pairs",
                         "analysis"],
        "sdr_table": ["#", "layer", "level", "grid", "pairs", "median", "mean", "SD",
                      "p5 p25 p75 p95", "generic", "hist −1…+1"],
        "levels_table": ["level", "layers", "pairs", "median", "mean", "SD", "p5 p25 p75 p95",
                         "generic", "hist −1…+1"],
        "stretch_table": ["#", "layer", "level", "mse", "baseline", "rel_mse"],
        "comparison_table": ["level", "decoder / encoder layer", "pairs", "SD dec.", "SD enc.",
                             "SD ratio", "generic dec.", "generic enc.", "KS p", "Levene p",
                             "more generic"],
        "verdict_table": ["#", "rule", "layer / level", "value", "severity", "result"],
        "drift_table": ["metric", "layer", "baseline", "value", "change", "allowed"],
        "archs_table": ["name", "arguments (defaults)", "what it is"],
    }  # fmt: skip
    for name, expected in headers.items():
        table = tables[name](200)
        assert [h for h, _, _ in _columns(table)] == expected, name
        assert "left out" not in render(table, 200)


def test_narrow_console_says_what_it_leaves_out(tables: dict[str, Callable[[int], Table]]) -> None:
    text = render(tables["sdr_table"](80), 80)
    assert "left out to fit 80 columns: grid, histogram" in text
    assert "p5 p95" in text and "p25" not in text.split("left out")[0]
    text = render(tables["stretch_table"](40), 40)
    assert "baseline (every layer):" in text


def test_every_table_at_a_very_narrow_console(tables: dict[str, Callable[[int], Table]]) -> None:
    """Below what any layout needs, rich may fold cells, but never cuts one with "…"."""
    for name in TABLES:
        table = tables[name](30)
        text = render(table, 30)
        made = [_plain(table.title), _plain(table.caption)]
        made += [s for h, _, cells in _columns(table) for s in (h, *cells)]
        assert text.count("…") == sum(s.count("…") for s in made), (name, text)


def test_report_imports_without_torch() -> None:
    modules = "genaudit.report.tables, genaudit.report.layout, genaudit.report.sdr_tables"
    code = f"import sys, {modules}; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_shorten_middle_keeps_both_ends() -> None:
    name = "encoder.blocks.11.layers.3.attn.proj"
    assert layout.shorten_middle(name, 27) == "encoder.blocks.11…attn.proj"
    assert layout.shorten_middle(name, 100) == name
    assert layout.shorten_middle("main.12", 7) == "main.12"
    for width in range(1, len(name)):
        short = layout.shorten_middle(name, width)
        assert cell_len(short) <= width and short.count("…") == 1
        head, tail = short.split("…")
        assert name.startswith(head) and name.endswith(tail)
    # whole components go first; among them, the run with the fewest indices
    deep = "encoder.stages.0.blocks.3.residual_layers.0"
    assert layout.shorten_middle(deep, 30) == "encoder…3.residual_layers.0"
    # a name without dots loses characters from its middle
    assert layout.shorten_middle("upsampling_final_convolution", 15) == "upsampl…olution"


def test_layer_range() -> None:
    assert layout.layer_range_text([]) == "0 layers"
    assert layout.layer_range_text(["main.3"]) == "1 layer: main.3"
    assert layout.layer_range_text(["a.1", "a.2"]) == "2 layers: a.1, a.2"
    names = [f"blocks.{k}.conv{j}" for k in range(13) for j in (1, 2)]
    assert layout.layer_range_text(names) == "26 layers: blocks.0.conv1 … blocks.12.conv2"
    assert layout.layer_range_text(names, 10) == "26 layers: bl…conv1 … bloc…conv2"


# --------------------------------------------------------------------------- deep models


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.residual_layers = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(2))
        self.attn = nn.Module()
        self.attn.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.residual_layers:
            x = x + torch.tanh(layer(x))
        return x + self.attn.proj(x)  # type: ignore[operator]


class _DeepGenerator(nn.Module):
    """A mapping network of 12 Linear layers, then 3 stages of 12 blocks of 3 convolutions
    with long dotted names (113 convolutions), upsampling 2×2 → 16×16."""

    def __init__(self, c: int = 2, stages: int = 3, blocks: int = 12) -> None:
        super().__init__()
        self.mapping = nn.Sequential(*(nn.Linear(4 * c, 4 * c) for _ in range(12)))
        self.head = nn.ConvTranspose2d(c, c, 4, 2, 1)
        self.synthesis = nn.Module()
        self.synthesis.stages = nn.ModuleList()
        for _ in range(stages):
            stage = nn.Module()
            stage.blocks = nn.ModuleList(_Block(c) for _ in range(blocks))
            stage.upsample_conv = nn.ConvTranspose2d(c, c, 4, 2, 1)
            self.synthesis.stages.append(stage)
        self.to_rgb = nn.Conv2d(c, 1, 3, padding=1)
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.head(self.mapping(z).view(-1, self.c, 2, 2))
        for stage in self.synthesis.stages:  # type: ignore[union-attr]
            for block in stage.blocks:
                x = block(x)
            x = stage.upsample_conv(x)
        return self.to_rgb(x)


@pytest.fixture(scope="module")
def deep() -> tuple[list[Any], SDRResult, Any]:
    torch.manual_seed(0)
    model = _DeepGenerator()
    source = make_input_source(model, InputOptions(z_shape=(8,), seed=0))
    records = walk_layers(model, next(source.batches(2, 2, CPU)))
    result = run_sdr(model, records, source, num_samples=8, batch_size=8, device=CPU)
    stretch = run_stretch(
        model, records, choose_stretch_layers(records), source,
        transform=make_transform("stretch", 1.5, "horizontal"), num_samples=8, batch_size=8,
        device=CPU, keep_samples=0,
    )  # fmt: skip
    return records, result, stretch


def test_deep_model_levels_are_counts_and_ranges(deep: tuple[list[Any], SDRResult, Any]) -> None:
    records, result, _ = deep
    assert sum(r.is_conv for r in records) > 100
    levels = {lv.level: lv for lv in result.levels}
    assert len(levels["linear"].layers) == 12
    assert max(len(lv.layers) for lv in result.levels) > 30
    for width in ALL_WIDTHS:
        table = sdr_tables.levels_table(result, title="per level", width=width)
        text = check_fits(table, width)
        for lv in result.levels:
            n = len(lv.layers)
            assert (f"{n} layers:" if n > 1 else "1 layer:") in text
            for name in lv.layers[1:-1]:  # never the whole list
                assert not re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", text), name
        # as many lines as levels, and at most 3 more for each (a wrapped range)
        body = text.split("─\n", 1)[1].split("left out")[0].strip("\n").splitlines()
        assert len(body) <= 4 * len(result.levels), text
    wide = render(sdr_tables.levels_table(result, width=200), 200)
    for lv in result.levels:
        assert layout.layer_range_text(lv.layers) in wide
    # a level of trace-method layers gives the range of its ratios, the same numbers as the JSON
    ratios = levels["linear"].trace_ratios
    assert f"ratios from {min(ratios):.3f} to {max(ratios):.3f}" in wide


def test_deep_model_per_layer_tables_stay_one_line_per_layer(
    deep: tuple[list[Any], SDRResult, Any],
) -> None:
    records, result, stretch = deep
    for width in ALL_WIDTHS:
        for table in (
            sdr_tables.sdr_table(result, title="deep", width=width, rows="all"),
            report.stretch_table(stretch, title="deep", width=width),
        ):
            text = check_fits(table, width)
            rows = [line for line in text.splitlines() if re.match(r"\s*\d+ ", line)]
            assert len(rows) == len(table.rows), text
        text = check_fits(report.layers_table(records, width=width, rows="all"), width)
        # one row per layer: its index is the first thing on exactly one line
        indices = [int(m.group(1)) for m in re.finditer(r"(?m)^\s*(\d+) ", text)]
        assert indices == [r.index for r in records]
    # long names are shortened from the middle: the beginning and the whole last component kept
    table = sdr_tables.sdr_table(result, width=80, rows="all")
    shown = next(cells for header, _, cells in _columns(table) if header == "layer")
    assert len(shown) == len(records)
    shortened = 0
    for name, cell in zip((r.name for r in records), shown, strict=True):
        if cell != name:
            shortened += 1
            head, tail = cell.split("…")
            assert name.startswith(head) and name.endswith(tail)
            assert len(head) >= 2 and tail.split(".")[-1] == name.split(".")[-1]
    assert shortened > 100

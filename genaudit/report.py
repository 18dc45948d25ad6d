"""Results → rich renderables. Never prints by itself."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table

from .compare import Comparison
from .gate import GateResult, fmt_value
from .layers import LayerRecord
from .sdr import SDRResult, Summary
from .stretch import StretchResult
from .zoo import ArchEntry


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape) if shape else "-"


def _conv_params(r: LayerRecord) -> str:
    if not r.is_conv:
        return "-"
    parts = [f"k={_shape(r.kernel_size)}"]
    if any(s != 1 for s in r.stride):
        parts.append(f"s={_shape(r.stride)}")
    if any(d != 1 for d in r.dilation):
        parts.append(f"d={_shape(r.dilation)}")
    if r.groups != 1:
        parts.append(f"g={r.groups}")
    return " ".join(parts)


def layers_table(records: Sequence[LayerRecord], title: str | None = None) -> Table:
    """The inventory of ``genaudit layers``: one row per layer in execution order."""
    table = _table(title)
    table.add_column("#", justify="right")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("input → output")
    table.add_column("kernel")
    table.add_column("level")
    table.add_column("pairs", justify="right")
    table.add_column("analysis")
    for r in records:
        analysis = r.analysis if r.analysis != "skipped" else f"skipped: {r.reason}"
        if r.analysis == "trace":
            analysis = "trace method"
        calls = f" (×{r.calls})" if r.calls > 1 else ""
        table.add_row(
            str(r.index),
            r.name + calls,
            r.type,
            f"{_shape(r.input_shape)} → {_shape(r.output_shape)}",
            _conv_params(r),
            r.level,
            str(r.pairs),
            analysis,
        )
    return table


_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(counts: Sequence[int]) -> str:
    """A one-line text histogram: one character per bin, height relative to the fullest bin."""
    top = max(counts) if counts else 0
    if top == 0:
        return ""
    chars = []
    for c in counts:
        k = 0 if c == 0 else max(1, round(c / top * (len(_BARS) - 1)))
        chars.append(_BARS[k])
    return "".join(chars)


def _num(x: float | None, fmt: str = "{:+.3f}") -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    return fmt.format(x)


def sdr_table(result: SDRResult, title: str | None = None) -> Table:
    """One row per layer: pairs (undefined in brackets), median SDR, then on the log10 SDR
    scale the mean, SD and 5/25/75/95th percentiles, the generic fraction and a histogram."""
    table = _table(title)
    columns = [("#", "right"), ("layer", "left"), ("level", "left"), ("grid", "left")]
    for name, justify in [*columns, *_STAT_COLUMNS]:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for layer in result.layers:
        r = layer.record
        grid = _shape(r.grid)
        if layer.analysis == "skipped":
            table.add_row(str(r.index), r.name, r.level, grid, "-", "-", "", "", "", "",
                          f"skipped: {layer.reason}")  # fmt: skip
            continue
        if layer.analysis == "trace":
            table.add_row(str(r.index), r.name, r.level, grid or "vector", "1 (trace)",
                          _num(layer.ratio, "{:.3f}"), "", "", "", "",
                          "trace method" if layer.reason is None else layer.reason)  # fmt: skip
            continue
        s = layer.summary
        assert s is not None
        table.add_row(str(r.index), r.name, r.level, grid, *_summary_cells(s))
    return table


def _summary_cells(s: Summary) -> list[str]:
    """The seven statistic cells shared by the layer and the level tables."""
    p = s.percentiles_log10
    undefined = f" ({s.undefined})" if s.undefined else ""
    pct = " ".join(_num(p[k], "{:+.2f}") for k in ("p5", "p25", "p75", "p95"))
    return [
        f"{s.pairs}{undefined}", _num(s.median_sdr, "{:.3f}"), _num(s.mean_log10),
        _num(s.sd_log10, "{:.3f}"), pct, _num(s.generic_fraction, "{:.0%}"),
        sparkline(coarse_histogram(s.histogram)),
    ]  # fmt: skip


def coarse_histogram(counts: Sequence[int]) -> list[int]:
    """Merge the 20 inner 0.1-wide bins pairwise: 12 bins (< −1, 0.2-wide × 10, > +1)."""
    inner = counts[1:-1]
    return [counts[0], *(inner[k] + inner[k + 1] for k in range(0, len(inner), 2)), counts[-1]]


_STAT_COLUMNS = [
    ("pairs", "right"), ("median", "right"), ("mean", "right"),
    ("SD", "right"), ("p5 p25 p75 p95", "left"), ("generic", "right"),
    ("hist −1…+1", "left"),
]  # fmt: skip


def _table(title: str | None) -> Table:
    return Table(
        title=title, header_style="bold", title_justify="left", box=box.SIMPLE_HEAD,
        padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False,
    )  # fmt: skip


def levels_table(result: SDRResult, title: str | None = None) -> Table:
    """One row per level: all pairs of the level's SDR layers pooled; trace ratios listed."""
    table = _table(title)
    for name, justify in [("level", "left"), ("layers", "left"), *_STAT_COLUMNS]:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for lv in result.levels:
        names = ", ".join(lv.layers)
        if lv.summary is not None:
            table.add_row(lv.level, names, *_summary_cells(lv.summary))
        else:
            ratios = ", ".join(f"{x:.3f}" for x in lv.trace_ratios)
            table.add_row(lv.level, names, "1 (trace)", ratios, *[""] * 5)
    return table


def stretch_table(result: StretchResult, title: str | None = None) -> Table:
    """One row per intervened layer: mse, the do-nothing baseline and rel_mse."""
    table = _table(title)
    columns = [("#", "right"), ("layer", "left"), ("level", "left"), ("mse", "right"),
               ("baseline", "right"), ("rel_mse", "right")]  # fmt: skip
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in result.layers:
        table.add_row(str(r.index), r.name, r.level, _num(r.mse, "{:.4g}"),
                      _num(r.baseline, "{:.4g}"), _num(r.rel_mse, "{:.3f}"))  # fmt: skip
    return table


def comparison_table(comparison: Comparison, title: str | None = None) -> Table:
    """Decoder and encoder log10-SDR distributions per mirrored layer pair, with tests."""
    table = _table(title)
    columns = [("level", "left"), ("decoder / encoder layer", "left"), ("pairs", "right"),
               ("SD dec.", "right"), ("SD enc.", "right"), ("SD ratio", "right"),
               ("generic dec.", "right"), ("generic enc.", "right"), ("KS p", "right"),
               ("Levene p", "right"), ("more generic", "left")]  # fmt: skip
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for lv in comparison.levels:
        table.add_row(
            lv.level, f"{lv.decoder_layer} / {lv.encoder_layer}",
            f"{lv.decoder.defined} / {lv.encoder.defined}", _num(lv.decoder.sd_log10, "{:.3f}"),
            _num(lv.encoder.sd_log10, "{:.3f}"), _num(lv.sd_ratio, "{:.2f}"),
            _num(lv.decoder.generic_fraction, "{:.0%}"),
            _num(lv.encoder.generic_fraction, "{:.0%}"),
            _num(lv.ks_pvalue, "{:.2g}"), _num(lv.levene_pvalue, "{:.2g}"),
            "decoder" if lv.decoder_more_generic else "encoder",
        )  # fmt: skip
    return table


def archs_table(entries: Sequence[ArchEntry]) -> Table:
    """Registered architectures with their keyword arguments and defaults."""
    table = _table("architectures for --arch NAME (keyword arguments via --arch-kwargs JSON)")
    for name in ("name", "arguments (defaults)", "what it is"):
        table.add_column(name)
    for e in entries:
        kwargs = ", ".join(f"{k}={v}" for k, v in e.defaults().items())
        table.add_row(e.name, kwargs, e.summary)
    return table


def verdict_table(result: GateResult, title: str) -> Table:
    """One row per rule × layer/level: value, bound, severity and result."""
    table = _table(title)
    columns = [("#", "right"), ("rule", "left"), ("layer / level", "left"), ("value", "right"),
               ("severity", "left"), ("result", "left")]  # fmt: skip
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for e in result.evaluations:
        where = e.where + (f" ({e.layer})" if e.layer and e.layer != e.name else "")
        value = fmt_value(e.value)
        mark = {"pass": "pass", "warn": "WARN", "fail": "FAIL"}[e.status]
        table.add_row(str(e.rule.index), e.rule.describe(), where, value, e.rule.severity, mark)
    return table


def drift_table(result: GateResult) -> Table:
    table = _table(f"beyond the allowed drift from baseline {result.baseline}")
    for name in ("metric", "layer", "baseline", "value", "change", "allowed"):
        table.add_column(name, justify="left" if name in ("metric", "layer") else "right")
    for d in result.drifted:
        table.add_row(d.metric, d.layer, fmt_value(d.baseline), fmt_value(d.value),
                      fmt_value(d.delta, "{:+.4g}"), f"±{d.tolerance:g}")  # fmt: skip
    return table

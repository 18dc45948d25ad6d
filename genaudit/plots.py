"""log10-SDR histograms as PNG (paper Fig. 5). Needs the optional ``plot`` extra (matplotlib)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .compare import Comparison
from .errors import UsageError
from .export import write_atomic
from .sdr import SDRResult


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed",
            'install the plotting extra: python3 -m pip install "genaudit[plot]"',
        ) from None
    return plt


def require_matplotlib() -> None:
    """Fail early (exit 2), before any work, when --plot is asked for without matplotlib."""
    _pyplot()


def _bins(values: Sequence[np.ndarray]) -> np.ndarray:
    finite = [v[np.isfinite(v)] for v in values if v.size]
    lo = min((float(v.min()) for v in finite if v.size), default=-1.0)
    hi = max((float(v.max()) for v in finite if v.size), default=1.0)
    lo, hi = min(lo, -0.5), max(hi, 0.5)
    return np.linspace(lo, hi, 41)


def _save(fig: Any, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    write_atomic(path, buf.getvalue())


def plot_sdr(result: SDRResult, path: str | Path, title: str = "") -> None:
    """One panel per SDR layer: histogram of log10 SDR, 0 (generic) marked."""
    plt = _pyplot()
    layers = [x for x in result.layers if x.analysis == "sdr"]
    if not layers:
        raise UsageError("--plot: no SDR layer to plot")
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, layer in zip(axes.ravel(), layers, strict=False):
        v = layer.log10().ravel()
        v = v[np.isfinite(v)]
        ax.hist(v, bins=_bins([v]), color="tab:blue", alpha=0.8)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_title(f"{layer.record.level}: {layer.record.name}", fontsize=9)
        ax.set_xlabel("log10 SDR", fontsize=8)
    for ax in axes.ravel()[len(layers) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_comparison(comparison: Comparison, path: str | Path, title: str = "") -> None:
    """Superimposed decoder and encoder histograms per mirrored level (paper Fig. 5)."""
    plt = _pyplot()
    n = len(comparison.levels)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 2.8), squeeze=False)
    for ax, lv in zip(axes.ravel(), comparison.levels, strict=True):
        bins = _bins([lv.decoder_values, lv.encoder_values])
        ax.hist(lv.decoder_values, bins=bins, alpha=0.6, density=True, label="decoder")
        ax.hist(lv.encoder_values, bins=bins, alpha=0.6, density=True, label="encoder")
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_title(f"{lv.level}\n{lv.decoder_layer} / {lv.encoder_layer}", fontsize=8)
        ax.set_xlabel("log10 SDR", fontsize=8)
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)

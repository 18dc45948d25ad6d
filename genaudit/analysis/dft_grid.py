"""The DFT grid Ω of a layer's input: its check, the rfft half-grid's bins and ν = 0.

Spectra are kept on the rfft half-grid ``(M_1, …, M_{d-1}, M_d // 2 + 1)`` of the input grid
``(M_1, …, M_d)`` (d = 1, 2 or 3). :func:`rfft_bin_weights` turns a sum over the half-grid into
the sum over the full grid Ω; :func:`zero_frequency_index` picks the bin ν = 0 that every
average of docs/method.md leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_grid", "rfft_bin_weights", "zero_frequency_index"]


def check_grid(grid: Sequence[int]) -> tuple[int, ...]:
    """``grid`` as a tuple of ints; ValueError unless it has 1 to 3 positive sizes."""
    g = tuple(int(m) for m in grid)
    if not 1 <= len(g) <= 3 or any(m < 1 for m in g):
        raise ValueError(f"grid must have 1 to 3 positive sizes, got {tuple(grid)}")
    return g


def zero_frequency_index(lead: int, d: int) -> tuple[slice | int, ...]:
    """Index of the zero frequency ν = 0 behind ``lead`` full leading axes."""
    return (slice(None),) * lead + (0,) * d


def rfft_bin_weights(grid: Sequence[int], *, device: torch.device | str | None = None) -> Tensor:
    """Multiplicities of the rfft bins on the last axis, so rfft sums equal full-grid sums.

    Shape ``(M_d // 2 + 1,)``, float64: 1 for bin 0 and (``M_d`` even) bin ``M_d / 2``, 2 for
    every other bin (which stands for itself and its mirror image −ν).
    """
    m = int(grid[-1])
    w = torch.full((m // 2 + 1,), 2.0, dtype=torch.float64, device=device)
    w[0] = 1.0
    if m % 2 == 0:
        w[-1] = 1.0
    return w

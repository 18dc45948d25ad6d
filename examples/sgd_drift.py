"""SGD drifts a generic pair of layers towards spectral dependence (the paper's Prop. 6, Fig. 3).

The toy is the paper's "Model 2": a two-layer linear convolutional network on a 1-D periodic
grid of n points, fed white noise x,

    y = k2 ⊛ (k1 ⊛ x),

trained by minibatch SGD on the mean squared error to a target y* = h ⊛ x. The second layer k2
has n taps (any filter on the grid), the first k1 has ``--k1-size`` taps. They start random and
independent of each other, hence generic: the spectral density ratio (SDR) of k2 with respect
to the spectrum of the maps it is fed (k1's output, |k̂1|² for white x) is ≈ 1.

Only the product k̂2·k̂1 is fixed by the objective (at every frequency it must equal ĥ), so the
model is overparametrised: scaling k1 up at one frequency and k2 down at the same frequency
changes nothing. Which of these equivalent solutions SGD ends in is decided by the dynamics, not
by the data, and none of the ones it reaches is generic:

- ``--mode fixed``: k1 is frozen at its random initialisation (unit norm) and k2 learns to
  reconstruct the input (h = a single tap, y* = x). k2 must undo k1, k̂2 → 1/k̂1, so k2's power
  grows where its input's power is small: the pair becomes *anti*-aligned, log10 SDR < 0, at
  convergence −log10(⟨|k̂1|²⟩⟨|k̂1|⁻²⟩) (a mechanism inverting its cause, as an encoder inverts a
  generator's layer; paper Sec. 2.6).
- ``--mode trained``: both layers start small (norm ``--init``) and learn a target with a
  natural-image-like spectrum (|ĥ| ∝ 1/|f|, random phases: white noise in, 1/f² power out).
  Gradient flow conserves |k̂1|² − |k̂2|² at every frequency (the balancedness of linear networks,
  exact for full-length kernels), so both layers end with |k̂1| ≈ |k̂2| ≈ |ĥ|^½: k2's power sits
  where its input's power is, log10 SDR > 0, log10(⟨|ĥ|²⟩/⟨|ĥ|⟩²) in the limit. k1's few taps
  can only approach it.

The script prints these predicted limits next to the measured drift.

A generic factorisation exists all along (e.g. k1 = h, k2 = a single tap, SDR = 1 exactly); SGD
does not find it. That is the paper's point: genericity is not something training provides, and
the repair (eq. (13), ``genaudit.analysis.repair.GenericityPenalty``) has to add it.

The SDR is genaudit's own (``genaudit.analysis.spectral.spectral_density_ratio``) on the actual
maps k2 is fed, accumulated over a fixed batch of probe inputs. Seeded and deterministic; a few
seconds on one CPU core::

    python examples/sgd_drift.py                 # both modes, default sizes
    python examples/sgd_drift.py --mode fixed --steps 2000 --every 250
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaudit.analysis.accumulators import SpectrumAccumulator
from genaudit.analysis.spectral import spectral_density_ratio

MODES = ("fixed", "trained")


class CircularConv1d(nn.Module):
    """A bias-free 1-channel convolution on a periodic grid (wrap-around padding)."""

    def __init__(self, size: int, scale: float, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, 1, size, generator=gen) * scale)

    def forward(self, x: Tensor) -> Tensor:
        k = self.weight.shape[-1]
        return F.conv1d(F.pad(x, (k - 1, 0), mode="circular"), self.weight)


def target_filter(n: int, gen: torch.Generator) -> Tensor:
    """A length-n filter with amplitude 1/|f| (1 at f = 0) and random phases, unit energy."""
    f = torch.arange(n // 2 + 1, dtype=torch.float64)
    amplitude = 1.0 / f.clamp_min(1.0)
    phase = torch.rand(n // 2 + 1, generator=gen, dtype=torch.float64) * 2 * math.pi
    spectrum = amplitude * torch.exp(1j * phase)
    h = torch.fft.irfft(spectrum, n=n)
    return (h / h.norm()).float()


def sdr_of_k2(k1: nn.Module, k2: nn.Module, probe: Tensor) -> float:
    """log10 SDR of k2 with respect to the spectrum of the maps it is fed (k1's output)."""
    acc = SpectrumAccumulator(1, fft_dtype=torch.float64)
    with torch.no_grad():
        acc.add(k1(probe))
        pair = spectral_density_ratio(acc, k2.weight.detach())
    return float(torch.log10(pair.values[0, 0]))


def expected_limit(mode: str, k1: Tensor, h: Tensor) -> float:
    """log10 SDR of the solution the analysis predicts (averages over ν ≠ 0 of the grid).

    fixed: k̂2 = ĥ/k̂1 and k2 is fed |k̂1|², so SDR = ⟨|ĥ|²⟩ / (⟨|ĥ|²/|k̂1|²⟩ ⟨|k̂1|²⟩);
    trained (balanced, small initialisation): |k̂1|² = |k̂2|² = |ĥ|, SDR = ⟨|ĥ|²⟩ / ⟨|ĥ|⟩².
    With k1 shorter than the grid the balanced solution is only approached."""
    n = h.shape[-1]
    hh = torch.fft.fft(h.double().flatten()).abs().square()[1:]
    if mode == "trained":
        return math.log10(float(hh.mean() / hh.sqrt().mean().square()))
    p1 = torch.fft.fft(k1.double().flatten(), n=n).abs().square()[1:]
    return math.log10(float(hh.mean() / ((hh / p1).mean() * p1.mean())))


@dataclass(frozen=True)
class Run:
    """One training run: log10 SDR of k2 and the relative error of the fit along the way."""

    mode: str
    steps: tuple[int, ...]
    log10_sdr: tuple[float, ...]
    rel_error: tuple[float, ...]
    expected: float

    @property
    def before(self) -> float:
        return self.log10_sdr[0]

    @property
    def after(self) -> float:
        return self.log10_sdr[-1]


def train(
    mode: str,
    *,
    n: int,
    k1_size: int,
    steps: int,
    every: int,
    batch: int,
    lr: float,
    init: float,
    seed: int,
) -> Run:
    """Train the two-layer model in ``mode`` ("fixed" or "trained" first layer)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    gen = torch.Generator().manual_seed(seed)
    # the same initial pair in both modes, up to k1's scale (which the SDR ignores)
    k1_scale = init if mode == "trained" else 1.0
    k1 = CircularConv1d(k1_size, k1_scale / math.sqrt(k1_size), gen)
    k2 = CircularConv1d(n, init / math.sqrt(n), gen)
    probe = torch.randn(256, 1, n, generator=gen)
    target = CircularConv1d(n, 0.0, gen)
    if mode == "trained":
        target.weight.data.copy_(target_filter(n, gen).view(1, 1, n))
    else:  # reconstruct the input: y* = x (a single tap, undelayed by the causal padding)
        target.weight.data[..., -1] = 1.0
    target.requires_grad_(False)
    params = list(k2.parameters()) + (list(k1.parameters()) if mode == "trained" else [])
    k1.requires_grad_(mode == "trained")
    opt = torch.optim.SGD(params, lr=lr)

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            want = target(probe)
            err = (k2(k1(probe)) - want).square().mean() / want.square().mean()
        return sdr_of_k2(k1, k2, probe), float(err)

    s0, e0 = measure()
    marks, sdrs, errs = [0], [s0], [e0]
    for step in range(1, steps + 1):
        x = torch.randn(batch, 1, n, generator=gen)
        loss = F.mse_loss(k2(k1(x)), target(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            s, e = measure()
            marks.append(step)
            sdrs.append(s)
            errs.append(e)
    expected = expected_limit(mode, k1.weight.detach(), target.weight.detach())
    return Run(mode, tuple(marks), tuple(sdrs), tuple(errs), expected)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--n", type=int, default=64, help="grid points (default 64)")
    parser.add_argument("--k1-size", type=int, default=9, help="taps of k1 (default 9)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100, help="print the SDR every K steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--init", type=float, default=0.1, help="initial kernel norm")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Sequence[str] | None = None) -> list[Run]:
    """Run the toy and print the drift; returns the runs (for tests)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    modes = MODES if args.mode == "both" else (args.mode,)
    runs = []
    for mode in modes:
        run = train(
            mode, n=args.n, k1_size=args.k1_size, steps=args.steps, every=args.every,
            batch=args.batch, lr=args.lr, init=args.init, seed=args.seed,
        )  # fmt: skip
        runs.append(run)
        print(f"k1 {mode}: log10 SDR of k2 w.r.t. k1's output spectrum (0 = generic)")
        print(f"  {'step':>6}  {'log10 SDR':>9}  {'rel. error':>10}")
        for step, s, e in zip(run.steps, run.log10_sdr, run.rel_error, strict=True):
            print(f"  {step:>6}  {s:>+9.3f}  {e:>10.4f}")
        print(
            f"  drift: {run.before:+.3f} -> {run.after:+.3f} "
            f"(the analysis predicts {run.expected:+.3f} at convergence)\n"
        )
    return runs


if __name__ == "__main__":
    main()
    sys.exit(0)

"""Train the fixtures' VAE twice, with and without the paper's genericity penalty, and audit both.

The paper's repair (Besserve et al. 2021, eq. (13)) alternates two steps during training: an
ordinary optimiser step on the model's own loss, then a step that lowers the spectral
dependence of chosen layers on the maps they are fed. This script trains the β-VAE of
``fixtures/make_fixtures.py`` (same data, architecture, loss, optimiser and seeds) twice from
the same seed:

- ``plain``: the fixtures' recipe (Adam on the VAE loss), nothing else;
- ``penalty``: after each VAE step, one Adam step on
  :class:`genaudit.analysis.repair.GenericityPenalty` of the decoder at its ``intermediate``,
  ``fine`` and ``image`` levels (normalised form, (SDR − 1)² per pair, estimated from a batch
  of prior latents z ~ N(0, I) in a separate no-gradient forward pass). Only those layers'
  weights take the penalty step; the VAE batches and noise are the same draws as in ``plain``.

Decoder snapshots (safetensors with genaudit's metadata, loadable by every genaudit command)
are written every ``--every`` steps into ``OUT/plain`` and ``OUT/penalty``. The ``plain`` run
makes the same calls in the same order as ``make_fixtures.py`` (same pool, initialisation,
batches and noise), so with the same seed, sizes and thread count on the same machine its
weights are those of ``make_fixtures.py``'s run (byte-identical with ``--quick``); on another
machine or build they drift apart numerically after step 0, as regenerated fixtures do
(fixtures/README.md). After training the script audits every snapshot with genaudit's
SDR on prior latents and prints, per run, snapshot and level, the median SDR, the SD of
log10 SDR and the generic fraction (|log10 SDR| ≤ 0.1); ``OUT/summary.json`` holds the same.

Usage (needs scikit-image, the ``fixtures`` extra)::

    python examples/train_penalty.py --out runs/penalty                  # 1000 steps
    python examples/train_penalty.py --out /tmp/p --quick                # seconds, tiny models
    genaudit sdr runs/penalty/penalty/vae64_decoder_step01000.safetensors

The committed fixtures are never written: ``--out`` must not be ``fixtures/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from genaudit.analysis.repair import GenericityPenalty
from genaudit.analysis.sdr import run_sdr
from genaudit.io import registry as zoo
from genaudit.model.inputs import latent_source
from genaudit.model.layers import walk_layers

ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = ROOT / "fixtures"
LEVELS = ("coarse", "intermediate", "fine", "image")
PENALISED = ("intermediate", "fine", "image")
RUNS = ("plain", "penalty")


def load_fixture_script() -> ModuleType:
    """``fixtures/make_fixtures.py`` as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", FIXTURES_DIR / "make_fixtures.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError("fixtures/make_fixtures.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


@dataclass(frozen=True)
class Sizes:
    """Model and data sizes; the defaults are the committed fixture's."""

    crops_per_image: int = 12
    batch_size: int = 64
    nz: int = 32
    width: int = 16
    lr: float = 1e-3
    audit_samples: int = 512


QUICK = Sizes(crops_per_image=1, batch_size=8, nz=4, width=4, audit_samples=32)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (not fixtures/)")
    parser.add_argument("--steps", type=int, help="training steps (default 1000; --quick 4)")
    parser.add_argument("--every", type=int, help="snapshot every K steps (default 250; quick 2)")
    parser.add_argument("--seed", type=int, default=1234, help="base seed, as make_fixtures.py")
    parser.add_argument("--penalty-lr", type=float, default=1e-3, help="Adam lr of the penalty")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="tiny models, a few steps")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.out.resolve() == FIXTURES_DIR or FIXTURES_DIR in args.out.resolve().parents:
        parser.error("--out must not be inside fixtures/ (the committed fixtures)")
    args.steps = args.steps if args.steps is not None else (4 if args.quick else 1000)
    args.every = args.every if args.every is not None else (2 if args.quick else 250)
    if args.steps < 1 or args.every < 1:
        parser.error("--steps and --every must be at least 1")
    return args


def train(
    run: str, pool: torch.Tensor, sizes: Sizes, args: argparse.Namespace, fx: ModuleType
) -> dict[str, Any]:
    """One training run; writes OUT/run/vae64_decoder_stepNNNNN.safetensors, returns losses."""
    seed = args.seed + 2  # the VAE's seed in make_fixtures.py
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # batches and ε: the same draws in both runs
    kw = {"image_size": 64, "nc": 1, "nz": sizes.nz}
    enc = zoo.build("vae_encoder", {**kw, "nef": sizes.width})
    dec = zoo.build("vae_decoder", {**kw, "ngf": sizes.width})
    enc, dec = (m.to(memory_format=torch.channels_last) for m in (enc, dec))
    d_kwargs = {**kw, "ngf": sizes.width}
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=sizes.lr)
    penalty = popt = None
    z_gen = torch.Generator().manual_seed(seed + 1000)  # the penalty's own prior latents
    if run == "penalty":
        penalty = GenericityPenalty(dec, torch.zeros(2, sizes.nz), levels=PENALISED)
        weights = [dec.get_submodule(r.name).weight for r in penalty.records]
        popt = torch.optim.Adam(weights, lr=args.penalty_lr)
    recipe = f"fixtures' beta-VAE recipe (Adam lr={sizes.lr:g}, batch {sizes.batch_size}), " + (
        f"alternating with Adam lr={args.penalty_lr:g} steps on GenericityPenalty at "
        f"{'/'.join(PENALISED)} (normalised, prior latents)"
        if penalty
        else "no penalty"
    )
    folder = args.out / run
    written: list[Path] = []
    hist: dict[str, list[float]] = {"rec": [], "kl": [], "penalty": []}

    def tail(key: str, n: int) -> float:
        values = hist[key][-n:]
        return float(np.mean(values)) if values else float("nan")

    def snapshot(step: int) -> None:
        loss = "initialisation" if step == 0 else (
            f"mean of last {min(args.every, step)} steps: rec_BCE={tail('rec', args.every):.2f} "
            f"KL={tail('kl', args.every):.2f}"
        )  # fmt: skip
        written.append(folder / f"vae64_decoder_step{step:05d}.safetensors")
        fx.save_fixture(
            written[-1], dec, "vae_decoder", d_kwargs,
            step=step, seed=seed, data=fx.DATA_DESCRIPTION + ", in [0,1]",
            extra={
                "genaudit.fixture.script": "examples/train_penalty.py",
                "genaudit.fixture.recipe": recipe,
                "genaudit.fixture.role": f"VAE decoder ({run} run) after {step} steps",
                "genaudit.fixture.loss": loss,
            },
        )  # fmt: skip

    t0 = time.perf_counter()
    snapshot(0)
    for step in range(1, args.steps + 1):
        x = fx.sample_batch(pool, sizes.batch_size, gen)
        rec, kl = fx.vae_losses(enc, dec, x, gen)
        opt.zero_grad(set_to_none=True)
        (rec + kl).backward()
        opt.step()
        hist["rec"].append(rec.item())
        hist["kl"].append(kl.item())
        if penalty is not None and popt is not None:
            z = torch.randn(sizes.batch_size, sizes.nz, generator=z_gen)
            popt.zero_grad(set_to_none=True)
            value = penalty(z)
            value.backward()
            popt.step()
            hist["penalty"].append(value.item())
        if step % args.every == 0 or step == args.steps:
            snapshot(step)
            extra = f"  penalty {tail('penalty', args.every):.4f}" if penalty else ""
            fx.log(
                f"{run:8s} {step:5d}/{args.steps}  rec {tail('rec', args.every):.2f}  "
                f"kl {tail('kl', args.every):.2f}{extra}  {time.perf_counter() - t0:.0f}s"
            )
    return {
        "seconds": time.perf_counter() - t0,
        "rec": tail("rec", args.every),
        "kl": tail("kl", args.every),
        "penalty": tail("penalty", args.every) if penalty else None,
        "snapshots": written,
    }


def audit(path: Path, sizes: Sizes, fx: ModuleType) -> dict[str, dict[str, float]]:
    """Per-level median SDR, SD and mean of log10 SDR and generic fraction of one snapshot."""
    model = fx.load_fixture(path)
    records = walk_layers(model, (torch.zeros(2, sizes.nz),))
    result = run_sdr(
        model, records, latent_source((sizes.nz,), seed=0), num_samples=sizes.audit_samples,
        batch_size=64, device=torch.device("cpu"),
    )  # fmt: skip
    out = {}
    for level in result.levels:
        if level.level in LEVELS and level.summary is not None:
            s = level.summary
            out[level.level] = {
                "median_sdr": s.median_sdr,
                "mean_log10": s.mean_log10,
                "sd_log10": s.sd_log10,
                "generic_fraction": s.generic_fraction,
            }
    return out


def print_table(summary: dict[str, Any]) -> None:
    print("log10 SDR of the decoder snapshots on prior latents, per level "
          "(median SDR / SD of log10 SDR / generic fraction |log10 SDR| <= 0.1)")  # fmt: skip
    header = f"{'run':8s} {'step':>5s}  " + "  ".join(f"{lv:>20s}" for lv in LEVELS)
    print(header)
    print("-" * len(header))
    for run in RUNS:
        for step, levels in summary["runs"][run]["snapshots"].items():
            cells = []
            for lv in LEVELS:
                v = levels.get(lv)
                cells.append(
                    f"{v['median_sdr']:6.3f} {v['sd_log10']:6.3f} {v['generic_fraction']:5.0%}"
                    if v
                    else "-"
                )
            print(f"{run:8s} {int(step):5d}  " + "  ".join(f"{c:>20s}" for c in cells))
    for run in RUNS:
        r = summary["runs"][run]
        pen = "" if r["penalty"] is None else f", penalty {r['penalty']:.4f}"
        print(
            f"{run}: final rec BCE {r['rec']:.2f}, KL {r['kl']:.2f}{pen} "
            f"(means over the last {summary['every']} steps), {r['seconds']:.0f}s"
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train both runs, audit every snapshot, print the table; returns the summary."""
    args = parse_args(argv)
    fx = load_fixture_script()
    fx.configure_torch(args.threads)
    sizes = QUICK if args.quick else Sizes()
    faces = fx.load_faces()
    pool = fx.augmented_pool(faces, sizes.crops_per_image, np.random.default_rng(args.seed), 64)
    summary: dict[str, Any] = {
        "steps": args.steps, "every": args.every, "seed": args.seed, "quick": args.quick,
        "penalty_lr": args.penalty_lr, "threads": torch.get_num_threads(),
        "audit_samples": sizes.audit_samples, "runs": {},
    }  # fmt: skip
    for run in RUNS:
        losses = train(run, pool, sizes, args, fx)
        snaps = {}
        for path in losses.pop("snapshots"):
            snaps[str(int(path.stem[-5:]))] = audit(path, sizes, fx)
        summary["runs"][run] = {**losses, "snapshots": snaps}
    print_table(summary)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)

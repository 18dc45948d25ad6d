"""The overhead of a :class:`genaudit.Tracker` on a training loop.

A small DCGAN (generator and discriminator from the registry, default 32×32, ngf=ndf=32, nz=64)
is trained with the usual non-saturating GAN losses and Adam on synthetic images (soft random
blobs), for ``--steps`` steps, twice per repeat side by side in one process: plainly, and with a
Tracker measuring the generator every ``--every`` steps (default 50: SDR of every layer and the
stretch of each level, on 256 fixed latents). Runs are interleaved (plain, tracked, tracked,
plain, …); the ratios of the median and of the minimum times are printed (on a shared
machine the minimum is the least disturbed run). ``--quick`` runs a tiny model briefly.

    python benchmarks/bench_tracker.py --out tracker.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import common
import torch
from torch import nn

from genaudit import Tracker
from genaudit.io import registry as zoo


def real_images(n: int, size: int, nc: int, gen: torch.Generator) -> torch.Tensor:
    """Soft random blobs in [-1, 1]: something with spatial structure for D to tell apart."""
    grid = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centres = torch.rand(n, 2, 1, 1, generator=gen) * 1.4 - 0.7
    width = 0.15 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    blob = torch.exp(-((xx - centres[:, :1]) ** 2 + (yy - centres[:, 1:]) ** 2) / width**2)
    return (blob.expand(n, nc, size, size) * 2 - 1).contiguous()


def train(args: argparse.Namespace, tracked: bool) -> tuple[float, int]:
    """Seconds of ``args.steps`` training steps (and how many measurements the Tracker made)."""
    torch.manual_seed(0)
    kw = {"image_size": args.image_size, "nc": args.nc}
    g = zoo.build("dcgan_generator", {**kw, "nz": args.nz, "ngf": args.ngf})
    d = zoo.build("dcgan_discriminator", {**kw, "ndf": args.ngf})
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loss = nn.BCEWithLogitsLoss()
    data = torch.Generator().manual_seed(1)
    tracker = Tracker(g, torch.randn(args.samples, args.nz, 1, 1), every=args.every)
    ones, zeros = torch.ones(args.batch_size), torch.zeros(args.batch_size)

    def run() -> None:
        for step in range(args.steps):
            real = real_images(args.batch_size, args.image_size, args.nc, data)
            fake = g(torch.randn(args.batch_size, args.nz, 1, 1, generator=data))
            opt_d.zero_grad()
            d_loss = loss(d(real).view(-1), ones) + loss(d(fake.detach()).view(-1), zeros)
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad()
            loss(d(fake).view(-1), ones).backward()
            opt_g.step()
            if tracked:
                tracker.step(step)

    seconds, _ = common.timed(run, torch.device("cpu"))
    return seconds, len(tracker.history)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--samples", type=int, default=256, help="latents the Tracker measures on")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--nz", type=int, default=64)
    p.add_argument("--nc", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="pairs of runs (interleaved)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a tiny model, 20 steps, every 10")
    p.add_argument("--out", help="write the figures as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.every, args.samples, args.ngf, args.nz, args.repeats = 20, 10, 32, 8, 16, 1
    common.set_threads(args.threads)
    plain: list[float] = []
    tracked: list[float] = []
    measurements = 0
    for k in range(args.repeats):  # plain, tracked, tracked, plain, …
        order = (False, True) if k % 2 == 0 else (True, False)
        for with_tracker in order:
            seconds, measurements_k = train(args, with_tracker)
            (tracked if with_tracker else plain).append(seconds)
            measurements = max(measurements, measurements_k)
    ratio = statistics.median(tracked) / statistics.median(plain)
    per = (statistics.median(tracked) - statistics.median(plain)) / max(measurements, 1)
    rows = [
        ["plain", min(plain), statistics.median(plain), "—", "—"],
        ["Tracker", min(tracked), statistics.median(tracked), measurements, per],
    ]
    print(f"{args.steps} steps, batch {args.batch_size}, {args.image_size}×{args.image_size} "
          f"DCGAN (ngf={args.ngf}, nz={args.nz}); Tracker every {args.every} steps on "
          f"{args.samples} latents")  # fmt: skip
    headers = ["run", "min (s)", "median (s)", "measurements", "s / measurement"]
    print(common.format_table(headers, rows))
    ratio_min = min(tracked) / min(plain)
    print(f"tracked / plain: {ratio:.3f} (medians), {ratio_min:.3f} (minimums)")
    doc: dict[str, Any] = {
        "machine": common.machine_info(torch.device("cpu")),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "plain_s": common.stats(plain),
        "tracked_s": common.stats(tracked),
        "measurements": measurements,
        "ratio": ratio,
        "ratio_of_minimums": ratio_min,
        "seconds_per_measurement": per,
    }
    common.write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

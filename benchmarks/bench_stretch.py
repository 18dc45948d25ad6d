"""`stretch` against the forward pass and against the minimum work (target: at most 1.1×).

For a DCGAN generator (default: 64×64, ngf=64, nz=100, nc=3) and several N, measured side by
side in one process (same batch size, same inputs, eval, no gradients):

- the bare forward pass over N samples;
- the *minimum*: per batch one forward pass keeping the input of each chosen layer ``main.j``,
  the transformed output and its squared error, then for each chosen layer ``main[j:]`` run on
  that kept input with the transform applied after ``main.j``, and its squared error;
- ``run_stretch`` at the default layers (the last conv of every level: projection, coarse,
  intermediate, fine, image), which runs only the downstream part of each layer;
- ``run_stretch`` with every layer's pass a full forward pass (how it used to run: unless
  ``--no-full``).

Reported: stretch over the minimum (target ≤ 1.1), stretch over the forward pass against the
old budget of (layers + 1) forward passes, and the peak memory per N in a fresh child process.
``--quick`` runs a tiny model at tiny N.

    python benchmarks/bench_stretch.py --out stretch.json
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

from genaudit.analysis import stretch as stretch_module
from genaudit.analysis.stretch import choose_stretch_layers, run_stretch
from genaudit.analysis.transforms import make_transform

SCRIPT = Path(__file__).resolve()


def _stretch(model, records, source, n: int, b: int, device: torch.device) -> Any:
    op = make_transform("stretch", 1.5, "horizontal")
    chosen = choose_stretch_layers(records)
    return run_stretch(
        model, records, chosen, source, transform=op, num_samples=n, batch_size=b,
        device=device, keep_samples=0,
    )  # fmt: skip


def _full_stretch(model, records, source, n: int, b: int, device: torch.device) -> Any:
    """``run_stretch`` with every layer's pass a full forward pass (as it used to run)."""
    stretch_module._REPLAY = False
    try:
        return _stretch(model, records, source, n, b, device)
    finally:
        stretch_module._REPLAY = True


def _sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.to(torch.float64) - b.to(torch.float64)).square().sum()


def minimum(model, records, source, n: int, b: int, device: torch.device) -> list[float]:
    """The least work giving stretch's numbers: one forward pass per batch keeping the input of
    each chosen layer, then only ``main[j:]`` from that input per chosen layer ``main.j``."""
    op = make_transform("stretch", 1.5, "horizontal")
    starts = [int(r.name.split(".")[1]) for r in choose_stretch_layers(records)]
    main = model.main
    sq_base = torch.zeros((), dtype=torch.float64, device=device)
    sq = [torch.zeros((), dtype=torch.float64, device=device) for _ in starts]
    with torch.no_grad():
        for (z,) in source.batches(n, b, device):
            kept, x = {}, z
            for i, module in enumerate(main):
                if i in starts:
                    kept[i] = x
                x = module(x)
            target = op(x)
            sq_base += _sq(x, target)
            for k, j in enumerate(starts):
                y = op(main[j](kept[j]))
                for module in main[j + 1 :]:
                    y = module(y)
                sq[k] += _sq(y, target)
    return [float(t) for t in (sq_base, *sq)]


def measure_n(args: argparse.Namespace, n: int, model, source, records, device) -> dict:
    b = args.batch_size
    runs = {
        "forward": partial(common.forward_pass, model, source, n, b, device),
        "minimum": partial(minimum, model, records, source, n, b, device),
        "stretch": partial(_stretch, model, records, source, n, b, device),
    }
    if not args.no_full:
        runs["full"] = partial(_full_stretch, model, records, source, n, b, device)
    order = list(runs)
    times: dict[str, list[float]] = {what: [] for what in runs}
    for rep in range(args.repeats):
        for what in order if rep % 2 == 0 else order[::-1]:
            times[what].append(common.timed(runs[what], device)[0])
    fwd_t, min_t, st_t = times["forward"], times["minimum"], times["stretch"]
    layers = len(choose_stretch_layers(records))
    budget = layers + 1
    ratio = float(np.median(st_t)) / float(np.median(fwd_t))
    to_min = float(np.median(st_t)) / float(np.median(min_t))
    row = {
        "num_samples": n,
        "layers": layers,
        "forward_s": common.stats(fwd_t),
        "minimum_s": common.stats(min_t),
        "stretch_s": common.stats(st_t),
        "ratio_of_median": ratio,
        "ratio_of_min": min(st_t) / min(fwd_t),
        "budget_forward_passes": budget,
        "ratio_over_budget": ratio / budget,
        "verdict": common.verdict(ratio, budget, at_most=True),
        "minimum_over_forward": float(np.median(min_t)) / float(np.median(fwd_t)),
        "ratio_to_minimum": to_min,
        "ratio_to_minimum_of_min": min(st_t) / min(min_t),
        "target_to_minimum": 1.1,
        "verdict_to_minimum": common.verdict(to_min, 1.1, at_most=True),
    }
    if "full" in times:
        full_t = times["full"]
        row["full_s"] = common.stats(full_t)
        row["full_ratio_of_median"] = float(np.median(full_t)) / float(np.median(fwd_t))
        row["full_ratio_to_minimum"] = float(np.median(full_t)) / float(np.median(min_t))
    return row


def child(args: argparse.Namespace) -> None:
    device = common.pick_device(args.device)
    common.set_threads(args.threads)
    model, source, records = common.dcgan(args.image_size, args.ngf, args.nz, args.nc, device)
    before = common.rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n, b = args.num_samples, args.batch_size
    if args.kind == "stretch":
        _stretch(model, records, source, n, b, device)
    else:
        common.forward_pass(model, source, n, b, device)
    common.sync(device)
    doc = {"kind": args.kind, "num_samples": n, **common.memory_report(device, before)}
    print(json.dumps(doc))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--sizes", default="512,2048", help="N values, comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--nc", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-full", action="store_true", help="skip the full-forward stretch runs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory children")
    p.add_argument("--quick", action="store_true", help="tiny model, tiny N (smoke test)")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="stretch", help=argparse.SUPPRESS)
    p.add_argument("--num-samples", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = common.parse_sizes(args.sizes)
    args.memory_kinds = ("stretch", "forward")
    if args.quick:
        args.sizes, args.batch_size, args.ngf, args.image_size, args.nz = [16, 32], 8, 4, 16, 8
        args.repeats, args.memory_kinds = 1, ("stretch",)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        child(args)
        return {}
    device = common.pick_device(args.device)
    common.set_threads(args.threads)
    model, source, records = common.dcgan(args.image_size, args.ngf, args.nz, args.nc, device)
    config = {
        "arch": "dcgan_generator",
        "image_size": args.image_size,
        "ngf": args.ngf,
        "nz": args.nz,
        "nc": args.nc,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "transform": "stretch 1.5 horizontal",
        "layers": [r.name for r in choose_stretch_layers(records)],
    }
    doc: dict[str, Any] = {"machine": common.machine_info(device), "config": config}
    _stretch(model, records, source, args.batch_size, args.batch_size, device)  # warm-up
    rows = []
    for n in args.sizes:
        print(f"N={n} …", file=sys.stderr)
        row = {"num_samples": n}
        if not args.memory_only:
            row = measure_n(args, n, model, source, records, device)
        if not args.no_memory:
            child_args = [
                "--num-samples", str(n), "--batch-size", str(args.batch_size),
                "--ngf", str(args.ngf), "--image-size", str(args.image_size),
                "--nz", str(args.nz), "--nc", str(args.nc), "--device", args.device,
                "--threads", str(args.threads),
            ]  # fmt: skip
            row["memory"] = {
                kind: common.run_child(SCRIPT, ["--kind", kind, *child_args])
                for kind in args.memory_kinds
            }
        rows.append(row)
    doc["sizes"] = rows
    print(report(doc))
    common.write_json(args.out, doc)
    return doc


def _t(times: dict[str, Any] | None) -> str | None:
    return f"{times['min']:.3f}/{times['median']:.3f}" if times else None


def _peak(memory: dict[str, Any], kind: str) -> float | None:
    return round(memory[kind]["peak_rss_mib"], 1) if kind in memory else None


def report(doc: dict[str, Any]) -> str:
    m, c = doc["machine"], doc["config"]
    lines = [
        f"stretch vs forward: DCGAN {c['image_size']}² ngf={c['ngf']}, batch {c['batch_size']}, "
        f"{len(c['layers'])} layers; {m['device']}, {m['cpu']}, {m['torch_threads']} thread(s), "
        f"torch {m['torch']}; times in s, min/median of {c['repeats']}",
        "",
    ]
    rows = []
    for r in doc["sizes"]:
        f, lo, s, full = (r.get(k) for k in ("forward_s", "minimum_s", "stretch_s", "full_s"))
        mem = r.get("memory", {})
        rows.append(
            [r["num_samples"], _t(f), _t(lo), _t(s), _t(full),
             round(r["ratio_to_minimum"], 3) if s else None, r.get("verdict_to_minimum"),
             round(r["ratio_of_median"], 2) if s else None,
             round(r["full_ratio_of_median"], 2) if full else None,
             r.get("budget_forward_passes"), _peak(mem, "stretch"), _peak(mem, "forward")]
        )  # fmt: skip
    header = [
        "N", "forward", "minimum", "stretch", "stretch (full passes)", "stretch/minimum",
        "≤ 1.1", "stretch/forward", "full/forward", "budget", "stretch peak MiB",
        "forward peak MiB",
    ]  # fmt: skip
    lines.append(common.format_table(header, rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""`stretch` against the forward pass (about levels + 1 forward passes and no more).

For a DCGAN generator (default: 64×64, ngf=64, nz=100, nc=3) and several N, measured side by
side in one process: the bare forward pass over N samples (same batch size, same inputs, eval,
no gradients) and ``run_stretch`` at the default layers (the last conv of every level: projection,
coarse, intermediate, fine, image), their ratio against the budget of (layers + 1) forward passes,
and the peak memory per N in a fresh child process. ``--quick`` runs a tiny model at tiny N.

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


def measure_n(args: argparse.Namespace, n: int, model, source, records, device) -> dict:
    b = args.batch_size
    runs = {
        "forward": partial(common.forward_pass, model, source, n, b, device),
        "stretch": partial(_stretch, model, records, source, n, b, device),
    }
    times: dict[str, list[float]] = {"forward": [], "stretch": []}
    for rep in range(args.repeats):
        for what in ("forward", "stretch") if rep % 2 == 0 else ("stretch", "forward"):
            times[what].append(common.timed(runs[what], device)[0])
    fwd_t, st_t = times["forward"], times["stretch"]
    layers = len(choose_stretch_layers(records))
    budget = layers + 1
    ratio = float(np.median(st_t)) / float(np.median(fwd_t))
    return {
        "num_samples": n,
        "layers": layers,
        "forward_s": common.stats(fwd_t),
        "stretch_s": common.stats(st_t),
        "ratio_of_median": ratio,
        "ratio_of_min": min(st_t) / min(fwd_t),
        "budget_forward_passes": budget,
        "ratio_over_budget": ratio / budget,
        "verdict": common.verdict(ratio, budget, at_most=True),
    }


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
        f, s = r.get("forward_s"), r.get("stretch_s")
        mem = r.get("memory", {})
        rows.append(
            [r["num_samples"], f"{f['min']:.3f}/{f['median']:.3f}" if f else None,
             f"{s['min']:.3f}/{s['median']:.3f}" if s else None,
             round(r["ratio_of_median"], 2) if s else None, r.get("budget_forward_passes"),
             r.get("verdict"), _peak(mem, "stretch"), _peak(mem, "forward")]
        )  # fmt: skip
    lines.append(
        common.format_table(
            [
                "N",
                "forward",
                "stretch",
                "ratio",
                "budget",
                "verdict",
                "stretch peak MiB",
                "forward peak MiB",
            ],
            rows,
        )
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

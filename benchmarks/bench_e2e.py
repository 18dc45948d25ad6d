"""`genaudit sdr` end to end (a whole process: start-up, loading, sampling, spectra, pairs) against
a plain script that loads the same checkpoint and runs the bare forward pass over the same N.

Both are separate Python processes, run interleaved (plain, genaudit, genaudit, plain, …) with
one torch thread each (``OMP_NUM_THREADS=1``), on the face-sized DCGAN generator (ngf=64, 64×64,
nz=100, nc=3, random weights) saved as safetensors. Then, in this process, where genaudit's time
goes: start-up (importing the command and torch), loading the checkpoint, the trial forward pass
and layer walk, the streaming pass (forward plus the hooks' spectra) against the bare forward
pass, and the per-pair stage.

    python benchmarks/bench_e2e.py --sizes 2048 --out e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch

from genaudit.analysis.sdr import run_sdr
from genaudit.analysis.statistics import collect_statistics
from genaudit.io import registry as zoo
from genaudit.io.writing import save_safetensors
from genaudit.model.inputs import latent_source
from genaudit.model.layers import walk_layers
from genaudit.model.loading import load_model

TARGET = 1.1  # genaudit sdr, as a whole process, against the plain script (ratio of medians)

# The plain script: what a user would write to run the model over N samples, nothing else.
PLAIN = """
import sys, torch
from safetensors.torch import load_file
from genaudit.io import registry as zoo
path, n, b, ngf, nz, nc, size = sys.argv[1], *map(int, sys.argv[2:8])
model = zoo.build("dcgan_generator", {"ngf": ngf, "nz": nz, "nc": nc, "image_size": size})
model.load_state_dict(load_file(path))
model.eval()
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    for start in range(0, n, b):
        model(torch.randn(min(b, n - start), nz, 1, 1, generator=gen))
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(common.ROOT), env.get("PYTHONPATH", "")])
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # both sides use compiled bytecode, as installed
    return env


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def whole_processes(args: argparse.Namespace, path: Path, n: int) -> dict[str, Any]:
    """Wall time of the plain script and of ``genaudit sdr`` over N samples, interleaved."""
    shape = [str(v) for v in (n, args.batch_size, args.ngf, args.nz, args.nc, args.image_size)]
    plain = [sys.executable, "-c", PLAIN, str(path), *shape]
    audit = [sys.executable, "-m", "genaudit", "sdr", str(path), "--num-samples", str(n),
             "--batch-size", str(args.batch_size), "--device", "cpu", "--json", os.devnull,
             "--quiet"]  # fmt: skip
    times: dict[str, list[float]] = {"plain": [], "genaudit": []}
    for k in range(args.repeats):
        order = ("plain", "genaudit") if k % 2 == 0 else ("genaudit", "plain")
        for name in order:
            times[name].append(_wall(plain if name == "plain" else audit))
    plain_s, audit_s = common.stats(times["plain"]), common.stats(times["genaudit"])
    return {
        "num_samples": n,
        "plain_s": plain_s,
        "genaudit_s": audit_s,
        "ratio_median": audit_s["median"] / plain_s["median"],
        "ratio_min": audit_s["min"] / plain_s["min"],
    }


def stages(args: argparse.Namespace, path: Path, n: int) -> dict[str, float]:
    """Where ``genaudit sdr``'s time goes, measured in this process (one torch thread)."""
    startup = _wall([sys.executable, "-c", "import genaudit.cli.sdr, genaudit.cli.common"])
    torch_only = _wall([sys.executable, "-c", "import torch"])
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    model = load_model(path).model.eval()
    t1 = time.perf_counter()
    source = latent_source((args.nz, 1, 1), seed=0)
    records = walk_layers(model, source.first_batch(cpu))
    t2 = time.perf_counter()
    forward, _ = common.timed(
        lambda: common.forward_pass(model, source, n, args.batch_size, cpu), cpu
    )
    streaming, _ = common.timed(
        lambda: collect_statistics(model, records, source, num_samples=n,
                                   batch_size=args.batch_size, device=cpu),
        cpu,
    )  # fmt: skip
    whole, _ = common.timed(
        lambda: run_sdr(model, records, source, num_samples=n, batch_size=args.batch_size,
                        device=cpu),
        cpu,
    )  # fmt: skip
    return {
        "startup_s": startup,
        "startup_import_torch_s": torch_only,
        "load_s": t1 - t0,
        "walk_s": t2 - t1,
        "forward_s": forward,
        "streaming_s": streaming,
        "spectra_s": streaming - forward,
        "pairs_s": whole - streaming,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2048", help="N values, comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--nc", type=int, default=3)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="tiny model, tiny N (smoke test)")
    p.add_argument("--out", help="write the results as JSON to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.image_size, args.ngf, args.nz, args.repeats = "32", 16, 4, 8, 1
        args.batch_size = 16
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dcgan.safetensors"
        torch.manual_seed(0)
        kwargs = {"ngf": args.ngf, "nz": args.nz, "nc": args.nc, "image_size": args.image_size}
        model = zoo.build("dcgan_generator", kwargs)
        save_safetensors(model.state_dict(), path, arch="dcgan_generator", arch_kwargs=kwargs)
        rows = []
        for n in sizes:
            row = whole_processes(args, path, n)
            row["stages"] = stages(args, path, n)
            rows.append(row)
    worst = max(row["ratio_median"] for row in rows)
    doc = {
        "machine": common.machine_info(torch.device("cpu")), "model": kwargs, "sizes": rows,
        "target": {"sdr_over_plain_forward": TARGET, "worst_median_ratio": worst,
                   "met": worst <= TARGET, "quick": args.quick},
    }  # fmt: skip
    print(report(doc))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def report(doc: dict[str, Any]) -> str:
    lines = [
        f"machine: {doc['machine']['cpu']}, torch {doc['machine']['torch']}, 1 thread",
        "N       plain (s) min/median   genaudit sdr (s) min/median   vs forward (median, min)",
    ]
    for row in doc["sizes"]:
        p, g = row["plain_s"], row["genaudit_s"]
        lines.append(
            f"{row['num_samples']:<7} {p['min']:8.2f} / {p['median']:<8.2f}    "
            f"{g['min']:8.2f} / {g['median']:<8.2f}        "
            f"{row['ratio_median']:.3f}× ({row['ratio_min']:.3f}×)"
        )
        s = row["stages"]
        lines.append("  stages: " + ", ".join(f"{k[:-2]} {v:.3f} s" for k, v in s.items()))
    target = doc["target"]
    verdict = "met" if target["met"] else "NOT met"
    if target["quick"]:
        verdict = "not judged (--quick: start-up dominates a tiny run)"
    lines.append(
        f"target: genaudit sdr ≤ {target['sdr_over_plain_forward']}× the plain script: {verdict} "
        f"(worst median ratio {target['worst_median_ratio']:.3f}×)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

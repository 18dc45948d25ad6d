"""How fast the command line answers when there is no work to do: help, version, usage errors.

Each case is a fresh ``python -m genaudit …`` process, timed wall-clock from start to exit, side
by side with the floor every Typer program pays, ``python -c "import typer, rich"``, in the same
interpreter; runs are interleaved (floor, case 1, case 2, …, floor, …) so that a busy moment of a
shared machine hits every case alike. The table shows min/median seconds and the ratio of medians
to the floor (target ≤ 1.5×), and whether the case imported torch (it must not).

Bytecode caching is on for these runs (``PYTHONDONTWRITEBYTECODE`` is removed from the children's
environment) and every case runs once before timing, as it does on a user's second run.

    python benchmarks/bench_startup.py [--repeats 15] [--out startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = str(ROOT / "fixtures" / "dcgan64_generator.safetensors")
FLOOR = ("floor: import typer, rich", ["-c", "import typer, rich"])
CASES = [
    ("genaudit --help", ["--help"]),
    ("genaudit --version", ["--version"]),
    *[(f"genaudit {c} --help", [c, "--help"])
      for c in ("layers", "sdr", "stretch", "compare", "check", "archs")],
    ("bad flag: sdr MODEL --bogus", ["sdr", FIXTURE, "--bogus"]),
    ("bad value: sdr MODEL --num-samples 0", ["sdr", FIXTURE, "--num-samples", "0"]),
    ("bad value: stretch MODEL --axis diagonal", ["stretch", FIXTURE, "--axis", "diagonal"]),
    ("bad value: sdr MODEL --plot out.gif", ["sdr", FIXTURE, "--plot", "out.gif"]),
    ("missing argument: sdr", ["sdr"]),
]  # fmt: skip
TARGET = 1.5
PROBE = "import runpy, sys; sys.argv = ['genaudit', *sys.argv[1:]]\ntry:\n    runpy.run_module('genaudit', run_name='__main__')\nexcept SystemExit:\n    pass\nsys.stderr.write('TORCH=%d' % ('torch' in sys.modules))\n"  # noqa: E501


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["COLUMNS"] = "100"
    return env


def time_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], capture_output=True, env=env, cwd=ROOT, check=False)
    return time.perf_counter() - start


def imports_torch(args: list[str], env: dict[str, str]) -> bool:
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=False)  # fmt: skip
    return "TORCH=1" in res.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args()
    env = child_env()
    runs = [FLOOR, *[(name, ["-m", "genaudit", *argv]) for name, argv in CASES]]
    for _, argv in runs:  # warm: bytecode written, file cache filled
        time_once(argv, env)
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    for _ in range(args.repeats):
        for name, argv in runs:
            times[name].append(time_once(argv, env))
    floor = statistics.median(times[FLOOR[0]])
    rows = []
    for name, argv in runs:
        med = statistics.median(times[name])
        torch_loaded = None if name == FLOOR[0] else imports_torch(argv[2:], env)
        rows.append({"case": name, "min_s": min(times[name]), "median_s": med,
                     "ratio": med / floor, "imports_torch": torch_loaded})  # fmt: skip
    import typer

    machine = {
        "python": platform.python_version(), "typer": typer.__version__,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }  # fmt: skip
    print(f"start-up, {args.repeats} interleaved runs each; python {machine['python']}, "
          f"typer {machine['typer']}, {machine['cpus']} CPUs")  # fmt: skip
    print(f"{'case':44} {'min s':>7} {'median s':>9} {'vs floor':>9}  torch")
    for r in rows:
        torch_col = "" if r["imports_torch"] is None else ("YES" if r["imports_torch"] else "no")
        print(f"{r['case']:44} {r['min_s']:7.3f} {r['median_s']:9.3f} {r['ratio']:8.2f}x  "
              f"{torch_col}")  # fmt: skip
    worst = max(r["ratio"] for r in rows[1:])
    print(f"worst ratio {worst:.2f}x (target <= {TARGET}x); any case importing torch: "
          f"{any(r['imports_torch'] for r in rows[1:])}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "target": TARGET, "rows": rows},
                                             indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

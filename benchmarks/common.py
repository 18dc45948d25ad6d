"""Helpers shared by the benchmark scripts: the machine, the model, timing, peak memory, tables.

Timings are wall-clock seconds around a callable, with ``torch.cuda.synchronize`` before and
after on CUDA. Each measurement is repeated; tables show the minimum and the median (the
machine may be shared: the minimum is the least disturbed run, the median the typical one).
Peak memory is measured in a fresh child process per configuration, so one measurement
cannot inherit another's peak: ``VmHWM`` (host, see :func:`peak_rss_bytes`) and
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from genaudit.io import registry as zoo  # noqa: E402
from genaudit.model.inputs import InputSource, latent_source  # noqa: E402
from genaudit.model.layers import LayerRecord, walk_layers  # noqa: E402
from genaudit.model.loading import resolve_device  # noqa: E402


def cpu_model() -> str:
    """``lscpu``'s model name (or /proc/cpuinfo's, or the platform's)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where the figures come from: CPU, cores, threads, versions, GPU, load at the start."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def pick_device(spec: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""
    dev = resolve_device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def set_threads(threads: int) -> None:
    """Intra-op threads for this process (0 leaves torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def dcgan(
    image_size: int, ngf: int, nz: int, nc: int, device: torch.device, seed: int = 0
) -> tuple[torch.nn.Module, InputSource, list[LayerRecord]]:
    """A DCGAN generator (random weights, eval mode) on ``device``, its latents and its layers."""
    torch.manual_seed(seed)
    model = zoo.build("dcgan_generator", {"image_size": image_size, "ngf": ngf, "nz": nz, "nc": nc})
    model = model.to(device).eval()
    source = latent_source((nz, 1, 1), seed=seed)
    first = tuple(t.to(device) for t in source.batch(0, 2))
    return model, source, walk_layers(model, first)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall-clock seconds of ``fn()`` (device work included) and its result."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def stats(times: Sequence[float]) -> dict[str, Any]:
    """``min``, ``median`` and every repeat, in seconds."""
    return {
        "min": min(times),
        "median": statistics.median(times),
        "all": [round(t, 4) for t in times],
    }


def forward_pass(
    model: torch.nn.Module,
    source: InputSource,
    num_samples: int,
    batch_size: int,
    device: torch.device,
) -> None:
    """The bare forward pass: the same batches of the same inputs, eval mode, no gradients."""
    with torch.no_grad():
        for inputs in source.batches(num_samples, batch_size, device):
            model(*inputs)


def rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``), 0 where unknown."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started its program.

    ``VmHWM`` from ``/proc/self/status`` where there is one: ``ru_maxrss`` is not enough in a
    child, because Linux carries the parent's resident size at ``fork`` over ``execve`` into
    it (a child of a big parent reports the parent's size). Elsewhere ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def memory_report(device: torch.device, rss_before: int) -> dict[str, Any]:
    """What a child process reports after its run: host peak, growth, device peak."""
    out: dict[str, Any] = {
        "peak_rss_mib": peak_rss_bytes() / 2**20,
        "rss_before_run_mib": rss_before / 2**20,
    }
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_child(script: Path, args: Sequence[str], timeout: float = 3600) -> dict[str, Any]:
    """Run ``script --child ARGS`` in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}".rstrip("0")
        return "—" if v is None else str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in text:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def write_json(path: str | None, doc: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)


def parse_sizes(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def verdict(value: float, target: float, *, at_most: bool) -> str:
    """``met`` or ``missed by X%`` against a target (``at_most``: value ≤ target is good)."""
    ok = value <= target if at_most else value >= target
    if ok:
        return "met"
    off = (value / target - 1) if at_most else (target / value - 1)
    return f"missed by {100 * off:.0f}%"

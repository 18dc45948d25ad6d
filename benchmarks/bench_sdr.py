"""`sdr` against the forward pass and the dense per-pair reference (see docs/benchmarks.md).

For a DCGAN generator (default: 64×64 at the usual width, ngf=64, nz=100, nc=3) and several N,
measured side by side in one process:

- ``forward``: the bare forward pass over N samples (same batch size, same input source, eval
  mode, no gradients);
- ``sdr``: ``run_sdr`` on every layer, end to end (streaming + the pair stage), and the ratio
  sdr / forward (target ≤ 1.2);
- ``dense``: the dense reference (docs/method.md) at the N it can afford: the same streamed input
  spectra, then for every pair a zero-padded kernel on the (upsampled) grid, its FFT and the
  three averages, vectorised per layer in torch float64 (target: sdr ≥ 20× faster at N=2048).
  Reported end to end (streaming + dense pair stage) and for the pair stage alone. Optionally
  also the literal per-pair numpy loop of ``tests/dense_reference.py``, timed on a sample of
  pairs per layer and extrapolated to all pairs;
- peak memory per N in a fresh child process (``VmHWM``; on CUDA also
  ``torch.cuda.max_memory_allocated``), for sdr and for the forward pass (target: flat in N).

``--scaling`` adds how time grows with channel width (ngf 16/32/64) and resolution (32/64/128).
``--quick`` runs a tiny model at tiny N (the test suite's smoke test). Prints tables; ``--out``
writes everything as JSON.

    python benchmarks/bench_sdr.py --out sdr.json                # CPU, about 10 minutes
    python benchmarks/bench_sdr.py --device cuda --threads 0 --out sdr_gpu.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch

from genaudit.analysis.accumulators import SpectrumAccumulator
from genaudit.analysis.sdr import collect_statistics, layer_sdr, run_sdr
from genaudit.model.layers import LayerRecord

SCRIPT = Path(__file__).resolve()
TARGET_RATIO = 1.2
TARGET_SPEEDUP = 20.0
TARGET_SPEEDUP_N = 2048


# --------------------------------------------------------------------------- dense reference


def _full_spectrum(half: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Mean periodogram on the full grid from its rfft half (Hermitian symmetry S(ν) = S(−ν))."""
    d = len(grid)
    lead = tuple(range(1, d))
    mirror = half.flip(lead).roll((1,) * (d - 1), lead) if d > 1 else half  # index −ν
    m = grid[-1]
    tail = [m - j for j in range(m // 2 + 1, m)]
    return torch.cat([half, mirror[..., tail]], dim=-1)


def _pair_weights(record: LayerRecord, weight: torch.Tensor) -> torch.Tensor:
    """``(C_out, C_in/g, k…)`` float64 kernels (ConvTranspose weights regrouped)."""
    w = weight.detach().to(torch.float64)
    if not record.transposed:
        return w
    g = record.groups
    c_in, c_out_g = w.shape[0], w.shape[1]
    w = w.reshape(g, c_in // g, c_out_g, *w.shape[2:]).transpose(1, 2)
    return w.reshape(g * c_out_g, c_in // g, *w.shape[3:])


def dense_layer_sdr(
    record: LayerRecord,
    spectrum: SpectrumAccumulator,
    weight: torch.Tensor,
    budget_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """SDR of every pair the dense way: one zero-padded FFT per pair.

    A transposed conv with stride s works on the upsampled grid sM (like
    ``tests/dense_reference.py``): the input spectrum there is the input grid's one repeated
    (zero insertion), every kernel is dilated and zero-padded onto sM and transformed, and every
    bin that aliases the input's zero frequency is excluded. Returns ``(C_out, C_in/g)``.
    """
    grid = tuple(int(m) for m in record.grid)
    d = len(grid)
    s = tuple(record.stride) if record.transposed else (1,) * d
    dil = tuple(record.dilation)
    big = tuple(si * mi for si, mi in zip(s, grid, strict=True))
    s_full = _full_spectrum(spectrum.input_spectrum(), grid)
    s_big = s_full.repeat(1, *s).flatten(1)  # (C_in, |sM|)
    coords = torch.meshgrid(*[torch.arange(n) for n in big], indexing="ij")
    aliases_dc = torch.ones(big, dtype=torch.bool)
    for c, m in zip(coords, grid, strict=True):
        aliases_dc &= c % m == 0
    keep = ~aliases_dc.flatten()
    s_keep = s_big[:, keep.to(s_big.device)]
    kernels = _pair_weights(record, weight.to(s_big.device))
    c_out, c_in_g = int(kernels.shape[0]), int(kernels.shape[1])
    c_out_g = c_out // record.groups
    taps = list(itertools.product(*(range(int(k)) for k in kernels.shape[2:])))
    per_row = c_in_g * math.prod(big) * 48  # complex FFT + padded kernel + power, bytes
    rows = max(1, budget_bytes // per_row)
    out = torch.empty(c_out, c_in_g, dtype=torch.float64, device=s_big.device)
    dims = tuple(range(2, 2 + d))
    for lo in range(0, c_out, rows):
        hi = min(lo + rows, c_out)
        w = kernels[lo:hi]
        padded = torch.zeros((hi - lo, c_in_g, *big), dtype=torch.float64, device=w.device)
        for t in taps:
            pos = tuple((ti * di) % bi for ti, di, bi in zip(t, dil, big, strict=True))
            padded[(slice(None), slice(None), *pos)] += w[(slice(None), slice(None), *t)]
        f = torch.fft.fftn(padded, dim=dims)
        p = (f.real.square() + f.imag.square()).flatten(2)[..., keep]
        group = torch.arange(lo, hi, device=w.device) // c_out_g
        chans = group[:, None] * c_in_g + torch.arange(c_in_g, device=w.device)[None]
        s_pair = s_keep[chans]  # (rows, C_in/g, kept bins)
        mean_p = p.mean(-1)
        mean_s = s_pair.mean(-1)
        num = (p * s_pair).mean(-1)
        ratio = num / (mean_p * mean_s)
        out[lo:hi] = torch.where((mean_p > 0) & (mean_s > 0), ratio, math.nan)
    return out


def dense_pair_stage(
    records: list[LayerRecord], accumulators: dict, weights: dict
) -> dict[str, torch.Tensor]:
    """The dense reference's pair stage for every layer (trace layers as in genaudit)."""
    out = {}
    for r in records:
        acc, w = accumulators.get(r.index), weights.get(r.index)
        if r.analysis == "sdr" and isinstance(acc, SpectrumAccumulator) and w is not None:
            out[r.name] = dense_layer_sdr(r, acc, w)
        else:
            layer_sdr(r, acc, w, 0.1)
    return out


def loop_reference_seconds(
    records: list[LayerRecord], accumulators: dict, weights: dict, pairs_per_layer: int
) -> float | None:
    """The literal per-pair numpy loop of ``tests/dense_reference.py``, extrapolated.

    Times ``pairs_per_layer`` random pairs per layer (placing the kernel with its per-tap
    loop, ``np.fft.fftn`` on the upsampled grid, the masked means) and scales each layer's
    time to all its pairs. ``None`` when the tests folder is not there.
    """
    sys.path.insert(0, str(common.ROOT / "tests"))
    try:
        from dense_reference import pair_kernel, place_kernel  # type: ignore[import-not-found]
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    rng = random.Random(0)
    total = 0.0
    for r in records:
        acc = accumulators.get(r.index)
        if r.analysis != "sdr" or not isinstance(acc, SpectrumAccumulator):
            continue
        w = weights[r.index].detach().cpu().double().numpy()
        grid = tuple(int(m) for m in r.grid)
        s = tuple(r.stride) if r.transposed else (1,) * len(grid)
        big = tuple(si * mi for si, mi in zip(s, grid, strict=True))
        spec = _full_spectrum(acc.input_spectrum().cpu(), grid).numpy()
        spec = np.tile(spec, (1, *s))
        keep = np.ones(big, dtype=bool)
        for a, m in enumerate(grid):
            shape = [1] * len(big)
            shape[a] = big[a]
            keep &= (np.arange(big[a]) % m == 0).reshape(shape)
        keep = ~keep
        c_out = r.out_channels
        all_pairs = [(o, i) for o in range(c_out) for i in range(r.in_channels)]
        chosen = rng.sample(all_pairs, min(pairs_per_layer, len(all_pairs)))
        start = time.perf_counter()
        for o, i in chosen:
            _loop_pair(w, o, i, r, big, spec, keep, pair_kernel, place_kernel)
        total += (time.perf_counter() - start) * len(all_pairs) / len(chosen)
    return total


def _loop_pair(w, o, i, r, big, spec, keep, pair_kernel, place_kernel) -> float:
    k = pair_kernel(w, o, i, transposed=r.transposed, groups=r.groups)
    if k is None:
        return math.nan
    p = np.abs(np.fft.fftn(place_kernel(k, big, r.dilation))) ** 2
    s_i = spec[i]
    return float((p * s_i)[keep].mean() / (p[keep].mean() * s_i[keep].mean()))


def max_relative_difference(dense: dict[str, torch.Tensor], result: Any) -> float:
    worst = 0.0
    for layer in result.layers:
        if layer.record.name in dense and layer.values is not None:
            got = torch.as_tensor(layer.values)
            ref = dense[layer.record.name].cpu()
            ok = torch.isfinite(got) & torch.isfinite(ref)
            if ok.any():
                worst = max(worst, float(((got - ref).abs() / ref.abs())[ok].max()))
    return worst


# --------------------------------------------------------------------------- measurements


def measure_n(args: argparse.Namespace, n: int, model, source, records, device) -> dict:
    """Forward vs sdr (interleaved repeats), the pair stages, the dense reference."""
    b = args.batch_size
    runs = {
        "forward": partial(common.forward_pass, model, source, n, b, device),
        "sdr": partial(run_sdr, model, records, source, num_samples=n, batch_size=b, device=device),
    }
    times: dict[str, list[float]] = {"forward": [], "sdr": []}
    result = None
    for rep in range(args.repeats):
        for what in ("forward", "sdr") if rep % 2 == 0 else ("sdr", "forward"):
            t, out = common.timed(runs[what], device)
            times[what].append(t)
            result = out if what == "sdr" else result
    fwd_t, sdr_t = times["forward"], times["sdr"]
    paired = [s / f for s, f in zip(sdr_t, fwd_t, strict=True)]
    row: dict[str, Any] = {
        "num_samples": n,
        "forward_s": common.stats(fwd_t),
        "sdr_s": common.stats(sdr_t),
        "ratio_of_min": min(sdr_t) / min(fwd_t),
        "ratio_of_median": float(np.median(sdr_t)) / float(np.median(fwd_t)),
        "ratio_paired_median": float(np.median(paired)),
    }
    row["ratio_verdict"] = common.verdict(row["ratio_of_median"], TARGET_RATIO, at_most=True)
    if n not in args.dense_sizes:
        return row
    # the spectra once more, for both pair stages (the dense reference reuses them)
    t_collect, stats = common.timed(
        lambda: collect_statistics(model, records, source, num_samples=n, batch_size=b,
                                   device=device),
        device,
    )  # fmt: skip
    acc, weights = stats.accumulators, stats.weights
    pair_t, dense_t = [], []
    dense: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        t, _ = common.timed(
            lambda: [layer_sdr(r, acc.get(r.index), weights.get(r.index), 0.1) for r in records],
            device,
        )
        pair_t.append(t)
        t, dense = common.timed(lambda: dense_pair_stage(records, acc, weights), device)
        dense_t.append(t)
    streaming = min(sdr_t) - min(pair_t)  # sdr's own streaming part, shared by the reference
    row["collect_s"] = t_collect
    row["sdr_pairs_s"] = common.stats(pair_t)
    row["dense_pairs_s"] = common.stats(dense_t)
    row["dense_total_s"] = streaming + min(dense_t)
    row["speedup_end_to_end"] = row["dense_total_s"] / min(sdr_t)
    row["speedup_pair_stage"] = min(dense_t) / min(pair_t)
    row["dense_max_rel_diff"] = max_relative_difference(dense, result)
    if args.loop_pairs > 0:
        loop = loop_reference_seconds(records, acc, weights, args.loop_pairs)
        if loop is not None:
            row["loop_pairs_s_extrapolated"] = loop
            row["loop_total_s_extrapolated"] = streaming + loop
            row["speedup_end_to_end_vs_loop"] = (streaming + loop) / min(sdr_t)
    return row


def memory_children(args: argparse.Namespace, n: int) -> dict[str, Any]:
    common_args = [
        "--num-samples", str(n), "--batch-size", str(args.batch_size), "--ngf", str(args.ngf),
        "--image-size", str(args.image_size), "--nz", str(args.nz), "--nc", str(args.nc),
        "--device", args.device, "--threads", str(args.threads),
    ]  # fmt: skip
    return {
        kind: common.run_child(SCRIPT, ["--kind", kind, *common_args]) for kind in args.memory_kinds
    }


def child(args: argparse.Namespace) -> None:
    """One run in a fresh process; prints its peak memory as JSON."""
    device = common.pick_device(args.device)
    common.set_threads(args.threads)
    model, source, records = common.dcgan(args.image_size, args.ngf, args.nz, args.nc, device)
    n, b = args.num_samples, args.batch_size
    before = common.rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if args.kind == "sdr":
        run_sdr(model, records, source, num_samples=n, batch_size=b, device=device)
    else:
        common.forward_pass(model, source, n, b, device)
    common.sync(device)
    print(json_line({"kind": args.kind, "num_samples": n, **common.memory_report(device, before)}))


def json_line(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc)


def scaling(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Time and ratio at a fixed N over channel widths and resolutions."""
    out = []
    n, b = args.scaling_n, args.batch_size
    for image_size, ngf in args.scaling_configs:
        model, source, records = common.dcgan(image_size, ngf, args.nz, args.nc, device)
        common.forward_pass(model, source, min(b, n), b, device)  # warm-up
        fwd_t, sdr_t = [], []
        forward = partial(common.forward_pass, model, source, n, b, device)
        analysis = partial(run_sdr, model, records, source, num_samples=n, batch_size=b,
                           device=device)  # fmt: skip
        for _ in range(args.repeats):
            fwd_t.append(common.timed(forward, device)[0])
            sdr_t.append(common.timed(analysis, device)[0])
        out.append(
            {
                "image_size": image_size,
                "ngf": ngf,
                "num_samples": n,
                "pairs": sum(r.pairs for r in records),
                "forward_s": common.stats(fwd_t),
                "sdr_s": common.stats(sdr_t),
                "ratio_of_median": float(np.median(sdr_t)) / float(np.median(fwd_t)),
            }
        )
        print(
            f"  scaling {image_size}² ngf={ngf}: forward {min(fwd_t):.3f}s sdr {min(sdr_t):.3f}s",
            file=sys.stderr,
        )
    return out


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--sizes", default="512,2048,8192", help="N values, comma-separated")
    p.add_argument("--dense-sizes", default="512,2048", help="N values for the dense reference")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--nc", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--loop-pairs", type=int, default=64, help="pairs per layer for the numpy loop (0: skip)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory children")
    p.add_argument("--scaling", action="store_true", help="also time ngf 16/32/64, 32²/64²/128²")
    p.add_argument("--scaling-n", type=int, default=512)
    p.add_argument("--quick", action="store_true", help="tiny model, tiny N (smoke test)")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="sdr", help=argparse.SUPPRESS)
    p.add_argument("--num-samples", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = common.parse_sizes(args.sizes)
    args.dense_sizes = common.parse_sizes(args.dense_sizes)
    args.scaling_configs = [(64, 16), (64, 32), (64, 64), (32, 64), (128, 64)]
    args.memory_kinds = ("sdr", "forward")
    if args.quick:
        args.sizes, args.dense_sizes = [16, 32], [32]
        args.batch_size, args.ngf, args.image_size, args.nz = 8, 4, 16, 8
        args.repeats, args.loop_pairs, args.scaling_n = 1, 4, 16
        args.scaling_configs = [(16, 2), (16, 4), (8, 4)]
        args.memory_kinds = ("sdr",)
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
        "pairs": sum(r.pairs for r in records),
        "layers": [[r.name, r.analysis, list(r.input_shape)] for r in records],
    }
    doc: dict[str, Any] = {"machine": common.machine_info(device), "config": config}
    # warm-up: first calls allocate, plan FFTs, load kernels
    run_sdr(model, records, source, num_samples=args.batch_size, batch_size=args.batch_size,
            device=device)  # fmt: skip
    common.forward_pass(model, source, args.batch_size, args.batch_size, device)
    rows = []
    for n in args.sizes:
        print(f"N={n} …", file=sys.stderr)
        row = {"num_samples": n}
        if not args.memory_only:
            row = measure_n(args, n, model, source, records, device)
        if not args.no_memory:
            row["memory"] = memory_children(args, n)
        rows.append(row)
    doc["sizes"] = rows
    if args.scaling:
        doc["scaling"] = scaling(args, device)
    doc["targets"] = targets(rows)
    print(report(doc))
    common.write_json(args.out, doc)
    return doc


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The §9 targets against the measurements: met, or missed by how much."""
    out: dict[str, Any] = {}
    timed_rows = [r for r in rows if "ratio_of_median" in r]
    if timed_rows:
        worst = max(timed_rows, key=lambda r: r["ratio_of_median"])["ratio_of_median"]
        out["sdr_over_forward_max"] = worst
        out["sdr_over_forward_target"] = TARGET_RATIO
        out["sdr_over_forward"] = common.verdict(worst, TARGET_RATIO, at_most=True)
    dense = [r for r in rows if "speedup_end_to_end" in r]
    at = next(
        (r for r in dense if r["num_samples"] == TARGET_SPEEDUP_N), dense[-1] if dense else None
    )
    if at is not None:
        out["speedup_at_n"] = at["num_samples"]
        out["speedup_end_to_end"] = at["speedup_end_to_end"]
        out["speedup_pair_stage"] = at["speedup_pair_stage"]
        out["speedup_target"] = TARGET_SPEEDUP
        out["speedup_end_to_end_verdict"] = common.verdict(
            at["speedup_end_to_end"], TARGET_SPEEDUP, at_most=False
        )
        out["speedup_pair_stage_verdict"] = common.verdict(
            at["speedup_pair_stage"], TARGET_SPEEDUP, at_most=False
        )
        if "speedup_end_to_end_vs_loop" in at:
            out["speedup_end_to_end_vs_loop"] = at["speedup_end_to_end_vs_loop"]
            out["speedup_end_to_end_vs_loop_verdict"] = common.verdict(
                at["speedup_end_to_end_vs_loop"], TARGET_SPEEDUP, at_most=False
            )
    mem = [r["memory"]["sdr"] for r in rows if "memory" in r]
    if len(mem) >= 2:
        peaks = [m["peak_rss_mib"] for m in mem]
        growth = peaks[-1] - peaks[0]
        out["peak_rss_mib_by_n"] = peaks
        out["peak_rss_growth_mib"] = growth
        out["peak_rss_growth_fraction"] = growth / peaks[0]
        out["peak_rss_spread_fraction"] = (max(peaks) - min(peaks)) / min(peaks)
    return out


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def report(doc: dict[str, Any]) -> str:
    m, c = doc["machine"], doc["config"]
    lines = [
        f"sdr vs forward: DCGAN {c['image_size']}² ngf={c['ngf']} nz={c['nz']} nc={c['nc']}, "
        f"batch {c['batch_size']}, {c['pairs']} pairs; {m['device']}, {m['cpu']}, "
        f"{m['torch_threads']} thread(s), torch {m['torch']}; times in s, min/median of "
        f"{c['repeats']}",
        "",
    ]
    rows = []
    for r in (r for r in doc["sizes"] if "sdr_s" in r):
        f, s = r["forward_s"], r["sdr_s"]
        rows.append(
            [r["num_samples"], f"{f['min']:.3f}/{f['median']:.3f}",
             f"{s['min']:.3f}/{s['median']:.3f}", round(r["ratio_of_min"], 3),
             round(r["ratio_of_median"], 3), r["ratio_verdict"]]
        )  # fmt: skip
    if rows:
        headers = ["N", "forward", "sdr", "ratio(min)", "ratio(median)", "≤ 1.2"]
        lines.append(common.format_table(headers, rows))
    dense = [r for r in doc["sizes"] if "dense_pairs_s" in r]
    if dense:
        lines += ["", "dense reference (same streamed spectra, one zero-padded FFT per pair):"]
        rows = []
        for r in dense:
            rows.append(
                [r["num_samples"], round(r["sdr_pairs_s"]["min"], 4),
                 round(r["dense_pairs_s"]["min"], 3), round(r["speedup_pair_stage"], 1),
                 round(r["dense_total_s"], 3), round(r["speedup_end_to_end"], 2),
                 r.get("loop_pairs_s_extrapolated"), r.get("speedup_end_to_end_vs_loop"),
                 f"{r['dense_max_rel_diff']:.1e}"]
            )  # fmt: skip
        lines.append(
            common.format_table(
                [
                    "N",
                    "sdr pairs",
                    "dense pairs",
                    "speedup",
                    "dense total",
                    "speedup e2e",
                    "loop pairs*",
                    "speedup e2e*",
                    "max rel diff",
                ],
                rows,
            )
        )
        lines.append("  * the per-pair numpy loop of tests/dense_reference.py, extrapolated")
    mem = [r for r in doc["sizes"] if "memory" in r]
    if mem:
        lines += ["", "peak memory (fresh process per N, MiB):"]
        rows = []
        for r in mem:
            s, f = r["memory"]["sdr"], r["memory"].get("forward", {})
            rows.append(
                [r["num_samples"], round(s["peak_rss_mib"], 1), _mib(f.get("peak_rss_mib")),
                 round(s["peak_rss_mib"] - s["rss_before_run_mib"], 1),
                 _mib(f["peak_rss_mib"] - f["rss_before_run_mib"]) if f else None,
                 _mib(s.get("cuda_max_allocated_mib")), _mib(f.get("cuda_max_allocated_mib"))]
            )  # fmt: skip
        lines.append(
            common.format_table(
                [
                    "N",
                    "sdr peak RSS",
                    "forward peak RSS",
                    "sdr growth",
                    "forward growth",
                    "sdr CUDA",
                    "forward CUDA",
                ],
                rows,
            )
        )
    if "scaling" in doc:
        lines += ["", f"scaling at N={doc['scaling'][0]['num_samples']} (s, min/median):"]
        rows = []
        for r in doc["scaling"]:
            f, s = r["forward_s"], r["sdr_s"]
            rows.append(
                [f"{r['image_size']}²", r["ngf"], r["pairs"],
                 f"{f['min']:.3f}/{f['median']:.3f}", f"{s['min']:.3f}/{s['median']:.3f}",
                 round(r["ratio_of_median"], 3)]
            )  # fmt: skip
        lines.append(
            common.format_table(["image", "ngf", "pairs", "forward", "sdr", "ratio"], rows)
        )
    t = doc["targets"]
    lines += ["", "targets:"]
    if "sdr_over_forward" in t:
        lines.append(
            f"  sdr ≤ {TARGET_RATIO}× forward (worst median ratio "
            f"{t['sdr_over_forward_max']:.3f}): {t['sdr_over_forward']}"
        )
    if "speedup_at_n" in t:
        lines.append(
            f"  ≥ {TARGET_SPEEDUP:.0f}× faster than dense at N={t['speedup_at_n']}: pair stage "
            f"{t['speedup_pair_stage']:.1f}× ({t['speedup_pair_stage_verdict']}); end to end "
            f"{t['speedup_end_to_end']:.2f}× ({t['speedup_end_to_end_verdict']})"
        )
        if "speedup_end_to_end_vs_loop" in t:
            loop, verdict = t["speedup_end_to_end_vs_loop"], t["speedup_end_to_end_vs_loop_verdict"]
            lines.append(f"    end to end vs the numpy per-pair loop: {loop:.1f}× ({verdict})")
    if "peak_rss_growth_mib" in t:
        peaks = ", ".join(f"{p:.0f}" for p in t["peak_rss_mib_by_n"])
        lines.append(
            f"  peak memory flat in N: sdr peak RSS {peaks} MiB over the N above (spread "
            f"{100 * t['peak_rss_spread_fraction']:.1f}%; largest vs smallest N "
            f"{t['peak_rss_growth_mib']:+.1f} MiB)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

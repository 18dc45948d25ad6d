"""`sdr`'s cost on deep and wide models, next to their forward pass (see docs/benchmarks.md).

Two models built here with random weights (eval mode), shaped like real generators:

- ``vocoder``: HiFi-GAN-like. ``conv_pre`` (Conv1d, k=7), four ConvTranspose1d upsamplings
  (strides 8, 8, 2, 2: 256×, 32 mel frames → 8,192 samples), after each a multi-receptive-field
  block (kernels 3/7/11, dilations 1/3/5, two Conv1d per dilation), ``conv_post``; channels
  128 → 64 → 32 → 16 → 8. 74 Conv1d + 4 ConvTranspose1d. Fed mel-like inputs (N, 80, 32).
- ``transformer``: a Conv2d stem turns a (4, 16, 16) latent map into 256 tokens, then 50
  pre-norm blocks of attention and MLP (qkv, proj, fc1, fc2: 200 Linear layers), then a head
  back to a map: Conv2d, PixelShuffle(2), Conv2d (3 × 32 × 32).

For each, measured in one process, interleaved, ``--repeats`` times (min and median):

- ``forward``: the bare forward pass over N samples (same inputs, same batches, no gradients);
- ``sdr``: :func:`genaudit.analysis.sdr.run_sdr` on every layer, end to end, and sdr / forward;
- ``stream``: :func:`genaudit.analysis.statistics.collect_statistics` on the same layers; the
  pair stage is sdr − stream (also timed directly, layer by layer, per kind).

Per layer kind (Conv1d, ConvTranspose1d, Linear, Conv2d): the **forward share** (time inside
those modules during a forward pass, from forward pre/post hooks with ``perf_counter``, over
the whole forward's time) against the **extra share** (the time genaudit's hooks spend on those
layers during ``collect_statistics`` — weight copy, rfft and power sums, or the float64
covariance of the trace method — plus their pair stage, over the same forward time). A kind
whose extra share exceeds 2× its forward share is flagged.

    python benchmarks/bench_deep.py --out deep.json          # ~4 min on 1 CPU thread
    python benchmarks/bench_deep.py --quick                  # tiny models, a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import common
import torch
import torch.nn.functional as F
from torch import nn

from genaudit.analysis import statistics as stats_module
from genaudit.analysis.sdr import layer_sdr, run_sdr
from genaudit.analysis.statistics import collect_statistics
from genaudit.model.inputs import InputSource, latent_source, tensor_source
from genaudit.model.layers import LayerRecord, walk_layers

FLAG_FACTOR = 2.0
OTHER = "other (norms, attention, activations, glue)"

# ----------------------------------------------------------------------------------- models


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1: per dilation a dilated conv then an undilated one, residual."""

    def __init__(self, channels: int, kernel: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, 0.1)), 0.1))
        return x


class Vocoder(nn.Module):
    """A HiFi-GAN-shaped mel → waveform generator (multi-receptive-field fusion)."""

    def __init__(
        self,
        mels: int = 80,
        width: int = 128,
        strides: Sequence[int] = (8, 8, 2, 2),
        kernels: Sequence[int] = (3, 7, 11),
        dilations: Sequence[int] = (1, 3, 5),
    ) -> None:
        super().__init__()
        self.conv_pre = nn.Conv1d(mels, width, 7, padding=3)
        self.ups = nn.ModuleList()
        self.mrfs = nn.ModuleList()
        ch = width
        for s in strides:
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, 2 * s, stride=s, padding=s // 2))
            ch //= 2
            self.mrfs.append(nn.ModuleList(ResBlock(ch, k, dilations) for k in kernels))
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for up, mrf in zip(self.ups, self.mrfs, strict=True):
            x = up(F.leaky_relu(x, 0.1))
            x = sum(block(x) for block in mrf) / len(mrf)
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention and an MLP (4 Linear layers)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TokenGenerator(nn.Module):
    """Latent map → conv stem → tokens → transformer blocks → map → PixelShuffle → image."""

    def __init__(
        self, in_ch: int = 4, size: int = 16, dim: int = 64, depth: int = 50, heads: int = 4,
        mlp_ratio: int = 4, out_ch: int = 3, mid: int = 16,
    ) -> None:  # fmt: skip
        super().__init__()
        self.stem = nn.Conv2d(in_ch, dim, 3, padding=1)
        self.pos = nn.Parameter(0.02 * torch.randn(1, size * size, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Conv2d(dim, 4 * mid, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.out = nn.Conv2d(mid, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z)
        n, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).transpose(1, 2).reshape(n, d, h, w)
        return torch.tanh(self.out(F.gelu(self.shuffle(self.head(x)))))


def mel_source(num: int, mels: int, frames: int, seed: int = 0) -> InputSource:
    """Log-mel-like inputs: a spectral tilt plus smooth random fluctuations in time and
    frequency, in the usual log range (about −11 … 2)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(num, 1, mels + 8, frames + 8, generator=g)
    smooth = F.avg_pool2d(noise, 9, stride=1).squeeze(1) * 6.0  # (num, mels, frames)
    tilt = torch.linspace(0.0, -6.0, mels)[None, :, None]
    loud = torch.randn(num, 1, frames, generator=g).cumsum(-1) * 0.3
    mel = (smooth + tilt + loud - 3.0).clamp(-11.5, 2.5)
    return tensor_source([mel], ["synthetic log-mel"], "mel")


def build(
    name: str, quick: bool, num: int, device: torch.device
) -> tuple[nn.Module, InputSource, dict[str, Any]]:
    torch.manual_seed(0)
    if name == "vocoder":
        cfg: dict[str, Any] = (
            {"mels": 20, "width": 16, "strides": [4, 4, 2, 2], "frames": 8}
            if quick
            else {"mels": 80, "width": 128, "strides": [8, 8, 2, 2], "frames": 32}
        )
        model: nn.Module = Vocoder(cfg["mels"], cfg["width"], cfg["strides"])
        source = mel_source(num, cfg["mels"], cfg["frames"])
        cfg["input"] = [cfg["mels"], cfg["frames"]]
    else:
        cfg = (
            {"size": 8, "dim": 16, "depth": 3, "heads": 2, "mlp_ratio": 2, "in_ch": 4}
            if quick
            else {"size": 16, "dim": 64, "depth": 50, "heads": 4, "mlp_ratio": 4, "in_ch": 4}
        )
        model = TokenGenerator(cfg["in_ch"], cfg["size"], cfg["dim"], cfg["depth"],
                               cfg["heads"], cfg["mlp_ratio"])  # fmt: skip
        source = latent_source((cfg["in_ch"], cfg["size"], cfg["size"]), seed=0)
        cfg["input"] = [cfg["in_ch"], cfg["size"], cfg["size"]]
    return model.to(device).eval(), source, cfg


# ----------------------------------------------------------------------------- measuring


def role(name: str) -> str:
    """The last non-numeric part of a layer's dotted name: ``blocks.7.fc2`` → ``fc2``."""
    parts = [p for p in name.split(".") if not p.isdigit()]
    return parts[-1] if parts else name


def key(r: LayerRecord) -> str:
    return f"{r.type}/{role(r.name)}"


@contextlib.contextmanager
def forward_timers(model: nn.Module, records: Sequence[LayerRecord]) -> Iterator[dict[str, float]]:
    """Seconds spent inside the forward of each audited module, summed per (kind, role)."""
    spent: dict[str, float] = defaultdict(float)
    modules = dict(model.named_modules(remove_duplicate=False))
    handles = []
    for r in records:
        start: list[float] = []

        def pre(_m: nn.Module, _a: Any, start: list[float] = start) -> None:
            start.append(time.perf_counter())

        def post(
            _m: nn.Module, _a: Any, _o: Any, start: list[float] = start, k: str = key(r)
        ) -> None:
            spent[k] += time.perf_counter() - start.pop()

        m = modules[r.name]
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield spent
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def hook_timers(model: nn.Module) -> Iterator[dict[str, float]]:
    """Seconds genaudit's streaming hooks spend, per (kind, role), during collect_statistics.

    Wraps the hooks collect_statistics registers (through ``forward_hooks``), so it times
    exactly their work: the weight copy on the first batch and the accumulator's ``add`` (the
    rfft and power sums, or the float64 covariance), and the early stop they raise.
    """
    spent: dict[str, float] = defaultdict(float)
    original = stats_module.forward_hooks
    names = {m: n for n, m in model.named_modules()}

    def timed_hook(hook: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return hook(*args)
            finally:
                spent[kind] += time.perf_counter() - t0

        return run

    def wrapped(modules: Sequence[tuple[nn.Module, Any]], *, pre: bool = False) -> Any:
        timed = [(m, timed_hook(h, f"{type(m).__name__}/{role(names[m])}")) for m, h in modules]
        return original(timed, pre=pre)

    stats_module.forward_hooks = wrapped  # type: ignore[assignment]
    try:
        yield spent
    finally:
        stats_module.forward_hooks = original  # type: ignore[assignment]


def per_kind(
    model: nn.Module,
    records: list[LayerRecord],
    source: InputSource,
    n: int,
    batch: int,
    device: torch.device,
) -> dict[str, Any]:
    """One instrumented forward and one instrumented collect_statistics + pair stage."""
    with forward_timers(model, records) as fwd:
        t_fwd, _ = common.timed(
            lambda: common.forward_pass(model, source, n, batch, device), device
        )
    with hook_timers(model) as hooks:
        t_stream, st = common.timed(
            lambda: collect_statistics(
                model, records, source, num_samples=n, batch_size=batch, device=device
            ),
            device,
        )
    pairs: dict[str, float] = defaultdict(float)
    for r in records:
        t0 = time.perf_counter()
        layer_sdr(r, st.accumulators.get(r.index), st.weights.get(r.index), 0.1)
        pairs[key(r)] += time.perf_counter() - t0
    return {
        "forward_s": t_fwd,
        "stream_s": t_stream,
        "forward_by_role": dict(fwd),
        "hooks_by_role": dict(hooks),
        "pairs_by_role": dict(pairs),
    }


def measure(name: str, args: argparse.Namespace, n: int, device: torch.device) -> dict[str, Any]:
    model, source, cfg = build(name, args.quick, n, device)
    records = walk_layers(model, source.first_batch(device))
    b = args.batch_size or (16 if name == "vocoder" else 32)
    b = min(b, n)
    kinds: dict[str, int] = defaultdict(int)
    roles: dict[str, int] = defaultdict(int)
    for r in records:
        kinds[r.type] += 1
        roles[key(r)] += 1
    # warm-up: first calls allocate, plan FFTs, load kernels
    run_sdr(model, records, source, num_samples=b, batch_size=b, device=device)
    common.forward_pass(model, source, b, b, device)

    def fwd() -> None:
        common.forward_pass(model, source, n, b, device)

    def sdr() -> None:
        run_sdr(model, records, source, num_samples=n, batch_size=b, device=device)

    def stream() -> None:
        collect_statistics(model, records, source, num_samples=n, batch_size=b, device=device)

    times: dict[str, list[float]] = {"forward": [], "sdr": [], "stream": []}
    runs = {"forward": fwd, "sdr": sdr, "stream": stream}
    detail = []
    for k in range(args.repeats):
        order = list(runs) if k % 2 == 0 else list(reversed(runs))
        for what in order:
            print(f"  {name} N={n} repeat {k + 1}: {what}", file=sys.stderr)
            times[what].append(common.timed(runs[what], device)[0])
        print(f"  {name} N={n} repeat {k + 1}: per kind", file=sys.stderr)
        detail.append(per_kind(model, records, source, n, b, device))
    f, s, st = (common.stats(times[k]) for k in ("forward", "sdr", "stream"))
    row: dict[str, Any] = {
        "model": name,
        "config": cfg,
        "num_samples": n,
        "batch_size": b,
        "layers": len(records),
        "layers_by_kind": dict(kinds),
        "layers_by_role": dict(roles),
        "analysis": {a: sum(r.analysis == a for r in records) for a in ("sdr", "trace", "skipped")},
        "pairs": sum(r.pairs for r in records),
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_s": f,
        "sdr_s": s,
        "stream_s": st,
        "forward_ms_per_sample": 1e3 * f["min"] / n,
        "sdr_ms_per_sample": 1e3 * s["min"] / n,
        "ratio_of_min": s["min"] / f["min"],
        "ratio_of_median": s["median"] / f["median"],
        "pair_stage_s": max(s["min"] - st["min"], 0.0),
        "pair_stage_share_of_sdr": max(s["min"] - st["min"], 0.0) / s["min"],
    }
    row["kinds"] = kind_rows(detail)
    row["roles"] = share_rows(detail, lambda k: k)
    row["pair_stage_timed_s"] = sum(k["pairs_s"] for k in row["kinds"])
    row["hooks_s"] = sum(k["hooks_s"] for k in row["kinds"])
    row["pair_stage_timed_share_of_sdr"] = row["pair_stage_timed_s"] / s["min"]
    row["instrumented"] = detail
    return row


def share_rows(detail: list[dict[str, Any]], group: Callable[[str], str]) -> list[dict[str, Any]]:
    """Per group of ``kind/role`` keys: minimum over repeats of the group's forward time, hook
    time and pair-stage time, as shares of the (minimum) instrumented forward pass."""

    def summed(d: dict[str, float], g: str) -> float:
        return sum(v for k, v in d.items() if group(k) == g)

    groups = sorted({group(k) for d in detail for k in d["forward_by_role"]})
    t_fwd = min(d["forward_s"] for d in detail)
    out = []
    for g in groups:
        fwd = min(summed(d["forward_by_role"], g) for d in detail)
        hooks = min(summed(d["hooks_by_role"], g) for d in detail)
        pairs = min(summed(d["pairs_by_role"], g) for d in detail)
        fshare, xshare = fwd / t_fwd, (hooks + pairs) / t_fwd
        ratio = xshare / fshare if fshare > 0 else math.inf
        out.append({
            "kind": g, "forward_s": fwd, "hooks_s": hooks, "pairs_s": pairs,
            "forward_share": fshare, "extra_share": xshare,
            "extra_over_forward_share": ratio,
            "hooks_over_forward": hooks / fwd if fwd > 0 else math.inf,
            "over_2x": ratio > FLAG_FACTOR,
        })  # fmt: skip
    return out


def kind_rows(detail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per layer kind, plus the rest of the forward pass (``other``)."""
    out = share_rows(detail, lambda k: k.split("/")[0])
    t_fwd = min(d["forward_s"] for d in detail)
    other = max(t_fwd - sum(r["forward_s"] for r in out), 0.0)
    out.append({
        "kind": OTHER, "forward_s": other, "hooks_s": 0.0, "pairs_s": 0.0,
        "forward_share": other / t_fwd, "extra_share": 0.0,
        "extra_over_forward_share": 0.0,
        "hooks_over_forward": 0.0, "over_2x": False,
    })  # fmt: skip
    return out


# ------------------------------------------------------------------------------- report


def report(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"sdr vs forward on deep and wide models: {m['device']}, {m['cpu']}, "
        f"{m['torch_threads']} thread(s), torch {m['torch']}, load {m['load_average_at_start']}"
        f"; min/median of {doc['repeats']}",
        "",
    ]
    rows = []
    for r in doc["models"]:
        f, s, st = r["forward_s"], r["sdr_s"], r["stream_s"]
        rows.append(
            [r["model"], r["num_samples"], r["batch_size"], r["layers"],
             f"{f['min']:.2f}/{f['median']:.2f}", f"{s['min']:.2f}/{s['median']:.2f}",
             f"{st['min']:.2f}/{st['median']:.2f}", round(r["forward_ms_per_sample"], 2),
             round(r["sdr_ms_per_sample"], 2), round(r["ratio_of_min"], 2),
             round(r["ratio_of_median"], 2), f"{100 * r['pair_stage_timed_share_of_sdr']:.1f}%"]
        )  # fmt: skip
    headers = ["model", "N", "batch", "layers", "forward s", "sdr s", "stream s",
               "fwd ms/smp", "sdr ms/smp", "ratio(min)", "ratio(med)", "pairs share*"]  # fmt: skip
    lines.append(common.format_table(headers, rows))
    lines.append("  * the pair stage timed layer by layer, as a share of sdr's time")
    for r in doc["models"]:
        for title, field, counts in (("kind", "kinds", r["layers_by_kind"]),
                                   ("role", "roles", r["layers_by_role"])):  # fmt: skip
            lines += ["", f"{r['model']}: per layer {title} (shares of one forward pass; "
                      "extra = genaudit's hooks + pair stage; min over repeats)"]  # fmt: skip
            lines.append(common.format_table(
                [title, "layers", "forward s", "hooks s", "pairs s", "fwd share",
                 "extra share", "hooks/fwd", "extra/fwd", "> 2×"],
                [[k["kind"], counts.get(k["kind"], ""), round(k["forward_s"], 3),
                  round(k["hooks_s"], 3), round(k["pairs_s"], 3),
                  f"{100 * k['forward_share']:.1f}%", f"{100 * k['extra_share']:.1f}%",
                  "—" if k["kind"] == OTHER else round(k["hooks_over_forward"], 2),
                  "—" if k["kind"] == OTHER else round(k["extra_over_forward_share"], 2),
                  "YES" if k["over_2x"] else ""] for k in r[field]],
            ))  # fmt: skip
    flagged = [(r["model"], k["kind"]) for r in doc["models"] for k in r["kinds"] if k["over_2x"]]
    # the flag is per kind; the role tables show which layers of a kind carry it
    lines += ["", "kinds whose extra cost exceeds 2× their forward share: "
              + (", ".join(f"{m}/{k}" for m, k in flagged) if flagged else "none")]  # fmt: skip
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vocoder,transformer")
    p.add_argument("--num-samples", type=int, default=0,
                   help="N for both models (default 256)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=0,
                   help="default: 16 vocoder, 32 transformer")  # fmt: skip
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny models at tiny N")
    p.add_argument("--out", default=None, help="write everything as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.num_samples = args.num_samples or 8
        args.batch_size = args.batch_size or 4
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = common.pick_device(args.device)
    common.set_threads(args.threads)
    doc: dict[str, Any] = {"machine": common.machine_info(device), "repeats": args.repeats}
    doc["models"] = []
    for name in (x.strip() for x in args.models.split(",") if x.strip()):
        if name not in ("vocoder", "transformer"):
            raise SystemExit(f"unknown model {name!r}: vocoder or transformer")
        n = args.num_samples or 256
        print(f"{name}, N={n} …", file=sys.stderr)
        doc["models"].append(measure(name, args, n, device))
    print(report(doc))
    common.write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()

"""(architecture, checkpoint) → nn.Module, and the inputs the model is fed (docs/method.md)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArchitectureError, ModelInputError, UsageError, first_line
from ..io import checkpoint as ckpt
from ..io import registry as zoo
from ..values import check_device
from .exported import materialise_layers

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# Samples are drawn in fixed blocks, each from its own seeded generator, so the k-th sample
# depends only on (seed, k), never on the batch size or on how many samples are asked for.
DRAW_BLOCK = 64


# --------------------------------------------------------------------------- devices


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU; ``cpu``; ``cuda[:i]``."""
    spec = check_device(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise UsageError(f"unknown device {spec!r}", "use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(
            f"device {spec!r} asked for, but CUDA is not available here", "use --device cpu"
        )
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(
            f"device {spec!r} asked for, but there are {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


# --------------------------------------------------------------------------- importing user code


def import_object(spec: str, what: str) -> Any:
    """Import ``pkg.module:attr`` that the user named explicitly on the command line."""
    if not _SPEC.match(spec):
        raise UsageError(f"{what} {spec!r} is not of the form pkg.module:name")
    module_name, attr = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(
            f"cannot import {module_name!r} for {what} {spec!r}: {exc}",
            "make sure the module is importable (installed, or on PYTHONPATH / the current folder)",
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ArchitectureError(f"{module_name!r} has no attribute {attr!r} ({what} {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ArchitectureError(f"{what} {spec!r} is not callable")
    return obj


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadOptions:
    """How to turn a checkpoint file into a model (docs/method.md)."""

    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    state_key: str | None = None
    strip_prefix: str | None = None
    module: str | None = None
    allow_globals: tuple[str, ...] = ()
    trust_checkpoint: bool = False


@dataclass(frozen=True)
class LoadedModel:
    """A model rebuilt from a checkpoint, with where it came from."""

    model: nn.Module
    path: Path
    sha256: str
    format: str
    state_key: str | None
    arch: str
    arch_kwargs: dict[str, Any]
    module: str | None
    trusted: bool

    def describe(self) -> dict[str, Any]:
        """The checkpoint part of a JSON report."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "format": self.format,
            "state_key": self.state_key,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "module": self.module,
            "trusted": self.trusted,
        }


def build_architecture(
    arch: str | None, arch_kwargs: dict[str, Any], metadata: dict[str, str], source: str
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the model named by ``--arch`` (registry name or pkg.module:Factory) or by the
    checkpoint's genaudit metadata."""
    if arch is None:
        found = ckpt.arch_from_metadata(metadata)
        if found is None:
            raise ArchitectureError(
                f"{source} holds weights only and does not say which architecture they belong to",
                "pass --arch pkg.module:Factory (your model code) or a registered name: "
                + ", ".join(zoo.list_architectures()),
            )
        name, kwargs = found
        kwargs = {**kwargs, **arch_kwargs}
        return zoo.build(name, kwargs), name, kwargs
    if ":" in arch:
        factory = import_object(arch, "--arch")
        try:
            model = factory(**arch_kwargs)
        except Exception as exc:  # user code: any failure is theirs to see, in one line
            raise ArchitectureError(
                f"--arch {arch} failed with {type(exc).__name__}: {exc}",
                "check --arch-kwargs against the factory's signature",
            ) from None
        if not isinstance(model, nn.Module):
            raise ArchitectureError(
                f"--arch {arch} returned {type(model).__name__}, not an nn.Module"
            )
        return model, arch, dict(arch_kwargs)
    return zoo.build(arch, arch_kwargs), arch, dict(arch_kwargs)


def select_module(model: nn.Module, path: str | None) -> nn.Module:
    """``--module PATH``: the submodule to audit (e.g. ``decoder`` of a VAE)."""
    if not path:
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        children = sorted(name for name, _ in model.named_children())
        raise UsageError(
            f"the model has no submodule {path!r}",
            f"its top-level submodules are: {', '.join(children) or '(none)'}",
        ) from None


def load_model(path: str | Path, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Read a checkpoint safely, rebuild its architecture and load the weights strictly."""
    raw = ckpt.read_checkpoint(
        path, allow_globals=options.allow_globals, trust=options.trust_checkpoint
    )
    if isinstance(raw.obj, nn.Module):
        model: nn.Module = raw.obj
        if raw.format == "torch-export":
            materialise_layers(model)
        arch, state_key = f"<{raw.format}>", None
        kwargs: dict[str, Any] = {}
    else:
        model, arch, kwargs = build_architecture(
            options.arch, options.arch_kwargs, raw.metadata, Path(path).name
        )
        candidates = ckpt.find_state_dicts(raw.obj)
        state_key, state = ckpt.select_state_dict(
            candidates, model, state_key=options.state_key, strip_prefix=options.strip_prefix
        )
        ckpt.load_into(model, state)
    model.eval()
    model = select_module(model, options.module)
    return LoadedModel(
        model=model,
        path=raw.path,
        sha256=raw.sha256,
        format=raw.format,
        state_key=state_key,
        arch=arch,
        arch_kwargs=kwargs,
        module=options.module,
        trusted=raw.trusted,
    )


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputOptions:
    """What the model is fed, in priority order: files, sampler, shape, inference."""

    latents: tuple[str, ...] = ()
    sampler: str | None = None
    z_shape: tuple[int, ...] | None = None
    z_dist: str = "normal"
    num_classes: int | None = None
    label_format: str = "int"
    inputs: str | None = None
    seed: int = 0


def _read_array_file(path: str, what: str) -> dict[str, torch.Tensor]:
    """Read tensors from .npy, .safetensors or a weights-only torch file, chosen by content."""
    p = Path(path)
    if not p.is_file():
        raise ModelInputError(
            f"{what} file {path} does not exist"
            if not p.exists()
            else f"{what} {path} is not a file"
        )
    head = p.read_bytes()[:8]
    try:
        if head.startswith(b"\x93NUMPY"):
            arr = np.load(p, allow_pickle=False)
            return {"": torch.from_numpy(np.ascontiguousarray(arr))}
        if len(head) == 8 and head[:2] != b"PK" and head[0] != 0x80:
            from safetensors.torch import load_file

            return dict(load_file(str(p)))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is an unusable input file
        raise ModelInputError(
            f"cannot read {what} file {path}: {type(exc).__name__}: {first_line(exc)}",
            "save a tensor with torch.save, numpy.save or safetensors",
        ) from None
    if isinstance(obj, torch.Tensor):
        return {"": obj}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    raise ModelInputError(f"{what} file {path} holds {type(obj).__name__}, not a tensor")


def read_tensor_file(path: str, what: str) -> torch.Tensor:
    """One tensor from a file (a file with several tensors must hold exactly one)."""
    tensors = _read_array_file(path, what)
    if len(tensors) != 1:
        raise ModelInputError(
            f"{what} file {path} holds {len(tensors)} tensors "
            f"({', '.join(sorted(tensors))}); expected one"
        )
    (t,) = tensors.values()
    if t.ndim == 0:
        raise ModelInputError(
            f"{what} file {path} holds a scalar; the first axis must index samples"
        )
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ModelInputError(f"{what} file {path} contains NaN or infinite values")
    return t


class InputSource:
    """Deterministic batches of positional inputs for the model.

    ``batch(start, stop)`` returns the inputs of samples ``start … stop-1`` as a tuple of CPU
    tensors; the values depend only on the seed and the sample index.
    """

    def __init__(
        self,
        describe: dict[str, Any],
        draw: Callable[[int, int], tuple[torch.Tensor, ...]],
        available: int | None = None,
    ) -> None:
        self.description = describe
        self._draw = draw
        self.available = available

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return self._draw(start, stop)

    def batches(
        self, num_samples: int, batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Consecutive batches covering samples 0 … num_samples-1, moved to ``device``."""
        if self.available is not None and num_samples > self.available:
            raise ModelInputError(
                f"{num_samples} samples asked for, but the input files hold {self.available}",
                f"pass --num-samples {self.available} or fewer",
            )
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            yield tuple(t.to(device) for t in self.batch(start, stop))


def _block_draws(
    seed: int,
    start: int,
    stop: int,
    fn: Callable[[torch.Generator, int], tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, ...]:
    """Concatenate per-block draws so that sample k depends only on (seed, k).

    ``fn(generator, DRAW_BLOCK)`` draws one block of every positional input.
    """
    per_block = []
    for block in range(start // DRAW_BLOCK, (stop - 1) // DRAW_BLOCK + 1):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + block)
        values = fn(gen, DRAW_BLOCK)
        lo = max(start - block * DRAW_BLOCK, 0)
        hi = min(stop - block * DRAW_BLOCK, DRAW_BLOCK)
        per_block.append(tuple(v[lo:hi] for v in values))
    return tuple(torch.cat(parts) for parts in zip(*per_block, strict=True))


def latent_source(
    shape: tuple[int, ...],
    *,
    seed: int = 0,
    dist: str = "normal",
    num_classes: int | None = None,
    label_format: str = "int",
) -> InputSource:
    """Latents z of ``shape`` (normal or uniform on [-1, 1]) and, for conditional models, labels."""
    if dist not in ("normal", "uniform"):
        raise UsageError(f"unknown --z-dist {dist!r}", "use normal or uniform")
    if label_format not in ("int", "onehot"):
        raise UsageError(f"unknown --label-format {label_format!r}", "use int or onehot")
    if num_classes is not None and num_classes < 1:
        raise UsageError("--num-classes must be at least 1")

    def block(gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        if dist == "normal":
            z = torch.randn((n, *shape), generator=gen)
        else:
            z = torch.rand((n, *shape), generator=gen) * 2 - 1
        if num_classes is None:
            return (z,)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        if label_format == "onehot":
            return (z, nn.functional.one_hot(labels, num_classes).to(z.dtype))
        return (z, labels)

    def draw(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return _block_draws(seed, start, stop, block)

    describe: dict[str, Any] = {"kind": "latent", "shape": list(shape), "dist": dist, "seed": seed}
    if num_classes is not None:
        describe.update(num_classes=num_classes, label_format=label_format)
    return InputSource(describe, draw)


def tensor_source(tensors: Sequence[torch.Tensor], files: Sequence[str], kind: str) -> InputSource:
    """Inputs read from files: the i-th tensor is the i-th positional input."""
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        detail = ", ".join(
            f"{Path(f).name}: {int(t.shape[0])}" for f, t in zip(files, tensors, strict=True)
        )
        raise ModelInputError(f"the input files do not share the batch dimension ({detail})")
    (n,) = sizes

    def draw(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[start:stop] for t in tensors)

    describe = {
        "kind": kind,
        "files": [str(f) for f in files],
        "shapes": [list(t.shape[1:]) for t in tensors],
        "num_samples": n,
    }
    return InputSource(describe, draw, available=n)


def sampler_source(spec: str, seed: int) -> InputSource:
    """``--sampler pkg.module:function`` called as ``fn(batch_size, generator, device)``.

    The sampler is called once per block of samples with a generator seeded from (seed, block),
    so that its k-th sample does not depend on the batch size either.
    """
    fn = import_object(spec, "--sampler")

    def one_block(gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        try:
            out = fn(n, gen, torch.device("cpu"))
        except Exception as exc:  # user code
            raise ModelInputError(f"--sampler {spec} failed: {type(exc).__name__}: {exc}") from None
        outs = out if isinstance(out, tuple | list) else (out,)
        if not outs or not all(isinstance(t, torch.Tensor) for t in outs):
            raise ModelInputError(f"--sampler {spec} must return a tensor or a tuple of tensors")
        if any(t.ndim == 0 or t.shape[0] != n for t in outs):
            raise ModelInputError(
                f"--sampler {spec} asked for {n} samples returned other batch sizes"
            )
        return tuple(t.cpu() for t in outs)

    def draw(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return _block_draws(seed, start, stop, one_block)

    return InputSource({"kind": "sampler", "sampler": spec, "seed": seed}, draw)


def _first_parametrised_layers(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd) and not isinstance(m, nn.LazyLinear)
    ]


def first_layer_run(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> nn.Module | None:
    """The first Linear or convolution that runs on ``inputs``."""
    order: list[nn.Module] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, _a: order.append(mod) if not order else None)
        for m in _first_parametrised_layers(model)
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return order[0] if order else None


def _latent_guess(layer: nn.Module) -> tuple[int, ...] | None:
    if isinstance(layer, nn.Linear):
        return (layer.in_features,)
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return (layer.in_channels,) + (1,) * (layer.weight.ndim - 2)
    return None


def infer_latent_shape(model: nn.Module) -> tuple[int, ...]:
    """Guess the latent shape from the first layer that runs, confirmed by a trial forward pass.

    ``Linear(in_features)`` → ``(in_features,)``; a ``ConvTranspose`` with ``in_channels`` C on a
    1×1 grid → ``(C, 1, …, 1)``.
    """
    info = getattr(model, "genaudit_input", None)
    if isinstance(info, zoo.InputInfo):
        return tuple(info.shape)
    tried: list[tuple[int, ...]] = []
    for layer in _first_parametrised_layers(model):
        shape = _latent_guess(layer)
        if shape is None or shape in tried:
            continue
        tried.append(shape)
        probe = (torch.zeros((2, *shape), device=_model_device(model)),)
        try:
            first = first_layer_run(model, probe)
        except Exception:  # a failed trial just means this guess is wrong
            continue
        # confirmed when the layer that actually ran first takes exactly this latent
        if first is not None and _latent_guess(first) == shape:
            return shape
    raise ModelInputError(
        "cannot infer the model's input: no first Linear or ConvTranspose layer accepted a latent"
        + (f" (tried {', '.join(map(str, tried))})" if tried else ""),
        "pass --z-shape (e.g. 100 or 100,1,1), --latents FILE or --sampler pkg.module:function",
    )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def make_input_source(model: nn.Module, options: InputOptions) -> InputSource:
    """Choose the input source by priority: files, sampler, shape, inference."""
    if options.inputs and options.latents:
        raise UsageError("--inputs and --latents are alternatives: pass one of them")
    if options.latents or options.inputs:
        files = list(options.latents) if options.latents else [str(options.inputs)]
        what = "--latents" if options.latents else "--inputs"
        tensors = [read_tensor_file(f, what) for f in files]
        return tensor_source(tensors, files, "latents" if options.latents else "data")
    if options.sampler:
        return sampler_source(options.sampler, options.seed)
    info = getattr(model, "genaudit_input", None)
    if options.z_shape is None and isinstance(info, zoo.InputInfo) and info.kind == "data":
        # no data given: the inventory still needs shapes, so probe with noise of the data's
        # shape; analyses that need real data check InputSource.description["kind"].
        return _probe_source(info.shape, options.seed)
    shape = options.z_shape or infer_latent_shape(model)
    return latent_source(
        shape,
        seed=options.seed,
        dist=options.z_dist,
        num_classes=options.num_classes,
        label_format=options.label_format,
    )


def generated_source(
    generator: nn.Module, latents: InputSource, device: torch.device
) -> InputSource:
    """Data for an encoder or discriminator: the outputs of ``generator`` on ``latents``.

    Sample k is the generator's output for latent k, so it depends only on the seed and k.
    """
    generator.eval()

    def draw(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        inputs = tuple(t.to(device) for t in latents.batch(start, stop))
        with torch.no_grad():
            out = generator(*inputs)
        if isinstance(out, tuple | list):
            out = out[0]
        return (out.detach().cpu(),)

    describe = {"kind": "generated", "generator_inputs": latents.description}
    return InputSource(describe, draw, available=latents.available)


def _probe_source(shape: tuple[int, ...], seed: int) -> InputSource:
    source = latent_source(shape, seed=seed, dist="uniform")
    source.description = {"kind": "probe", "shape": list(shape), "seed": seed}
    return source


def trial_forward(model: nn.Module, source: InputSource, device: torch.device) -> Any:
    """Run the model on two samples; a failure is reported as bad input, in one line."""
    inputs = next(source.batches(min(2, source.available or 2), 2, device))
    try:
        with torch.no_grad():
            return model(*inputs)
    except Exception as exc:  # whatever the model raises, the inputs did not fit it
        shapes = ", ".join("×".join(map(str, t.shape)) for t in inputs)
        first = first_line(exc)
        raise ModelInputError(
            f"the model failed on inputs of shape {shapes}: {type(exc).__name__}: {first}"[:400],
            "pass --z-shape, --latents, --sampler or --inputs to match what the model expects",
        ) from None

"""What a model is fed: deterministic input sources (latents, files, samplers, generated data)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelInputError, UsageError, first_line, option
from ..io import registry as zoo
from .exported import static_batch_size, static_input_shapes
from .hooks import forward_hooks
from .layers import is_audited_layer
from .user_code import load_user_object, missing_inputs

# Samples are drawn in fixed blocks, each from its own seeded generator, so the k-th sample
# depends only on (seed, k), never on the batch size or on how many samples are asked for.
DRAW_BLOCK = 64


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


def _read_array_file(path: str, option_name: str) -> dict[str, torch.Tensor]:
    """Read tensors from .npy, .safetensors or a weights-only torch file, chosen by content.

    ``option_name`` is the user's option that named the file (``"latents"``), for messages.
    """
    what = option(option_name)
    p = Path(path)
    if not p.is_file():
        raise ModelInputError(
            f"{what} file {path} does not exist"
            if not p.exists()
            else f"{what} {path} is not a file"
        )
    with p.open("rb") as fh:
        head = fh.read(8)
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


def read_tensor_file(path: str, option_name: str) -> torch.Tensor:
    """One tensor from a file (a file with several tensors must hold exactly one).

    ``option_name`` is the user's option that named the file (``"latents"``, ``"inputs"``).
    """
    tensors = _read_array_file(path, option_name)
    what = option(option_name)
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
    if _nonfinite(t):
        raise ModelInputError(f"{what} file {path} contains NaN or infinite values")
    return t


def _nonfinite(t: torch.Tensor) -> bool:
    """Whether a floating-point (or complex) tensor holds NaN or infinite values."""
    return (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())


def _first_nonfinite_sample(tensors: Sequence[torch.Tensor]) -> int | None:
    """The index (in the batch) of the first sample with a NaN or infinite value, or None."""
    bad: int | None = None
    for t in tensors:
        if _nonfinite(t):
            rows = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1)
            k = int(rows.nonzero()[0, 0])
            bad = k if bad is None else min(bad, k)
    return bad


class InputSource:
    """Deterministic batches of positional inputs for the model.

    ``batch(start, stop)`` returns the inputs of samples ``start … stop-1`` as a tuple of CPU
    tensors; the values depend only on the seed and the sample index.

    ``fixed_batch``: the only batch size the model accepts (a ``torch.export`` program exported
    with a static batch dimension, see :func:`make_input_source`), or None. Trial runs, the
    batches of :meth:`batches` and the SDR pass then use it whatever batch size is asked, and
    the number of samples must be a multiple of it (:meth:`check_fixed_batch`).
    """

    def __init__(
        self,
        describe: dict[str, Any],
        draw: Callable[[int, int], tuple[torch.Tensor, ...]],
        available: int | None = None,
        fixed_batch: int | None = None,
    ) -> None:
        self.description = describe
        self._draw = draw
        self.available = available
        self.fixed_batch = fixed_batch

    def check_fixed_batch(self, num_samples: int) -> None:
        """See :func:`check_fixed_batch`."""
        check_fixed_batch(self.fixed_batch, num_samples)

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return self._draw(start, stop)

    def batches(
        self, num_samples: int, batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Consecutive batches covering samples 0 … num_samples-1, moved to ``device``."""
        if self.available is not None and num_samples > self.available:
            raise ModelInputError(
                f"{num_samples} samples asked for, but the input files hold {self.available}",
                f"pass {option('num_samples')} {self.available} or fewer",
            )
        if self.fixed_batch is not None:
            self.check_fixed_batch(num_samples)
            batch_size = self.fixed_batch
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            yield tuple(t.to(device) for t in self.batch(start, stop))

    def first_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """The first two samples (one where the files hold one; the fixed batch size of an
        exported program) on ``device``, for trial runs."""
        if self.fixed_batch is not None:
            b = self.fixed_batch
            if self.available is not None and self.available < b:
                raise ModelInputError(
                    f"the model was exported for batches of exactly {b} samples, and the input "
                    f"files hold {self.available}"
                )
            return tuple(t.to(device) for t in self.batch(0, b))
        return next(self.batches(min(2, self.available or 2), 2, device))


def check_fixed_batch(fixed_batch: int | None, num_samples: int) -> None:
    """UsageError (exit 2) when the model takes batches of exactly ``fixed_batch`` samples and
    ``num_samples`` is not a multiple of that (the count is never changed silently)."""
    b = fixed_batch
    if b is None or num_samples % b == 0:
        return
    lower, upper = num_samples // b * b, (num_samples // b + 1) * b
    choices = f"{lower} or {upper}" if lower else str(upper)
    raise UsageError(
        f"the model was exported for batches of exactly {b} samples, and "
        f"{option('num_samples')} {num_samples} is not a multiple of {b}",
        f"pass {option('num_samples')} {choices}, or export it with a dynamic batch dimension",
    )


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
        # modulo 2**64: every 64-bit seed works; smaller seeds draw exactly what they always did
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + block) % 2**64)
        values = fn(gen, DRAW_BLOCK)
        lo = max(start - block * DRAW_BLOCK, 0)
        hi = min(stop - block * DRAW_BLOCK, DRAW_BLOCK)
        per_block.append(tuple(v[lo:hi] for v in values))
    return tuple(torch.cat(parts) for parts in zip(*per_block, strict=True))


def format_labels(
    labels: torch.Tensor, num_classes: int, label_format: str, dtype: torch.dtype
) -> torch.Tensor:
    """Class indices as the model takes them: as they are (``int``), or one-hot vectors of
    ``dtype`` (``onehot``)."""
    if label_format == "onehot":
        return nn.functional.one_hot(labels, num_classes).to(dtype)
    return labels


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
        raise UsageError(f"unknown {option('z_dist')} {dist!r}", "use normal or uniform")
    if label_format not in ("int", "onehot"):
        raise UsageError(f"unknown {option('label_format')} {label_format!r}", "use int or onehot")
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"{option('num_classes')} must be at least 1")

    def block(gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        if dist == "normal":
            z = torch.randn((n, *shape), generator=gen)
        else:
            z = torch.rand((n, *shape), generator=gen) * 2 - 1
        if num_classes is None:
            return (z,)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        return (z, format_labels(labels, num_classes, label_format, z.dtype))

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
    return held_source(tensors, {"kind": kind, "files": [str(f) for f in files]})


def held_source(tensors: Sequence[torch.Tensor], describe: dict[str, Any]) -> InputSource:
    """Samples held as tensors whose first dimensions agree (the caller checks it): the i-th
    tensor is the i-th positional input; ``describe`` gains their shapes and count."""
    n = int(tensors[0].shape[0])

    def draw(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[start:stop] for t in tensors)

    shapes = [list(t.shape[1:]) for t in tensors]
    return InputSource({**describe, "shapes": shapes, "num_samples": n}, draw, available=n)


def sampler_source(spec: str, seed: int) -> InputSource:
    """``--sampler pkg.module:function`` called as ``fn(batch_size, generator, device)``.

    The sampler is called once per block of samples with a generator seeded from (seed, block),
    so that its k-th sample does not depend on the batch size either.
    """
    fn = load_user_object(spec, "sampler")  # a failure names the user's file and line
    describe = {"kind": "sampler", "sampler": spec, "seed": seed}
    return callable_source(fn, seed, f"{option('sampler')} {spec}", describe)


def callable_source(
    fn: Callable[[int, torch.Generator, torch.device], Any],
    seed: int,
    what: str,
    describe: dict[str, Any],
) -> InputSource:
    """Inputs drawn by ``fn(batch_size, generator, device)`` (a tensor or a tuple of positional
    inputs), once per block of samples with a generator seeded from (seed, block); ``what``
    names it in errors."""

    def one_block(gen: torch.Generator, n: int) -> tuple[torch.Tensor, ...]:
        out = fn(n, gen, torch.device("cpu"))
        outs = out if isinstance(out, tuple | list) else (out,)
        if not outs or not all(isinstance(t, torch.Tensor) for t in outs):
            raise ModelInputError(f"{what} must return a tensor or a tuple of tensors")
        if any(t.ndim == 0 or t.shape[0] != n for t in outs):
            raise ModelInputError(f"{what} asked for {n} samples returned other batch sizes")
        return tuple(t.cpu() for t in outs)

    def draw(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        batch = _block_draws(seed, start, stop, one_block)
        if (k := _first_nonfinite_sample(batch)) is not None:
            raise ModelInputError(
                f"{what} returned NaN or infinite values (sample {start + k})",
                "make the sampler return finite values",
            )
        return batch

    return InputSource(describe, draw)


def _first_parametrised_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_audited_layer(m) and not isinstance(m, nn.LazyLinear)]


def first_layer_run(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> nn.Module | None:
    """The first Linear or convolution that runs on ``inputs``."""
    order: list[nn.Module] = []

    def hook(module: nn.Module, _args: Any) -> None:
        if not order:
            order.append(module)

    hooks = [(m, hook) for m in _first_parametrised_layers(model)]
    with forward_hooks(hooks, pre=True), torch.no_grad():
        model(*inputs)
    return order[0] if order else None


def _latent_guess(layer: nn.Module) -> tuple[int, ...] | None:
    if isinstance(layer, nn.Linear):
        return (layer.in_features,)
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return (layer.in_channels,) + (1,) * (layer.weight.ndim - 2)
    return None


def _label_probe(num_classes: int, label_format: str) -> Callable[[int], torch.Tensor]:
    """Labels of class 0 for ``n`` probe samples, as ints or one-hot vectors."""

    def labels(n: int) -> torch.Tensor:
        y = torch.zeros(n, dtype=torch.int64)
        return format_labels(y, num_classes, label_format, torch.float32)

    return labels


def _label_widths(model: nn.Module, num_classes: int) -> list[int]:
    """How many input features a label may take beside the latent: its one-hot width, or the
    width of one of the model's embeddings."""
    widths = [num_classes] + [
        int(m.embedding_dim) for m in model.modules() if isinstance(m, nn.Embedding)
    ]
    return list(dict.fromkeys(widths))


def infer_latent_shape(
    model: nn.Module, num_classes: int | None = None, label_format: str = "int"
) -> tuple[int, ...]:
    """Guess the latent shape from the first layer that runs, confirmed by a trial forward pass.

    ``Linear(in_features)`` → ``(in_features,)``; a ``ConvTranspose`` with ``in_channels`` C on a
    1×1 grid → ``(C, 1, …, 1)``. A conditional model (``num_classes``) is probed with labels as
    its second input, and its first layer may take the label beside the latent (concatenated as
    a one-hot vector or an embedding): the latent is then C minus the label's width.
    """
    info = getattr(model, "genaudit_input", None)
    if isinstance(info, zoo.InputInfo):
        return tuple(info.shape)
    exported = static_input_shapes(model)
    if exported is not None and len(exported) == 1 and len(exported[0]) > 1:
        rest = exported[0][1:]  # an exported program records its input's shape
        if all(type(n) is int for n in rest):
            return tuple(int(n) for n in rest)
    probe_batch = static_batch_size(model) or 2
    device = _model_device(model)
    labels = None if num_classes is None else _label_probe(num_classes, label_format)
    widths = [0] if num_classes is None else [0, *_label_widths(model, num_classes)]
    tried: list[tuple[int, ...]] = []
    for layer in _first_parametrised_layers(model):
        shape = _latent_guess(layer)
        if shape is None:
            continue
        for width in widths:
            latent = (shape[0] - width, *shape[1:])
            if latent[0] < 1 or latent in tried:
                continue
            tried.append(latent)
            probe: tuple[torch.Tensor, ...] = (torch.zeros((probe_batch, *latent), device=device),)
            if labels is not None:
                probe += (labels(probe_batch).to(device),)
            try:
                first = first_layer_run(model, probe)
            except Exception:  # a failed trial just means this guess is wrong
                continue
            # confirmed when the layer that actually ran first takes this layer's input
            if first is not None and _latent_guess(first) == shape:
                return latent
    if (missing := missing_inputs(model, 1 if labels is None else 2)) is not None:
        raise ModelInputError(
            f"cannot infer the model's input: its {missing[0]}",
            f"pass {option('z_shape')} for the first; {missing[1]}",
        )
    raise ModelInputError(
        "cannot infer the model's input: no first Linear or ConvTranspose layer accepted a latent"
        + (f" (tried {', '.join(map(str, tried))})" if tried else ""),
        f"pass {option('z_shape')} (e.g. 100 or 100,1,1), {option('latents')} FILE or "
        f"{option('sampler')} pkg.module:function",
    )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def make_input_source(model: nn.Module, options: InputOptions) -> InputSource:
    """Choose the input source by priority: files, sampler, shape, inference.

    For a ``torch.export`` program exported with a static batch size, the source's
    ``fixed_batch`` is that size (read from the program's input specs).
    """
    source = _make_input_source(model, options)
    source.fixed_batch = static_batch_size(model)
    return source


def _make_input_source(model: nn.Module, options: InputOptions) -> InputSource:
    if options.inputs and options.latents:
        raise UsageError(
            f"{option('inputs')} and {option('latents')} are alternatives: pass one of them"
        )
    if options.latents or options.inputs:
        files = list(options.latents) if options.latents else [str(options.inputs)]
        given = "latents" if options.latents else "inputs"
        tensors = [read_tensor_file(f, given) for f in files]
        return tensor_source(tensors, files, "latents" if options.latents else "data")
    if options.sampler:
        return sampler_source(options.sampler, options.seed)
    info = getattr(model, "genaudit_input", None)
    if options.z_shape is None and isinstance(info, zoo.InputInfo) and info.kind == "data":
        # no data given: the inventory still needs shapes, so probe with noise of the data's
        # shape; analyses that need real data check InputSource.description["kind"].
        return _probe_source(info.shape, options.seed)
    shape = options.z_shape or infer_latent_shape(model, options.num_classes, options.label_format)
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
    The batches keep the latents' ``fixed_batch`` (a generator exported for one batch size).
    """
    generator.eval()

    def draw(start: int, stop: int) -> tuple[torch.Tensor, ...]:
        inputs = tuple(t.to(device) for t in latents.batch(start, stop))
        with torch.no_grad():
            out = generator(*inputs)
        if isinstance(out, tuple | list):
            out = out[0]
        data = out.detach().cpu()
        if (k := _first_nonfinite_sample([data])) is not None:
            raise ModelInputError(
                f"the generator's output holds NaN or infinite values (sample {start + k})",
                f"check the generator checkpoint given with {option('generator')}",
            )
        return (data,)

    describe = {"kind": "generated", "generator_inputs": latents.description}
    # a generator exported for one batch size fixes the batches of what it feeds
    return InputSource(describe, draw, available=latents.available, fixed_batch=latents.fixed_batch)


def feeding(model: nn.Module, source: InputSource) -> InputSource:
    """``source`` as the inputs of ``model``: when ``model`` is a program exported for one batch
    size, the batches take that size (a generator's outputs, data made elsewhere)."""
    own = static_batch_size(model)
    if own is None or own == source.fixed_batch:
        return source
    if source.fixed_batch is not None:
        raise ModelInputError(
            f"the model was exported for batches of exactly {own} samples, and what feeds it "
            f"for batches of exactly {source.fixed_batch}",
            "export one of them with a dynamic batch dimension, or both with the same batch size",
        )
    source.fixed_batch = own
    return source


def _probe_source(shape: tuple[int, ...], seed: int) -> InputSource:
    source = latent_source(shape, seed=seed, dist="uniform")
    source.description = {"kind": "probe", "shape": list(shape), "seed": seed}
    return source


def trial_forward(model: nn.Module, source: InputSource, device: torch.device) -> Any:
    """Run the model on two samples; a failure is reported as bad input, in one line."""
    inputs = source.first_batch(device)
    try:
        with torch.no_grad():
            return model(*inputs)
    except Exception as exc:  # whatever the model raises, the inputs did not fit it
        shapes = ", ".join("×".join(map(str, t.shape)) for t in inputs)
        first = first_line(exc)
        if (missing := missing_inputs(model, len(inputs))) is not None:
            raise ModelInputError(f"the model's {missing[0]} ({shapes})", missing[1]) from None
        raise ModelInputError(
            f"the model failed on inputs of shape {shapes}: {type(exc).__name__}: {first}"[:400],
            f"pass {option('z_shape')}, {option('latents')}, {option('sampler')} or "
            f"{option('inputs')} to match what the model expects",
        ) from None

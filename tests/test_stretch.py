"""Stretch interventions (docs/method.md) on tiny models with known answers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from genaudit.analysis.stretch import (
    Batches,
    StretchResult,
    choose_stretch_layers,
    default_stretch_layers,
    intervene,
    run_stretch,
)
from genaudit.analysis.transforms import Transform, make_transform, stretch
from genaudit.errors import NothingToAnalyseError, UsageError
from genaudit.io import registry as zoo
from genaudit.model.hooks import has_hooks
from genaudit.model.inputs import latent_source
from genaudit.model.layers import LayerRecord, walk_layers

STRETCH = make_transform("stretch", 1.5, "horizontal")


class FixedInputs:
    """Fixed inputs (any dtype), sample k being x[k] whatever the batch size: a source of
    batches made without the model loader, which is all ``run_stretch`` asks of its inputs."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return (self.x[start:stop],)

    def batches(
        self, num_samples: int, batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            yield tuple(t.to(device) for t in self.batch(start, stop))


def latents(n: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> FixedInputs:
    g = torch.Generator().manual_seed(123)
    return FixedInputs(torch.randn((n, *shape), generator=g, dtype=dtype))


def records_of(model: nn.Module, source: Batches) -> list[LayerRecord]:
    return walk_layers(model, next(iter(source.batches(2, 2, "cpu"))))


def by_name(result: StretchResult) -> dict[str, Any]:
    return {r.name: r for r in result.layers}


class LastConvIsOutput(nn.Module):
    """z (4×1×1) → 4×4 → 8×8 → 16×16; the last conv's output is the model's output."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.ConvTranspose2d(4, 8, 4, 1, 0)
        self.up1 = nn.ConvTranspose2d(8, 6, 4, 2, 1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.up2 = nn.ConvTranspose2d(6, 4, 4, 2, 1)
        self.out = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(z))
        h = self.drop(torch.relu(self.bn(self.up1(h))))
        return self.out(torch.relu(self.up2(h)))


class LinearTail(nn.Module):
    """After ``body.1`` only 1×1 convolutions (one with bias): they commute with any stretch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ConvTranspose2d(3, 6, 4, 1, 0), nn.ReLU(), nn.ConvTranspose2d(6, 5, 4, 2, 1)
        )
        self.mix = nn.Conv2d(5, 4, 1, bias=False)
        self.head = nn.Conv2d(4, 2, 1, bias=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.body(z)))


class CircularStack(nn.Module):
    """Stride-1 circularly padded convolutions with pointwise nonlinearities: shift-equivariant."""

    def __init__(self, d: int = 2) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[d]
        self.net = nn.Sequential(
            conv(2, 4, 3, padding=1, padding_mode="circular"),
            nn.Tanh(),
            conv(4, 4, 3, padding=2, dilation=2, padding_mode="circular"),
            nn.ReLU(),
            conv(4, 1, 3, padding=1, padding_mode="circular"),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- (a) image level


def test_image_level_is_exact_when_last_conv_is_the_output() -> None:
    torch.manual_seed(0)
    model = LastConvIsOutput()
    src = latent_source((4, 1, 1), seed=1)
    recs = records_of(model, src)
    assert [r.level for r in recs] == ["projection", "coarse", "fine", "image"]
    result = run_stretch(model, recs, None, src, transform=STRETCH, num_samples=6, batch_size=4)
    layers = by_name(result)
    assert layers["out"].mse == 0.0
    assert layers["out"].rel_mse == 0.0
    assert result.baseline > 0
    assert all(layers[n].rel_mse > 1e-3 for n in ("proj", "up1", "up2"))


# --------------------------------------------------------------------------- (b) linear tail


def test_stretch_commutes_with_a_tail_of_1x1_linear_convolutions() -> None:
    torch.manual_seed(1)
    model = LinearTail().double()
    src = latents(5, (3, 1, 1))
    recs = records_of(model, src)
    chosen = choose_stretch_layers(recs, ["body.2", "mix", "head"])
    for axis in ("horizontal", "both"):
        t = make_transform("stretch", 2.0, axis)
        result = run_stretch(model, recs, chosen, src, transform=t, num_samples=5, batch_size=5)
        for layer in result.layers:
            assert layer.rel_mse < 1e-10, layer
        assert result.baseline > 1e-8


def test_shrinking_also_commutes_with_the_linear_tail() -> None:
    torch.manual_seed(2)
    model = LinearTail().double()
    src = latents(4, (3, 1, 1))
    recs = records_of(model, src)
    t = make_transform("stretch", 0.6, "vertical")
    result = run_stretch(model, recs, choose_stretch_layers(recs, ["body.2"]), src,
                         transform=t, num_samples=4, batch_size=2)  # fmt: skip
    assert result.layers[0].rel_mse < 1e-10


# --------------------------------------------------------------------------- (c) shift


@pytest.mark.parametrize(
    "d, axis", [(2, "horizontal"), (2, "both"), (1, "horizontal"), (3, "depth")]
)
def test_shift_commutes_with_circular_convolutions(d: int, axis: str) -> None:
    torch.manual_seed(3)
    model = CircularStack(d).double()
    grid = {1: (16,), 2: (8, 8), 3: (4, 6, 6)}[d]
    src = latents(4, (2, *grid))
    recs = records_of(model, src)
    t = make_transform("shift", 2, axis)
    result = run_stretch(
        model,
        recs,
        choose_stretch_layers(recs, ["all"]),
        src,
        transform=t,
        num_samples=4,
        batch_size=3,
    )
    assert len(result.layers) == 3
    assert result.baseline > 1e-6
    for layer in result.layers:
        assert layer.rel_mse < 1e-20, layer


# --------------------------------------------------------------------------- (d) no side effects


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_weights_hooks_and_training_flags_untouched() -> None:
    torch.manual_seed(4)
    model = LastConvIsOutput()
    model.train()
    model.drop.eval()  # a mixed pattern of flags must come back as it was
    flags = _flags(model)
    src = latent_source((4, 1, 1), seed=2)
    recs = records_of(model, src)
    before = _snapshot(model)
    run_stretch(model, recs, None, src, transform=STRETCH, num_samples=5, batch_size=2)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats included
    assert not has_hooks(model)
    assert _flags(model) == flags


class _Boom(RuntimeError):
    pass


def test_cleanup_when_the_intervention_raises() -> None:
    torch.manual_seed(5)
    model = LastConvIsOutput()
    model.train()
    flags = _flags(model)
    before = _snapshot(model)

    def explode(x: torch.Tensor) -> torch.Tensor:
        raise _Boom("inside the hook")

    with pytest.raises(_Boom), intervene(model, model.up1, explode):
        assert not model.training  # eval mode inside
        model(torch.randn(2, 4, 1, 1))
    assert not has_hooks(model)
    assert _flags(model) == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _FailsOnHiddenMaps:
    """A transform that works on the output (2 channels) and raises on hidden maps."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 2:
            raise _Boom("hidden map")
        return stretch(x, 1.5)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "fails"}


def test_cleanup_when_run_stretch_raises_inside_a_hook() -> None:
    torch.manual_seed(6)
    model = LastConvIsOutput()
    model.train()
    flags = _flags(model)
    before = _snapshot(model)
    src = latent_source((4, 1, 1), seed=3)
    recs = records_of(model, src)
    with pytest.raises(_Boom):
        run_stretch(model, recs, None, src, transform=_FailsOnHiddenMaps(),  # type: ignore[arg-type]
                    num_samples=3, batch_size=3)  # fmt: skip
    assert not has_hooks(model)
    assert _flags(model) == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- (e) definition


def test_rel_mse_matches_a_manual_computation() -> None:
    torch.manual_seed(7)
    model = LastConvIsOutput().double().eval()
    src = latents(7, (4, 1, 1))
    recs = records_of(model, src)
    t = make_transform("stretch", 1.7, "both")
    result = run_stretch(model, recs, None, src, transform=t, num_samples=7, batch_size=4)
    (z,) = src.batch(0, 7)
    with torch.no_grad():
        g = model(z)
        tg = stretch(g, 1.7, "both")
        baseline = ((g - tg) ** 2).mean().item()
        for layer in result.layers:
            handle = model.get_submodule(layer.name).register_forward_hook(
                lambda m, a, out: stretch(out, 1.7, "both")
            )
            try:
                gl = model(z)
            finally:
                handle.remove()
            mse = ((gl - tg) ** 2).mean().item()
            assert layer.baseline == pytest.approx(baseline, rel=1e-12)
            assert layer.mse == pytest.approx(mse, rel=1e-12, abs=1e-300)
            assert layer.rel_mse == pytest.approx(mse / baseline, rel=1e-12, abs=1e-300)


# --------------------------------------------------------------------------- (f) batch size


def test_numbers_do_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(8)
    model = LastConvIsOutput().double()
    src = latents(10, (4, 1, 1))
    recs = records_of(model, src)
    runs = [
        run_stretch(model, recs, None, src, transform=STRETCH, num_samples=10, batch_size=b)
        for b in (3, 8, 10)
    ]
    ref = runs[0]
    for other in runs[1:]:
        for a, b in zip(ref.layers, other.layers, strict=True):
            assert b.mse == pytest.approx(a.mse, rel=1e-10, abs=1e-300)
            assert b.baseline == pytest.approx(a.baseline, rel=1e-10)
        assert other.samples is not None and ref.samples is not None
        assert torch.allclose(other.samples.original, ref.samples.original)


# --------------------------------------------------------------------------- (g) DCGAN


def test_dcgan_generator() -> None:
    torch.manual_seed(9)
    model = zoo.build("dcgan_generator", {"ngf": 8, "image_size": 32})
    src = latent_source((100, 1, 1), seed=0)
    recs = records_of(model, src)
    result = run_stretch(
        model, recs, None, src, transform=STRETCH, num_samples=8, batch_size=4, keep_samples=3
    )
    levels = [r.level for r in result.layers]
    assert levels == ["projection", "coarse", "fine", "image"]
    rel = {r.level: r.rel_mse for r in result.layers}
    assert all(math.isfinite(v) and v >= 0 for v in rel.values())
    assert rel["image"] == min(rel.values())
    assert rel["image"] < 1e-3
    assert result.samples is not None
    assert result.samples.original.shape == (3, 3, 32, 32)
    assert len(result.samples.intervened) == 4
    assert result.samples.original.dtype == torch.float32


# --------------------------------------------------------------------------- cost, outputs, API


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(z)


def test_one_forward_plus_one_per_layer_per_batch() -> None:
    model = _Counting(LastConvIsOutput())
    src = latent_source((4, 1, 1), seed=0)
    recs = records_of(model, src)
    chosen = choose_stretch_layers(recs, ["coarse", "image"])
    model.calls = 0
    run_stretch(model, recs, chosen, src, transform=STRETCH, num_samples=7, batch_size=3)
    assert model.calls == 3 * (1 + 2)


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.g = LastConvIsOutput()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.g(z)
        return y, y.mean(dim=(1, 2, 3))


def test_tuple_output_uses_its_first_tensor() -> None:
    torch.manual_seed(10)
    model = _TupleOut()
    src = latent_source((4, 1, 1), seed=0)
    recs = records_of(model, src)
    result = run_stretch(model, recs, None, src, transform=STRETCH, num_samples=2, batch_size=2)
    assert by_name(result)["g.out"].mse == 0.0
    assert result.output_shape == (2, 16, 16)


def test_output_that_is_not_a_map_is_nothing_to_analyse() -> None:
    model = zoo.build("dcgan_discriminator", {"ndf": 4, "image_size": 16, "nc": 1})
    src = latents(2, (1, 16, 16), torch.float32)
    recs = records_of(model, src)
    with pytest.raises(NothingToAnalyseError, match="output has shape 2×1: not a map"):
        run_stretch(model, recs, None, src, transform=STRETCH, num_samples=2, batch_size=2)
    assert not has_hooks(model)


def test_baseline_zero_gives_nan_and_a_note() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(3, 2, 1))  # 1×1 in, 1×1 out: stretch is identity
    src = latents(3, (3, 1, 1), torch.float32)
    recs = records_of(model, src)
    result = run_stretch(model, recs, None, src, transform=STRETCH, num_samples=3, batch_size=2)
    (layer,) = result.layers
    assert layer.baseline == 0.0 and layer.mse == 0.0
    assert math.isnan(layer.rel_mse)
    assert result.notes and "baseline mse 0" in result.notes[0]


def test_projection_with_1x1_output_is_computed() -> None:
    """Stretching a 1×1 map is the identity: legitimate, and rel_mse = 1."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Conv2d(3, 5, 1)  # fed and producing 1×1 maps
            self.up = nn.ConvTranspose2d(5, 2, 8, 1, 0)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.up(torch.relu(self.first(z)))

    torch.manual_seed(11)
    model = Net().double()
    src = latents(4, (3, 1, 1))
    recs = records_of(model, src)
    result = run_stretch(model, recs, None, src, transform=STRETCH, num_samples=4, batch_size=4)
    layers = by_name(result)
    assert layers["first"].level == "projection"
    assert layers["first"].rel_mse == pytest.approx(1.0, rel=1e-12)
    assert layers["up"].mse == 0.0


def test_one_and_three_dimensional_outputs() -> None:
    torch.manual_seed(12)
    for d, grid in ((1, (16,)), (3, (4, 6, 6))):
        model = CircularStack(d).double()
        src = latents(3, (2, *grid))
        recs = records_of(model, src)
        result = run_stretch(
            model,
            recs,
            None,
            src,
            transform=make_transform("stretch", 2.0, "both"),
            num_samples=3,
            batch_size=2,
        )
        assert [r.level for r in result.layers] == ["fine", "image"]
        assert all(math.isfinite(r.rel_mse) for r in result.layers)
        assert result.samples is not None and result.samples.original.shape == (3, 1, *grid)


def test_vertical_on_1d_maps_is_a_usage_error() -> None:
    model = CircularStack(1)
    src = latents(2, (2, 16), torch.float32)
    recs = records_of(model, src)
    t = make_transform("stretch", 2.0, "vertical")
    with pytest.raises(UsageError, match=r"layer 'net\.2': axis 'vertical' does not exist"):
        run_stretch(model, recs, None, src, transform=t, num_samples=2, batch_size=2)


def test_level_selection_uses_the_last_layer_of_the_level() -> None:
    class TwoFine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.ConvTranspose2d(3, 4, 4, 1, 0)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.c = nn.Conv2d(4, 4, 3, padding=1)
            self.d = nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.d(self.c(self.b(self.a(z))))

    model = TwoFine()
    src = latents(2, (3, 1, 1), torch.float32)
    recs = records_of(model, src)
    assert [r.level for r in recs] == ["projection", "fine", "fine", "image"]
    assert [r.name for r in default_stretch_layers(recs)] == ["a", "c", "d"]
    assert [r.name for r in choose_stretch_layers(recs, ["fine"])] == ["c"]
    assert [r.name for r in choose_stretch_layers(recs, ["b", "image"])] == ["b", "d"]
    with pytest.raises(UsageError, match="no layer matches 'coarse'"):
        choose_stretch_layers(recs, ["coarse"])


def test_linear_layers_cannot_be_stretched() -> None:
    model = zoo.build("vae_decoder", {"image_size": 16, "nz": 4, "ngf": 4, "nc": 1})
    src = latents(2, (4,), torch.float32)
    recs = records_of(model, src)
    assert "fc" not in [r.name for r in default_stretch_layers(recs)]
    assert "fc" not in [r.name for r in choose_stretch_layers(recs, ["all"])]
    with pytest.raises(UsageError, match="layer 'fc' \\(Linear\\) does not output a map"):
        run_stretch(model, recs, choose_stretch_layers(recs, ["fc"]), src, transform=STRETCH,
                    num_samples=2, batch_size=2)  # fmt: skip


def test_result_serialisation() -> None:
    torch.manual_seed(13)
    model = LastConvIsOutput()
    src = latent_source((4, 1, 1), seed=0)
    recs = records_of(model, src)
    result = run_stretch(
        model,
        recs,
        None,
        src,
        transform=Transform("stretch", 2.0, "both"),
        num_samples=3,
        batch_size=3,
        keep_samples=0,
    )
    assert result.samples is None
    d = result.to_dict()
    assert set(d) == {"transform", "num_samples", "output_shape", "baseline", "layers", "notes"}
    assert d["transform"] == {"name": "stretch", "param": 2.0, "axis": "both"}
    assert [x["name"] for x in d["layers"]] == ["proj", "up1", "up2", "out"]
    assert set(d["layers"][0]) == {"index", "name", "level", "mse", "baseline", "rel_mse"}
    header, rows = result.csv_rows()
    assert header == ("layer", "level", "mse", "baseline", "rel_mse")
    assert rows[0][:2] == ("proj", "projection") and len(rows) == 4
    assert rows[-1][2] == 0.0

"""The SDR analysis end to end on models: captured inputs, weights, levels, devices.

The fast path is checked against the dense per-pair reference computed on activations captured
independently with plain forward hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import toy_models
from dense_reference import dense_sdr
from torch import nn

from genaudit.analysis.sdr import Samples, histogram, run_sdr
from genaudit.analysis.trace_method import mechanism_matrix, trace_ratio
from genaudit.errors import ModelInputError
from genaudit.io import registry as zoo
from genaudit.model.hooks import has_hooks
from genaudit.model.inputs import latent_source
from genaudit.model.layers import walk_layers

CPU = torch.device("cpu")


def _capture_inputs(model: nn.Module, names: list[str], inputs: tuple[torch.Tensor, ...]) -> dict:
    mods = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [
        mods[n].register_forward_pre_hook(
            lambda m, a, n=n: seen.__setitem__(n, a[0].detach().clone())
        )
        for n in names
    ]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (zoo.build("dcgan_generator", {"ngf": 4, "nz": 6, "image_size": 32}), (6, 1, 1)),
        (toy_models.linear_first(5), (5,)),  # Linear, then Upsample + Conv
    ],
    ids=["dcgan", "upsample_conv"],
)
def test_matches_dense_reference_on_captured_activations(model: nn.Module, shape: tuple) -> None:
    torch.manual_seed(0)
    model.eval()
    source = latent_source(shape, seed=1)
    records = walk_layers(model, source.batch(0, 2))
    result = run_sdr(model, records, source, num_samples=40, batch_size=16, device=CPU)
    acts = _capture_inputs(model, [r.name for r in records], source.batch(0, 40))
    mods = dict(model.named_modules())
    for layer in result.layers:
        r = layer.record
        w = mods[r.name].weight.detach().double()
        if layer.analysis == "sdr":
            ref = dense_sdr(acts[r.name].double().numpy(), w.numpy(), transposed=r.transposed,
                            stride=r.stride, dilation=r.dilation, groups=r.groups)  # fmt: skip
            assert layer.values is not None
            np.testing.assert_allclose(layer.values, ref, rtol=1e-6)
        else:
            v = acts[r.name].double().reshape(40, -1).numpy()
            cov = np.cov(v, rowvar=False, ddof=0)
            expected = trace_ratio(mechanism_matrix(w, transposed=r.transposed), cov)
            assert layer.ratio == pytest.approx(expected, rel=1e-9)
    assert not has_hooks(model)


def test_upsample_conv_uses_the_upsampled_grid() -> None:
    model = toy_models.linear_first(5).eval()
    source = latent_source((5,))
    records = walk_layers(model, source.batch(0, 2))
    result = run_sdr(model, records, source, num_samples=8, batch_size=8, device=CPU)
    conv = next(x for x in result.layers if x.record.name == "conv")
    assert conv.record.grid == (8, 8)
    assert conv.to_dict()["grid"] == [8, 8]


def test_levels_pool_the_pairs_of_their_layers() -> None:
    model = zoo.build("dcgan_generator", {"ngf": 4, "nz": 6, "image_size": 64}).eval()
    source = latent_source((6, 1, 1))
    records = walk_layers(model, source.batch(0, 2))
    result = run_sdr(model, records, source, num_samples=16, batch_size=16, device=CPU)
    by_level = {lv.level: lv for lv in result.levels}
    assert list(by_level) == ["projection", "coarse", "intermediate", "fine", "image"]
    for layer in result.layers:
        lv = by_level[layer.record.level]
        if layer.analysis == "sdr":
            assert lv.summary is not None and layer.summary is not None
            assert lv.summary.pairs == layer.summary.pairs
            assert lv.summary.mean_log10 == pytest.approx(layer.summary.mean_log10)
        else:
            assert lv.trace_ratios == (layer.ratio,)


class TensorSamples:
    """Inputs held in tensors, made without the model loader: all ``run_sdr`` asks of them."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors
        self.available = int(tensors[0].shape[0])

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[start:stop] for t in self.tensors)


def test_any_module_with_inputs_held_in_tensors() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ConvTranspose2d(3, 4, 4, 2, 1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)
    ).eval()
    loader_source = latent_source((3, 4, 4), seed=5)
    plain: Samples = TensorSamples(*loader_source.batch(0, 20))
    records = walk_layers(model, plain.batch(0, 2))
    result = run_sdr(model, records, plain, num_samples=20, batch_size=8, device=CPU)
    same = run_sdr(model, records, loader_source, num_samples=20, batch_size=8, device=CPU)
    assert [x.analysis for x in result.layers] == ["sdr", "sdr"]
    for got, expected in zip(result.layers, same.layers, strict=True):
        assert got.values is not None and expected.values is not None
        np.testing.assert_array_equal(got.values, expected.values)
    with pytest.raises(ModelInputError, match="21 samples asked for"):
        run_sdr(model, records, plain, num_samples=21, batch_size=8, device=CPU)


def test_histogram_bins() -> None:
    counts = histogram(np.array([-5.0, -1.0, -0.95, 0.0, 0.05, 0.99, 1.0, 1.5]))
    assert len(counts) == 22 and sum(counts) == 8
    assert counts[0] == 1 and counts[-1] == 1  # -5 below, 1.5 above
    assert counts[1] == 2  # -1.0 and -0.95 in [-1, -0.9)
    assert counts[11] == 2  # 0.0 and 0.05 in [0, 0.1)
    assert counts[20] == 2  # 0.99 and 1.0 in [0.9, 1]


@pytest.mark.gpu
def test_cpu_and_cuda_agree() -> None:
    model = zoo.build("dcgan_generator", {"ngf": 8, "nz": 16, "image_size": 32}).eval()
    source = latent_source((16, 1, 1))
    records = walk_layers(model, source.batch(0, 2))
    cpu = run_sdr(model, records, source, num_samples=64, batch_size=32, device=CPU)
    gpu_model = model.to("cuda")
    gpu = run_sdr(
        gpu_model, records, source, num_samples=64, batch_size=32, device=torch.device("cuda")
    )
    for a, b in zip(cpu.layers, gpu.layers, strict=True):
        if a.analysis == "sdr":
            np.testing.assert_allclose(a.values, b.values, rtol=1e-4)
        else:
            assert a.ratio == pytest.approx(b.ratio, rel=1e-4)

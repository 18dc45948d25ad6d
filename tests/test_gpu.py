"""The CUDA path: CPU and CUDA agree on every pair of the fixtures, out-of-memory halving on the
device, full float32 precision during the analyses (``gpu``-marked tests skip without CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import genaudit
from genaudit.analysis.precision import full_float32

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
N = 128


def _flags() -> tuple[str, str]:
    return (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)


def test_full_float32_sets_ieee_on_cuda_only_and_restores() -> None:
    before = _flags()
    with full_float32("cpu"):
        assert _flags() == before
    with full_float32(torch.device("cuda")):  # the flags exist without a GPU too
        assert _flags() == ("ieee", "ieee")
    assert _flags() == before
    with pytest.raises(RuntimeError), full_float32("cuda"):
        raise RuntimeError("a failing run")
    assert _flags() == before


def _inputs(name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    if name.startswith("dcgan64_generator"):
        return torch.randn(N, 64, 1, 1, generator=gen)
    if name.startswith("vae64_decoder"):
        return torch.randn(N, 32, generator=gen)
    return torch.rand(N, 1, 64, 64, generator=gen)  # encoder and discriminator: images in [0, 1]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name",
    ["dcgan64_generator", "dcgan64_discriminator", "vae64_encoder", "vae64_decoder"],
)
def test_cpu_and_cuda_agree_on_every_pair_of_the_fixtures(name: str) -> None:
    path = FIXTURES / f"{name}.safetensors"
    x = _inputs(name)
    flags = _flags()
    cpu = genaudit.sdr(genaudit.load(path), x, batch_size=32)
    cuda = genaudit.sdr(genaudit.load(path, device="cuda"), x, batch_size=32)
    assert _flags() == flags  # the user's TF32 settings are back
    for a, b in zip(cpu.layers, cuda.layers, strict=True):
        assert (a.record.name, a.analysis) == (b.record.name, b.analysis)
        if a.analysis == "sdr":
            np.testing.assert_allclose(b.values, a.values, rtol=1e-6, err_msg=a.record.name)
        elif a.analysis == "trace":
            assert b.ratio == pytest.approx(a.ratio, rel=1e-6), a.record.name


@pytest.mark.gpu
def test_out_of_memory_halving_on_the_device() -> None:
    """An oversized batch on a memory-capped device: halved until it fits, same numbers."""
    model = genaudit.load(FIXTURES / "dcgan64_generator.safetensors", device="cuda")
    z = torch.randn(4096, 64, 1, 1, generator=torch.Generator().manual_seed(3))
    reference = genaudit.sdr(model, z, batch_size=256)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    # about 600 MB for this process: a batch of 4,096 64×64 images does not fit
    torch.cuda.set_per_process_memory_fraction(min(1.0, 6e8 / total))
    try:
        result = genaudit.sdr(model, z, batch_size=4096)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert result.oom_halvings >= 1 and result.batch_size_final < 4096
    for a, b in zip(reference.layers, result.layers, strict=True):
        if a.analysis == "sdr":
            np.testing.assert_allclose(b.values, a.values, rtol=1e-6)


@pytest.mark.gpu
def test_stretch_agrees_on_cpu_and_cuda() -> None:
    path = FIXTURES / "dcgan64_generator.safetensors"
    z = _inputs("dcgan64_generator")
    cpu = genaudit.stretch(genaudit.load(path), z, batch_size=32)
    cuda = genaudit.stretch(genaudit.load(path, device="cuda"), z, batch_size=32)
    for a, b in zip(cpu.layers, cuda.layers, strict=True):
        assert b.rel_mse == pytest.approx(a.rel_mse, rel=1e-5, abs=1e-9), a.name

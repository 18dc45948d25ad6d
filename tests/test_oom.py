"""Out of device memory during `sdr`: halve the batch, continue from the same sample.

CUDA's out-of-memory error is simulated on the CPU: a hook raises ``torch.OutOfMemoryError``
(which is ``torch.cuda.OutOfMemoryError``) for batches above a size, after the layers before it
have already added the batch to their accumulators, so a non-transactional scheme would count
those samples twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from genaudit.analysis.accumulators import SpectrumAccumulator
from genaudit.analysis.sdr import SDRResult, run_sdr
from genaudit.cli import app
from genaudit.errors import NothingToAnalyseError
from genaudit.io import registry as zoo
from genaudit.io.writing import save_safetensors
from genaudit.model.hooks import has_hooks
from genaudit.model.inputs import latent_source
from genaudit.model.layers import walk_layers

CPU = torch.device("cpu")
KW = {"ngf": 4, "nz": 8, "image_size": 32}
runner = CliRunner()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return zoo.build("dcgan_generator", KW).eval()


@contextmanager
def oom_above(
    model: nn.Module, layer: str, limit: int, from_sample: int = 0
) -> Iterator[list[int]]:
    """Make ``layer`` raise out-of-memory for batches larger than ``limit``.

    Only batches starting at sample ``from_sample`` or later fail (the samples seen so far are
    tracked by counting every batch that reaches the layer). Yields the sizes that failed.
    """
    failed: list[int] = []
    seen = [0]

    def hook(_m: nn.Module, args: tuple) -> None:
        n = int(args[0].shape[0])
        if n > limit and seen[0] >= from_sample:
            failed.append(n)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        seen[0] += n

    handle = model.get_submodule(layer).register_forward_pre_hook(hook)
    try:
        yield failed
    finally:
        handle.remove()


SOURCE = latent_source((8, 1, 1), seed=3)


_RECORDS: dict[int, list] = {}


def _records(model: nn.Module) -> list:
    # the layers are walked before any of them is made to fail
    if id(model) not in _RECORDS:
        _RECORDS[id(model)] = walk_layers(model, SOURCE.batch(0, 2))
    return _RECORDS[id(model)]


def _sdr(model: nn.Module, batch: int, n: int = 48) -> SDRResult:
    return run_sdr(model, _records(model), SOURCE, num_samples=n, batch_size=batch, device=CPU)


def _values(result: SDRResult) -> list[np.ndarray]:
    out = []
    for layer in result.layers:
        if layer.values is not None:
            out.append(layer.values)
        elif layer.ratio is not None:
            out.append(np.array([layer.ratio]))
    return out


def test_first_batch_oom_halves_and_equals_the_smaller_batch_run(model: nn.Module) -> None:
    # main.6 is the third conv: main.0 and main.3 have taken the failing batch already
    with oom_above(model, "main.6", limit=12) as failed:
        result = _sdr(model, batch=48)
    assert failed == [48, 24]
    assert (result.batch_size, result.batch_size_final, result.oom_halvings) == (48, 12, 2)
    assert not has_hooks(model)
    reference = _sdr(model, batch=12)
    assert reference.oom_halvings == 0
    assert all(layer.samples == 48 for layer in result.layers)
    for got, expected in zip(_values(result), _values(reference), strict=True):
        np.testing.assert_array_equal(got, expected)
    d = result.to_dict()
    assert (d["batch_size"], d["batch_size_final"], d["oom_halvings"]) == (48, 12, 2)


def test_oom_in_the_middle_of_the_run_counts_every_sample_once(model: nn.Module) -> None:
    with oom_above(model, "main.9", limit=5, from_sample=32) as failed:
        result = _sdr(model, batch=16, n=64)
    assert failed == [16, 8]  # samples 0–31 ran in batches of 16, the rest in batches of 4
    assert (result.batch_size_final, result.oom_halvings) == (4, 2)
    assert all(layer.samples == 64 for layer in result.layers)
    reference = _sdr(model, batch=4, n=64)
    for got, expected in zip(_values(result), _values(reference), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_oom_at_batch_size_one_is_a_clear_error(model: nn.Module) -> None:
    with oom_above(model, "main.3", limit=0), pytest.raises(NothingToAnalyseError) as err:
        _sdr(model, batch=4, n=8)
    assert "out of memory" in err.value.message and "batch of 1" in err.value.message
    assert not has_hooks(model)


def test_only_out_of_memory_halves_the_batch(model: nn.Module) -> None:
    """Any other error of a forward pass is the model's: raised at once, never retried."""
    _records(model)
    sizes: list[int] = []

    def hook(_m: nn.Module, args: tuple) -> None:
        sizes.append(int(args[0].shape[0]))
        raise RuntimeError("shape mismatch (simulated)")

    handle = model.get_submodule("main.6").register_forward_pre_hook(hook)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            _sdr(model, batch=16, n=32)
    finally:
        handle.remove()
    assert sizes == [16]
    assert not has_hooks(model)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory, model: nn.Module) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "g.safetensors"
    save_safetensors(model.state_dict(), path, arch="dcgan_generator", arch_kwargs=KW)
    return str(path)


def _fail_above(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    original = SpectrumAccumulator.add

    def add(self: SpectrumAccumulator, v: torch.Tensor) -> None:
        if v.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        original(self, v)

    monkeypatch.setattr(SpectrumAccumulator, "add", add)


def test_cli_reports_the_halvings(gen: str, tmp_path: Path, monkeypatch) -> None:
    _fail_above(4, monkeypatch)
    out = tmp_path / "r.json"
    res = runner.invoke(
        app, ["sdr", gen, "--num-samples", "16", "--batch-size", "16", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "out of memory" in res.stderr and "batch size 4" in res.stderr
    results = json.loads(out.read_text())["results"]
    assert (results["batch_size"], results["batch_size_final"], results["oom_halvings"]) == (
        16,
        4,
        2,
    )


def test_cli_exit_4_when_even_one_sample_does_not_fit(gen: str, monkeypatch) -> None:
    _fail_above(0, monkeypatch)
    res = runner.invoke(app, ["sdr", gen, "--num-samples", "8", "--batch-size", "8"])
    assert res.exit_code == 4
    assert "out of memory" in res.stderr and "Traceback" not in res.output

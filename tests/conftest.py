"""Shared test set-up: toy architectures importable as ``toy_models``; the gpu marker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
ROOT = TESTS.parent
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(TESTS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # slow tests run only when asked for (pytest -m slow); GPU tests only where there is CUDA
    run_slow = "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow: run with pytest -m slow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


# A small DCGAN generator (32×32 output) with random weights: fast enough for command-line tests.
SMALL_GENERATOR = {"ngf": 4, "nz": 8, "image_size": 32}


@pytest.fixture(scope="session")
def gen(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A self-describing safetensors checkpoint of :data:`SMALL_GENERATOR`."""
    from genaudit.io import registry as zoo
    from genaudit.io.writing import save_safetensors

    torch.manual_seed(0)
    model = zoo.build("dcgan_generator", SMALL_GENERATOR)
    path = tmp_path_factory.mktemp("ckpt") / "g.safetensors"
    save_safetensors(model.state_dict(), path, arch="dcgan_generator", arch_kwargs=SMALL_GENERATOR)
    return str(path)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)

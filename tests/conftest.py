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
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)

"""Full float32 precision on CUDA while an analysis runs (no TF32), the user's settings restored.

On recent NVIDIA GPUs PyTorch runs float32 convolutions in TF32 by default (10-bit mantissas),
which moves activations by about 1e-3 relative: the statistics would then depend on the device.
The analyses run the model with cuDNN convolutions and CUDA matmuls in IEEE float32, as on the
CPU, and put the caller's settings back afterwards (also when the run raises).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["full_float32"]


@contextmanager
def full_float32(device: torch.device | str) -> Iterator[None]:
    """IEEE float32 convolutions and matmuls while the block runs on a CUDA ``device``
    (nothing changes for other devices)."""
    if torch.device(device).type != "cuda":
        yield
        return
    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    matmul = torch.backends.cuda.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision = "ieee"
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved

"""Values given on the command line or in configuration: parsed and checked without torch.

Everything here is pure and cheap, so that a bad value is refused (exit 2) before any model,
checkpoint or heavy library is touched.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import UsageError, option

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(?::\d+)?")
# The seed of torch.Generator.manual_seed: an unsigned 64-bit integer.
MAX_SEED = 2**64 - 1
# Stretch factors s are bounded to [1e-6, 1e6]: beyond them a stretch turns every map of up to
# a million pixels per axis into its centre value (s > 1e6) or its edge values (s < 1e-6), and
# 1/s no longer fits the float32 sampling grid (1e-300 overflows it).
MIN_STRETCH_FACTOR = 1e-6
MAX_STRETCH_FACTOR = 1e6


def parse_shape(text: str | None, what: str = option("z_shape")) -> tuple[int, ...] | None:
    """``100`` or ``100,1,1`` (also ``100x1x1``) → a shape without the batch dimension."""
    if text is None or not str(text).strip():
        return None
    parts = re.split(r"[,x×\s]+", str(text).strip())
    try:
        shape = tuple(int(p) for p in parts if p)
    except ValueError:
        raise UsageError(
            f"{what} {text!r} is not a list of integers such as 100 or 100,1,1"
        ) from None
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"{what} {text!r} must be positive integers")
    return shape


def parse_json_kwargs(text: str | None, what: str = option("arch_kwargs")) -> dict[str, Any]:
    """Parse a JSON object of keyword arguments."""
    if text is None or not text.strip():
        return {}
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc.msg} (at char {exc.pos})") from None
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, e.g. '{{\"nz\": 100}}'")
    return value


def check_device(spec: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (case-insensitive), normalised to lower case."""
    norm = spec.strip().lower()
    if not DEVICE_PATTERN.fullmatch(norm):
        raise UsageError(f"unknown device {spec!r}", "use auto, cpu, cuda or cuda:N")
    return norm


def check_positive_finite(value: float, what: str) -> float:
    """A finite number > 0 (a stretch factor, a tolerance)."""
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{what} must be a finite number > 0, got {value!r}")
    return value


def check_stretch_factor(value: float, what: str = "stretch factor") -> float:
    """A stretch factor: a finite number from :data:`MIN_STRETCH_FACTOR` to
    :data:`MAX_STRETCH_FACTOR` (what the bound is for: see there)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{what} must be a finite number > 0, got {value!r}")
    if not MIN_STRETCH_FACTOR <= value <= MAX_STRETCH_FACTOR:
        raise UsageError(
            f"{what} must be from {MIN_STRETCH_FACTOR:g} to {MAX_STRETCH_FACTOR:g}, got {value!r}",
            "beyond these bounds every map becomes constant (its centre or edge values)",
        )
    return value

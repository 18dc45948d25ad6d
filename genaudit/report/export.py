"""Machine output: the JSON envelope and text, tidy CSV text, and checks of output paths."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UsageError

SCHEMA_VERSION = 1

# What --grid (Pillow) and --plot (matplotlib) can write, by file suffix.
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_suffix(target: str | None, flag: str, allowed: Sequence[str]) -> None:
    """Refuse (exit 2) an output file whose suffix names a format that cannot be written."""
    if target is None:
        return
    suffix = Path(target).suffix.lower()
    if suffix not in allowed:
        raise UsageError(
            f"{flag} {target}: cannot write {suffix or 'a file without a suffix'}",
            f"use one of {', '.join(allowed)}",
        )


def envelope(command: str, device: str, config: Mapping[str, Any], **parts: Any) -> dict[str, Any]:
    """The fields every JSON report starts with: schema, versions, device, configuration."""
    import torch

    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "genaudit_version": __version__,
        "torch_version": torch.__version__,
        "device": device,
        "config": dict(config),
        **parts,
    }


def _clean(value: Any) -> Any:
    """Make values JSON-safe and deterministic: NaN/inf → null, tuples → lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_json(document: Mapping[str, Any]) -> str:
    """Serialise a report; identical input gives byte-identical text."""
    return json.dumps(_clean(document), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def check_destination(target: str | None, flag: str) -> None:
    """Fail early (exit 2) when an output file cannot be written, before any work is done.

    Missing parent folders are fine (they are created when the file is written); a parent
    path that runs through a file, or a nearest existing folder that is not writable, is not.
    """
    if target is None or target == "-":
        return
    path = Path(target)
    if path.is_dir():
        raise UsageError(f"{flag} {target} is a directory", "give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {target}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"{flag} {target}: folder {existing} is not writable")


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Tidy CSV text with a header row; NaN written as an empty field."""
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and not math.isfinite(v) else v for v in row])
    return buf.getvalue()

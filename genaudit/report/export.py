"""Machine output: the JSON envelope and text, tidy CSV text, and checks of output paths."""

from __future__ import annotations

import io
import json
import math
import os
import re
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


# File systems that hold no files of the user's: kernel interfaces.
PSEUDO_FILE_SYSTEMS = frozenset(
    {"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
     "configfs", "efivarfs", "fusectl", "binfmt_misc", "devpts", "mqueue", "autofs"}
)  # fmt: skip


def difference_path(path: str | Path) -> Path:
    """Where a picture grid's differences go: ``foo.png`` → ``foo_diff.png`` (same folder)."""
    p = Path(path)
    return p.with_name(f"{p.stem}_diff{p.suffix}")


def file_system_type(folder: str | Path) -> str | None:
    """The type of the file system ``folder`` is on (``proc``, ``ext4`` …), from the mount table;
    None where there is none to read."""
    real = os.path.realpath(folder)
    best, kind = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_destination(target: str | None, flag: str) -> None:
    """Fail early (exit 2), before any work is done, when an output file cannot be written.

    ``-`` (standard output) is always fine. A target that exists and is not a regular file (a
    device such as ``/dev/null``, a FIFO, a link to one) is written in place: it must be
    writable. Otherwise the file is made by a rename in its folder (see
    :mod:`genaudit.files`), so: a name (or a missing folder's) longer than the file system
    allows (``PC_NAME_MAX``), a parent path that runs through a file, a folder on a kernel
    interface (``/proc``, ``/sys``) or a nearest existing folder that is not writable are
    refused. A symbolic link to a regular file is checked where it points. What cannot be
    foreseen (a full disk) fails when the outputs are written (exit 3, no file changed).
    """
    from ..files import is_stream

    if target is None or target == "-":
        return
    # os.path's tests, not pathlib's: these answer False for a name too long, rather than raise
    if os.path.isdir(target):
        raise UsageError(f"{flag} {target} is a directory", "give a file name")
    if is_stream(target):
        if not os.access(target, os.W_OK):
            raise UsageError(f"{flag} {target}: not writable")
        return
    path = os.path.realpath(target) if os.path.islink(target) else target  # written through
    existing, missing = os.path.dirname(path) or ".", [os.path.basename(path)]
    while not os.path.lexists(existing) and existing != os.path.dirname(existing):
        missing.append(os.path.basename(existing))
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {target}: {existing} is not a folder")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for name in missing:
        if len(os.fsencode(name)) > name_max:
            raise UsageError(
                f"{flag} {target}: file name too long ({len(os.fsencode(name))} bytes; "
                f"at most {name_max} in {existing})"
            )
    kind = file_system_type(existing)
    if kind in PSEUDO_FILE_SYSTEMS:
        raise UsageError(f"{flag} {target}: {existing} is a {kind} folder that takes no files")
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


def writer_format(
    path: str | Path, what: str, allowed: Sequence[str], formats: dict[str, str]
) -> str:
    """The writer's format name for ``path``'s suffix (``formats`` maps suffixes to names), after
    :func:`check_suffix`; a suffix that ``allowed`` lists but ``formats`` lacks is a UsageError."""
    check_suffix(str(path), what, allowed)
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise UsageError(f"{what} {path}: no writer for {suffix}")
    return formats[suffix]

"""Format probing: which of :data:`FORMATS` a checkpoint is, decided from its bytes.

The format comes from the file's content (magic numbers, zip entry names, pickle opcodes), never
from its extension; a known extension that contradicts the content is an error. Probing also checks
what is cheap to check (a safetensors header against the file's size, a shard index's JSON) and,
for pickle-based files, lists the non-inert globals statically (:mod:`genaudit.io.pickle_scan`),
so that a code-bearing file is refused before anything loads it. Errors are
:class:`~genaudit.errors.CheckpointError` with a one-line message (:func:`one_line_error`), as the
command line prints them.

Limits
------
Every allocation a file drives is bounded before it happens, by the limits of
:mod:`genaudit.io.limits` (overridable with environment variables): a zip archive's central
directory is checked before any member is read; a safetensors header entry by entry (known dtype,
shape of non-negative integers, integer ``data_offsets`` inside the data section whose length is
dtype size × number of elements, no two tensors overlapping); a legacy torch file's storages
(declared in its pickle) may not add up to more than the file's size.
"""

from __future__ import annotations

import io
import json
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..errors import CheckpointError, first_line
from .limits import (
    LIMITS,
    RATIO_EXEMPT_BYTES,
    CappedReader,
    declared_storage_bytes,
    limit,
    limit_hint,
)
from .pickle_scan import PickleScan, inert_globals, is_module_like, scan_pickle
from .text_files import text_error

__all__ = [
    "DESCRIPTIONS",
    "FORMATS",
    "LIMITS",
    "Format",
    "Probe",
    "detect_format",
    "limit",
    "name_list",
    "one_line_error",
    "probe_format",
]

Format = Literal[
    "safetensors",
    "safetensors-sharded",
    "torch-zip",
    "torch-legacy",
    "pickled-module",
    "torchscript",
    "torch-export",
    "torch-package",
    "pickle",
]
FORMATS: tuple[Format, ...] = get_args(Format)

# How an error message names each format.
DESCRIPTIONS = {
    "safetensors": "safetensors data",
    "safetensors-sharded": "a sharded-safetensors index",
    "torch-zip": "a PyTorch zip checkpoint",
    "torch-legacy": "a legacy (non-zip) PyTorch checkpoint",
    "pickled-module": "a whole pickled nn.Module",
    "torchscript": "a TorchScript archive",
    "torch-export": "a torch.export archive",
    "torch-package": "a torch.package archive",
    "pickle": "a raw Python pickle",
}

_PICKLE_FAMILY = frozenset(FORMATS) - {"safetensors", "safetensors-sharded"}

# Extensions whose meaning is unambiguous enough that contradicting content is an error;
# any other extension (or none) lets the content decide.
_EXTENSION_FORMATS: dict[str, frozenset[str]] = {
    ".safetensors": frozenset({"safetensors"}),
    ".json": frozenset({"safetensors-sharded"}),
    ".pt2": frozenset({"torch-export"}),
    **dict.fromkeys((".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl", ".pickle"), _PICKLE_FAMILY),
}

# torch.save's legacy (non-zip) format starts with a pickled magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_HINT_CORRUPT = "re-save or re-download the file; genaudit reads safetensors and torch.save files"
_MAX_NAMES = 5


@dataclass(frozen=True)
class Probe:
    """What probing found out about a checkpoint file."""

    path: Path  # the file the format belongs to (the index json for a sharded directory)
    format: Format
    suspicious: frozenset[str] = frozenset()  # non-inert globals found statically
    zip_entries: tuple[str, ...] = ()
    header: dict[str, Any] = field(default_factory=dict)  # safetensors header / index json


def one_line_error(message: str, hint: str = _HINT_CORRUPT) -> CheckpointError:
    """A CheckpointError whose message is one line, as the CLI prints it; by default its hint
    is to re-save or re-download the file."""
    return CheckpointError(message.replace("\n", " "), hint)


def name_list(items: Sequence[str] | frozenset[str] | set[str], limit: int = _MAX_NAMES) -> str:
    """The first ``limit`` of ``items`` in sorted order, comma-separated, "…" when cut."""
    ordered = sorted(items)
    # Names come from the file: escape control characters so that a message stays one line.
    shown = ", ".join(
        n if n.isprintable() else n.encode("unicode_escape").decode("ascii")
        for n in ordered[:limit]
    )
    return shown + (", …" if len(ordered) > limit else "")


def _resolve_path(path: Path) -> Path:
    """The file to read: ``path`` itself, or the single shard index inside a directory."""
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist",
            "check the path; it must name a file or a directory",
        )
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if not indexes:
            raise CheckpointError(
                f"{path} is a directory without a *.safetensors.index.json shard index",
                "pass the checkpoint file itself, or a directory holding one sharded checkpoint",
            )
        if len(indexes) > 1:
            raise CheckpointError(
                f"{path} holds several shard indexes ({name_list([p.name for p in indexes])})",
                "pass the index json of the checkpoint you want",
            )
        return indexes[0]
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file", "pass a checkpoint file")
    return path


# Bytes per element of the safetensors dtypes torch can hold (safetensors.torch's _TYPES).
_SAFETENSORS_DTYPES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "C64": 8,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor_span(path: Path, key: str, info: Any, data_size: int) -> tuple[int, int]:
    """The (begin, end) of one safetensors header entry, checked against the data section."""

    def bad(what: str) -> CheckpointError:
        return one_line_error(f"{path} has a corrupt safetensors header (tensor {key!r}: {what})")

    if not isinstance(info, dict):
        raise bad("not a JSON object")
    for name in ("dtype", "shape", "data_offsets"):
        if name not in info:
            raise bad(f'no "{name}"')
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
        raise bad(f"unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad("shape is not a list of non-negative integers")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) and o >= 0 for o in offsets)
    ):
        raise bad("data_offsets is not two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise bad(f"data_offsets [{begin}, {end}] run backwards")
    if end > data_size:
        raise one_line_error(
            f"{path} is truncated: tensor {key!r} lies beyond the end of the file "
            f"(it ends at byte {end} of a {data_size}-byte data section)"
        )
    nbytes = _SAFETENSORS_DTYPES[dtype]
    if 0 not in shape:
        for dim in shape:  # stop early: a shape of huge numbers must not build a huge integer
            nbytes *= dim
            if nbytes > data_size:
                break
    else:
        nbytes = 0
    if nbytes != end - begin:
        shown = f"{nbytes} bytes" if nbytes <= data_size else "more bytes than the file holds"
        raise bad(f"{dtype} {shape} needs {shown}, data_offsets give {end - begin}"[:200])
    return begin, end


def _probe_safetensors(path: Path, head: bytes, size: int) -> Probe | None:
    """A safetensors probe, None when the bytes are not safetensors, an error when truncated,
    corrupt or over :data:`LIMITS`."""
    if size < 8 or len(head) < 9 or head[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or (n > 100_000_000 and 8 + n > size):
        return None
    if 8 + n > size:
        raise one_line_error(
            f"{path} has a truncated safetensors header ({size} bytes, header needs {8 + n})"
        )
    if n > limit("safetensors_header_bytes"):
        raise one_line_error(
            f"{path} has a safetensors header of {n} bytes, over the limit of "
            f"{limit('safetensors_header_bytes')}",
            limit_hint("safetensors_header_bytes"),
        )
    with path.open("rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert
        what = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        raise one_line_error(f"{path} has a corrupt safetensors header ({what})") from None
    if not isinstance(header, dict):
        raise one_line_error(f"{path} has a corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise one_line_error(
            f"{path} has a corrupt safetensors header (__metadata__ is not an object of strings)"
        )
    data_size = size - 8 - n
    spans = sorted(
        (_tensor_span(path, key, info, data_size), key)
        for key, info in header.items()
        if key != "__metadata__"
    )
    previous_end, previous_key = 0, ""
    for (begin, end), key in spans:
        if begin == end:
            continue
        if begin < previous_end:
            raise one_line_error(
                f"{path} has a corrupt safetensors header "
                f"(tensors {previous_key!r} and {key!r} overlap)"
            )
        previous_end, previous_key = end, key
    return Probe(path, "safetensors", header=header)


def _probe_json(path: Path, head: bytes) -> Probe | None:
    if head.lstrip()[:1] != b"{":
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        if path.suffix.lower() == ".json":
            raise one_line_error(f"{path} is not valid JSON") from None
        return None
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise one_line_error(
            f'{path} is JSON but not a safetensors shard index (no "weight_map")',
            "pass the *.safetensors.index.json of a sharded checkpoint, or a weights file",
        )
    return Probe(path, "safetensors-sharded", header=index)


def _check_zip_sizes(path: Path, zf: zipfile.ZipFile) -> None:
    """Refuse an archive whose central directory promises more data than :data:`LIMITS` allow
    (a zip bomb), before any member is read."""
    total = 0
    max_total, max_ratio = limit("checkpoint_bytes"), limit("zip_ratio")
    for info in zf.infolist():
        total += info.file_size
        if total > max_total:
            raise one_line_error(
                f"{path} is a zip archive whose members would unpack to more than {max_total} "
                "bytes",
                limit_hint("checkpoint_bytes"),
            )
        if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > max_ratio * max(
            info.compress_size, 1
        ):
            raise one_line_error(
                f"{path} is a zip archive whose member {info.filename[:80]!r} would expand "
                f"{info.file_size // max(info.compress_size, 1)} times (a zip bomb?)",
                limit_hint("zip_ratio"),
            )


def _probe_zip(path: Path) -> Probe:
    try:
        with zipfile.ZipFile(path) as zf:
            _check_zip_sizes(path, zf)
            names = tuple(zf.namelist())
            # torch archives keep everything under one top-level folder of any name.
            rel = {n.split("/", 1)[1] if "/" in n else n: n for n in names}
            if (
                "archive_format" in rel
                or any(r.endswith("serialized_exported_program.json") for r in rel)
                or any(r.startswith("models/") and r.endswith(".json") for r in rel)
            ):
                return Probe(path, "torch-export", zip_entries=names)
            if ".data/extern_modules" in rel:
                return Probe(path, "torch-package", zip_entries=names)
            if "constants.pkl" in rel or any(r.startswith("code/") for r in rel):
                return Probe(path, "torchscript", zip_entries=names)
            if "data.pkl" not in rel:
                raise one_line_error(
                    f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl)",
                    "pass a file written by torch.save or safetensors",
                )
            data = zf.read(rel["data.pkl"])
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        ValueError,
        NotImplementedError,  # an unsupported compression method
        RuntimeError,  # an encrypted member
        zlib.error,
        OSError,
    ) as exc:
        raise one_line_error(
            f"{path} is a truncated or corrupt zip archive ({first_line(exc, 160)})"
        ) from None
    try:
        scan = scan_pickle(io.BytesIO(data))
    except (ValueError, EOFError, struct.error) as exc:
        raise one_line_error(f"{path} holds a corrupt pickle ({first_line(exc, 160)})") from None
    suspicious = scan.globals - inert_globals()
    fmt: Format = "pickled-module" if is_module_like(scan, suspicious) else "torch-zip"
    return Probe(path, fmt, suspicious=suspicious, zip_entries=names)


def _probe_pickle(path: Path) -> Probe | None:
    """A legacy torch.save file or a raw pickle; None when the bytes are not a pickle."""
    size = path.stat().st_size
    with path.open("rb") as raw_fh:
        fh: Any = CappedReader(raw_fh, size)
        try:
            first_ops = list(pickletools.genops(fh))
        except (ValueError, EOFError, struct.error, UnicodeDecodeError):
            return None
        ints = [
            a for op, a, _ in first_ops if isinstance(a, int) and op.name not in ("PROTO", "FRAME")
        ]
        if ints[:1] != [_LEGACY_MAGIC]:
            fh.seek(0)
            try:
                scan = scan_pickle(fh)
            except (ValueError, EOFError, struct.error, UnicodeDecodeError):
                return None
            return Probe(path, "pickle", suspicious=scan.globals)
        # Legacy layout: magic, protocol version, sys info, the object, storage keys, raw data.
        try:
            scans = [scan_pickle(fh) for _ in range(2)]
            object_start = fh.tell()
            scans += [scan_pickle(fh) for _ in range(2)]
            fh.seek(object_start)
            declared = declared_storage_bytes(fh)
        except (ValueError, EOFError, struct.error, UnicodeDecodeError) as exc:
            raise one_line_error(
                f"{path} is a truncated or corrupt legacy PyTorch file ({first_line(exc, 160)})"
            ) from None
        if declared > size:
            raise one_line_error(
                f"{path} is a legacy PyTorch file whose storages declare {declared} bytes, "
                f"more than the file's {size}"
            )
        if declared > limit("checkpoint_bytes"):
            raise one_line_error(
                f"{path} is a legacy PyTorch file whose storages declare {declared} bytes, over "
                f"the limit of {limit('checkpoint_bytes')}",
                limit_hint("checkpoint_bytes"),
            )
    merged = PickleScan(
        frozenset().union(*(s.globals for s in scans)),
        frozenset().union(*(s.strings for s in scans)),
    )
    suspicious = merged.globals - inert_globals()
    fmt: Format = "pickled-module" if is_module_like(merged, suspicious) else "torch-legacy"
    return Probe(path, fmt, suspicious=suspicious)


_OTHER_MAGIC = (
    (b"\x89HDF", "an HDF5 file (Keras?)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"GGUF", "a GGUF file"),
    (b"\x1f\x8b", "a gzip file"),
)


def probe_format(path: Path) -> Probe:
    """Detect the format of ``path`` (a file, or a directory holding one shard index)."""
    path = _resolve_path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise one_line_error(
            f"cannot read {path}: {exc.strerror or exc}", "check permissions"
        ) from None
    if size == 0:
        raise one_line_error(f"checkpoint {path} is empty (0 bytes)")

    probe: Probe | None
    known: str | None = None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        probe = _probe_zip(path)
    else:
        probe = _probe_safetensors(path, head, size)
        if probe is None and path.suffix.lower() != ".json":
            markup = text_error(path, size, plain_text=False)  # Git LFS pointers, HTML, JSON
            if markup is not None:
                raise markup
        probe = probe or _probe_json(path, head)
        # Other known formats first: some of their magic bytes are also pickle opcodes.
        known = next((desc for magic, desc in _OTHER_MAGIC if head.startswith(magic)), None)
        if probe is None and known is None:
            probe = _probe_pickle(path)
    if probe is None:
        text = None if known else text_error(path, size, plain_text=True)
        if text is not None:
            raise text
        detail = f"it looks like {known}" if known else "unrecognised content"
        raise one_line_error(
            f"{path} is not a readable checkpoint ({detail}; {size} bytes)",
            "genaudit reads safetensors and torch.save files; the file may also be corrupt",
        )

    suffix = path.suffix.lower()
    allowed = _EXTENSION_FORMATS.get(suffix)
    if allowed is not None and probe.format not in allowed:
        raise CheckpointError(
            f"{path} has the extension {suffix} but contains {DESCRIPTIONS[probe.format]}",
            "rename the file to match its content; genaudit decides the format from the bytes",
        )
    return probe


def detect_format(path: Path) -> Format:
    """The format of the checkpoint at ``path``, read from its bytes: one of :data:`FORMATS`."""
    return probe_format(Path(path)).format

"""Fuzzing the checkpoint parsers with hypothesis: whatever the bytes (or the registry kwargs a
safetensors file records), reading a file raises only genaudit's own errors (exit 3), never an
internal error.

The default run tries a bounded number of examples (a few seconds); ``pytest -m slow`` runs the
same properties with many more.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genaudit.errors import GenauditError
from genaudit.io.formats import probe_format
from genaudit.io.pickle_scan import scan_pickle
from genaudit.io.reading import read_checkpoint
from genaudit.model.loading import load_model

# torch warns about the old pickle protocols that mutated files may declare.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
SLOW = settings(FAST, max_examples=3000)

_DIR = Path(tempfile.mkdtemp(prefix="genaudit-fuzz-"))


def _valid_safetensors() -> bytes:
    buf = io.BytesIO()
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}
    buf.write(safetensors.torch.save(tensors, metadata={"genaudit.arch": "dcgan_generator"}))
    return buf.getvalue()


def _valid_pickles() -> list[bytes]:
    out = []
    for protocol in (2, 4):
        out.append(pickle.dumps(OrderedDict(w=[1, 2.5, "x"], n=None), protocol=protocol))
        buf = io.BytesIO()
        torch.save({"w": torch.zeros(3)}, buf, _use_new_zipfile_serialization=False)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)  # a zip archive
    out.append(buf.getvalue())
    return out


SAFETENSORS = _valid_safetensors()
PICKLES = _valid_pickles()


def check_file(data: bytes, suffix: str = "") -> None:
    """Write ``data`` to a file and read it: success or a GenauditError, nothing else."""
    path = _DIR / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        read_checkpoint(path)
    except GenauditError as exc:
        assert "\n" not in exc.message


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few random byte edits: overwrite, insert, delete, truncate."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate", "length"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif len(data) >= 8:  # a new safetensors header length
            data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(data)


# --------------------------------------------------------------------------- safetensors headers

_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(0, 64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F99", "", "f32"])
        | _JSON,
        "shape": st.lists(_NUMBERS, max_size=4) | _JSON,
        "data_offsets": st.lists(_NUMBERS, max_size=3) | _JSON,
    },
)
_HEADERS = st.dictionaries(
    st.sampled_from(["a", "b", "__metadata__", "w.weight"]) | st.text(max_size=6),
    _ENTRY | _JSON,
    max_size=4,
)


def _header_file(header: Any, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _nested(depth: int) -> bytes:
    raw = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    return struct.pack("<Q", len(raw)) + raw


def fuzz_headers(header: Any, data: bytes) -> None:
    check_file(_header_file(header, data), ".safetensors")


def fuzz_header_bytes(data: bytes) -> None:
    check_file(data, ".safetensors")


def fuzz_probe(data: bytes) -> None:
    check_file(data)


def fuzz_scanner(data: bytes) -> None:
    # The scanner's own contract: the errors its callers catch (a corrupt pickle), nothing else.
    with contextlib.suppress(ValueError, EOFError, struct.error):
        scan_pickle(io.BytesIO(data))


_KWARGS = st.dictionaries(
    st.sampled_from(["image_size", "nc", "nz", "ngf", "ndf", "nef", "bogus"]),
    st.integers(-(2**70), 2**70) | st.integers(-2, 128) | st.sampled_from([8, 16, 64]) | _JSON,
    max_size=4,
)


def fuzz_registry_kwargs(arch: str, kwargs: dict[str, Any]) -> None:
    metadata = {"genaudit.arch": arch, "genaudit.arch_kwargs": json.dumps(kwargs)}
    path = _DIR / "registry.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    try:
        load_model(path)
    except GenauditError as exc:
        assert "\n" not in exc.message


_PROPERTIES: dict[str, tuple[Callable[..., None], tuple[Any, ...]]] = {
    "headers": (fuzz_headers, (_HEADERS, st.binary(max_size=64))),
    "header_bytes": (
        fuzz_header_bytes,
        (mutated([SAFETENSORS]) | st.binary(max_size=64).map(lambda b: SAFETENSORS[:8] + b),),
    ),
    "registry_kwargs": (
        fuzz_registry_kwargs,
        (st.sampled_from(["dcgan_generator", "dcgan_discriminator", "vae"]), _KWARGS),
    ),
    "pickle_files": (fuzz_probe, (mutated(PICKLES) | st.binary(max_size=128),)),
    "pickle_scanner": (fuzz_scanner, (mutated(PICKLES) | st.binary(max_size=128),)),
}


def _run(name: str, config: settings) -> None:
    prop, strategies = _PROPERTIES[name]
    config(given(*strategies)(prop))()


@pytest.mark.parametrize("name", sorted(_PROPERTIES))
def test_fuzz(name: str) -> None:
    _run(name, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_PROPERTIES))
def test_fuzz_slow(name: str) -> None:
    _run(name, SLOW)


@pytest.mark.parametrize("depth", [10, 5000, 200_000])
def test_deeply_nested_header(depth: int) -> None:
    check_file(_nested(depth), ".safetensors")


def test_the_seeds_are_valid() -> None:
    check_file(SAFETENSORS, ".safetensors")
    assert probe_format(_DIR / "fuzz.safetensors").format == "safetensors"
    for seed in PICKLES:
        if not seed.startswith(b"PK"):
            scan_pickle(io.BytesIO(seed))
        check_file(seed)

"""Builders of hostile checkpoints: pickles whose loading would run code (creating a marker file).

Pickles are written opcode by opcode, so that a gadget can name any global (even one from a module
the test process never imports) and need not be importable here. Every payload does one thing: it
creates ``marker``, a file inside the test's tmp_path.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

# torch.save's legacy (non-zip) format starts with this pickled magic number.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def touch_code(marker: Path) -> str:
    """Python source (a statement and an expression) that creates ``marker``."""
    return f"open({str(marker)!r}, 'w').close()"


def _arg(value: object) -> bytes:
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE
    if isinstance(value, bytes):
        return b"B" + struct.pack("<I", len(value)) + value  # BINBYTES (protocol 3)
    if isinstance(value, dict) and not value:
        return b"}"  # EMPTY_DICT
    raise TypeError(type(value))


def call(module: str, name: str, *args: object, stack_global: bool = False) -> bytes:
    """Opcodes that push ``module.name(*args)``: GLOBAL (or STACK_GLOBAL), args, REDUCE."""
    if stack_global:
        fn = _arg(module) + _arg(name) + b"\x93"  # STACK_GLOBAL (protocol 4)
    else:
        fn = b"c" + f"{module}\n{name}\n".encode()  # GLOBAL
    return fn + b"(" + b"".join(_arg(a) for a in args) + b"tR"  # MARK … TUPLE, REDUCE


def dumps(body: bytes, protocol: int = 3) -> bytes:
    """A whole pickle around ``body`` (opcodes that push one object)."""
    return b"\x80" + bytes([protocol]) + body + b"."


def in_state_dict(gadget: bytes) -> bytes:
    """Opcodes for ``{"weight": <inert string>, "evil": gadget}``: a gadget among the values."""
    return b"}" + b"(" + _arg("weight") + _arg("inert") + _arg("evil") + gadget + b"u"


# The payloads: (module, name, args) for a marker; each runs code when unpickled.
def payloads(marker: Path) -> dict[str, bytes]:
    code = touch_code(marker)
    return {
        "exec": call("builtins", "exec", code),
        "eval": call("builtins", "eval", code),
        "runpy": call("runpy", "_run_code", code, {}),
        "numpy-runstring": call("numpy.testing._private.utils", "runstring", code, {}),
        "os-system": call("os", "system", f"touch {marker}"),
        "stack-global-exec": call("builtins", "exec", code, stack_global=True),
        "file-handler": call("logging", "FileHandler", str(marker)),
        "nested-load": call("torch.storage", "_load_from_bytes", nested_torch_file(marker)),
    }


def nested_torch_file(marker: Path) -> bytes:
    """The bytes of a torch zip file whose pickle runs ``exec``: what a nested load would read."""
    return torch_zip_bytes(dumps(call("builtins", "exec", touch_code(marker)), protocol=2))


def torch_zip_bytes(data_pkl: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """A torch.save-style zip archive around ``data_pkl`` (plus ``extra`` members)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
    return buffer.getvalue()


def legacy_bytes(object_pkl: bytes) -> bytes:
    """A legacy (pre-zip) torch.save file whose object pickle is ``object_pkl``."""
    sys_info = {"protocol_version": 1001, "little_endian": True}
    return (
        pickle.dumps(LEGACY_MAGIC, protocol=2)
        + pickle.dumps(1001, protocol=2)
        + pickle.dumps(sys_info, protocol=2)
        + object_pkl
        + pickle.dumps([], protocol=2)
    )


def write_container(kind: str, gadget: bytes, path: Path) -> Path:
    """Write ``gadget`` (opcodes pushing one object) as a ``kind`` file at ``path``."""
    if kind == "raw-pickle":
        path.write_bytes(dumps(gadget))
    elif kind == "raw-pickle-in-dict":
        path.write_bytes(dumps(in_state_dict(gadget)))
    elif kind == "torch-zip":
        path.write_bytes(torch_zip_bytes(dumps(in_state_dict(gadget), protocol=2)))
    elif kind == "torch-legacy":
        path.write_bytes(legacy_bytes(dumps(in_state_dict(gadget), protocol=2)))
    else:
        raise ValueError(kind)
    return path


CONTAINERS = ("raw-pickle", "raw-pickle-in-dict", "torch-zip", "torch-legacy")

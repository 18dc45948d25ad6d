"""Static pickle scanning: the globals a pickle references, read without unpickling it.

``pickletools.genops`` walks the opcodes and nothing is imported or called, so a hostile file can
be named and refused before any loader touches it. :func:`inert_globals` is the allow-list of
globals that only rebuild tensors and containers (torch's weights-only unpickler's own list):
whatever else a scan finds is *suspicious*. :func:`is_module_like` tells a whole pickled
``nn.Module`` apart from a state dict saved next to other objects.

For ``--allow-global``: :data:`INERT_CLASSES` lists the few data classes known to be inert (the only
names a refusal's hint ever suggests, and the only modules imported on purpose to resolve one), and
:func:`is_denied_module` the modules whose members are never allowed, whatever they are.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any

__all__ = [
    "DENIED_MODULES",
    "INERT_CLASSES",
    "PickleScan",
    "inert_globals",
    "is_denied_module",
    "is_module_like",
    "scan_pickle",
]


@dataclass(frozen=True)
class PickleScan:
    """What a pickle references, as the static scan found it."""

    globals: frozenset[str]  # every global referenced, as "module.qualname"
    strings: frozenset[str]  # every string literal pushed (to spot nn.Module.__dict__ keys)


class _Unknown:
    """Stack placeholder for values the static scan does not track."""


_UNKNOWN = _Unknown()
_MARK = object()
_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
    }
)


def _normalise_global(module: str, name: str) -> str:
    # The same Python-2 name mapping torch's weights-only unpickler applies.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def scan_pickle(stream: IO[bytes]) -> PickleScan:
    """Globals and strings of the next pickle in ``stream``, read without unpickling.

    A small stack machine follows string pushes and the memo, so that ``STACK_GLOBAL`` (whose
    module and name are strings pushed earlier, possibly fetched back from the memo) resolves
    to a name. A ``STACK_GLOBAL`` of anything else is reported as an unresolvable global.
    """
    stack: list[object] = []
    memo: dict[Any, object] = {}
    found: set[str] = set()
    strings: set[str] = set()

    def pop() -> object:
        return stack.pop() if stack else _UNKNOWN

    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in _STRING_OPS:
            text = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
            strings.add(text)
            stack.append(text)
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else _UNKNOWN
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _UNKNOWN
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, _UNKNOWN))
            continue
        if name == "DUP":
            stack.append(stack[-1] if stack else _UNKNOWN)
            continue
        if name == "STACK_GLOBAL":
            qualname, module = pop(), pop()
            if isinstance(module, str) and isinstance(qualname, str):
                found.add(_normalise_global(module, qualname))
            else:
                found.add("<STACK_GLOBAL with a computed name>")
            stack.append(_UNKNOWN)
            continue
        if name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            found.add(_normalise_global(module, qualname))
        elif name in ("EXT1", "EXT2", "EXT4"):
            found.add(f"<copyreg extension code {arg}>")
        # Generic stack effect from pickletools' opcode table.
        before = op.stack_before
        if pickletools.markobject in before:
            while stack and stack[-1] is not _MARK:
                stack.pop()
            if stack:
                stack.pop()
            for _ in range(before.index(pickletools.markobject)):
                pop()
        else:
            for _ in before:
                pop()
        for item in op.stack_after:
            stack.append(_MARK if item is pickletools.markobject else _UNKNOWN)
    return PickleScan(frozenset(found), frozenset(strings))


@lru_cache(maxsize=1)
def inert_globals() -> frozenset[str]:
    """The globals torch's weights-only unpickler accepts by default (tensor rebuild functions,
    storage and dtype types, OrderedDict, torch.Size, torch.device …)."""
    try:
        from torch import _weights_only_unpickler

        return frozenset(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):  # private API: keep a core list if it moves
        return frozenset(
            {
                "collections.OrderedDict",
                "torch._utils._rebuild_tensor_v2",
                "torch._utils._rebuild_parameter",
                "torch._utils._rebuild_parameter_with_state",
                "torch.nn.parameter.Parameter",
                "torch.Size",
                "torch.device",
                "torch.FloatStorage",
                "torch.DoubleStorage",
                "torch.HalfStorage",
                "torch.BFloat16Storage",
                "torch.LongStorage",
                "torch.IntStorage",
                "torch.BoolStorage",
                "torch.ByteStorage",
                "torch.storage.UntypedStorage",
            }
        )


def is_module_like(scan: PickleScan, suspicious: frozenset[str]) -> bool:
    """Whether a pickle holds a whole nn.Module: it references torch.nn module classes, or
    references other classes and carries nn.Module's own attribute names."""
    if any(g.startswith("torch.nn.") for g in suspicious):
        return True
    return bool(suspicious) and {"_modules", "_parameters"} <= scan.strings


# Data classes whose construction and __setstate__ run no code chosen by the file: they only store
# the values given. Checked by hand (tests/hostile/test_allow_global.py keeps them honest).
# datetime.datetime/date are absent on purpose: they pickle through the function _codecs.encode.
INERT_CLASSES = frozenset(
    {
        "argparse.Namespace",
        "collections.OrderedDict",
        "datetime.timedelta",
        "numpy.dtype",
        "torch.Size",
        "types.SimpleNamespace",
    }
)

# Modules (and everything under them) whose members are never allowed with --allow-global: they
# execute or compile code, import modules, touch files, processes, threads, signals or the
# network, or load serialized objects. Matched by dotted prefix, against the full dotted name the
# user wrote and the class's own module.qualname (numpy.memmap lives in numpy).
DENIED_MODULES = (
    # execution, compilation, importing, introspection
    "builtins",
    "__builtin__",
    "__main__",
    "sys",
    "runpy",
    "importlib",
    "imp",
    "zipimport",
    "pkgutil",
    "site",
    "sysconfig",
    "code",
    "codeop",
    "compileall",
    "py_compile",
    "ast",
    "dis",
    "inspect",
    "types",
    "typing",
    "functools",
    "operator",
    "copyreg",
    "copy",
    "abc",
    "gc",
    "weakref",
    "atexit",
    "contextlib",
    "timeit",
    "trace",
    "traceback",
    "tracemalloc",
    "pdb",
    "bdb",
    "profile",
    "cProfile",
    "pydoc",
    "doctest",
    "unittest",
    "warnings",
    "faulthandler",
    "linecache",
    "tokenize",
    "ctypes",
    "_ctypes",
    "cffi",
    # serialization that can itself run code
    "pickle",
    "_pickle",
    "pickletools",
    "marshal",
    "shelve",
    "dbm",
    "dill",
    "cloudpickle",
    "joblib",
    "yaml",
    "jsonpickle",
    # files, processes, terminals, threads, signals
    "os",
    "posix",
    "nt",
    "posixpath",
    "ntpath",
    "genericpath",
    "subprocess",
    "_posixsubprocess",
    "pty",
    "tty",
    "termios",
    "fcntl",
    "resource",
    "mmap",
    "select",
    "selectors",
    "signal",
    "_signal",
    "shutil",
    "pathlib",
    "io",
    "_io",
    "tempfile",
    "glob",
    "fileinput",
    "filecmp",
    "zipfile",
    "tarfile",
    "gzip",
    "bz2",
    "lzma",
    "zlib",
    "sqlite3",
    "_sqlite3",
    "mailbox",
    "mimetypes",
    "netrc",
    "configparser",
    "logging",
    "threading",
    "_thread",
    "multiprocessing",
    "_multiprocessing",
    "concurrent",
    "asyncio",
    "sched",
    "queue",
    "platform",
    "webbrowser",
    "venv",
    "ensurepip",
    "distutils",
    "setuptools",
    "pip",
    "xml",
    "_winapi",
    "winreg",
    "msvcrt",
    # network
    "socket",
    "_socket",
    "ssl",
    "_ssl",
    "http",
    "urllib",
    "urllib3",
    "requests",
    "ftplib",
    "poplib",
    "imaplib",
    "smtplib",
    "telnetlib",
    "socketserver",
    "xmlrpc",
    "wsgiref",
    "email",
    "uuid",
    # libraries whose classes open files or hold program state (safe_open, PdfPages …)
    "genaudit",
    "safetensors",
    "rich",
    "typer",
    "click",
    "PIL",
    "matplotlib",
    "h5py",
    "scipy.io",
    "fsspec",
    "huggingface_hub",
    "transformers",
    "datasets",
    "pytest",
    "_pytest",
    "hypothesis",
    "IPython",
    "tqdm",
    "lightning",
    "pytorch_lightning",
    "tensorboard",
    "wandb",
    "mlflow",
    # torch: loaders, compilers, op registration, processes, files and hubs
    "torch.storage",
    "torch.serialization",
    "torch._C",
    "torch._ops",
    "torch.ops",
    "torch._library",
    "torch.library",
    "torch.jit",
    "torch._jit_internal",
    "torch.package",
    "torch.export",
    "torch._export",
    "torch.fx",
    "torch._dynamo",
    "torch._inductor",
    "torch.compiler",
    "torch._higher_order_ops",
    "torch.hub",
    "torch.utils",
    "torch.multiprocessing",
    "torch.distributed",
    "torch.cuda",
    "torch.backends",
    "torch.profiler",
    "torch.autograd",
    "torch.onnx",
    "torch._weights_only_unpickler",
    "torch._utils",
    "torch._tensor",
    "torch.nn",
    "torch.UntypedStorage",
    "torch.TypedStorage",
    # numpy: loaders, test helpers that exec, compilers, ctypes glue
    "numpy.testing",
    "numpy.lib.npyio",
    "numpy.lib._npyio_impl",
    "numpy.lib.format",
    "numpy.lib._format_impl",
    "numpy.lib._datasource",
    "numpy.ctypeslib",
    "numpy.f2py",
    "numpy.distutils",
    "numpy._pytesttester",
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.memmap",
    "numpy.DataSource",
    "numpy.lib.utils",
)


def is_denied_module(name: str) -> bool:
    """Whether the dotted ``name`` (a module, or ``module.Qual.Name``) is one of
    :data:`DENIED_MODULES` or lies under one."""
    return any(name == d or name.startswith(d + ".") for d in DENIED_MODULES)

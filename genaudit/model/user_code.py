"""User code named by an option (a module or a .py file): imported, called, failures located."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import (
    ArchitectureError,
    GenauditError,
    InvalidInputError,
    ModelInputError,
    UsageError,
    first_line,
    option,
)

_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_ALIAS = "_genaudit_user_"  # prefix of the module names that files are imported under
_COUNTER = itertools.count()
# modules genaudit imported from a user's folder: dropped before the next user import, so
# that code edited between two loads in one process (tests, notebooks) is read again
_LOADED: set[str] = set()
_OURS = Path(__file__).resolve().parents[1]  # genaudit's own package folder


@dataclass(frozen=True)
class UserSpec:
    """``pkg.module:name`` or ``path/to/file.py:name``, split."""

    text: str
    target: str  # a dotted module name, or a file path
    attr: str
    is_file: bool


def is_user_spec(text: str) -> bool:
    """Whether ``--arch`` names user code (has a colon, or is a .py file) rather than a name."""
    return ":" in text or text.endswith(".py")


def parse_spec(spec: str, option_name: str) -> UserSpec:
    """Split at the last colon; the part before it is a file when it ends in ``.py`` or holds a
    path separator, else a dotted module name."""
    target, sep, attr = spec.rpartition(":")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if not sep or not target or not _NAME.match(attr) or not (is_file or _NAME.match(target)):
        raise UsageError(
            f"{option(option_name)} {spec!r} is not of the form pkg.module:name or "
            "path/to/file.py:name",
            "name the callable after the last colon, e.g. models.py:Generator",
        )
    return UserSpec(spec, target, attr, is_file)


def _error_class(option_name: str) -> type[InvalidInputError]:
    return ModelInputError if option_name == "sampler" else ArchitectureError


@contextlib.contextmanager
def importable(folder: Path | None) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while user code is imported or runs, then removed."""
    entry = None if folder is None else str(folder)
    added = entry is not None and entry not in sys.path
    if added:
        sys.path.insert(0, str(entry))
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(entry))


def _excluded_roots() -> tuple[Path, ...]:
    torch = sys.modules.get("torch")
    torch_file = getattr(torch, "__file__", None)
    return (_OURS,) + ((Path(torch_file).resolve().parent,) if torch_file else ())


def _within(path: Path, root: Path) -> bool:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    return not {"site-packages", "dist-packages"} & set(rel.parts)


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    with contextlib.suppress(ValueError, OSError):
        return str(path.relative_to(Path.cwd().resolve()))
    return str(path)


def where_raised(exc: BaseException, roots: tuple[Path, ...]) -> str | None:
    """``file:line`` of the innermost frame of ``exc``'s traceback inside ``roots`` (the user's
    file, folder or package), skipping genaudit's and torch's own frames; None when none is."""
    excluded = _excluded_roots()
    places = [(f.filename, f.lineno) for f in traceback.extract_tb(exc.__traceback__)]
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        places.append((exc.filename, exc.lineno))
    found = None
    for filename, line in places:
        if filename.startswith("<"):
            continue
        path = Path(filename).resolve()
        inside = any(_within(path, r) for r in roots)
        if inside and not any(_within(path, r) for r in excluded):
            found = f"{_shown(path)}:{line}"
    return found


def _is_ours(exc: BaseException) -> bool:
    """Exceptions that are not a failure of the user's code: interruptions, genaudit's own."""
    if isinstance(exc, KeyboardInterrupt | GeneratorExit | GenauditError):
        return True
    return type(exc).__module__.split(".")[0] == "genaudit"


def _hint(exc: BaseException, phase: str, option_name: str) -> str:
    text = str(exc)
    if "CUDA" in text and "deserialize" in text:
        return (
            "that code loads CUDA tensors where there is no CUDA: give its torch.load "
            "map_location='cpu', or run on a machine with a GPU"
        )
    if isinstance(exc, SystemExit):
        return (
            "the code calls sys.exit (a script's command line?): keep that under "
            "if __name__ == '__main__': so that importing or calling it does not run it"
        )
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (
            f"install {exc.name!r} here, or, if it is your own module, keep it next to the "
            f"file that {option(option_name)} names"
        )
    if phase == "call" and option_name == "arch":
        return (
            f"fix the code there, or check {option('arch_kwargs')} / {option('arch_config')} "
            "against the factory's signature"
        )
    if phase == "call" and option_name == "sampler":
        return "it is called as fn(batch_size, generator, device) and returns a tensor or a tuple"
    return f"fix the code there ({option('debug')} shows the whole traceback)"


@dataclass(frozen=True)
class UserCallable:
    """A callable from the user's code. Calling it runs it with its folder importable; whatever
    it raises (``SystemExit`` too, not ``KeyboardInterrupt``) becomes an exit-3 error that
    names the file and line where it was raised."""

    spec: str
    option_name: str
    obj: Callable[..., Any]
    roots: tuple[Path, ...]
    folder: Path | None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with importable(self.folder):
            try:
                return self.obj(*args, **kwargs)
            except BaseException as exc:
                if _is_ours(exc):
                    raise
                raise failure(exc, self.spec, self.option_name, self.roots, "call") from exc


def failure(
    exc: BaseException, spec: str, option_name: str, roots: tuple[Path, ...], phase: str
) -> InvalidInputError:
    """The one-line error for user code that raised ``exc`` while being imported or called."""
    where = where_raised(exc, roots)
    stage = " on import" if phase == "import" else ""
    at = f" at {where}" if where else ""
    return _error_class(option_name)(
        f"{option(option_name)} {spec} failed{stage}{at} ({type(exc).__name__}: {first_line(exc)})",
        _hint(exc, phase, option_name),
    )


def _forget_loaded() -> None:
    for name in _LOADED:
        sys.modules.pop(name, None)
    _LOADED.clear()


def _remember_new(before: set[str], folder: Path) -> None:
    """Record the modules an import added from ``folder`` (not genaudit's or torch's)."""
    excluded = _excluded_roots()
    for name in set(sys.modules) - before:
        file = getattr(sys.modules.get(name), "__file__", None)
        if name.startswith(_ALIAS) or (
            file
            and _within(path := Path(file).resolve(), folder)
            and not any(_within(path, r) for r in excluded)
        ):
            _LOADED.add(name)


def _exec_file(name: str, path: Path, package_dir: Path | None = None) -> ModuleType:
    locations = [str(package_dir)] if package_dir is not None else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:  # a .py path always has a source loader
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_file(path: Path) -> tuple[ModuleType, Path, Path]:
    """Import a .py file; returns (module, folder put on sys.path, root of the user's code).

    A file in a package folder (``__init__.py``) is imported as a submodule of its package, so
    that its relative imports work: under the package's own name unless another module of that
    name is already imported, else under a unique alias. A lone file gets a unique name; its
    folder is importable for its sibling modules either way.
    """
    top = None
    d = path.parent
    while (d / "__init__.py").is_file():
        top, d = d, d.parent
    if top is None:
        return _exec_file(f"{_ALIAS}{next(_COUNTER)}_{path.stem}", path), path.parent, path.parent
    name = top.name
    if not name.isidentifier() or name in sys.modules:
        name = f"{_ALIAS}{next(_COUNTER)}_{top.name}"
    package = _exec_file(name, top / "__init__.py", top)
    parts = path.relative_to(top).with_suffix("").parts
    if parts == ("__init__",):
        return package, top.parent, top
    return importlib.import_module(".".join((name, *parts))), top.parent, top


def _module_roots(module_name: str) -> tuple[Path, ...]:
    """Where a module's code lives (its top-level package folder or its file), found without
    running it."""
    try:
        found = importlib.util.find_spec(module_name.split(".")[0])
    except (ImportError, ValueError):
        return ()
    if found is None:
        return ()
    if found.submodule_search_locations:
        return tuple(Path(p).resolve() for p in found.submodule_search_locations)
    if found.origin and os.path.isfile(found.origin):
        file = Path(found.origin).resolve()  # a lone module: its sibling modules are the user's
        installed = {"site-packages", "dist-packages"} & set(file.parent.parts)
        return (file,) if installed else (file.parent,)
    return ()


def load_user_object(spec: str, option_name: str) -> UserCallable:
    """Import ``pkg.module:attr`` or ``path/to/file.py:attr`` that the user named with the
    option ``option_name`` (``"arch"``, ``"sampler"``), without installing anything.

    A module is looked up with the current folder importable (as ``python -m`` does); a file is
    imported with its folder importable (its sibling modules, and relative imports inside a
    package). Any exception its import raises is reported with the file and line it came from.
    """
    parsed = parse_spec(spec, option_name)
    error = _error_class(option_name)
    what = f"{option(option_name)} {spec}"
    importlib.invalidate_caches()
    if parsed.is_file:
        path = Path(parsed.target)
        if not path.is_file():
            raise error(
                f"{what}: {parsed.target} {'is not a file' if path.exists() else 'does not exist'}",
                "give the path of a .py file, relative to the current folder or absolute",
            )
        path = path.resolve()
        folder: Path | None = path.parent
        roots: tuple[Path, ...] = (path.parent,)
        _forget_loaded()
        before = set(sys.modules)
        try:
            with importable(path.parent):
                module, folder, root = _import_file(path)
                roots = (root,)
        except BaseException as exc:
            if _is_ours(exc):
                raise
            raise failure(exc, spec, option_name, roots, "import") from exc
        finally:
            _remember_new(before, path.parent if folder is None else folder)
    else:
        folder = None if "" in sys.path else Path.cwd()
        with importable(folder):
            roots = _module_roots(parsed.target)
            try:
                module = importlib.import_module(parsed.target)
            except BaseException as exc:
                if _is_ours(exc):
                    raise
                name = getattr(exc, "name", None)
                if (
                    isinstance(exc, ModuleNotFoundError)
                    and name
                    and (parsed.target == name or parsed.target.startswith(name + "."))
                ):
                    raise error(
                        f"cannot import {parsed.target!r} for {what}: {exc}",
                        "make sure the module is importable (installed, or on PYTHONPATH / the "
                        "current folder), or name a file: path/to/file.py:name",
                    ) from None
                raise failure(exc, spec, option_name, roots, "import") from exc
    obj: Any = module
    for part in parsed.attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{parsed.target!r} has no attribute {parsed.attr!r} ({what})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{what} is not callable")
    return UserCallable(spec, option_name, obj, roots, folder)


# --------------------------------------------------------------------------- configuration


class AttrConfig(dict[str, Any]):
    """A JSON object with attribute and item access, recursively (``h.upsample_rates``,
    ``h["resblock"]``): what a factory that takes one configuration object expects."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        super().__init__({k: _wrap(v) for k, v in (data or {}).items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = _wrap(value)

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, AttrConfig):
        return AttrConfig(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def read_arch_config(path: str | Path, what: str = option("arch_config")) -> dict[str, Any]:
    """A JSON object read from ``path`` (``--arch-config``); a usage error names the file and,
    for invalid JSON, the line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{what} {path}: cannot read it ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            "fix the file: one JSON object, double-quoted keys, no trailing commas",
        ) from None
    except RecursionError:
        raise UsageError(f"{what} {path} is nested too deeply") from None
    if not isinstance(value, dict):
        raise UsageError(
            f"{what} {path} holds a JSON {type(value).__name__}, not an object",
            'write one JSON object, e.g. {"upsample_rates": [8, 8, 2, 2]}',
        )
    return value


# --------------------------------------------------------------------------- forward inputs


def missing_inputs(model: Any, fed: int) -> tuple[str, str] | None:
    """When ``model.forward`` requires more positional inputs than the ``fed`` ones: a message
    naming the missing parameters and a hint naming the options that feed them, else None."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    positional = [p for p in params if p.kind in kinds]
    required = [p.name for p in positional if p.default is inspect.Parameter.empty]
    if len(required) <= fed:
        return None
    missing = ", ".join(f"`{name}`" for name in required[fed:])
    verb = "is" if len(required) - fed == 1 else "are"
    message = (
        f"forward({', '.join(p.name for p in positional)}) got {fed} "
        f"input{'s' if fed != 1 else ''}; {missing} {verb} missing"
    )
    hint = (
        f"class labels: {option('num_classes')} K with {option('label_format')} int|onehot; "
        f"any inputs: one {option('latents')} FILE per input (repeat it), or a "
        f"{option('sampler')} that returns a tuple of {len(required)} tensors"
    )
    return message, hint

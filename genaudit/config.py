"""Configuration: frozen dataclasses, the only home of defaults; reads ``[tool.genaudit]``.

Sources, lowest priority first: built-in defaults, ``[tool.genaudit]`` in ``pyproject.toml`` or
a ``genaudit.toml`` (top level or under ``tool.genaudit``) in the current folder, or the file
given with ``--config``; command-line flags win over all of them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import UsageError, first_line, option
from .values import MAX_SEED


def _toml() -> Any:
    """tomllib, imported when a file is read (not at start-up: ``--help`` never reads one)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


# A pair is generic when |log10 SDR| <= this.
DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class Settings:
    """Every effective setting of a run; serialised into JSON reports."""

    seed: int = 0
    device: str = "auto"
    batch_size: int = 64
    num_samples: int = 512
    levels: Mapping[str, str] = field(default_factory=dict)
    config_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (dict(v) if isinstance(v := getattr(self, f.name), Mapping) else v)
            for f in fields(self)
        }

    def with_flags(self, **flags: Any) -> Settings:
        """Command-line flags (None means 'not given') win over the file and the defaults."""
        given = {k: v for k, v in flags.items() if v is not None}
        settings = replace(self, **given)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.num_samples < 1:
            raise UsageError(f"number of samples must be at least 1 (got {self.num_samples})")
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"the seed must be an integer from 0 to 2**64 - 1 (got {self.seed})")


_SCALARS: dict[str, type] = {"seed": int, "device": str, "batch_size": int, "num_samples": int}
# Sections that later commands read; accepted here so that one file serves every command.
_SECTIONS = {"levels", "sdr", "stretch", "check"}


def find_config_file(cwd: Path | None = None) -> Path | None:
    """``genaudit.toml`` in ``cwd``, else a ``pyproject.toml`` there with ``[tool.genaudit]``.

    A ``pyproject.toml`` that cannot be parsed is an error (exit 2), whatever it holds: its
    ``[tool.genaudit]`` table, if any, cannot be told apart from a file without one, and
    checking with the default rules in place of the user's would pass a gate that should fail.
    A valid one without ``[tool.genaudit]`` is ignored.
    """
    cwd = cwd or Path.cwd()
    own = cwd / "genaudit.toml"
    if own.is_file():
        return own
    py = cwd / "pyproject.toml"
    if py.is_file():
        data = _parse(py, shown="pyproject.toml" if cwd == Path.cwd() else str(py))
        tool = data.get("tool", {})
        if isinstance(tool, dict) and "genaudit" in tool:
            return py
    return None


def _parse(path: Path, shown: str | None = None) -> dict[str, Any]:
    """The TOML document in ``path``; UsageError (exit 2) naming the file and, where the parser
    says it, the line and column, when it cannot be read or parsed."""
    shown = shown or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"configuration file {shown} is not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot read configuration file {shown}: {reason}") from None
    try:
        data: dict[str, Any] = _toml().loads(text)
    except _toml().TOMLDecodeError as exc:
        raise UsageError(
            f"configuration file {shown} is not valid TOML: {first_line(exc)}",
            f"fix it, or name another configuration file with {option('config')}"
            if path.name == "pyproject.toml"
            else None,
        ) from None
    except RecursionError:
        raise UsageError(f"configuration file {shown} is nested too deeply") from None
    return data


def read_table(path: Path) -> dict[str, Any]:
    """The genaudit table of a config file (``[tool.genaudit]`` or, in genaudit.toml, top level)."""
    if not path.is_file():
        if path.exists():
            raise UsageError(f"configuration file {path} is not a file")
        raise UsageError(f"configuration file {path} does not exist")
    data = _parse(path)
    tool = data.get("tool", {})
    if isinstance(tool, dict) and "genaudit" in tool:
        table = tool["genaudit"]
    elif path.name == "pyproject.toml":
        table = {}
    else:
        table = {k: v for k, v in data.items() if k != "tool"}
    if not isinstance(table, dict):
        raise UsageError(f"[tool.genaudit] in {path} must be a table")
    return table


def load_settings(
    config: str | Path | None = None, cwd: Path | None = None
) -> tuple[Settings, dict[str, Any]]:
    """Settings from the configuration file (if any) over the defaults, and the raw table.

    The raw table carries the sections that individual commands read (``sdr``, ``check`` …).
    """
    path = Path(config) if config else find_config_file(cwd)
    if path is None:
        return Settings(), {}
    table = read_table(path)
    check_keys(table, [*_SCALARS, *_SECTIONS], str(path))
    values: dict[str, Any] = {"config_file": str(path)}
    for key, kind in _SCALARS.items():
        if key in table:
            if not isinstance(table[key], kind) or isinstance(table[key], bool):
                raise UsageError(f"{key} in {path} must be {kind.__name__}, got {table[key]!r}")
            values[key] = table[key]
    levels = table.get("levels", {})
    if not isinstance(levels, dict) or not all(isinstance(v, str) for v in levels.values()):
        raise UsageError(f"[levels] in {path} must map layer names or globs to level names")
    values["levels"] = dict(levels)
    settings = Settings(**values)
    settings.validate()
    return settings, table


def check_keys(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Refuse (exit 2) keys of a configuration table that genaudit does not know, naming them
    and the valid ones: a misspelled key must never be ignored silently."""
    allowed = sorted(valid)
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UsageError(
            f"unknown key(s) in {where}: {', '.join(map(str, unknown))}",
            f"valid keys: {', '.join(allowed)}",
        )

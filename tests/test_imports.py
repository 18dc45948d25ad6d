"""Every module imports in this environment, and imports only what pyproject.toml declares.

CI runs the test suite in a fresh virtual environment made from pyproject.toml alone, so the
first test fails there when a module imports a package that nothing installs. The second test
reads every import statement of the package and maps it to the distribution that provides it,
so an undeclared dependency fails even on a machine where it happens to be installed (the way
the standalone ``click`` once was).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import genaudit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(genaudit.__file__).parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def all_modules() -> list[str]:
    found = pkgutil.walk_packages([str(PACKAGE)], prefix="genaudit.")
    return ["genaudit", *sorted(m.name for m in found)]


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    modules = all_modules()
    assert "genaudit.cli.root" in modules and "genaudit.analysis.sdr" in modules
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    res = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _requirement_names(specs: list[str]) -> set[str]:
    return {_normalise(re.split(r"[\s<>=!~;\[]", s, maxsplit=1)[0]) for s in specs}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    """Distribution names: required, and required or optional (extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = _requirement_names(project["dependencies"])
    optional = {n for extra in project["optional-dependencies"].values()
                for n in _requirement_names(extra)}  # fmt: skip
    return required, required | optional


def imported_top_level_names() -> dict[str, list[str]]:
    """Top-level module names imported anywhere in the package (absolute imports only)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared() -> None:
    required, allowed = declared()
    assert "torch" in required and "typer" in required and "click" not in allowed
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for top, where in imported_top_level_names().items():
        if top in sys.stdlib_module_names or top in ("genaudit", "__future__"):
            continue
        dists = {_normalise(d) for d in providers.get(top, [])}
        if not dists & allowed:
            undeclared[top] = sorted(set(where))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_check_catches_an_undeclared_import(tmp_path: Path, monkeypatch) -> None:
    """The static check is not vacuous: a module importing click would be reported."""
    fake = tmp_path / "genaudit"
    fake.mkdir()
    (fake / "uses_click.py").write_text("import click\nfrom yaml import safe_load\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = imported_top_level_names()
    assert set(found) == {"click", "yaml"}
    with pytest.raises(AssertionError, match="click"):
        test_every_imported_package_is_declared()


def test_command_line_imports_no_standalone_click() -> None:
    res = subprocess.run(
        [sys.executable, "-c", "import sys, genaudit.cli.root; print('click' in sys.modules)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


LIGHT = ["genaudit", "genaudit.cli", "genaudit.model.levels", "genaudit.values", "genaudit.gate",
         "genaudit.analysis.compare", "genaudit.report.tables", "genaudit.model",
         "genaudit.io", "genaudit.analysis", "genaudit.report"]  # fmt: skip


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_importlib_finds_the_entry_point() -> None:
    eps = importlib.metadata.entry_points(group="console_scripts")
    (ep,) = [e for e in eps if e.name == "genaudit"]
    assert ep.value == "genaudit.cli:main"
    assert callable(ep.load())

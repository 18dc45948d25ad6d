"""The shape of the package: no import cycles, no reaching into other modules' private names,
domain code that never prints, modules of a readable size, and a project that cites nothing a
user of it does not have."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "genaudit"
MAX_LINES = 560  # "a few hundred lines": one sitting's reading


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(node: ast.ImportFrom, module: str, path: Path) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test) if test else False


def module_level_imports(path: Path, module: str) -> set[str]:
    """genaudit modules imported when ``module`` is imported (not inside functions, not for
    type checking only)."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if _type_checking_block(node):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("genaudit"))
            elif isinstance(node, ast.ImportFrom):
                target = resolve(node, module, path)
                if not target.startswith("genaudit"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in MODULES else target)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for part in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, part, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    found.discard(module)
    return found


def test_no_import_cycles() -> None:
    graph = {m: module_level_imports(p, m) & set(MODULES) for m, p in MODULES.items()}
    # a package's __init__ runs before its submodules: importing a submodule imports its parents
    for m in list(graph):
        parts = m.split(".")
        for k in range(1, len(parts)):
            parent = ".".join(parts[:k])
            if parent in graph and parent != m:
                graph[m].add(parent)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and nxt not in node.split("."):
                cycles.append([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                dfs(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    # ignore "cycles" that are only a submodule and one of its own parent packages
    real = [c for c in cycles if not all(x.startswith(c[-1]) or c[-1].startswith(x) for x in c)]
    assert not real, f"import cycles: {real}"


def private_reach_ins() -> list[str]:
    """``from x import _name`` and ``module._name`` across genaudit modules."""
    bad = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = resolve(node, module, path)
                if not target.startswith("genaudit") or target == module:
                    continue
                for alias in node.names:
                    if f"{target}.{alias.name}" in MODULES:
                        module_aliases.add(alias.asname or alias.name)
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        bad.append(f"{module}: from {target} import {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("genaudit"):
                        module_aliases.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{module}: {node.value.id}.{node.attr}")
    return bad


def test_no_module_uses_another_modules_private_names() -> None:
    assert not private_reach_ins()


def test_the_private_name_check_can_fail(tmp_path: Path) -> None:
    pkg = tmp_path / "genaudit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _helper():\n    return 1\n")
    (pkg / "b.py").write_text("from .a import _helper\nfrom . import a\nx = a._helper()\n")
    fake = {module_name_in(tmp_path, p): p for p in sorted(pkg.rglob("*.py"))}
    globals()["MODULES"] = fake
    try:
        assert private_reach_ins() == ["genaudit.b: from genaudit.a import _helper",
                                       "genaudit.b: a._helper"]  # fmt: skip
    finally:
        globals()["MODULES"] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_domain_code_never_prints() -> None:
    """Only the command line writes to the terminal; analyses, loaders and reports return."""
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("genaudit.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name == "print" or re.fullmatch(r"sys\.(stdout|stderr)\.write", name):
                    offenders.append(f"{module}:{node.lineno}: {name}")
    assert not offenders


def test_modules_are_small() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


# What a user of the package does not have: the team's internal notes, issue numbers.
_NOT_SHIPPED = [
    "DES" + "IGN §",
    "DES" + "IGN.md",
    "STY" + "LE.md",
    "../" + "shared",
    "STY" + "LE:",
]
_ISSUE = re.compile(r"\bissues? #\d+|\(#\d+\)", re.IGNORECASE)


def test_the_project_cites_only_what_it_ships() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    files = [ROOT / f for f in tracked.stdout.split()] if tracked.returncode == 0 else []
    if not files:  # not a git checkout (an unpacked source distribution)
        files = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    found = []
    for path in files:
        if (
            path.suffix not in {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ""}
            or not path.is_file()
        ):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if any(word in line for word in _NOT_SHIPPED) or _ISSUE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    assert not found, "references to documents outside the repository:\n" + "\n".join(found)


_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
# Strings that record where something came from in a report, not advice to the user: the gate
# stores "--rule" as the source of rules given on the command line (a JSON field).
_FLAG_DATA = {"--rule"}


def flag_mentions() -> list[str]:
    """String literals below the command line that spell a command-line flag (docstrings and
    comments aside): messages name options through ``genaudit.errors.option``."""
    found = []
    for module, path in MODULES.items():
        if module.startswith("genaudit.cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) in docstrings:
                    continue
                for flag in _FLAG.findall(node.value):
                    if node.value.strip() not in _FLAG_DATA:
                        found.append(f"{module}:{node.lineno}: {flag}")
    return found


def test_domain_code_names_options_not_flags() -> None:
    assert not flag_mentions()


def test_errors_phrase_options_for_the_command_line_and_the_api() -> None:
    from genaudit.errors import UsageError, option

    exc = UsageError(f"{option('arch_kwargs')} is not JSON", f"see {option('arch')} too")
    assert exc.options == ("arch_kwargs", "arch")
    assert exc.lines() == ["--arch-kwargs is not JSON", "see --arch too"]
    assert exc.lines("api") == ["arch_kwargs= is not JSON", "see arch= too"]
    assert str(exc) == exc.message == "--arch-kwargs is not JSON"

"""The README's example outputs are what the commands print today, and its commands work.

Each ```` ```console ```` block of README.md starts with ``$ genaudit …``; the rest of the block
is what that command prints on stdout (lines stripped on the right), run from the repository
root with the default 120-column piped width. ``GENAUDIT_UPDATE_README=1`` rewrites the blocks
from the current output instead of comparing.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from genaudit.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"```console\n\$ (genaudit [^\n]*)\n(.*?)```", re.S)
UPDATE = os.environ.get("GENAUDIT_UPDATE_README") == "1"


def examples() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def run_example(command: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("COLUMNS", raising=False)
    args = shlex.split(command)[1:]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{command}: {result.output}"
    return "".join(line.rstrip() + "\n" for line in result.stdout.splitlines())


def test_the_readme_has_examples_of_every_analysis() -> None:
    commands = [c.split()[1] for c, _ in examples()]
    assert {"layers", "sdr", "stretch", "compare", "check"} <= set(commands)


@pytest.mark.parametrize("command", [c for c, _ in examples()])
def test_readme_example_output_is_current(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    printed = run_example(command, monkeypatch)
    if UPDATE:
        text = README.read_text(encoding="utf-8")
        text = BLOCK.sub(
            lambda m: f"```console\n$ {m.group(1)}\n{printed}```" if m.group(1) == command
            else m.group(0),
            text,
        )  # fmt: skip
        README.write_text(text, encoding="utf-8")
        return
    shown = dict(examples())[command]
    assert shown == printed, (
        f"README.md's output of `{command}` is out of date; "
        "regenerate with GENAUDIT_UPDATE_README=1 python -m pytest tests/test_readme.py"
    )


def test_first_commands_of_the_readme() -> None:
    """The install-and-run and install-and-test commands, as CI runs the second one."""
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first_block[0] == (
        'python3 -m pip install "torch==2.13.0" -e . && '
        "genaudit sdr fixtures/dcgan64_generator.safetensors"
    )
    assert (
        first_block[1] == 'python3 -m pip install "torch==2.13.0" -e ".[dev]" && python3 -m pytest'
    )
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "sed -n 2p" in ci and "eval" in ci  # CI evaluates exactly that second line


def module_summaries() -> str:
    """One line per module of the package: its path and the first paragraph of its docstring."""
    import ast

    lines = []
    for path in sorted((ROOT / "genaudit").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ").strip()
        lines.append(f"- `{path.relative_to(ROOT / 'genaudit').as_posix()}`: {summary}")
    return "\n".join(lines) + "\n"


def test_readme_lists_every_module_with_its_summary() -> None:
    text = README.read_text(encoding="utf-8")
    head, _, listed = text.partition("by `tests/test_readme.py`):\n\n")
    assert listed, "README.md has no layout section"
    if UPDATE:
        README.write_text(head + "by `tests/test_readme.py`):\n\n" + module_summaries())
        return
    assert listed == module_summaries(), (
        "README.md's layout section is out of date; regenerate with "
        "GENAUDIT_UPDATE_README=1 python -m pytest tests/test_readme.py"
    )

"""Configuration files: found, parsed, and refused (exit 2) when they cannot be parsed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from genaudit.cli import app
from genaudit.config import find_config_file, load_settings, read_table
from genaudit.errors import ExitCode, UsageError

runner = CliRunner()
BROKEN = "[project]\nname = 'x'\n\n[tool.black\nline-length = 99\n"  # line 4 is broken


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)


def test_broken_pyproject_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(BROKEN)
    with pytest.raises(UsageError) as info:
        find_config_file()
    assert info.value.exit_code == ExitCode.USAGE
    assert "pyproject.toml is not valid TOML" in info.value.message
    assert "line 4" in info.value.message
    assert "--config" in (info.value.hint or "")
    with pytest.raises(UsageError, match="line 4"):
        load_settings()


def test_broken_pyproject_without_genaudit_table_still_fails(tmp_path: Path) -> None:
    # the broken part is anywhere, and the file has no [tool.genaudit] that parses
    (tmp_path / "pyproject.toml").write_text("[tool.genaudit]\nseed = 1\n[tool.x]\nkey = \n")
    with pytest.raises(UsageError, match="line 4"):
        find_config_file()


def test_valid_pyproject_without_table_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n[tool.black]\nx = 1\n")
    assert find_config_file() is None
    settings, table = load_settings()
    assert settings.config_file is None and table == {}


def test_genaudit_toml_wins_over_a_broken_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(BROKEN)
    (tmp_path / "genaudit.toml").write_text("seed = 5\n")
    settings, _ = load_settings()
    assert settings.seed == 5


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"seed = = 1\n", ["not valid TOML", "line 1"]),
        (b"a = 1\nb = [1, 2\n", ["not valid TOML", "at end of document"]),
        (b"seed = 1\n\xff\xfe\n", ["not UTF-8"]),
    ],
)
def test_explicit_config_errors(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "gate.toml"
    path.write_bytes(content)
    with pytest.raises(UsageError) as info:
        read_table(path)
    for word in words:
        assert word in info.value.message
    assert str(path) in info.value.message


def test_directory_as_config(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a file"):
        read_table(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        read_table(tmp_path / "missing.toml")


@pytest.mark.parametrize("command", ["check", "sdr", "stretch", "layers"])
def test_every_command_refuses_a_broken_pyproject(tmp_path: Path, command: str) -> None:
    (tmp_path / "pyproject.toml").write_text(BROKEN)
    model = str(Path(__file__).parent.parent / "fixtures" / "dcgan64_generator.safetensors")
    sampling = [] if command == "layers" else ["--num-samples", "4"]
    res = runner.invoke(app, [command, model, *sampling, "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "pyproject.toml" in res.stderr and "line 4" in res.stderr
    assert "Traceback" not in res.output


def test_check_notes_configuration_and_rules(tmp_path: Path) -> None:
    model = str(Path(__file__).parent.parent / "fixtures" / "vae64_decoder.safetensors")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.genaudit]\nnum_samples = 16\n"
        "[[tool.genaudit.check.rules]]\nmetric = 'sdr.sd_log10'\nselect = 'fine'\nmax = 5\n"
        "[[tool.genaudit.check.rules]]\nmetric = 'sdr.sd_log10'\nselect = 'coarse'\nmax = 5\n"
    )
    args = ["check", model, "--device", "cpu", "--rule", "trace.ratio:linear:0.01:100"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "configuration: pyproject.toml; rules: 2 from the file, 1 from --rule" in res.stderr
    (tmp_path / "pyproject.toml").unlink()
    res = runner.invoke(app, ["check", model, "--device", "cpu", "--num-samples", "16"])
    assert "configuration: none (built-in defaults); rules: " in res.stderr
    assert " default" in res.stderr.split("rules:")[1]

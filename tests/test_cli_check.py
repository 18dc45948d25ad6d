"""`genaudit check` through the command line: verdicts on the trained fixtures and on a random
initialisation, configuration, baselines, JSON, JUnit and GitHub Actions output, exit codes."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from genaudit.cli import app
from genaudit.io import registry as zoo
from genaudit.io.writing import save_safetensors

runner = CliRunner()
FIXTURES = Path(__file__).parent.parent / "fixtures"
DCGAN = str(FIXTURES / "dcgan64_generator.safetensors")
VAE = str(FIXTURES / "vae64_decoder.safetensors")
VAE_INIT = str(FIXTURES / "vae64_decoder_step00000.safetensors")  # the same run at step 0
VAE_500 = str(FIXTURES / "vae64_decoder_step00500.safetensors")
N = ("--num-samples", "32", "--device", "cpu")
SDR_ONLY = ("--no-default-rules", "--rule", "sdr.sd_log10:hidden::0.3")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No configuration file or CI environment leaks in from where the tests run."""
    monkeypatch.chdir(tmp_path)
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)


def run(*args: str):
    return runner.invoke(app, ["check", *args])


def report(*args: str) -> dict:
    result = run(*args, "--json", "-")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    kw = {"ngf": 4, "nz": 8, "image_size": 32}
    path = tmp_path_factory.mktemp("ckpt") / "g.safetensors"
    save_safetensors(zoo.build("dcgan_generator", kw).state_dict(), path,
                     arch="dcgan_generator", arch_kwargs=kw)  # fmt: skip
    return str(path)


# --------------------------------------------------------------------------- default rules


def test_trained_fixtures_pass_and_random_init_fails() -> None:
    """The documented default rules pass both trained fixtures and fail the VAE decoder at
    initialisation (step 0 of the same run): stretch.rel_mse at the hidden levels tells them
    apart; the SDR rules do not (random kernels are generic: docs/method.md)."""
    docs = {}
    for path in (DCGAN, VAE, VAE_INIT):
        result = run(path, *N, "--json", "-")
        docs[path] = json.loads(result.stdout)
        assert result.exit_code == (1 if path == VAE_INIT else 0), result.output
    for path in (DCGAN, VAE):
        assert docs[path]["results"]["verdict"] == "pass"  # no warning either
    init = docs[VAE_INIT]["results"]
    failed = {(e["metric"], e["target"]) for e in init["evaluations"] if e["status"] != "pass"}
    assert failed == {("stretch.rel_mse", lv) for lv in ("coarse", "intermediate", "fine")}

    def rel(doc: dict) -> list[float]:
        return [e["value"] for e in doc["results"]["evaluations"]
                if e["metric"] == "stretch.rel_mse"]  # fmt: skip

    assert max(rel(docs[DCGAN]) + rel(docs[VAE])) < 0.25 < 0.7 < min(rel(docs[VAE_INIT]))
    rules = docs[VAE]["results"]["rules"]
    assert all(r["source"] == "default" for r in rules) and len(rules) == 6


def test_table_and_warn_and_fail_paths(small: str) -> None:
    ok = run(small, *N)
    assert ok.exit_code in (0, 1)
    assert "stretch.rel_mse <= 0.5" in ok.stdout and "level coarse" in ok.stdout
    warn = run(VAE, *N, "--no-default-rules", "--rule", "sdr.sd_log10:fine::0.05:warn",
               "--rule", "sdr.sd_log10:coarse::0.05")  # fmt: skip
    assert warn.exit_code == 0, warn.output
    assert "WARN" in warn.stdout and "PASSED with warnings" in warn.stdout
    strict = run(VAE, *N, "--no-default-rules", "--rule", "sdr.sd_log10:fine::0.05:warn",
                 "--fail-on-warn")  # fmt: skip
    assert strict.exit_code == 1 and "FAILED" in strict.stdout
    fail = run(VAE, *N, "--no-default-rules", "--rule", "sdr.generic_fraction:fine:0.9")
    assert fail.exit_code == 1
    assert "FAIL" in fail.stdout and "1 failed" in fail.stdout


def test_json_is_byte_identical_and_complete(small: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for target in (a, b):
        assert run(small, *N, "--seed", "3", "--json", str(target)).exit_code in (0, 1)
    assert a.read_bytes() == b.read_bytes()
    doc = json.loads(a.read_text())
    assert doc["command"] == "check" and doc["config"]["seed"] == 3
    assert doc["config"]["check"]["rules"][0]["metric"] == "stretch.rel_mse"
    res = doc["results"]
    assert res["verdict"] in ("pass", "warn", "fail")
    assert res["fingerprint"]["arch"] == "dcgan_generator"
    assert set(res["metrics"]["levels"]) == {"coarse", "fine", "image"}
    assert res["counts"]["checks"] == len(res["evaluations"])


# --------------------------------------------------------------------------- configuration


def test_rules_from_pyproject_and_genaudit_toml(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.genaudit]\nnum_samples = 32\n"
        "[[tool.genaudit.check.rules]]\nmetric = 'sdr.sd_log10'\nselect = 'fine'\nmax = 0.05\n"
        "severity = 'warn'\n"
    )
    doc = report(VAE, "--device", "cpu")
    assert [(e["metric"], e["target"], e["status"]) for e in doc["results"]["evaluations"]] == [
        ("sdr.sd_log10", "fine", "warn")
    ]
    assert doc["config"]["num_samples"] == 32
    # --rule adds to the file's rules; genaudit.toml in the same folder wins over pyproject
    doc = report(VAE, "--device", "cpu", "--rule", "trace.ratio:linear:0.5:2")
    assert [e["metric"] for e in doc["results"]["evaluations"]] == ["sdr.sd_log10", "trace.ratio"]
    (tmp_path / "genaudit.toml").write_text(
        "num_samples = 32\n[check]\nfail_on_warn = true\n"
        "[[check.rules]]\nmetric = 'sdr.sd_log10'\nselect = ['coarse', 'fine']\nmax = 0.05\n"
        "severity = 'warn'\n"
    )
    res = run(VAE, "--device", "cpu")
    assert res.exit_code == 1 and "coarse" in res.stdout
    other = tmp_path / "other.toml"
    other.write_text("[tool.genaudit.check]\ndefault_rules = true\nfail_on_warn = false\n")
    doc = report(VAE, *N, "--config", str(other))
    assert len(doc["results"]["rules"]) == 6


@pytest.mark.parametrize(
    ("rules", "words"),
    [
        ("metric = 'sdr.spread'\nmax = 1", ["unknown metric 'sdr.spread'", "sdr.sd_log10"]),
        ("metric = 'sdr.sd_log10'\nmin = 0.5\nmax = 0.1", ["min 0.5 is greater than max 0.1"]),
        ("metric = 'sdr.sd_log10'\nmax = 'small'", ["max must be a number"]),
        ("metric = 'sdr.sd_log10'\nmax = 1\nselect = 'middle'",
         ["no layer or level matches 'middle'", "coarse, intermediate, fine, image, linear"]),
        ("metric = 'sdr.sd_log10'\nmax = 1\nselect = 'projection'", ["no level 'projection'"]),
        ("metric = 'sdr.sd_log10'\nmax = 1\nlayers = 'fine'",
         ["unknown key(s) in rule 1 ([[check.rules]] #1)", "layers"]),
        ("metric = 'sdr.sd_log10'\nmax = 1\nseverity = 'fatal'", ["unknown severity 'fatal'"]),
        ("metric = 'trace.ratio'\nmax = 1\nselect = 'fine'", ["does not apply"]),
    ],
)  # fmt: skip
def test_configuration_errors_exit_2(tmp_path: Path, rules: str, words: list[str]) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f"[[check.rules]]\n{rules}\n")
    res = run(VAE, *N, "--config", str(cfg))
    assert res.exit_code == 2, res.output
    for word in words:
        assert word in res.stderr
    assert "Traceback" not in res.output


def test_usage_errors(small: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[check]\nthreshold = 1\n")
    res = run(small, "--config", str(bad))
    assert res.exit_code == 2 and "threshold" in res.stderr and "valid keys" in res.stderr
    assert run(small, "--rule", "sdr.nope:all::1").exit_code == 2
    assert run(small, "--json", "-", "--junit", "-").exit_code == 2
    assert run(small, "--write-baseline", "-").exit_code == 2
    assert run(small, "--junit", f"{small}/j.xml").exit_code == 2  # a parent that is a file


def test_nothing_analysable_exit_4(tmp_path: Path) -> None:
    import toy_models

    path = tmp_path / "m.pt"
    torch.save(toy_models.conv1d_pair().state_dict(), path)
    x = tmp_path / "x.pt"
    torch.save(torch.randn(10, 2, 2), x)  # a 2-sample grid: no SDR anywhere
    res = run(str(path), "--arch", "toy_models:conv1d_pair", "--inputs", str(x),
              "--no-default-rules", "--rule", "sdr.mean_log10:all:-1:1")  # fmt: skip
    assert res.exit_code == 4 and "non-zero frequenc" in res.stderr  # the reason, relayed


# --------------------------------------------------------------------------- baselines


def test_baseline_write_compare_drift(tmp_path: Path) -> None:
    base = tmp_path / "baseline.json"
    assert run(VAE, *N, *SDR_ONLY, "--write-baseline", str(base)).exit_code == 0
    doc = json.loads(base.read_text())
    assert doc["kind"] == "genaudit-baseline"
    assert doc["fingerprint"]["arch"] == "vae_decoder"
    assert doc["fingerprint"]["layers"][0] == "fc Linear 32 → 2048"
    assert set(doc["metrics"]["layers"]) == {"fc", "features.1", "features.3", "features.5",
                                             "features.7"}  # fmt: skip
    # the same checkpoint: no drift; step 500 of the same run: within the default tolerances
    same = run(VAE, *N, *SDR_ONLY, "--baseline", str(base))
    assert same.exit_code == 0 and "0 beyond tolerance" in same.stdout
    assert run(VAE_500, *N, *SDR_ONLY, "--baseline", str(base)).exit_code == 0
    # the initialisation has drifted far (SD of log10 SDR at fine: 0.13 → 0.03)
    init = report(VAE_INIT, *N, *SDR_ONLY, "--baseline", str(base))
    assert init["results"]["verdict"] == "fail"
    assert all(e["status"] == "pass" for e in init["results"]["evaluations"])
    drifted = {(d["metric"], d["layer"]) for d in init["results"]["drift"]["checks"]
               if d["status"] == "fail"}  # fmt: skip
    assert ("sdr.sd_log10", "features.5") in drifted
    # a tighter configured tolerance fails even the step-500 snapshot
    cfg = tmp_path / "drift.toml"
    cfg.write_text(f"[check]\nbaseline = '{base.name}'\n[check.drift]\n'sdr.sd_log10' = 0.001\n")
    res = run(VAE_500, *N, *SDR_ONLY, "--config", str(cfg))
    assert res.exit_code == 1 and "sdr.sd_log10" in res.stdout and "beyond" in res.stdout


def test_baseline_architecture_mismatch_and_damage(tmp_path: Path) -> None:
    base = tmp_path / "vae.json"
    assert run(VAE, *N, *SDR_ONLY, "--write-baseline", str(base)).exit_code == 0
    res = run(DCGAN, *N, *SDR_ONLY, "--baseline", str(base))
    assert res.exit_code == 3 and "different architecture" in res.stderr
    assert "vae_decoder" in res.stderr and "dcgan_generator" in res.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert run(VAE, *N, *SDR_ONLY, "--baseline", str(broken)).exit_code == 3
    assert run(VAE, *N, *SDR_ONLY, "--baseline", str(tmp_path / "none.json")).exit_code == 3


def test_baseline_not_written_when_the_gate_fails(tmp_path: Path) -> None:
    base = tmp_path / "baseline.json"
    base.write_text("keep me")
    res = run(VAE_INIT, *N, "--no-default-rules", "--rule", "stretch.rel_mse:fine::0.5",
              "--write-baseline", str(base))  # fmt: skip
    assert res.exit_code == 1 and "not written" in res.stderr
    assert base.read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.json"]  # no temporary left


# --------------------------------------------------------------------------- CI formats


def test_junit_file(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    res = run(VAE_INIT, *N, "--junit", str(junit), "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 1
    evaluations = json.loads((tmp_path / "r.json").read_text())["results"]["evaluations"]
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    (suite,) = root
    cases = suite.findall("testcase")
    assert len(cases) == len(evaluations) == int(suite.get("tests", "-1"))
    failures = [c for c in cases if c.find("failure") is not None]
    assert len(failures) == 3 == int(suite.get("failures", "-1"))
    for case in failures:
        assert case.get("classname") == "genaudit.check.stretch.rel_mse"
        assert "above the maximum 0.5" in case.find("failure").get("message", "")  # type: ignore[union-attr]
    assert {c.get("name") for c in cases} >= {"rule 1: stretch.rel_mse <= 0.5 [level fine]"}


def test_github_actions_annotations_and_step_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    args = (VAE, *N, "--no-default-rules", "--rule", "sdr.sd_log10:fine::0.05:warn",
            "--rule", "stretch.rel_mse:coarse::0.1")  # fmt: skip
    res = run(*args)
    assert res.exit_code == 1
    lines = [x for x in res.stderr.splitlines() if x.startswith("::")]
    assert len(lines) == 2
    assert lines[0].startswith(
        f"::warning file={VAE},title=genaudit check%3A sdr.sd_log10 [level fine]::"
    )
    assert "sdr.sd_log10 = " in lines[0] and lines[0].endswith("above the maximum 0.05")
    assert lines[1].startswith("::error ") and "stretch.rel_mse" in lines[1]
    text = summary.read_text()
    assert text.startswith("earlier step\n## genaudit check `")
    assert "❌ failed" in text and "| **FAIL** |" in text and "| **warn** |" in text
    assert "| rule | layer / level | value | bound | severity | result |" in text
    monkeypatch.delenv("GITHUB_ACTIONS")
    res = run(*args)
    assert not [x for x in res.stderr.splitlines() if x.startswith("::")]
    assert summary.read_text().count("## genaudit check") == 2  # appended, never replaced


def test_python_m_entry_point_registers_check() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "genaudit", "check", "--help"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "100"})  # fmt: skip
    assert out.returncode == 0 and "stretch.rel_mse <= 0.5" in out.stdout


def test_several_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As pre-commit calls it: every file is checked, the exit code is the highest."""
    junit = tmp_path / "junit.xml"
    res = run(DCGAN, VAE_INIT, *N, "--junit", str(junit))
    assert res.exit_code == 1
    assert res.stdout.count("genaudit check, 32 samples") == 2
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == [
        "genaudit check dcgan64_generator.safetensors",
        "genaudit check vae64_decoder_step00000.safetensors",
    ]
    assert [s.get("failures") for s in suites] == ["0", "3"]
    missing = str(tmp_path / "missing.safetensors")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    res = run(missing, DCGAN, *N, "--junit", str(junit))
    assert res.exit_code == 3 and "PASSED" in res.stdout
    assert f"error: {missing}: " in res.stderr
    assert f"::error file={missing},title=genaudit check%3A error::" in res.stderr
    broken, ok = ET.parse(junit).getroot().findall("testsuite")
    assert broken.find("testcase/error") is not None and ok.get("failures") == "0"
    assert run(DCGAN, VAE, "--json", "-").exit_code == 2


def test_pre_commit_hook_definition() -> None:
    import re

    yaml = pytest.importorskip("yaml")
    (hook,) = yaml.safe_load((FIXTURES.parent / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "genaudit-check" and hook["entry"] == "genaudit check"
    assert hook["language"] == "python" and hook["pass_filenames"] is True
    pattern = re.compile(hook["files"])
    for name in ("g.safetensors", "ckpt/g.pt", "g.pth", "last.ckpt"):
        assert pattern.search(name)
    for name in ("g.safetensors.index.json", "model.py", "g.ptx"):
        assert not pattern.search(name)

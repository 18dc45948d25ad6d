"""User code: --arch and --sampler from files and modules, --arch-config, failures located."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import toy_models
from torch import nn
from typer.testing import CliRunner

from genaudit.cli import app
from genaudit.errors import ArchitectureError, ModelInputError, UsageError
from genaudit.model.user_code import AttrConfig, load_user_object, read_arch_config

runner = CliRunner()

# A small DCGAN-like generator: z (8, 1, 1) → 4×4 → 8×8 → 1×16×16; ``up`` comes from a sibling.
MODELS = """\
from torch import nn
{import_up}


class Generator(nn.Module):
    def __init__(self, nz=8, ngf=4):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0), nn.ReLU(),
            up(ngf * 2, ngf), nn.ReLU(),
            nn.ConvTranspose2d(ngf, 1, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, z):
        return self.main(z)
"""
BLOCKS = """\
from torch import nn


def up(i, o):
    return nn.ConvTranspose2d(i, o, 4, 2, 1)
"""
SAMPLER = """\
import torch


def draw(batch_size, generator, device):
    return torch.randn((batch_size, 8, 1, 1), generator=generator).to(device)
"""


def dcgan(nz: int = 8, ngf: int = 4) -> nn.Module:
    """The generator above, built here independently of the file."""
    model = nn.Module()
    model.main = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0), nn.ReLU(),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(ngf, 1, 4, 2, 1), nn.Tanh(),
    )  # fmt: skip
    return model


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def checkpoint(folder: Path, nz: int = 8, ngf: int = 4) -> str:
    torch.manual_seed(0)
    path = folder / "g.pth"
    torch.save(dcgan(nz, ngf).state_dict(), path)
    return str(path)


def run(*args: str):
    return runner.invoke(app, list(args))


def names(res) -> list[str]:
    assert res.exit_code == 0, res.output
    return [x["name"] for x in json.loads(res.stdout)["results"]["layers"]]


def line_of(path: Path, needle: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(k for k, line in enumerate(lines, 1) if needle in line)


# --------------------------------------------------------------------------- files and modules


def test_arch_and_sampler_from_files_with_a_sibling_import(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path / "gen", {
        "models.py": MODELS.format(import_up="from blocks_s import up"),
        "blocks_s.py": BLOCKS, "sampler.py": SAMPLER,
    })  # fmt: skip
    ckpt = checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = run("layers", ckpt, "--arch", "gen/models.py:Generator", "--json", "-")
    assert names(res) == ["main.0", "main.2", "main.4"]
    absolute = run("layers", ckpt, "--arch", f"{tmp_path}/gen/models.py:Generator", "--json", "-")
    assert names(absolute) == ["main.0", "main.2", "main.4"]
    sampled = run("layers", ckpt, "--arch", "gen/models.py:Generator",
                  "--sampler", "gen/sampler.py:draw", "--json", "-")  # fmt: skip
    assert names(sampled) == ["main.0", "main.2", "main.4"]
    assert json.loads(sampled.stdout)["config"]["inputs"]["sampler"] == "gen/sampler.py:draw"
    assert str(tmp_path / "gen") not in sys.path  # only while the user's code runs


def test_a_file_in_a_package_may_import_relatively(tmp_path: Path) -> None:
    write(tmp_path / "relpkg", {
        "__init__.py": "SCALE = 1\n",
        "models.py": MODELS.format(import_up="from .layers import up\nfrom . import SCALE"),
        "layers/__init__.py": "from .blocks import up\n", "layers/blocks.py": BLOCKS,
    })  # fmt: skip
    ckpt = checkpoint(tmp_path)
    res = run("layers", ckpt, "--arch", f"{tmp_path}/relpkg/models.py:Generator", "--json", "-")
    assert names(res) == ["main.0", "main.2", "main.4"]
    doc = json.loads(res.stdout)
    assert doc["checkpoint"]["arch"] == f"{tmp_path}/relpkg/models.py:Generator"


def test_a_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    write(tmp_path, {"again.py": "def make():\n    return 1\n"})
    assert load_user_object(f"{tmp_path}/again.py:make", "arch")() == 1
    write(tmp_path, {"again.py": "def make():\n    return 2\n"})
    os.utime(tmp_path / "again.py", (1, 1))  # a different mtime, even within one second
    assert load_user_object(f"{tmp_path}/again.py:make", "arch")() == 2


def test_module_in_the_current_folder_in_process(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, {"cwdgen.py": MODELS.format(import_up="from cwdblocks import up"),
                     "cwdblocks.py": BLOCKS})  # fmt: skip
    ckpt = checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert names(run("layers", ckpt, "--arch", "cwdgen:Generator", "--json", "-")) == [
        "main.0", "main.2", "main.4",
    ]  # fmt: skip


def test_module_in_the_current_folder_with_the_installed_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("genaudit")
    if not script.is_file():
        pytest.skip("the genaudit console script is not installed next to this Python")
    write(tmp_path, {"scriptgen.py": MODELS.format(import_up="from scriptblocks import up"),
                     "scriptblocks.py": BLOCKS})  # fmt: skip
    ckpt = checkpoint(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(script), "--quiet", "layers", ckpt, "--arch", "scriptgen:Generator", "--json", "-"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    layers = json.loads(done.stdout)["results"]["layers"]
    assert [x["name"] for x in layers] == ["main.0", "main.2", "main.4"]


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=re.escape("path/to/file.py:name")):
        load_user_object("models.py", "arch")
    with pytest.raises(UsageError, match=re.escape("pkg.module:name")):
        load_user_object("not a module:Gen", "arch")
    with pytest.raises(ArchitectureError, match="does not exist"):
        load_user_object(f"{tmp_path}/nowhere.py:Gen", "arch")
    write(tmp_path, {"plain.py": "VALUE = 3\n"})
    with pytest.raises(ArchitectureError, match="no attribute 'Gen'"):
        load_user_object(f"{tmp_path}/plain.py:Gen", "arch")
    with pytest.raises(ModelInputError, match="not callable"):
        load_user_object(f"{tmp_path}/plain.py:VALUE", "sampler")
    res = run("layers", checkpoint(tmp_path), "--arch", "models.py")
    assert res.exit_code == 2 and "path/to/file.py:name" in res.stderr


# --------------------------------------------------------------------------- --arch-config


def test_attr_config_has_attribute_and_item_access_recursively() -> None:
    h = AttrConfig({"upsample_rates": [8, 2], "resblock": "1", "inner": {"k": [{"a": 1}]}})
    assert h.upsample_rates == [8, 2] and h["resblock"] == "1"
    assert h.inner.k[0].a == 1 and h["inner"]["k"][0]["a"] == 1
    assert not hasattr(h, "missing") and h.get("missing") is None
    h.extra = {"b": 2}
    assert h.extra.b == 2 and json.loads(json.dumps(h))["extra"] == {"b": 2}


HIFI = """\
from torch import nn


class Generator(nn.Module):
    def __init__(self, h, nz=8):
        super().__init__()
        ngf = h["ngf"]
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 2, h.kernel.first, 1, 0), nn.ReLU(),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, h.upsample_rates[0], 1), nn.ReLU(),
            nn.ConvTranspose2d(ngf, 1, 4, h.upsample_rates[1], 1), nn.Tanh(),
        )

    def forward(self, z):
        return self.main(z)
"""


def test_arch_config_is_one_positional_object_with_kwargs(tmp_path: Path) -> None:
    write(tmp_path, {"hifi.py": HIFI})
    config = {"ngf": 3, "upsample_rates": [2, 2], "kernel": {"first": 4}}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    ckpt = checkpoint(tmp_path, nz=5, ngf=3)
    cfg = str(tmp_path / "config.json")
    res = run("layers", ckpt, "--arch", f"{tmp_path}/hifi.py:Generator", "--arch-config", cfg,
              "--arch-kwargs", '{"nz": 5}', "--json", "-")  # fmt: skip
    assert names(res) == ["main.0", "main.2", "main.4"]
    doc = json.loads(res.stdout)
    assert doc["checkpoint"]["arch_config"] == config
    assert doc["checkpoint"]["arch_kwargs"] == {"nz": 5}
    assert doc["config"]["load"]["arch_config"] == str(tmp_path / "config.json")
    plain = run("layers", ckpt, "--arch", f"{tmp_path}/hifi.py:Generator", "--arch-kwargs",
                '{"nz": 5}', "--json", "-")  # fmt: skip
    assert plain.exit_code == 3 and "TypeError" in plain.stderr  # no config: h is missing


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{\n  "ngf": 3,\n  "rates": [2, 2,]\n}', "at line 3, column 18"),
        ("[1, 2]", "holds a JSON list, not an object"),
    ],
)
def test_arch_config_that_is_not_a_json_object(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "bad.json").write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=needle):
        read_arch_config(tmp_path / "bad.json")
    write(tmp_path, {"hifi.py": HIFI})
    res = run("layers", checkpoint(tmp_path), "--arch", f"{tmp_path}/hifi.py:Generator",
              "--arch-config", str(tmp_path / "bad.json"))  # fmt: skip
    assert res.exit_code == 2 and f"--arch-config {tmp_path / 'bad.json'}" in res.stderr
    assert needle in res.stderr


def test_arch_config_needs_your_factory(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text("{}", encoding="utf-8")
    res = run("layers", checkpoint(tmp_path), "--arch", "dcgan_generator", "--arch-config",
              str(tmp_path / "c.json"))  # fmt: skip
    assert res.exit_code == 2 and "--arch-config is for your own factory" in res.stderr
    missing = run("layers", checkpoint(tmp_path), "--arch", "dcgan_generator", "--arch-config",
                  str(tmp_path / "none.json"))  # fmt: skip
    assert missing.exit_code == 2 and "cannot read it" in missing.stderr


# --------------------------------------------------------------------------- failures located

CUDA = "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False."


def test_a_package_that_fails_on_import_names_its_file_and_line(
    tmp_path: Path, monkeypatch
) -> None:
    write(tmp_path / "condgan", {
        "__init__.py": f"import torch\n\n\ndef _load():\n    raise RuntimeError({CUDA!r})\n\n\n"
                       "WEIGHTS = _load()\n",
        "models.py": MODELS.format(import_up="from .blocks import up"), "blocks.py": BLOCKS,
    })  # fmt: skip
    ckpt = checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = run("layers", ckpt, "--arch", "condgan/models.py:Generator")
    assert res.exit_code == 3, res.output
    first, hint = res.stderr.strip().splitlines()
    assert first == (
        "error: --arch condgan/models.py:Generator failed on import at condgan/__init__.py:5 "
        f"(RuntimeError: {CUDA})"
    )
    assert "map_location" in hint
    # the same package named as a module
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    as_module = run("layers", ckpt, "--arch", "condgan.models:Generator")
    assert as_module.exit_code == 3
    assert "failed on import at condgan/__init__.py:5 (RuntimeError" in as_module.stderr


BROKEN = """\
import sys
from torch import nn


def build(mode="raise"):
    if mode == "raise":
        return helper()
    if mode == "exit":
        sys.exit(2)
    if mode == "interrupt":
        raise KeyboardInterrupt
    return nn.Linear(2, 2)


def helper():
    return nn.Conv2d(3, 4, 3, padding_mode="bogus")
"""


def test_a_failing_factory_names_the_innermost_line_of_the_users_file(
    tmp_path: Path, monkeypatch
) -> None:
    write(tmp_path, {"broken.py": BROKEN})
    ckpt = checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = run("layers", ckpt, "--arch", "broken.py:build")
    assert res.exit_code == 3
    line = line_of(tmp_path / "broken.py", 'padding_mode="bogus"')  # torch raises below it
    assert f"error: --arch broken.py:build failed at broken.py:{line} (" in res.stderr
    assert "--arch-kwargs / --arch-config" in res.stderr
    exited = run("layers", ckpt, "--arch", "broken.py:build", "--arch-kwargs", '{"mode": "exit"}')
    line = line_of(tmp_path / "broken.py", "sys.exit(2)")
    assert exited.exit_code == 3, exited.output
    assert f"failed at broken.py:{line} (SystemExit: 2)" in exited.stderr
    assert "__main__" in exited.stderr
    stopped = run("layers", ckpt, "--arch", "broken.py:build", "--arch-kwargs",
                  '{"mode": "interrupt"}')  # fmt: skip
    assert stopped.exit_code == 130  # Ctrl-C stays an interruption
    unknown = run("layers", ckpt, "--arch", "broken.py:build", "--arch-kwargs", '{"nz": 1}')
    assert unknown.exit_code == 3 and "failed (TypeError: build() got an unexpected" in (
        unknown.stderr
    )


def test_import_failures_of_modules(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, {"needsdep.py": "import os\nimport no_such_dependency_xyz\n",
                     "exits.py": "import sys\nsys.exit('usage: exits.py')\n"})  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArchitectureError) as info:
        load_user_object("needsdep:Gen", "arch")
    assert "failed on import at needsdep.py:2 (ModuleNotFoundError" in info.value.message
    assert "install 'no_such_dependency_xyz'" in str(info.value.hint)
    write(tmp_path, {"usesbad.py": "import badhelper\n", "badhelper.py": "x = 1 / 0\n"})
    with pytest.raises(ArchitectureError, match=re.escape("at badhelper.py:1 (ZeroDivisionError")):
        load_user_object("usesbad:Gen", "arch")  # a sibling of the module is the user's too
    with pytest.raises(ModelInputError) as exits:
        load_user_object("exits.py:draw", "sampler")
    assert "failed on import at exits.py:2 (SystemExit: usage: exits.py)" in exits.value.message
    with pytest.raises(
        ArchitectureError, match=re.escape("cannot import 'no_such_pkg_xyz.models'")
    ):
        load_user_object("no_such_pkg_xyz.models:Gen", "arch")


def test_a_failing_sampler_names_its_file_and_line(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, {"badsampler.py": "def draw(n, generator, device):\n"
                                      "    raise ValueError('no data here')\n"})  # fmt: skip
    path = tmp_path / "g.pth"
    torch.save(toy_models.reordered(8).state_dict(), path)
    monkeypatch.chdir(tmp_path)
    res = run("layers", str(path), "--arch", "toy_models:reordered",
              "--sampler", "badsampler.py:draw")  # fmt: skip
    assert res.exit_code == 3
    assert (
        "error: --sampler badsampler.py:draw failed at badsampler.py:2 (ValueError: no data here)"
        in res.stderr
    )


# --------------------------------------------------------------------------- missing inputs


def test_a_missing_positional_input_is_named_with_the_flags_that_feed_it(tmp_path: Path) -> None:
    path = tmp_path / "cond.pth"
    torch.save(toy_models.conditional(nz=5, num_classes=3).state_dict(), path)
    arch = ("--arch", "toy_models:conditional")
    res = run("layers", str(path), *arch, "--z-shape", "5")
    assert res.exit_code == 3
    first, hint = res.stderr.strip().splitlines()
    assert "the model's forward(z, y) got 1 input; `y` is missing (2×5)" in first
    for flag in ("--num-classes", "--label-format", "--latents", "--sampler"):
        assert flag in hint
    inferred = run("layers", str(path), *arch)
    assert inferred.exit_code == 3
    assert "cannot infer the model's input: its forward(z, y) got 1 input" in inferred.stderr
    assert "--z-shape" in inferred.stderr and "--num-classes" in inferred.stderr
    fed = run("layers", str(path), *arch, "--z-shape", "5", "--num-classes", "3")
    assert fed.exit_code == 0, fed.output  # what the hint says works

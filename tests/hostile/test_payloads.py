"""Code-running checkpoints of every kind are refused: exit 3, one or two lines, nothing runs."""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from .gadgets import (
    CONTAINERS,
    call,
    dumps,
    nested_torch_file,
    payloads,
    torch_zip_bytes,
    touch_code,
    write_container,
)
from .runner import assert_refused, layers

GADGETS = [
    "exec",
    "eval",
    "runpy",
    "numpy-runstring",
    "os-system",
    "stack-global-exec",
    "file-handler",
    "nested-load",
]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("gadget", GADGETS)
def test_gadget_refused(gadget: str, container: str, tmp_path: Path) -> None:
    marker, out = tmp_path / "marker", tmp_path / "out.json"
    path = write_container(container, payloads(marker)[gadget], tmp_path / "evil.pt")
    outcome = assert_refused(layers(path, out), out, marker)
    assert "refusing to load" in outcome.output
    assert "--trust-checkpoint" in outcome.output  # the way out names the risk
    assert "--allow-global" not in outcome.output  # never suggested for a code-running global


def test_corpus_is_live(tmp_path: Path) -> None:
    # The same bytes do run code when unpickled unsafely: the refusals above are not vacuous.
    for name in ("exec", "eval", "runpy", "stack-global-exec"):
        marker = tmp_path / f"marker-{name}"
        pickle.loads(dumps(payloads(marker)[name]))
        assert marker.exists(), name
    marker = tmp_path / "marker-nested"
    torch.load(io.BytesIO(nested_torch_file(marker)), weights_only=False)
    assert marker.exists()


def test_numpy_testing_never_imported(tmp_path: Path) -> None:
    before = "numpy.testing._private.utils" in sys.modules
    marker, out = tmp_path / "marker", tmp_path / "out.json"
    path = write_container("torch-zip", payloads(marker)["numpy-runstring"], tmp_path / "e.pt")
    assert_refused(layers(path, out), out, marker)
    assert ("numpy.testing._private.utils" in sys.modules) == before


def test_whole_pickled_module(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    path = tmp_path / "module.pt"
    torch.save(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), path)
    outcome = assert_refused(layers(path, out), out)
    assert "pickled nn.Module" in outcome.output


def test_torchscript_archive(tmp_path: Path) -> None:
    out, marker = tmp_path / "out.json", tmp_path / "marker"
    # A TorchScript-looking archive whose constants pickle carries a gadget.
    constants = dumps(call("builtins", "exec", touch_code(marker)), protocol=2)
    data = torch_zip_bytes(constants, {"archive/constants.pkl": constants, "archive/code/m.py": ""})
    (path := tmp_path / "scripted.pt").write_bytes(data)
    outcome = assert_refused(layers(path, out), out, marker)
    assert "TorchScript" in outcome.output


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_real_torchscript(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    path = tmp_path / "scripted.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(path))
    assert "TorchScript" in assert_refused(layers(path, out), out).output


@pytest.mark.parametrize("kind", ["pt2", "torch-package"])
def test_program_archives(kind: str, tmp_path: Path) -> None:
    out, marker = tmp_path / "out.json", tmp_path / "marker"
    gadget = dumps(call("builtins", "exec", touch_code(marker)), protocol=2)
    if kind == "pt2":
        extra = {"archive/archive_format": b"pt2", "archive/models/model.json": b"{}"}
        path, expected = tmp_path / "program.pt2", "torch.export"
    else:
        extra = {"archive/.data/extern_modules": b"builtins\n", "archive/evil.py": b"import os\n"}
        path, expected = tmp_path / "packaged.pt", "torch.package"
    path.write_bytes(torch_zip_bytes(gadget, extra))
    outcome = assert_refused(layers(path, out), out, marker)
    assert expected in outcome.output
    if kind == "torch-package":  # not even trust loads a torch.package
        outcome = assert_refused(layers(path, out, "--trust-checkpoint"), out, marker)
        assert "unsupported even when trusted" in outcome.output


@pytest.mark.parametrize(
    "member", ["../data.pkl", "../../escaped/data.pkl", "/abs/data.pkl", "archive/../../data.pkl"]
)
def test_path_traversal_member_names(member: str, tmp_path: Path) -> None:
    out, marker = tmp_path / "out.json", tmp_path / "marker"
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    path = work / "traversal.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, dumps(call("builtins", "exec", touch_code(marker)), protocol=2))
        zf.writestr("../../../outside.txt", "escaped")
    assert_refused(layers(path, out), out, marker)
    # Nothing is ever extracted: no member lands outside (or inside) the folder.
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "er", "traversal.pt"]

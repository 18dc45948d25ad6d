"""--allow-global accepts only inert classes: the attacks that used to run code are refused."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genaudit.errors import CheckpointError
from genaudit.io.pickle_scan import DENIED_MODULES, INERT_CLASSES, is_denied_module
from genaudit.io.reading import _resolve_global, read_checkpoint

from .gadgets import call, payloads, touch_code, write_container
from .runner import USAGE, assert_refused, layers, run_cli

# name to allow → the gadget (from gadgets.payloads) it would let run
ATTACKS = {
    "builtins.exec": "exec",
    "builtins:exec": "exec",
    "builtins.eval": "eval",
    "runpy._run_code": "runpy",
    "torch.storage._load_from_bytes": "nested-load",
    "numpy.testing._private.utils.runstring": "numpy-runstring",
    "logging.FileHandler": "file-handler",
    "logging:FileHandler": "file-handler",
    "os.system": "os-system",
    "posix.system": "os-system",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("container", ["torch-zip", "torch-legacy"])
def test_allowing_a_gadget_is_refused(name: str, container: str, tmp_path: Path) -> None:
    marker, out = tmp_path / "marker", tmp_path / "out.json"
    path = write_container(container, payloads(marker)[ATTACKS[name]], tmp_path / "evil.pt")
    before = set(sys.modules)
    outcome = assert_refused(layers(path, out, "--allow-global", name), out, marker)
    assert "--allow-global" in outcome.output and "refused" in outcome.output
    dotted = name.replace(":", ".").split(".")
    named = {".".join(dotted[:i]) for i in range(1, len(dotted))}
    assert not (named & (set(sys.modules) - before))  # nothing imported to look the name up
    assert "logging.FileHandler" not in outcome.output.split("hint:", 1)[-1]


@pytest.mark.parametrize(
    "name",
    [
        "builtins.getattr",
        "builtins.type",
        "builtins.object",
        "subprocess.Popen",
        "pathlib.Path.touch",
        "pathlib.PosixPath",
        "zipfile.ZipFile",
        "io.FileIO",
        "shutil.rmtree",
        "socket.socket",
        "threading.Thread",
        "functools.partial",
        "operator.attrgetter",
        "types.FunctionType",
        "torch.nn.Linear",
        "torch.nn.modules.linear.Linear",
        "torch.serialization.load",
        "torch.load",
        "torch.jit.load",
        "torch.hub.load",
        "torch._C._load_for_lite_interpreter",
        "torch.utils.cpp_extension.load_inline",
        "torch.Tensor",
        "torch.UntypedStorage",
        "numpy.load",
        "numpy.lib.npyio.load",
        "numpy.memmap",
        "numpy.core.multiarray._reconstruct",
        "collections.OrderedDict.fromkeys",
        "argparse.Namespace.__init__",
        "abc.ABCMeta",
        "not_a_module_xyz.Thing",
        "Namespace",
        "",
    ],
)
def test_refused_names(name: str) -> None:
    before = set(sys.modules)
    with pytest.raises(CheckpointError) as info:
        _resolve_global(name)
    err = info.value
    assert err.exit_code == 3 and "\n" not in err.message and "--allow-global" in err.message
    assert set(sys.modules) == before
    hint = err.hint or ""
    suggested = {w.rstrip(",;") for w in hint.split() if re.fullmatch(r"[a-z_]\w*(\.\w+)+[,;]?", w)}
    assert suggested <= INERT_CLASSES | {"types.SimpleNamespace"}, hint


_INERT_SOURCES = ("builtins", "argparse", "collections", "datetime", "torch", "numpy", "types")


def test_inert_allowlist_really_is_inert() -> None:
    # Each is a class whose construction and __setstate__ are C code or plain attribute stores.
    for name in sorted(INERT_CLASSES):
        names, cls = _resolve_global(name)
        assert isinstance(cls, type) and name in names
        for hook in ("__reduce__", "__setstate__", "__init__", "__new__"):
            impl = inspect.getattr_static(cls, hook, None)
            source = getattr(impl, "__module__", None) or getattr(
                getattr(impl, "__objclass__", None), "__module__", "builtins"
            )
            assert source in _INERT_SOURCES, (
                name,
                hook,
                source,
            )


def test_namespace_allowed_and_recorded(tmp_path: Path) -> None:
    from conftest import SMALL_GENERATOR

    from genaudit.io import registry as zoo

    model = zoo.build("dcgan_generator", SMALL_GENERATOR)
    path, out = tmp_path / "lightning.pt", tmp_path / "out.json"
    torch.save({"hparams": argparse.Namespace(lr=0.1), "state_dict": model.state_dict()}, path)
    arch = ["--arch", "dcgan_generator", "--arch-kwargs", json.dumps(SMALL_GENERATOR)]
    refused = assert_refused(layers(path, out, *arch), out)
    assert "--allow-global argparse.Namespace" in refused.output  # the allowlisted suggestion
    outcome = run_cli(layers(path, out, *arch, "--allow-global", "argparse.Namespace"))
    assert outcome.exit_code == 0, outcome.output
    assert "WARNING: --allow-global argparse.Namespace" in outcome.output
    doc = json.loads(out.read_text())
    assert doc["checkpoint"]["allowed_globals"] == ["argparse.Namespace"]
    assert doc["checkpoint"]["trusted"] is False
    assert doc["config"]["load"]["allow_globals"] == ["argparse.Namespace"]


def test_simple_namespace_allowed_despite_types_being_denied(tmp_path: Path) -> None:
    path = tmp_path / "ns.pt"
    torch.save({"cfg": types.SimpleNamespace(a=1), "w": torch.ones(2)}, path)
    raw = read_checkpoint(path, allow_globals=["types.SimpleNamespace"])
    assert raw.obj["cfg"].a == 1 and raw.allowed_globals == ("types.SimpleNamespace",)


def test_unrelated_allowed_class_is_not_recorded(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, path := tmp_path / "w.pt")
    assert read_checkpoint(path, allow_globals=["argparse.Namespace"]).allowed_globals == ()


def test_hint_never_suggests_a_non_inert_class(tmp_path: Path) -> None:
    # A plain-looking class outside the allowlist: the hint says --trust-checkpoint only.
    marker, out = tmp_path / "marker", tmp_path / "out.json"
    path = write_container("torch-zip", call("argparse", "ArgumentParser"), tmp_path / "p.pt")
    outcome = assert_refused(layers(path, out), out, marker)
    assert "--allow-global" not in outcome.output
    gadget = call("logging", "FileHandler", str(marker))
    path = write_container("torch-zip", gadget, tmp_path / "fh.pt")
    outcome = assert_refused(layers(path, out), out, marker)
    assert "--allow-global" not in outcome.output and "FileHandler" in outcome.output


def test_allow_global_without_a_name_is_a_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    path = write_container("torch-zip", payloads(tmp_path / "m")["exec"], tmp_path / "e.pt")
    outcome = run_cli(["layers", str(path), "--json", str(out), "--allow-global"])
    assert outcome.exit_code == USAGE and not out.exists()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(DENIED_MODULES),
    st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=3),
    st.booleans(),
)
def test_denied_prefixes_always_refused(module: str, rest: list[str], colon: bool) -> None:
    name = f"{module}:{'.'.join(rest)}" if colon else ".".join([module, *rest])
    if name.replace(":", ".") in INERT_CLASSES or ".".join([module, *rest]) in INERT_CLASSES:
        return
    before = set(sys.modules)
    with pytest.raises(CheckpointError):
        _resolve_global(name)
    assert set(sys.modules) == before
    assert is_denied_module(".".join([module, *rest]))


def test_code_gadget_source_is_what_it_claims(tmp_path: Path) -> None:
    # Guard the corpus itself: the exec gadget names builtins.exec and the marker path.
    data = call("builtins", "exec", touch_code(tmp_path / "m"))
    assert b"builtins\nexec\n" in data and str(tmp_path / "m").encode() in data

"""Checkpoint loading and the trust model (docs/method.md): every file is built on the fly."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from genaudit.errors import (
    ArchitectureError,
    CheckpointError,
    StateDictMismatchError,
    UnsafeCheckpointError,
)
from genaudit.io import registry as zoo
from genaudit.io.formats import FORMATS, detect_format
from genaudit.io.reading import RawCheckpoint, read_checkpoint
from genaudit.io.state_dicts import find_state_dicts, load_into, select_state_dict
from genaudit.io.writing import arch_from_metadata, save_safetensors

pytestmark = pytest.mark.filterwarnings(
    # Building TorchScript / torch.package fixtures goes through deprecated torch APIs.
    "ignore:`torch.jit:DeprecationWarning",
    "ignore::FutureWarning",
)

ARCH = "dcgan_generator"
KWARGS = {"image_size": 16, "ngf": 4, "nz": 8}


# ---------------------------------------------------------------------------------------------
# Helpers


def fresh_model() -> nn.Module:
    return zoo.build(ARCH, KWARGS).eval()


def randomised_model(seed: int = 0) -> nn.Module:
    """A model whose every parameter and buffer holds distinctive values."""
    model = fresh_model()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7 + seed)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return model


def cloned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_weights(path: Path, **select: str) -> tuple[RawCheckpoint, str, nn.Module]:
    """The whole read → find → select → load path, as the model builder runs it."""
    raw = read_checkpoint(path)
    model = fresh_model()
    key, state = select_state_dict(find_state_dicts(raw.obj), model, **select)
    load_into(model, state)
    return raw, key, model


def assert_same_weights(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def assert_one_line_error(exc: CheckpointError, path: Path) -> None:
    assert exc.exit_code == 3
    assert "\n" not in exc.message
    assert path.name in exc.message
    assert exc.hint


def write_sharded(sd: dict[str, torch.Tensor], directory: Path) -> Path:
    """Two safetensors shards and a Hugging Face style index."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = sorted(sd)
    halves = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for shard, shard_keys in halves.items():
        safetensors.torch.save_file(
            {k: sd[k].contiguous() for k in shard_keys},
            str(directory / shard),
            metadata={"format": "pt"},
        )
        weight_map.update(dict.fromkeys(shard_keys, shard))
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    return index


class TinyNet(nn.Module):
    """A custom module with its own parameter (no torch.nn submodule to give it away)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class TouchOnLoad:
    """Unpickling this creates ``marker``: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class SystemOnLoad:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def model() -> nn.Module:
    return randomised_model()


@pytest.fixture
def sd(model: nn.Module) -> dict[str, torch.Tensor]:
    return cloned_state(model)


@pytest.fixture(scope="module")
def export_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torch.export .pt2 archive (exporting takes a moment: built once)."""
    model = randomised_model()
    program = torch.export.export(model, (torch.randn(2, 8, 1, 1),))
    path = tmp_path_factory.mktemp("export") / "model.pt2"
    torch.export.save(program, str(path))
    return path, cloned_state(model)


# ---------------------------------------------------------------------------------------------
# Weight-only formats load to the same weights


WRITERS: dict[str, Callable[[dict[str, torch.Tensor], Path], Path]] = {}


def writer(name: str) -> Callable[[Callable[..., Path]], Callable[..., Path]]:
    def wrap(fn: Callable[..., Path]) -> Callable[..., Path]:
        WRITERS[name] = fn
        return fn

    return wrap


@writer("safetensors")
def _w_safetensors(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    save_safetensors(sd, tmp / "model.safetensors")
    return tmp / "model.safetensors"


@writer("sharded-index")
def _w_sharded_index(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    return write_sharded(sd, tmp / "ckpt")


@writer("sharded-dir")
def _w_sharded_dir(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    return write_sharded(sd, tmp / "ckpt").parent


@writer("torch-zip")
def _w_torch_zip(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    torch.save(sd, tmp / "model.pt")
    return tmp / "model.pt"


@writer("torch-legacy")
def _w_torch_legacy(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    torch.save(sd, tmp / "model.pth", _use_new_zipfile_serialization=False)
    return tmp / "model.pth"


@writer("no-extension")
def _w_no_extension(sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    torch.save(OrderedDict(sd), tmp / "weights")
    return tmp / "weights"


EXPECTED_FORMAT = {
    "safetensors": "safetensors",
    "sharded-index": "safetensors-sharded",
    "sharded-dir": "safetensors-sharded",
    "torch-zip": "torch-zip",
    "torch-legacy": "torch-legacy",
    "no-extension": "torch-zip",
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_weight_only_formats_load_same_weights(kind: str, tmp_path: Path, sd: dict) -> None:
    path = WRITERS[kind](sd, tmp_path)
    assert detect_format(path) == EXPECTED_FORMAT[kind]
    raw, key, loaded = load_weights(path)
    assert raw.format == EXPECTED_FORMAT[kind] and raw.format in FORMATS
    assert not raw.trusted
    assert key == ""
    assert len(raw.sha256) == 64
    assert_same_weights(loaded, sd)


def test_sharded_metadata_and_sha_of_index(tmp_path: Path, sd: dict) -> None:
    import hashlib

    index = write_sharded(sd, tmp_path / "ckpt")
    raw = read_checkpoint(index.parent)
    assert raw.metadata == {"format": "pt"}
    assert raw.sha256 == hashlib.sha256(index.read_bytes()).hexdigest()


def test_sharded_missing_shard(tmp_path: Path, sd: dict) -> None:
    index = write_sharded(sd, tmp_path / "ckpt")
    (index.parent / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard") as info:
        read_checkpoint(index)
    assert_one_line_error(info.value, index)


def test_sharded_shard_not_safetensors(tmp_path: Path, sd: dict) -> None:
    index = write_sharded(sd, tmp_path / "ckpt")
    torch.save(sd, index.parent / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors"):
        read_checkpoint(index)


def test_sharded_index_disagrees_with_shard(tmp_path: Path, sd: dict) -> None:
    index = write_sharded(sd, tmp_path / "ckpt")
    data = json.loads(index.read_text())
    data["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"disagree.*extra\.weight"):
        read_checkpoint(index)


def test_sharded_symlinked_shards(tmp_path: Path, sd: dict) -> None:
    # The Hugging Face cache layout: snapshot files are symlinks into a blobs folder.
    index = write_sharded(sd, tmp_path / "blobs")
    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for item in index.parent.iterdir():
        (snapshot / item.name).symlink_to(item)
    _, _, loaded = load_weights(snapshot)
    assert_same_weights(loaded, sd)


def test_sharded_shard_outside_directory(tmp_path: Path, sd: dict) -> None:
    index = write_sharded(sd, tmp_path / "ckpt")
    data = json.loads(index.read_text())
    data["weight_map"] = {k: "../elsewhere.safetensors" for k in data["weight_map"]}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="outside the index's directory"):
        read_checkpoint(index)


NESTED: dict[str, Callable[[dict, dict], tuple[dict, str]]] = {
    "state_dict": lambda sd, other: ({"state_dict": sd, "epoch": 3}, "state_dict"),
    "netG_netD": lambda sd, other: (
        {"netG_state_dict": sd, "netD_state_dict": other, "optimizerG": {"lr": 0.1}},
        "netG_state_dict",
    ),
    "model": lambda sd, other: ({"model": sd, "step": 10}, "model"),
    "generator": lambda sd, other: ({"generator": sd, "discriminator": other}, "generator"),
    "deep": lambda sd, other: ({"ckpt": [{"nets": {"G": sd}}]}, "ckpt.0.nets.G"),
}


@pytest.mark.parametrize("layout", sorted(NESTED))
def test_nested_dicts(layout: str, tmp_path: Path, sd: dict) -> None:
    disc = cloned_state(zoo.build("dcgan_discriminator", {"image_size": 16, "ndf": 4}))
    obj, expected_key = NESTED[layout](sd, disc)
    torch.save(obj, tmp_path / "nested.pt")
    _, key, loaded = load_weights(tmp_path / "nested.pt")
    assert key == expected_key
    assert_same_weights(loaded, sd)


def test_lightning_checkpoint_with_attribute_prefix(tmp_path: Path, sd: dict) -> None:
    ckpt = {
        "state_dict": {f"generator.{k}": v for k, v in sd.items()},
        "epoch": 3,
        "global_step": 1200,
        "hyper_parameters": {"lr": 2e-4, "betas": (0.5, 0.999)},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4}]}],
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    raw, key, loaded = load_weights(tmp_path / "last.ckpt")
    assert raw.format == "torch-zip"
    assert key == "state_dict"
    assert_same_weights(loaded, sd)


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."]
)
def test_wrapper_prefixes_stripped(prefix: str, tmp_path: Path, sd: dict) -> None:
    torch.save({prefix + k: v for k, v in sd.items()}, tmp_path / "wrapped.pt")
    _, _, loaded = load_weights(tmp_path / "wrapped.pt")
    assert_same_weights(loaded, sd)


def test_attribute_prefix_kept_when_model_has_it(sd: dict) -> None:
    # Every DCGAN key starts with "main.": that prefix must not be stripped.
    _, state = select_state_dict({"": sd}, fresh_model())
    assert sorted(state) == sorted(sd)


def test_ema_preferred(tmp_path: Path, sd: dict) -> None:
    other = cloned_state(randomised_model(seed=1))
    torch.save({"g": other, "g_ema": sd}, tmp_path / "ema.pt")
    _, key, loaded = load_weights(tmp_path / "ema.pt")
    assert key == "g_ema"
    assert_same_weights(loaded, sd)


@pytest.mark.parametrize("ema_key", ["ema", "G_ema", "model_ema", "state_dict_ema"])
def test_ema_names(ema_key: str, sd: dict) -> None:
    other = cloned_state(randomised_model(seed=1))
    key, _ = select_state_dict({"model": other, ema_key: sd}, fresh_model())
    assert key == ema_key


def test_ambiguous_is_an_error(tmp_path: Path, sd: dict) -> None:
    torch.save({"a": sd, "b": sd}, tmp_path / "two.pt")
    with pytest.raises(
        CheckpointError, match=r"ambiguous: state dicts at 'a', 'b' all fit"
    ) as info:
        load_weights(tmp_path / "two.pt")
    assert not isinstance(info.value, StateDictMismatchError)
    assert "--state-key" in (info.value.hint or "")


def test_state_key_picks_one(tmp_path: Path, sd: dict) -> None:
    other = cloned_state(randomised_model(seed=1))
    torch.save({"a": other, "b": sd}, tmp_path / "two.pt")
    _, key, loaded = load_weights(tmp_path / "two.pt", state_key="b")
    assert key == "b"
    assert_same_weights(loaded, sd)


def test_state_key_missing_lists_available(sd: dict) -> None:
    with pytest.raises(CheckpointError, match=r"--state-key 'c'; found: 'a', 'b'"):
        select_state_dict({"b": sd, "a": sd}, fresh_model(), state_key="c")


def test_strip_prefix(tmp_path: Path, sd: dict) -> None:
    torch.save({f"net.gen.{k}": v for k, v in sd.items()}, tmp_path / "p.pt")
    # A key path prefix of several components is found without the flag too.
    _, _, loaded = load_weights(tmp_path / "p.pt")
    assert_same_weights(loaded, sd)
    _, _, loaded = load_weights(tmp_path / "p.pt", strip_prefix="net.gen.")
    assert_same_weights(loaded, sd)
    _, _, loaded = load_weights(tmp_path / "p.pt", strip_prefix="net.gen")  # dot optional
    assert_same_weights(loaded, sd)
    with pytest.raises(CheckpointError, match=r"--strip-prefix 'nope\.'"):
        load_weights(tmp_path / "p.pt", strip_prefix="nope.")


def test_mismatch_reports_sorted_keys_in_one_error(sd: dict) -> None:
    broken = dict(sd)
    del broken["main.4.weight"], broken["main.1.bias"]
    broken["main.9.weight"] = torch.zeros(3)
    broken["extra.bias"] = torch.zeros(3)
    broken["main.0.weight"] = torch.zeros(1, 2)
    with pytest.raises(StateDictMismatchError) as info:
        select_state_dict({"state_dict": broken}, fresh_model())
    err = info.value
    assert err.exit_code == 3 and "\n" not in err.message
    assert "2 missing [main.1.bias, main.4.weight]" in err.message
    assert "2 unexpected [extra.bias, main.9.weight]" in err.message
    assert "main.0.weight (1, 2) vs model (8, 8, 4, 4)" in err.message
    assert "'state_dict'" in err.message
    assert "--state-key" in (err.hint or "") and "--arch" in (err.hint or "")


def test_mismatch_reports_closest_candidate(sd: dict) -> None:
    disc = cloned_state(zoo.build("dcgan_discriminator", {"image_size": 16, "ndf": 4}))
    partial = dict(sd)
    del partial["main.6.weight"]
    with pytest.raises(StateDictMismatchError, match=r"at 'G'.*1 missing \[main\.6\.weight\]"):
        select_state_dict({"D": disc, "G": partial}, fresh_model())


def test_mismatch_list_truncated(sd: dict) -> None:
    many = {f"junk.{i:02d}": torch.zeros(1) for i in range(20)}
    with pytest.raises(StateDictMismatchError, match=r"20 unexpected \[.*… 12 more\]"):
        select_state_dict({"": {**sd, **many}}, fresh_model())


def test_missing_num_batches_tracked_is_filled(sd: dict) -> None:
    trimmed = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert len(trimmed) < len(sd)
    model = fresh_model()
    _, state = select_state_dict({"": trimmed}, model)
    load_into(model, state)
    for key, value in trimmed.items():
        assert torch.equal(model.state_dict()[key], value)


def test_load_into_is_strict(sd: dict) -> None:
    extra = {**sd, "bogus": torch.zeros(1)}
    with pytest.raises(StateDictMismatchError, match=r"1 unexpected \[bogus\]"):
        load_into(fresh_model(), extra)
    short = {k: v for k, v in sd.items() if k != "main.0.weight"}
    with pytest.raises(StateDictMismatchError, match=r"1 missing \[main\.0\.weight\]"):
        load_into(fresh_model(), short)


def test_weight_norm_parametrisation_keys(tmp_path: Path) -> None:
    net = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 3, 3)))
    sd = cloned_state(net)
    assert any("parametrizations.weight.original0" in k for k in sd)
    torch.save({"model": sd}, tmp_path / "wn.pt")
    twin = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 3, 3)))
    _, state = select_state_dict(find_state_dicts(read_checkpoint(tmp_path / "wn.pt").obj), twin)
    load_into(twin, state)
    assert_same_weights(twin, sd)


def test_find_state_dicts_module_and_nesting(sd: dict) -> None:
    found = find_state_dicts({"a": {"b": sd, "n": 3}, "l": [sd], "empty": {}, "t": torch.ones(1)})
    assert sorted(found) == ["a.b", "l.0"]
    assert sorted(find_state_dicts(TinyNet())) == [""]


def test_allow_globals_namespace(tmp_path: Path, sd: dict) -> None:
    path = tmp_path / "with_args.pt"
    torch.save({"args": argparse.Namespace(lr=0.1, nz=8), "netG": sd}, path)
    assert detect_format(path) == "torch-zip"
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace") as info:
        read_checkpoint(path)
    assert "--allow-global" in (info.value.hint or "")
    for name in ("argparse.Namespace", "argparse:Namespace"):
        raw = read_checkpoint(path, allow_globals=[name])
        assert not raw.trusted
        assert raw.obj["args"].lr == 0.1
    _, key, loaded = load_weights_allowing(path, ["argparse.Namespace"])
    assert key == "netG"
    assert_same_weights(loaded, sd)


def load_weights_allowing(path: Path, names: list[str]) -> tuple[RawCheckpoint, str, nn.Module]:
    raw = read_checkpoint(path, allow_globals=names)
    model = fresh_model()
    key, state = select_state_dict(find_state_dicts(raw.obj), model)
    load_into(model, state)
    return raw, key, model


@pytest.mark.parametrize("name", ["argparse.NoSuchThing", "nosuchmodule_xyz.Thing", "Namespace"])
def test_allow_globals_unresolvable(name: str, tmp_path: Path, sd: dict) -> None:
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="--allow-global"):
        read_checkpoint(tmp_path / "m.pt", allow_globals=[name])
    assert "nosuchmodule_xyz" not in sys.modules


@pytest.mark.parametrize(
    "name",
    [
        "builtins.exec",
        "builtins.eval",
        "runpy._run_code",
        "torch.storage._load_from_bytes",
        "numpy.testing._private.utils.runstring",
        "logging.FileHandler",
        "os.system",
        "pathlib.Path.touch",
    ],
)
def test_allow_globals_refuses_functions_and_denied_modules(name: str, sd: dict) -> None:
    before = set(sys.modules)
    with pytest.raises(CheckpointError, match=r"--allow-global .*refused") as info:
        read_checkpoint("unused.pt", allow_globals=[name])  # refused before the file is read
    assert info.value.exit_code == 3
    assert "numpy.testing" in before or "numpy.testing" not in sys.modules
    assert "FileHandler" not in (info.value.hint or "")


def test_allow_globals_records_what_the_file_used(tmp_path: Path, sd: dict) -> None:
    path = tmp_path / "with_args.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "netG": sd}, path)
    raw = read_checkpoint(path, allow_globals=["argparse.Namespace", "torch.Size"])
    assert raw.allowed_globals == ("argparse.Namespace",) and not raw.trusted
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path)
    assert info.value.hint is not None
    assert info.value.hint.startswith("they are inert data types: pass --allow-global argparse.")


# ---------------------------------------------------------------------------------------------
# Code-bearing formats are refused


def test_pickled_module_refused(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "model.pt"
    torch.save(model, path)
    assert detect_format(path) == "pickled-module"
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path)
    err = info.value
    assert err.exit_code == 3
    assert err.message.startswith(f"refusing to load {path}: a whole pickled nn.Module (references")
    assert "torch.nn.modules.batchnorm.BatchNorm2d" in err.message
    assert "…" in err.message  # more names than are shown
    assert "--trust-checkpoint" in (err.hint or "") and "state_dict()" in (err.hint or "")


def test_pickled_module_names_custom_class(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(TinyNet(), path)
    assert detect_format(path) == "pickled-module"
    with pytest.raises(UnsafeCheckpointError, match=r"nn\.Module \(references .*TinyNet\)"):
        read_checkpoint(path)


def test_legacy_pickled_module_refused(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "model.pth"
    torch.save(model, path, _use_new_zipfile_serialization=False)
    assert detect_format(path) == "pickled-module"
    with pytest.raises(UnsafeCheckpointError, match=r"nn\.Module"):
        read_checkpoint(path)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_refused(how: str, tmp_path: Path, model: nn.Module) -> None:
    scripted = (
        torch.jit.script(model)
        if how == "script"
        else torch.jit.trace(model, torch.randn(1, 8, 1, 1))
    )
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    assert detect_format(path) == "torchscript"
    with pytest.raises(UnsafeCheckpointError, match="TorchScript") as info:
        read_checkpoint(path)
    assert info.value.exit_code == 3


def test_torch_export_refused(export_file: tuple[Path, dict]) -> None:
    path, _ = export_file
    assert detect_format(path) == "torch-export"
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.export") as info:
        read_checkpoint(path)
    assert "--trust-checkpoint" in (info.value.hint or "")


def write_package(path: Path, model: nn.Module) -> None:
    from torch.package import PackageExporter

    with PackageExporter(str(path)) as exporter:
        exporter.extern(["torch.**", "collections.**", "builtins"])
        exporter.intern("genaudit.**")
        exporter.save_pickle("model", "model.pkl", model)


def test_torch_package_refused(tmp_path: Path, model: nn.Module) -> None:
    path = tmp_path / "packaged.pt"
    with pytest.warns(UserWarning):  # torch.package still pickles TypedStorage
        write_package(path, model)
    assert detect_format(path) == "torch-package"
    bundling = r"torch\.package archive bundling .*registry\.py"
    with pytest.raises(UnsafeCheckpointError, match=bundling):
        read_checkpoint(path)
    # Not even trust loads it.
    with pytest.raises(CheckpointError, match="unsupported even when trusted") as info:
        read_checkpoint(path, trust=True)
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_raw_pickle_refused(tmp_path: Path, sd: dict) -> None:
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    assert detect_format(path) == "pickle"
    with pytest.raises(UnsafeCheckpointError, match="raw Python pickle"):
        read_checkpoint(path)


@pytest.mark.parametrize("payload", [TouchOnLoad, SystemOnLoad])
@pytest.mark.parametrize("how", ["pickle2", "pickle5", "torch.save", "torch.save-legacy"])
def test_marker_pickle_never_runs(payload: type, how: str, tmp_path: Path, sd: dict) -> None:
    marker = tmp_path / "marker"
    obj = {"state_dict": sd, "evil": payload(marker)}
    path = tmp_path / "model.pt"
    if how.startswith("pickle"):
        path.write_bytes(pickle.dumps(obj, protocol=int(how[-1])))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=how == "torch.save")
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path)
    expected = "pathlib.Path" if payload is TouchOnLoad else ".system"
    assert expected in info.value.message
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path, allow_globals=["argparse.Namespace"])
    assert not marker.exists()


def test_dangerous_globals_never_suggested_for_allow_global(tmp_path: Path, sd: dict) -> None:
    torch.save({"state_dict": sd, "evil": TouchOnLoad(tmp_path / "marker")}, tmp_path / "e.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.getattr") as info:
        read_checkpoint(tmp_path / "e.pt")
    assert "--allow-global" not in (info.value.hint or "")
    assert "--trust-checkpoint" in (info.value.hint or "")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("zip_format", [True, False])
def test_protocol_4_rejected_by_torch_is_refused(
    zip_format: bool, tmp_path: Path, sd: dict
) -> None:
    # Inert to the static scan, but torch's weights-only loader has no STACK_GLOBAL: refused.
    path = tmp_path / "p4.pt"
    torch.save(sd, path, pickle_protocol=4, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="weights-only loader rejected it") as info:
        read_checkpoint(path)
    assert "\n" not in info.value.message and "re-save" in (info.value.hint or "")


def test_stack_global_through_memo_is_resolved(tmp_path: Path) -> None:
    # Protocol 5 fetches 'pathlib' back from the memo (BINGET) for the second STACK_GLOBAL.
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(TouchOnLoad(tmp_path / "marker"), protocol=5))
    with pytest.raises(UnsafeCheckpointError, match=r"pathlib\.Path\.touch, pathlib\.PosixPath"):
        read_checkpoint(path)
    assert not (tmp_path / "marker").exists()


# ---------------------------------------------------------------------------------------------
# Trusted loading


def hook_fires(module: nn.Module, submodule: str, x: torch.Tensor) -> bool:
    fired: list[tuple[int, ...]] = []
    handle = dict(module.named_modules())[submodule].register_forward_hook(
        lambda _m, _i, out: fired.append(tuple(out.shape))
    )
    try:
        with torch.no_grad():
            module(x)
    finally:
        handle.remove()
    return fired == [(2, 8, 4, 4)]


def test_trusted_pickled_module(tmp_path: Path, model: nn.Module, sd: dict) -> None:
    path = tmp_path / "model.pt"
    torch.save(model, path)
    raw = read_checkpoint(path, trust=True)
    assert raw.trusted and raw.format == "pickled-module"
    assert isinstance(raw.obj, nn.Module)
    assert isinstance(dict(raw.obj.named_modules())["main.0"], nn.ConvTranspose2d)
    assert hook_fires(raw.obj, "main.0", torch.randn(2, 8, 1, 1))
    assert find_state_dicts(raw.obj)[""].keys() == sd.keys()


def test_trusted_export(export_file: tuple[Path, dict]) -> None:
    path, sd = export_file
    raw = read_checkpoint(path, trust=True)
    assert raw.trusted and raw.format == "torch-export"
    assert isinstance(raw.obj, nn.Module)
    x = torch.randn(2, 8, 1, 1)
    assert hook_fires(raw.obj, "main.0", x)
    reference = randomised_model()
    with torch.no_grad():
        torch.testing.assert_close(raw.obj(x), reference(x))
    # Its weights are reachable too, under the original names.
    _, state = select_state_dict(find_state_dicts(raw.obj), fresh_model())
    for key, value in sd.items():
        assert torch.equal(state[key], value), key


def test_trusted_torchscript_gives_weights(tmp_path: Path, model: nn.Module, sd: dict) -> None:
    path = tmp_path / "model.pt"
    torch.jit.script(model).save(str(path))
    raw = read_checkpoint(path, trust=True)
    assert raw.trusted and raw.format == "torchscript"
    target = fresh_model()
    _, state = select_state_dict(find_state_dicts(raw.obj), target)
    load_into(target, state)
    assert_same_weights(target, sd)


def test_trusted_raw_pickle(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    raw = read_checkpoint(path, trust=True)
    assert raw.trusted and raw.obj == {"w": [1.0, 2.0]}


def test_trusted_torch_file_with_other_globals(tmp_path: Path, sd: dict) -> None:
    path = tmp_path / "with_args.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "netG": sd}, path)
    raw = read_checkpoint(path, trust=True)
    assert raw.trusted and raw.format == "torch-zip"
    assert raw.obj["args"].lr == 0.1


# ---------------------------------------------------------------------------------------------
# Missing, corrupt and mis-named files


def corrupt_files(tmp: Path, sd: dict) -> dict[str, Path]:
    files: dict[str, Path] = {}
    (tmp / "empty.pt").write_bytes(b"")
    files["empty"] = tmp / "empty.pt"

    torch.save(sd, tmp / "full.pt")
    data = (tmp / "full.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    files["truncated zip"] = tmp / "truncated.pt"

    save_safetensors(sd, tmp / "full.safetensors")
    data = (tmp / "full.safetensors").read_bytes()
    (tmp / "header.safetensors").write_bytes(data[:40])
    files["truncated safetensors header"] = tmp / "header.safetensors"
    (tmp / "body.safetensors").write_bytes(data[: len(data) - 100])
    files["truncated safetensors data"] = tmp / "body.safetensors"

    torch.save(sd, tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    data = (tmp / "legacy.pt").read_bytes()
    (tmp / "legacy_cut.pt").write_bytes(data[:200])
    files["truncated legacy"] = tmp / "legacy_cut.pt"
    (tmp / "legacy_data_cut.pt").write_bytes(data[:-100])
    files["truncated legacy data"] = tmp / "legacy_data_cut.pt"

    (tmp / "garbage.pt").write_bytes(bytes(range(7, 256)) * 8)
    files["garbage"] = tmp / "garbage.pt"
    (tmp / "text.bin").write_bytes(b"hello, this is not a checkpoint\n")
    files["text"] = tmp / "text.bin"

    save_safetensors(sd, tmp / "really_safetensors.pt")
    files["safetensors named .pt"] = tmp / "really_safetensors.pt"
    torch.save(sd, tmp / "really_zip.safetensors")
    files["zip named .safetensors"] = tmp / "really_zip.safetensors"
    torch.save(sd, tmp / "not_export.pt2")
    files["torch-zip named .pt2"] = tmp / "not_export.pt2"
    (tmp / "config.json").write_text(json.dumps({"nz": 8}))
    files["json that is not an index"] = tmp / "config.json"

    (tmp / "array.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}")
    files["numpy array"] = tmp / "array.npy"

    with zipfile.ZipFile(tmp / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    files["foreign zip"] = tmp / "other.zip"

    (tmp / "nodir").mkdir()
    files["directory without index"] = tmp / "nodir"
    files["missing path"] = tmp / "does_not_exist.pt"
    return files


CORRUPT_KINDS = [
    "empty",
    "truncated zip",
    "truncated safetensors header",
    "truncated safetensors data",
    "truncated legacy",
    "truncated legacy data",
    "garbage",
    "text",
    "safetensors named .pt",
    "zip named .safetensors",
    "torch-zip named .pt2",
    "json that is not an index",
    "foreign zip",
    "numpy array",
    "directory without index",
    "missing path",
]


@pytest.mark.parametrize("kind", CORRUPT_KINDS)
def test_bad_files_give_one_line_errors(kind: str, tmp_path: Path, sd: dict) -> None:
    path = corrupt_files(tmp_path, sd)[kind]
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert_one_line_error(info.value, path)


def test_wrong_extension_names_both(tmp_path: Path, sd: dict) -> None:
    files = corrupt_files(tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"extension \.pt but contains safetensors data"):
        detect_format(files["safetensors named .pt"])
    with pytest.raises(
        CheckpointError, match=r"extension \.safetensors but contains a PyTorch zip"
    ):
        detect_format(files["zip named .safetensors"])


def test_specific_corruption_messages(tmp_path: Path, sd: dict) -> None:
    files = corrupt_files(tmp_path, sd)
    for kind, pattern in [
        ("empty", "is empty"),
        ("truncated zip", "truncated or corrupt zip"),
        ("truncated safetensors header", "truncated safetensors header"),
        ("truncated safetensors data", "truncated"),
        ("missing path", "does not exist"),
        ("directory without index", "directory without"),
        ("numpy array", "looks like a NumPy"),
    ]:
        with pytest.raises(CheckpointError, match=pattern):
            read_checkpoint(files[kind])


# ---------------------------------------------------------------------------------------------
# Writing safetensors and architecture metadata


def test_arch_metadata_round_trip(tmp_path: Path, sd: dict) -> None:
    path = tmp_path / "g.safetensors"
    save_safetensors(sd, path, arch=ARCH, arch_kwargs=KWARGS, metadata={"note": "x"})
    raw = read_checkpoint(path)
    assert raw.metadata["genaudit.arch"] == ARCH
    assert raw.metadata["genaudit.arch_kwargs"] == json.dumps(KWARGS, sort_keys=True)
    assert "genaudit.version" in raw.metadata and raw.metadata["note"] == "x"
    name, kwargs = arch_from_metadata(raw.metadata) or ("", {})
    assert (name, kwargs) == (ARCH, KWARGS)
    model = zoo.build(name, kwargs)
    _, state = select_state_dict(find_state_dicts(raw.obj), model)
    load_into(model, state)
    assert_same_weights(model, sd)


def test_arch_metadata_absent() -> None:
    assert arch_from_metadata({}) is None
    assert arch_from_metadata({"format": "pt"}) is None


@pytest.mark.parametrize("name", ["os:system", "evilpkg.mod:Factory", "evilpkg"])
def test_unknown_arch_in_metadata_never_imported(name: str) -> None:
    meta = {"genaudit.arch": name, "genaudit.arch_kwargs": "{}"}
    with pytest.raises(ArchitectureError, match="dcgan_generator") as info:
        arch_from_metadata(meta)
    assert info.value.exit_code == 3
    assert "evilpkg" not in sys.modules


@pytest.mark.parametrize("kwargs", ["{not json", "[1, 2]"])
def test_bad_arch_kwargs_in_metadata(kwargs: str) -> None:
    with pytest.raises(CheckpointError, match=r"genaudit\.arch_kwargs"):
        arch_from_metadata({"genaudit.arch": ARCH, "genaudit.arch_kwargs": kwargs})


def test_save_refuses_unregistered_arch(tmp_path: Path, sd: dict) -> None:
    with pytest.raises(ArchitectureError):
        save_safetensors(sd, tmp_path / "g.safetensors", arch="mypkg:Net")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failing", ["serialising", "renaming"])
def test_save_is_atomic(
    failing: str, tmp_path: Path, sd: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"the good old file")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    if failing == "serialising":
        monkeypatch.setattr(safetensors.torch, "save", disk_full)
    else:  # the new file is complete in its temporary name when the rename fails
        monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(sd, path)
    assert path.read_bytes() == b"the good old file"
    assert [p.name for p in tmp_path.iterdir()] == ["g.safetensors"]


def test_save_gives_ordinary_permissions(tmp_path: Path, sd: dict) -> None:
    umask = os.umask(0o022)
    try:
        save_safetensors(sd, tmp_path / "g.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "g.safetensors").stat().st_mode & 0o777 == 0o644


def test_save_handles_shared_and_view_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0)
    state = {"a": base, "tied": base, "view": base[2:5], "t": base.view(3, 4).t()}
    save_safetensors(state, tmp_path / "s.safetensors")
    raw = read_checkpoint(tmp_path / "s.safetensors")
    for key, value in state.items():
        assert torch.equal(raw.obj[key], value)

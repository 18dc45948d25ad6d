"""The committed fixtures (fixtures/README.md) load, rebuild from their metadata and run; the
seeded script that makes them runs in its --quick form."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from genaudit.io import registry as zoo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCRIPT = FIXTURES / "make_fixtures.py"
MAX_TOTAL_BYTES = 10_500_000
METADATA_KEYS = (
    "genaudit.arch",
    "genaudit.arch_kwargs",
    "genaudit.version",
    "genaudit.fixture.step",
    "genaudit.fixture.seed",
    "genaudit.fixture.data",
)
# file name → registry name; snapshots are vae_decoder too
EXPECTED_ARCH = {
    "dcgan64_generator.safetensors": "dcgan_generator",
    "dcgan64_discriminator.safetensors": "dcgan_discriminator",
    "vae64_encoder.safetensors": "vae_encoder",
    "vae64_decoder.safetensors": "vae_decoder",
}
SNAPSHOT_RE = re.compile(r"vae64_decoder_step(\d{5})\.safetensors")


def read_fixture(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    return meta, state


def rebuild(path: Path) -> tuple[dict[str, str], torch.nn.Module]:
    """Load a fixture and rebuild its model from the metadata, strictly, in eval mode."""
    meta, state = read_fixture(path)
    missing = [k for k in METADATA_KEYS if k not in meta]
    assert not missing, f"{path.name}: missing metadata {missing}"
    model = zoo.build(meta["genaudit.arch"], json.loads(meta["genaudit.arch_kwargs"]))
    model.load_state_dict(state, strict=True)
    return meta, model.eval()


def check_outputs(meta: dict[str, str], model: torch.nn.Module, min_std: float = 1e-3) -> None:
    """Shapes and ranges of a rebuilt model's outputs on 8 seeded inputs; generators' outputs
    must also vary by more than ``min_std``."""
    arch = meta["genaudit.arch"]
    kwargs = json.loads(meta["genaudit.arch_kwargs"])
    size, nc = kwargs["image_size"], kwargs["nc"]
    gen = torch.Generator().manual_seed(0)
    kind, shape = model.genaudit_input.kind, model.genaudit_input.shape
    with torch.no_grad():
        if kind == "latent":
            y = model(torch.randn(8, *shape, generator=gen))
            assert y.shape == (8, nc, size, size)
            lo, hi = (-1.0, 1.0) if arch == "dcgan_generator" else (0.0, 1.0)
            assert torch.isfinite(y).all() and y.min() >= lo and y.max() <= hi
            assert y.std() > min_std  # not a constant image
        else:
            assert shape == (nc, size, size)
            x = torch.rand(8, *shape, generator=gen)
            y = model(x * 2 - 1 if arch == "dcgan_discriminator" else x)
            width = 1 if arch == "dcgan_discriminator" else 2 * kwargs["nz"]
            assert y.shape == (8, width) and torch.isfinite(y).all()


def snapshots(folder: Path) -> list[tuple[int, Path]]:
    found = [(SNAPSHOT_RE.fullmatch(p.name), p) for p in folder.glob("vae64_decoder_step*")]
    return sorted((int(m.group(1)), p) for m, p in found if m)


def committed_files() -> list[Path]:
    return [FIXTURES / name for name in EXPECTED_ARCH] + [p for _, p in snapshots(FIXTURES)]


@pytest.mark.parametrize("name", sorted(EXPECTED_ARCH))
def test_fixture_rebuilds_from_metadata(name: str) -> None:
    meta, model = rebuild(FIXTURES / name)
    assert meta["genaudit.arch"] == EXPECTED_ARCH[name]
    kwargs = json.loads(meta["genaudit.arch_kwargs"])
    assert meta["genaudit.arch_kwargs"] == json.dumps(kwargs, sort_keys=True)
    assert kwargs["image_size"] == 64 and kwargs["nc"] == 1
    assert int(meta["genaudit.fixture.step"]) > 0
    check_outputs(meta, model)


def test_weights_are_float32_and_batchnorm_stats_are_saved() -> None:
    for path in committed_files():
        _, state = read_fixture(path)
        for key, value in state.items():
            expected = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
            assert value.dtype == expected, (path.name, key)
    _, gen_state = read_fixture(FIXTURES / "dcgan64_generator.safetensors")
    running = [v for k, v in gen_state.items() if k.endswith("running_var")]
    assert running and all(not torch.allclose(v, torch.ones_like(v)) for v in running)


def test_total_size_is_small() -> None:
    files = [p for p in FIXTURES.iterdir() if p.suffix in (".safetensors", ".png")]
    assert sum(p.stat().st_size for p in files) <= MAX_TOTAL_BYTES


def test_decoder_snapshots_track_one_training_run() -> None:
    snaps = snapshots(FIXTURES)
    assert len(snaps) >= 3 and snaps[0][0] == 0
    metas, states = [], []
    for step, path in snaps:
        meta, model = rebuild(path)
        check_outputs(meta, model)
        assert int(meta["genaudit.fixture.step"]) == step
        metas.append(meta)
        states.append(model.state_dict())
    for key in ("genaudit.arch", "genaudit.arch_kwargs", "genaudit.fixture.seed"):
        assert len({m[key] for m in metas}) == 1, key
    assert metas[0]["genaudit.arch"] == "vae_decoder"
    for i in range(len(states)):
        for j in range(i + 1, len(states)):
            assert states[i].keys() == states[j].keys()
            assert any(not torch.equal(states[i][k], states[j][k]) for k in states[i]), (i, j)
    # the last snapshot is the final decoder (fixtures/README.md)
    _, final = read_fixture(FIXTURES / "vae64_decoder.safetensors")
    assert all(torch.equal(final[k], states[-1][k]) for k in final)


def test_quick_run_writes_loadable_fixtures(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "fx"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, arch in EXPECTED_ARCH.items():
        meta, model = rebuild(out / name)
        assert meta["genaudit.arch"] == arch
        check_outputs(meta, model, min_std=0.0)  # 3 steps of 4-channel models: nearly flat
    assert len(snapshots(out)) >= 3
    assert (out / "samples.png").stat().st_size > 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_quick_run_refuses_the_committed_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exc:
        module.parse_args(["--quick", "--out", str(FIXTURES)])
    assert exc.value.code == 2

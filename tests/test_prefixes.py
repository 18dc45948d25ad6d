"""Checkpoints of several networks (a Lightning GAN's ``generator.*`` and ``discriminator.*``),
the key prefix that picks one (``--strip-prefix``, ``--select`` or found automatically), and
text files where a checkpoint should be (Git LFS pointers, HTML pages, JSON)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from genaudit.cli import app
from genaudit.errors import CheckpointError, StateDictMismatchError, UsageError
from genaudit.io.formats import detect_format
from genaudit.io.reading import read_checkpoint
from genaudit.io.state_dicts import choose_state_dict, find_state_dicts, select_state_dict
from genaudit.model.loading import LoadOptions, load_model

runner = CliRunner()
N = ("--num-samples", "8", "--batch-size", "4")


# ---------------------------------------------------------------------------------------------
# A tiny GAN, built in code; the factories are importable as --arch test_prefixes:NAME


class Generator(nn.Module):
    def __init__(self, nz: int = 4) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 3, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class GAN(nn.Module):
    """A Lightning-style module holding both networks."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = Generator()
        self.discriminator = Discriminator()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def generator(nz: int = 4) -> nn.Module:
    return Generator(nz)


def whole_gan() -> nn.Module:
    return GAN()


def randomised(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(3 + seed)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return model.eval()


def state(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}


G_KEYS = len(Generator().state_dict())  # 8
D_KEYS = len(Discriminator().state_dict())  # 4


def lightning(weights: dict[str, torch.Tensor]) -> dict:
    """What a Lightning .ckpt holds, with only weights-only-loadable content."""
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": weights,
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(120.0), "exp_avg": torch.zeros(8, 3, 4, 4)}},
                "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0, 1]}],
            }
        ],
        "lr_schedulers": [],
        "hyper_parameters": {"nz": 4},
    }


@pytest.fixture(scope="module")
def gan() -> GAN:
    model = GAN()
    randomised(model, seed=1)
    return model


@pytest.fixture(scope="module")
def ckpt(gan: GAN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lightning") / "gan.ckpt"
    torch.save(lightning(state(gan)), path)
    return path


def assert_weights(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def candidates(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    return find_state_dicts(read_checkpoint(path).obj)


# ---------------------------------------------------------------------------------------------
# --strip-prefix and --select


@pytest.mark.parametrize("nested", [True, False], ids=["ckpt", "plain"])
def test_strip_prefix_keeps_the_keys_under_it(gan: GAN, nested: bool) -> None:
    weights = state(gan)
    found = find_state_dicts(lightning(weights) if nested else weights)
    chosen = choose_state_dict(found, Generator(), strip_prefix="generator.")
    assert chosen.key == ("state_dict" if nested else "")
    assert (chosen.prefix, chosen.ignored) == ("generator.", D_KEYS)
    model = Generator()
    model.load_state_dict(chosen.state)
    assert_weights(model, state(gan.generator))
    # the discriminator, the other way round
    chosen = choose_state_dict(found, Discriminator(), strip_prefix="discriminator")
    assert (chosen.prefix, chosen.ignored) == ("discriminator.", G_KEYS)


def test_select_is_strip_prefix_with_a_dot_and_takes_dotted_paths(gan: GAN) -> None:
    weights = {**state(gan.generator, "model.netG."), **state(gan.discriminator, "model.netD.")}
    by_select = choose_state_dict({"": weights}, Generator(), select="model.netG")
    by_prefix = choose_state_dict({"": weights}, Generator(), strip_prefix="model.netG.")
    assert by_select.prefix == by_prefix.prefix == "model.netG."
    assert by_select.ignored == by_prefix.ignored == D_KEYS
    assert sorted(by_select.state) == sorted(by_prefix.state) == sorted(Generator().state_dict())


def test_select_and_strip_prefix_together_is_a_usage_error(gan: GAN) -> None:
    with pytest.raises(UsageError, match=r"--select and --strip-prefix") as info:
        choose_state_dict({"": state(gan)}, Generator(), select="generator", strip_prefix="g.")
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match=r"not a dotted key path"):
        choose_state_dict({"": state(gan)}, Generator(), select="generator..main")


def test_a_prefix_no_key_has_lists_the_top_level_prefixes(ckpt: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        choose_state_dict(candidates(ckpt), Generator(), select="netG")
    err = info.value
    assert err.exit_code == 3 and not isinstance(err, StateDictMismatchError)
    assert err.message == "--select 'netG': no key in the checkpoint starts with 'netG.'"
    assert "'discriminator.', 'generator.'" in (err.hint or "")


@pytest.mark.parametrize(
    ("keys", "flag", "prefix"),
    [
        ("generator.module.", "generator", "generator.module."),  # wrapper inside the prefix
        ("generator._orig_mod.module.", "generator.", "generator._orig_mod.module."),
        ("module.generator.", "generator", "module.generator."),  # DDP around the whole module
    ],
)
def test_wrapper_prefixes_are_still_stripped(gan: GAN, keys: str, flag: str, prefix: str) -> None:
    outer = "module." if keys.startswith("module.") else ""
    weights = {**state(gan.generator, keys), **state(gan.discriminator, outer + "discriminator.")}
    chosen = choose_state_dict({"": weights}, Generator(), strip_prefix=flag)
    assert (chosen.prefix, chosen.ignored) == (prefix, D_KEYS)
    assert sorted(chosen.state) == sorted(Generator().state_dict())


def test_the_prefix_must_make_the_keys_fit(ckpt: Path) -> None:
    with pytest.raises(StateDictMismatchError) as info:
        choose_state_dict(candidates(ckpt), Generator(nz=5), select="generator")
    assert "keys under 'generator.'; 4 other keys ignored" in info.value.message
    assert "main.0.weight (4, 8, 4, 4) vs model (5, 8, 4, 4)" in info.value.message


# ---------------------------------------------------------------------------------------------
# No flag: a prefix found automatically


def test_the_only_fitting_prefix_is_chosen(ckpt: Path, gan: GAN) -> None:
    found = candidates(ckpt)
    assert "optimizer_states.0.state.0" in found  # a candidate that fits nothing
    chosen = choose_state_dict(found, Generator())
    assert (chosen.key, chosen.prefix, chosen.ignored) == ("state_dict", "generator.", D_KEYS)
    chosen = choose_state_dict(found, Discriminator())
    assert (chosen.prefix, chosen.ignored) == ("discriminator.", G_KEYS)
    assert torch.equal(chosen.state["main.0.weight"], gan.discriminator.main[0].weight)
    # the old two-value interface returns the same weights
    key, weights = select_state_dict(found, Generator())
    assert key == "state_dict" and torch.equal(
        weights["main.0.weight"], gan.generator.main[0].weight
    )


def test_prefixes_of_several_components(gan: GAN) -> None:
    weights = {**state(gan.generator, "model.netG."), **state(gan.discriminator, "model.netD.")}
    chosen = choose_state_dict({"": weights}, Generator())
    assert (chosen.prefix, chosen.ignored) == ("model.netG.", D_KEYS)


def test_ema_prefix_wins(gan: GAN) -> None:
    ema = randomised(Generator(), seed=5)
    weights = {
        **state(gan.generator, "G."),
        **state(ema, "G_ema."),
        **state(gan.discriminator, "D."),
    }
    chosen = choose_state_dict({"state_dict": weights}, Generator())
    assert (chosen.prefix, chosen.ignored) == ("G_ema.", G_KEYS + D_KEYS)
    assert torch.equal(chosen.state["main.0.weight"], ema.main[0].weight)


def test_several_fitting_prefixes_are_ambiguous(gan: GAN) -> None:
    weights = {**state(gan.generator, "G."), **state(gan.generator, "G2.")}
    with pytest.raises(CheckpointError) as info:
        choose_state_dict({"state_dict": weights}, Generator())
    err = info.value
    assert err.exit_code == 3 and not isinstance(err, StateDictMismatchError)
    assert err.message == "ambiguous: the keys under 'G.', 'G2.' at 'state_dict' all fit the model"
    assert "--select G" in (err.hint or "")
    chosen = choose_state_dict({"state_dict": weights}, Generator(), select="G2")
    assert chosen.prefix == "G2."
    apart = {"a": state(gan.generator, "G."), "b": state(gan.generator, "H.")}
    apart["a"].update(state(gan.discriminator, "D."))
    apart["b"].update(state(gan.discriminator, "D."))
    with pytest.raises(
        CheckpointError,
        match=r"^ambiguous: the keys under 'G\.' at 'a'; the "
        r"keys under 'H\.' at 'b' all fit the model$",
    ) as info:
        choose_state_dict(apart, Generator())
    assert "--state-key" in (info.value.hint or "")
    assert choose_state_dict(apart, Generator(), state_key="b").prefix == "H."


def test_a_whole_fit_wins_over_a_prefix(gan: GAN) -> None:
    ema = randomised(Generator(), seed=7)
    found = {"state_dict": state(gan), "g_ema": state(ema)}
    chosen = choose_state_dict(found, Generator())
    assert (chosen.key, chosen.prefix, chosen.ignored) == ("g_ema", "", 0)


def test_no_fitting_prefix_names_the_prefixes_in_the_hint(ckpt: Path) -> None:
    with pytest.raises(StateDictMismatchError) as info:
        choose_state_dict(candidates(ckpt), Generator(nz=5))
    assert info.value.message == (
        "the weights at 'state_dict' (the keys under 'generator.'; 4 other keys ignored) do not "
        "fit the model: 1 with other shapes [main.0.weight (4, 8, 4, 4) vs model (5, 8, 4, 4)]"
    )
    hint = info.value.hint or ""
    assert "--select" in hint and "'discriminator.', 'generator.'" in hint


def test_meta_models_fit_before_allocation(ckpt: Path) -> None:
    with torch.device("meta"):
        meta = Generator()
    chosen = choose_state_dict(candidates(ckpt), meta)
    assert (chosen.prefix, chosen.ignored) == ("generator.", D_KEYS)


def test_registry_architecture_under_a_prefix(tmp_path: Path) -> None:
    from genaudit.io import registry as zoo

    kwargs = {"image_size": 16, "ngf": 4, "nz": 8}
    g = randomised(zoo.build("dcgan_generator", kwargs), seed=2)
    d = zoo.build("dcgan_discriminator", {"image_size": 16, "ndf": 4})
    path = tmp_path / "dcgan.ckpt"
    torch.save(lightning({**state(g, "generator."), **state(d, "discriminator.")}), path)
    loaded = load_model(path, LoadOptions(arch="dcgan_generator", arch_kwargs=kwargs))
    assert (loaded.state_key, loaded.key_prefix, loaded.ignored_keys) == (
        "state_dict",
        "generator.",
        len(d.state_dict()),
    )
    assert_weights(loaded.model, state(g))
    described = loaded.describe()
    assert described["key_prefix"] == "generator." and described["ignored_keys"] > 0


# ---------------------------------------------------------------------------------------------
# The command line


def run(*args: str):
    return runner.invoke(app, list(args))


def test_cli_reports_the_chosen_prefix(ckpt: Path) -> None:
    res = run("layers", str(ckpt), "--arch", "test_prefixes:generator", "--json", "-")
    assert res.exit_code == 0, res.output
    assert "weights: state_dict, keys under generator. (4 other keys ignored)" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["checkpoint"]["key_prefix"] == "generator."
    assert doc["checkpoint"]["ignored_keys"] == D_KEYS
    assert doc["config"]["load"]["select"] is None
    quiet = run("layers", str(ckpt), "--arch", "test_prefixes:generator", "--quiet")
    assert quiet.exit_code == 0 and "weights:" not in quiet.stderr


def test_cli_select_and_strip_prefix(ckpt: Path) -> None:
    arch = ("--arch", "test_prefixes:generator")
    res = run("layers", str(ckpt), *arch, "--select", "generator", "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["config"]["load"]["select"] == "generator"
    assert doc["checkpoint"]["key_prefix"] == "generator."
    both = run("layers", str(ckpt), *arch, "--select", "generator", "--strip-prefix", "generator.")
    assert both.exit_code == 2 and "--select and --strip-prefix" in both.stderr
    bad = run("layers", str(ckpt), *arch, "--select", "generator..x")
    assert bad.exit_code == 2 and "not a dotted key path" in bad.stderr
    missing = run("layers", str(ckpt), *arch, "--strip-prefix", "netG")
    assert missing.exit_code == 3, missing.output
    assert "no key in the checkpoint starts with 'netG.'" in missing.stderr
    assert "'discriminator.', 'generator.'" in missing.stderr


def test_cli_whole_gan_and_module(ckpt: Path, gan: GAN) -> None:
    res = run("sdr", str(ckpt), "--arch", "test_prefixes:whole_gan", "--module", "generator",
              *N, "--json", "-")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "weights:" not in res.stderr  # the whole module fits as it is
    doc = json.loads(res.stdout)
    ckpt_doc = doc["checkpoint"]
    assert ckpt_doc["module"] == "generator" and ckpt_doc["state_key"] == "state_dict"
    assert (ckpt_doc["key_prefix"], ckpt_doc["ignored_keys"]) == ("", 0)
    assert [layer["name"] for layer in doc["results"]["layers"]] == ["main.0", "main.3"]


# ---------------------------------------------------------------------------------------------
# Text where a checkpoint should be

LFS = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 52428800\n"
)
HTML = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>…</body></html>\n"
XML = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code></Error>\n'


@pytest.mark.parametrize("name", ["g.pt", "g.ckpt", "model.safetensors", "weights.bin"])
@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (LFS, rf"is a Git LFS pointer \({len(LFS)} bytes\) for a 52428800-byte file, not the "
              r"weights: run `git lfs pull`"),
        (HTML, r"is an HTML page, not a checkpoint \(a failed download\?\)"),
        ("\n  <html><body>Not Found</body></html>", r"is an HTML page"),
        (XML, r"is an XML document, not a checkpoint"),
        ('{"error": "not found"}', r"is a JSON document \(22 bytes\), not a checkpoint"),
        ("", r"is empty"),
        ("  \n", r"is empty"),
        ("Access denied.\n", r"is a text file \(15 bytes, starting 'Access denied.'\)"),
    ],
    ids=["lfs", "html", "html-late", "xml", "json", "empty", "blank", "text"],
)  # fmt: skip
def test_text_files_get_one_line_saying_what_they_are(
    tmp_path: Path, name: str, content: str, pattern: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match=pattern) as info:
        read_checkpoint(path)
    err = info.value
    assert err.exit_code == 3 and "\n" not in err.message and err.hint
    assert "\n" not in err.hint


def test_cli_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "gan.ckpt"
    path.write_text(LFS, encoding="utf-8")
    res = run("layers", str(path), "--arch", "test_prefixes:generator")
    assert res.exit_code == 3, res.output
    assert "is a Git LFS pointer" in res.stderr and "git lfs pull" in res.stderr
    assert "Traceback" not in res.output


def test_text_pickles_and_shard_indexes_are_not_mistaken_for_text(tmp_path: Path) -> None:
    path = tmp_path / "p0.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=0))  # a protocol-0 pickle is ASCII
    assert detect_format(path) == "pickle"
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"w": "a.safetensors"}}))
    assert detect_format(index) == "safetensors-sharded"
    index_no_suffix = tmp_path / "model.index"
    index_no_suffix.write_text(index.read_text())
    assert detect_format(index_no_suffix) == "safetensors-sharded"

"""Model inputs (docs/method.md): inference, trial forward, files, samplers, conditional models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import toy_models
from safetensors.torch import save_file
from torch import nn

from genaudit.errors import ModelInputError, UsageError
from genaudit.io import registry as zoo
from genaudit.model.inputs import (
    InputOptions,
    infer_latent_shape,
    latent_source,
    make_input_source,
    read_tensor_file,
    trial_forward,
)
from genaudit.values import parse_shape

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (zoo.build("dcgan_generator", {"ngf": 4, "nz": 16}), (16, 1, 1)),
        (zoo.build("vae_decoder", {"ngf": 4, "nz": 7}), (7,)),
        (toy_models.reordered(5), (5, 1, 1)),
        (toy_models.linear_first(9), (9,)),
    ],
)
def test_latent_inference_confirmed_by_trial_forward(
    model: nn.Module, shape: tuple[int, ...]
) -> None:
    if hasattr(model, "genaudit_input"):
        del model.genaudit_input  # infer from layers, not from the registry's annotation
    assert infer_latent_shape(model) == shape
    source = make_input_source(model, InputOptions())
    out = trial_forward(model, source, CPU)
    assert out.shape[0] == 2


def test_inference_failure_is_clear() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ModelInputError, match="cannot infer the model's input"):
        infer_latent_shape(model)


def test_trial_forward_failure_is_one_line() -> None:
    model = zoo.build("dcgan_generator", {"ngf": 4, "nz": 16})
    source = make_input_source(model, InputOptions(z_shape=(17, 1, 1)))
    with pytest.raises(ModelInputError) as info:
        trial_forward(model, source, CPU)
    assert "2×17×1×1" in info.value.message and "\n" not in info.value.message


def test_draws_do_not_depend_on_batch_size_or_count() -> None:
    source = latent_source((3, 1, 1), seed=5)
    whole = torch.cat([b[0] for b in source.batches(200, 200)])
    pieces = torch.cat([b[0] for b in source.batches(150, 7)])
    assert torch.equal(whole[:150], pieces)
    other = latent_source((3, 1, 1), seed=6).batch(0, 10)[0]
    assert not torch.equal(other, whole[:10])


def test_uniform_and_unknown_distribution() -> None:
    z = latent_source((1000,), dist="uniform").batch(0, 4)[0]
    assert z.min() >= -1 and z.max() <= 1 and z.min() < -0.9
    with pytest.raises(UsageError, match="z-dist"):
        latent_source((3,), dist="cauchy")


@pytest.mark.parametrize("fmt", ["int", "onehot"])
def test_conditional_generator(fmt: str) -> None:
    model = toy_models.conditional(nz=5, num_classes=3)
    source = make_input_source(model, InputOptions(z_shape=(5,), num_classes=3, label_format=fmt))
    _z, y = source.batch(0, 50)
    if fmt == "int":
        assert y.dtype == torch.int64 and set(y.tolist()) == {0, 1, 2}
    else:
        assert y.shape == (50, 3) and torch.equal(y.sum(1), torch.ones(50))
    assert trial_forward(model, source, CPU).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("fmt", ["int", "onehot"])
def test_conditional_latent_inferred_beside_its_labels(fmt: str) -> None:
    # the first Linear takes z (5) and the label's embedding (4) concatenated: 9 features
    model = toy_models.conditional(nz=5, num_classes=3)
    assert infer_latent_shape(model, 3, fmt) == (5,)
    source = make_input_source(model, InputOptions(num_classes=3, label_format=fmt))
    assert source.description["shape"] == [5]
    assert trial_forward(model, source, CPU).shape == (2, 1, 8, 8)
    # without the labels the second input is missing, and the hint says so
    with pytest.raises(ModelInputError, match="missing") as info:
        infer_latent_shape(model)
    assert "--num-classes" in (info.value.hint or "")


def test_latents_files_two_inputs(tmp_path) -> None:
    z = torch.randn(10, 4, 1, 1)
    noise = np.random.default_rng(0).standard_normal((10, 6, 4, 4)).astype(np.float32)
    torch.save(z, tmp_path / "z.pt")
    np.save(tmp_path / "noise.npy", noise)
    model = toy_models.two_inputs()
    opts = InputOptions(latents=(str(tmp_path / "z.pt"), str(tmp_path / "noise.npy")))
    source = make_input_source(model, opts)
    assert source.available == 10
    a, b = source.batch(3, 5)
    assert torch.equal(a, z[3:5]) and np.array_equal(b.numpy(), noise[3:5])
    assert trial_forward(model, source, CPU).shape == (2, 2, 4, 4)
    with pytest.raises(ModelInputError, match="hold 10"):
        list(source.batches(11, 4))


def test_latents_files_must_share_batch(tmp_path) -> None:
    torch.save(torch.randn(10, 4, 1, 1), tmp_path / "z.pt")
    save_file({"noise": torch.randn(9, 6, 4, 4)}, tmp_path / "n.safetensors")
    opts = InputOptions(latents=(str(tmp_path / "z.pt"), str(tmp_path / "n.safetensors")))
    with pytest.raises(ModelInputError, match="do not share the batch dimension"):
        make_input_source(toy_models.two_inputs(), opts)


def test_bad_latents_files(tmp_path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a tensor at all")
    with pytest.raises(ModelInputError, match="cannot read"):
        read_tensor_file(str(tmp_path / "junk.pt"), "latents")
    with pytest.raises(ModelInputError, match="does not exist"):
        read_tensor_file(str(tmp_path / "missing.pt"), "latents")
    torch.save(torch.tensor([1.0, float("nan")]), tmp_path / "nan.pt")
    with pytest.raises(ModelInputError, match="NaN"):
        read_tensor_file(str(tmp_path / "nan.pt"), "latents")
    torch.save({"a": torch.zeros(2), "b": torch.zeros(2)}, tmp_path / "two.pt")
    with pytest.raises(ModelInputError, match="holds 2 tensors"):
        read_tensor_file(str(tmp_path / "two.pt"), "latents")


def test_sampler() -> None:
    opts = InputOptions(sampler="toy_models:sampler", seed=3)
    model = toy_models.reordered(8)
    source = make_input_source(model, opts)
    (z,) = source.batch(0, 100)
    assert z.shape == (100, 8, 1, 1) and z.min() >= 0 and z.max() < 1
    assert torch.equal(torch.cat([b[0] for b in source.batches(100, 30)]), z)
    assert trial_forward(model, source, CPU).shape == (2, 1, 16, 16)
    with pytest.raises(UsageError, match=r"pkg\.module:name"):
        make_input_source(model, InputOptions(sampler="no-colon"))


def test_data_model_without_data_gets_a_probe() -> None:
    model = zoo.build("dcgan_discriminator", {"ndf": 4})
    source = make_input_source(model, InputOptions())
    assert source.description["kind"] == "probe"
    assert trial_forward(model, source, CPU).shape == (2, 1)


@pytest.mark.parametrize(
    ("text", "shape"), [("100", (100,)), ("100,1,1", (100, 1, 1)), ("8x4", (8, 4))]
)
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["a,b", "0", "-3"])
def test_parse_shape_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_shape(text)


# --------------------------------------------------------------------------- exported programs


def _export(tmp_path, batch: int, dynamic: bool = False):
    from torch.export import Dim

    torch.manual_seed(1)
    model = zoo.build("dcgan_generator", {"ngf": 4, "nz": 8, "image_size": 16}).eval()
    z = torch.randn(batch, 8, 1, 1)
    shapes = ({0: Dim("batch", min=1, max=4096)},) if dynamic else None
    path = tmp_path / f"g{batch}{'d' * dynamic}.pt2"
    torch.export.save(torch.export.export(model, (z,), dynamic_shapes=shapes), path)
    return path


def test_static_batch_size_of_an_exported_program(tmp_path) -> None:
    from genaudit.model.exported import static_batch_size, static_input_shapes
    from genaudit.model.loading import LoadOptions, load_model

    static = load_model(_export(tmp_path, 3), LoadOptions(trust_checkpoint=True)).model
    dynamic = load_model(_export(tmp_path, 3, True), LoadOptions(trust_checkpoint=True)).model
    assert static_input_shapes(static) == [(3, 8, 1, 1)]
    assert static_batch_size(static) == 3
    assert static_batch_size(dynamic) is None
    assert static_batch_size(zoo.build("dcgan_generator", {"ngf": 4, "nz": 8})) is None
    # the latent shape comes from the program; trial runs use its batch size
    assert infer_latent_shape(static) == (8, 1, 1)
    source = make_input_source(static, InputOptions())
    assert source.fixed_batch == 3 and source.first_batch()[0].shape[0] == 3
    trial_forward(static, source, CPU)
    assert [t[0].shape[0] for t in source.batches(6, 64)] == [3, 3]
    with pytest.raises(UsageError, match="exactly 3 samples") as info:
        list(source.batches(7, 64))
    assert "6 or 9" in (info.value.hint or "")
    assert make_input_source(dynamic, InputOptions()).fixed_batch is None
    # what the exported generator feeds keeps its batch size
    from genaudit.model.inputs import generated_source

    fed = generated_source(static, source, CPU)
    assert fed.fixed_batch == 3 and fed.first_batch()[0].shape == (3, 3, 16, 16)


def test_exported_program_with_a_fixed_batch_needs_no_batch_size(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from genaudit.cli import app

    path = str(_export(tmp_path, 3))
    runner = CliRunner()
    base = ["--trust-checkpoint", "--device", "cpu"]
    res = runner.invoke(app, ["sdr", path, *base, "--num-samples", "6", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["results"]["num_samples"] == 6 and doc["results"]["batch_size_final"] == 3
    res = runner.invoke(app, ["stretch", path, *base, "--num-samples", "6", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["sdr", path, *base, "--num-samples", "8"])
    assert res.exit_code == 2, res.output
    assert "exactly 3 samples" in res.stderr and "--num-samples 6 or 9" in res.stderr


def test_a_fixed_batch_encoder_fed_by_a_generator_gets_its_batch_size(tmp_path) -> None:
    """An encoder exported for batches of 3, fed the outputs of an eager generator."""
    import json

    from typer.testing import CliRunner

    from genaudit.cli import app
    from genaudit.io.writing import save_safetensors
    from genaudit.model.inputs import feeding, generated_source

    torch.manual_seed(2)
    gen = zoo.build("dcgan_generator", {"ngf": 4, "nz": 8, "image_size": 16}).eval()
    gen_path = tmp_path / "g.safetensors"
    save_safetensors(gen.state_dict(), gen_path, arch="dcgan_generator",
                     arch_kwargs={"ngf": 4, "nz": 8, "image_size": 16})  # fmt: skip
    disc = zoo.build("dcgan_discriminator", {"ndf": 4, "image_size": 16}).eval()
    disc_path = tmp_path / "d3.pt2"
    torch.export.save(torch.export.export(disc, (torch.randn(3, 3, 16, 16),)), disc_path)
    runner = CliRunner()
    base = ["--trust-checkpoint", "--device", "cpu", "--generator", str(gen_path)]
    res = runner.invoke(app, ["sdr", str(disc_path), *base, "--num-samples", "6", "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["results"]["batch_size_final"] == 3
    res = runner.invoke(app, ["sdr", str(disc_path), *base, "--num-samples", "8"])
    assert res.exit_code == 2 and "exactly 3 samples" in res.stderr, res.output
    # two different fixed batch sizes cannot be reconciled: one clear error
    from genaudit.model.loading import LoadOptions, load_model

    static_gen = load_model(_export(tmp_path, 2), LoadOptions(trust_checkpoint=True)).model
    static_disc = load_model(disc_path, LoadOptions(trust_checkpoint=True)).model
    fed = generated_source(static_gen, make_input_source(static_gen, InputOptions()), CPU)
    with pytest.raises(ModelInputError, match=r"exactly 3 samples.*exactly 2"):
        feeding(static_disc, fed)

"""The last convolution's level: ``image`` for models that make maps, ``readout`` for models whose
output is spatially smaller than their input (encoders, discriminators), and what uses levels."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
import toy_models
from conftest import FIXTURES
from torch import nn

from genaudit import gate
from genaudit.analysis.sdr import run_sdr
from genaudit.analysis.stretch import STRETCH_LEVELS, choose_stretch_layers, default_stretch_layers
from genaudit.errors import UsageError
from genaudit.io import registry as zoo
from genaudit.model.inputs import InputOptions, make_input_source
from genaudit.model.layers import LayerRecord, assign_levels, select_layers, walk_layers
from genaudit.model.levels import ALL_LEVELS, HIDDEN_LEVELS, READOUT_LEVEL, Level, is_level
from genaudit.model.loading import LoadOptions, load_model


def _walk(model: nn.Module, *shapes: tuple[int, ...]) -> list[LayerRecord]:
    return walk_layers(model, tuple(torch.randn(2, *s) for s in shapes))


def _fixture_records(name: str) -> list[LayerRecord]:
    loaded = load_model(FIXTURES / f"{name}.safetensors", LoadOptions())
    source = make_input_source(loaded.model, InputOptions())
    return walk_layers(loaded.model, source.first_batch())


def _last_conv(records: list[LayerRecord]) -> LayerRecord:
    return [r for r in records if r.is_conv][-1]


def test_the_level_type_names_every_level_in_order() -> None:
    assert get_args(Level) == ALL_LEVELS
    assert set(HIDDEN_LEVELS) < set(ALL_LEVELS)
    assert is_level("readout") and not is_level("hidden")


# --------------------------------------------------------------------------- the fixtures


def test_vae_encoder_ends_in_a_readout() -> None:
    recs = _fixture_records("vae64_encoder")
    assert [(r.name, r.level) for r in recs] == [
        ("features.0", "fine"),
        ("features.2", "intermediate"),
        ("features.4", "coarse"),
        ("features.6", READOUT_LEVEL),  # 64×8×8 → 128×4×4: the code's last map
        ("fc", "linear"),
    ]


def test_dcgan_discriminator_ends_in_a_readout() -> None:
    recs = _fixture_records("dcgan64_discriminator")
    last = _last_conv(recs)
    assert (last.name, last.output_shape, last.level) == ("main.11", (1, 1, 1), READOUT_LEVEL)
    assert [r.level for r in recs[:-1]] == ["fine", "intermediate", "coarse", "coarse"]
    assert "image" not in {r.level for r in recs}


@pytest.mark.parametrize("name", ["vae64_decoder", "dcgan64_generator"])
def test_generators_keep_image(name: str) -> None:
    recs = _fixture_records(name)
    assert _last_conv(recs).level == "image"
    assert READOUT_LEVEL not in {r.level for r in recs}


# --------------------------------------------------------------------------- toy models


def test_image_to_image_keeps_image() -> None:
    same = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    assert [r.level for r in _walk(same, (3, 16, 16))] == ["fine", "image"]
    # down then up again (an autoencoder or U-Net shape): the output is as large as the input
    down_up = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1))
    assert [r.level for r in _walk(down_up, (3, 16, 16))] == ["fine", "image"]


def test_super_resolution_keeps_image() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(3, 3, 3, padding=1)
    )
    recs = _walk(model, (3, 8, 8))
    assert recs[-1].output_shape == (3, 16, 16) and recs[-1].level == "image"


def test_one_dimensional_models() -> None:
    vocoder = nn.Sequential(
        nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.ConvTranspose1d(16, 1, 16, 8, 4)
    )
    recs = _walk(vocoder, (8, 16))
    assert recs[-1].output_shape == (1, 128) and recs[-1].level == "image"
    assert _walk(toy_models.conv1d_pair(), (2, 16))[-1].level == "image"  # same length
    encoder = nn.Sequential(nn.Conv1d(1, 4, 4, 2, 1), nn.ReLU(), nn.Conv1d(4, 8, 4, 2, 1))
    recs = _walk(encoder, (1, 32))
    assert [r.level for r in recs] == ["fine", READOUT_LEVEL]


def test_generators_fed_vectors_keep_image() -> None:
    # z → Linear → 4×4 maps → convolutions: measured from the map the Linear layer makes
    assert [r.level for r in _walk(toy_models.linear_first(), (6,))] == [
        "linear", "fine", "image"
    ]  # fmt: skip
    # no convolution is fed a map larger than 1×1: nothing to be smaller than
    assert [r.level for r in _walk(nn.ConvTranspose2d(3, 2, 4), (3, 1, 1))] == ["image"]
    assert [r.level for r in _walk(nn.Conv2d(3, 2, 1), (3, 1, 1))] == ["image"]


class _LabelMapDiscriminator(nn.Module):
    """A conditional discriminator: the label's embedding, a Linear layer, is an extra map."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 16 * 16)
        self.conv = nn.Conv2d(2, 4, 4, 2, 1)
        self.out = nn.Conv2d(4, 1, 8)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        label = self.embed(y).view(-1, 1, 16, 16)
        return self.out(torch.relu(self.conv(torch.cat([x, label], dim=1))))


def test_linear_layer_ahead_of_shrinking_convolutions_is_still_a_readout() -> None:
    recs = _walk(_LabelMapDiscriminator(), (1, 16, 16), (3,))
    assert [(r.name, r.level) for r in recs] == [
        ("embed", "linear"), ("conv", "fine"), ("out", READOUT_LEVEL)
    ]  # fmt: skip


def _conv(grid_in: tuple[int, ...], grid_out: tuple[int, ...]) -> dict[str, object]:
    return {"type": "Conv2d", "input_shape": (4, *grid_in), "output_shape": (4, *grid_out)}


@pytest.mark.parametrize(
    ("recs", "last"),
    [
        ([_conv((8, 8), (4, 4)), _conv((4, 4), (8, 8))], "image"),  # back to the input's size
        ([_conv((8, 8), (4, 4)), _conv((4, 4), (4, 4))], READOUT_LEVEL),
        ([_conv((8, 8), (8, 8))], "image"),  # one convolution, same size
        ([_conv((8, 8), (4, 4))], READOUT_LEVEL),
        ([_conv((16, 4), (8, 8))], "image"),  # points are counted, not sides
        ([_conv((1, 1), (4, 4)), _conv((4, 4), (2, 2))], READOUT_LEVEL),  # the 1×1 is skipped
        ([{"type": "Linear", "input_shape": (8,), "output_shape": (64,)}, _conv((4, 4), (8, 8))],
         "image"),
    ],
)  # fmt: skip
def test_readout_rule(recs: list[dict[str, object]], last: str) -> None:
    assert assign_levels(recs)[-1] == last


@pytest.mark.parametrize(
    ("input_points", "last"),
    [(None, READOUT_LEVEL), (1, READOUT_LEVEL), (16 * 16, "image"), (32 * 32, READOUT_LEVEL)],
)
def test_the_model_input_is_the_reference_when_it_is_a_map(
    input_points: int | None, last: str
) -> None:
    # reflection padding makes the first convolution's input (22×22) larger than the model's
    # input and output (16×16): an image-to-image network still ends at ``image``
    recs = [_conv((22, 22), (16, 16)), _conv((16, 16), (16, 16)), _conv((22, 22), (16, 16))]
    assert assign_levels(recs, input_points)[-1] == last


def test_reflection_padded_image_to_image_network_ends_at_image() -> None:
    model = nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(3, 4, 7), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1),
        nn.ConvTranspose2d(4, 4, 3, 2, 1, output_padding=1), nn.ReflectionPad2d(3),
        nn.Conv2d(4, 3, 7), nn.Tanh(),
    )  # fmt: skip
    recs = walk_layers(model, (torch.randn(2, 3, 16, 16),))
    assert recs[-1].input_shape == (4, 22, 22) and recs[-1].level == "image"


# --------------------------------------------------------------------------- what uses levels


@pytest.fixture(scope="module")
def discriminator() -> tuple[nn.Module, list[LayerRecord]]:
    torch.manual_seed(0)
    model = zoo.build("dcgan_discriminator", {"ndf": 4, "image_size": 16, "nc": 1})
    return model, walk_layers(model, (torch.randn(2, 1, 16, 16),))


def test_select_readout_by_name(discriminator: tuple[nn.Module, list[LayerRecord]]) -> None:
    _, recs = discriminator
    assert [r.name for r in select_layers(recs, [READOUT_LEVEL])] == [_last_conv(recs).name]
    with pytest.raises(UsageError, match="no layer matches 'image'") as info:
        select_layers(recs, ["image"])
    assert READOUT_LEVEL in str(info.value.hint)


def test_stretch_defaults_leave_the_readout_out(
    discriminator: tuple[nn.Module, list[LayerRecord]],
) -> None:
    _, recs = discriminator
    assert READOUT_LEVEL not in STRETCH_LEVELS
    chosen = default_stretch_layers(recs)
    assert chosen and READOUT_LEVEL not in {r.level for r in chosen}
    assert [r.level for r in choose_stretch_layers(recs, [READOUT_LEVEL])] == [READOUT_LEVEL]


def test_sdr_levels_include_readout(discriminator: tuple[nn.Module, list[LayerRecord]]) -> None:
    model, recs = discriminator
    source = make_input_source(model, InputOptions(z_shape=(1, 16, 16)))
    result = run_sdr(model, recs, source, num_samples=8, batch_size=4, device=torch.device("cpu"))
    levels = [lv.level for lv in result.levels]
    assert levels == [lv for lv in ALL_LEVELS if lv in levels]  # in the order of ALL_LEVELS
    assert levels[-1] == READOUT_LEVEL
    readout = result.levels[-1]
    assert readout.layers == (_last_conv(recs).name,) and readout.summary is not None


def test_gate_hidden_is_not_the_readout(discriminator: tuple[nn.Module, list[LayerRecord]]) -> None:
    _, recs = discriminator
    assert HIDDEN_LEVELS == ("coarse", "intermediate", "fine")
    targets = gate.resolve_targets(gate.DEFAULT_RULES, recs)
    hidden = {t.name for t in targets if t.kind == "level"}
    assert hidden and hidden <= set(HIDDEN_LEVELS)
    # a configured rule may select the readout level by name
    rule = gate.Rule("sdr.sd_log10", (READOUT_LEVEL,), None, 1.0, "fail", "test", 1)
    (target,) = gate.resolve_targets([rule], recs)
    assert (target.kind, target.name) == ("level", READOUT_LEVEL)

"""Layer walk: execution order, shapes, levels (docs/method.md), analysis kinds, selection."""

from __future__ import annotations

import pytest
import torch
import toy_models
from torch import nn

from genaudit.analysis.spectral import sdr_skip_reason
from genaudit.errors import NothingToAnalyseError, UsageError
from genaudit.io import registry as zoo
from genaudit.model.hooks import has_hooks
from genaudit.model.layers import assign_levels, select_layers, split_contiguous, walk_layers


def _walk(model: nn.Module, *shapes: tuple[int, ...]):
    return walk_layers(model, tuple(torch.randn(2, *s) for s in shapes))


def test_execution_order_differs_from_registration_order() -> None:
    model = toy_models.reordered()
    assert [n for n, m in model.named_children()] == ["late", "middle", "early"]
    recs = _walk(model, (8, 1, 1))
    assert [r.name for r in recs] == ["early", "middle", "late"]
    assert [r.index for r in recs] == [0, 1, 2]
    assert [r.level for r in recs] == ["projection", "fine", "image"]
    assert not has_hooks(model)


def test_dcgan64_levels_and_shapes() -> None:
    model = zoo.build("dcgan_generator", {"ngf": 8})
    recs = _walk(model, (100, 1, 1))
    assert [r.level for r in recs] == ["projection", "coarse", "intermediate", "fine", "image"]
    assert [r.input_shape[1:] for r in recs] == [(1, 1), (4, 4), (8, 8), (16, 16), (32, 32)]
    assert [r.output_shape[1:] for r in recs] == [(4, 4), (8, 8), (16, 16), (32, 32), (64, 64)]
    assert [r.analysis for r in recs] == ["trace", "sdr", "sdr", "sdr", "sdr"]
    assert recs[0].pairs == 1
    assert recs[1].pairs == 64 * 32
    assert all(
        r.transposed and r.stride == ((1, 1) if i == 0 else (2, 2)) for i, r in enumerate(recs)
    )


def test_upsample_conv_input_is_the_upsampled_map() -> None:
    recs = _walk(toy_models.linear_first(), (6,))
    assert [r.type for r in recs] == ["Linear", "Conv2d", "Conv2d"]
    assert recs[1].input_shape == (8, 8, 8)
    assert recs[0].analysis == "trace" and recs[0].level == "linear"
    assert [r.level for r in recs[1:]] == ["fine", "image"]


def test_1d_3d_groups_dilation_parametrised() -> None:
    model = toy_models.ZooOfConvs()
    recs = _walk(model, (2, 16), (1, 4, 6, 6))
    by = {r.name: r for r in recs}
    assert by["c1"].dims == 1 and by["c1"].dilation == (2,) and by["c1"].input_shape == (2, 16)
    assert by["t1"].groups == 2 and by["t1"].pairs == 4 * 2 and by["t1"].transposed
    assert by["c3"].dims == 3 and by["c3"].input_shape == (1, 4, 6, 6)
    assert by["wn"].type == "Conv2d" and by["wn"].pairs == 4 * 1
    assert by["sn"].type == "ConvTranspose2d"
    assert [r.name for r in recs] == ["c1", "t1", "c3", "wn", "sn"]
    assert not has_hooks(model)


def test_skipped_grid_with_one_nonzero_frequency() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 1), nn.Conv1d(3, 1, 1))
    recs = _walk(model, (2, 2))
    # the layer walk gives the reason the SDR maths gives, in its words
    assert recs[0].analysis == "skipped" and recs[0].reason == sdr_skip_reason((2,))
    assert "has 1 non-zero frequency" in (recs[0].reason or "")


def test_shared_module_counted_once_with_calls() -> None:
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    recs = _walk(model, (2, 8, 8))
    assert len(recs) == 1 and recs[0].calls == 2


def test_split_into_three_groups() -> None:
    assert split_contiguous([1, 2, 3, 4], 3) == [[1, 2], [3], [4]]
    assert split_contiguous([1, 2, 3, 4, 5, 6, 7], 3) == [[1, 2, 3], [4, 5], [6, 7]]


@pytest.mark.parametrize(
    ("grids", "expected"),
    [
        ([4, 8, 16, 32, 64], ["coarse", "coarse", "intermediate", "fine", "image"]),
        ([8, 16, 64], ["coarse", "fine", "image"]),
        ([16, 64], ["fine", "image"]),
        ([64], ["image"]),
    ],
)
def test_level_grouping_by_output_resolution(grids: list[int], expected: list[str]) -> None:
    recs = [
        {"type": "Conv2d", "input_shape": (1, g // 2, g // 2), "output_shape": (1, g, g)}
        for g in grids
    ]
    assert assign_levels(recs) == expected


def test_level_overrides_and_errors() -> None:
    model = zoo.build("dcgan_generator", {"ngf": 8, "image_size": 32})
    x = (torch.randn(2, 100, 1, 1),)
    recs = walk_layers(model, x, {"main.3": "fine", "main.0": "coarse"})
    assert recs[0].level == "coarse" and recs[1].level == "fine"
    with pytest.raises(UsageError, match="unknown level"):
        walk_layers(model, x, {"main.3": "middle"})
    with pytest.raises(UsageError, match="no layer matches"):
        walk_layers(model, x, {"nope.*": "fine"})


def test_select_layers() -> None:
    recs = _walk(zoo.build("dcgan_generator", {"ngf": 8}), (100, 1, 1))
    assert [r.name for r in select_layers(recs, ["fine"])] == ["main.9"]
    assert [r.name for r in select_layers(recs, ["image", "0"])] == ["main.0", "main.12"]
    assert [r.index for r in select_layers(recs, ["main.*"])] == [0, 1, 2, 3, 4]
    with pytest.raises(UsageError, match="no layer matches 'bogus'"):
        select_layers(recs, ["bogus"])


def test_no_layer_ran() -> None:
    with pytest.raises(NothingToAnalyseError):
        _walk(nn.Sequential(nn.ReLU()), (3,))


def test_training_mode_restored() -> None:
    model = zoo.build("dcgan_generator", {"ngf": 8, "image_size": 32})
    model.train()
    _walk(model, (100, 1, 1))
    assert model.training and all(m.training for m in model.modules())

"""MobileNetV1 and V2 against the papers' tables and the reference implementations' counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mobilenets
from mobilenets import DepthwiseSeparableConv, InvertedResidual, MobileNetError, create_model
from mobilenets.analysis.cost import count_params
from mobilenets.models import V1_BLOCKS, V2_BOTTLENECKS, check_resolution


@pytest.mark.parametrize(
    ("width", "params"),
    [(1.4, 6_108_776), (1.0, 3_504_872), (0.75, 2_636_424), (0.5, 1_968_680),
     (0.35, 1_677_128)],
)  # fmt: skip
def test_v2_parameter_counts(width: float, params: int) -> None:
    assert count_params(create_model("mobilenet_v2", width_mult=width)) == params


@pytest.mark.parametrize(
    ("width", "params", "weights_only"),
    [(1.0, 4_231_976, 4_210_088), (0.75, 2_585_560, 2_569_144), (0.5, 1_331_592, 1_320_648),
     (0.25, 470_072, 464_600)],
)  # fmt: skip
def test_v1_parameter_counts(width: float, params: int, weights_only: int) -> None:
    model = create_model("mobilenet_v1", width_mult=width)
    assert count_params(model) == params
    # The paper counts convolution and FC weights only (no BatchNorm).
    no_bn = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
        for p in m.parameters()
    )  # fmt: skip
    assert no_bn == weights_only


def test_v1_has_13_separable_blocks_as_in_table_1() -> None:
    model = create_model("mobilenet_v1")
    blocks = [m for m in model.features if isinstance(m, DepthwiseSeparableConv)]
    assert len(blocks) == len(V1_BLOCKS) == 13
    assert [b.out_channels for b in blocks] == [b.c for b in V1_BLOCKS]
    assert model.features[0].conv.kernel_size == (3, 3)
    assert model.features[0].conv.stride == (2, 2)
    assert model.features[0].conv.out_channels == 32
    assert blocks[-1].out_channels == 1024


def test_v2_has_17_bottlenecks_as_in_table_2() -> None:
    model = create_model("mobilenet_v2")
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    assert len(blocks) == sum(row.n for row in V2_BOTTLENECKS) == 17
    expected = []
    cin = 32
    for row in V2_BOTTLENECKS:
        for i in range(row.n):
            stride = row.s if i == 0 else 1
            expected.append((row.t, row.c, stride, stride == 1 and cin == row.c))
            cin = row.c
    got = [(b.expand_ratio, b.out_channels, b.stride, b.use_residual) for b in blocks]
    assert got == expected
    assert sum(b.use_residual for b in blocks) == 10
    assert all(not hasattr(b.project, "act") for b in blocks)
    assert model.features[-1].conv.out_channels == 1280
    assert model.classifier.fc.in_features == 1280


def test_state_dict_names_read_like_the_paper() -> None:
    keys = create_model("mobilenet_v2").state_dict().keys()
    assert "features.3.expand.conv.weight" in keys
    assert "features.3.depthwise.conv.weight" in keys
    assert "features.3.project.bn.running_mean" in keys
    assert "classifier.fc.weight" in keys
    v1 = create_model("mobilenet_v1").state_dict().keys()
    assert "features.1.depthwise.conv.weight" in v1
    assert "features.13.pointwise.bn.weight" in v1


def test_last_conv_widens_only_above_width_one() -> None:
    assert create_model("mobilenet_v2", width_mult=0.5).num_features == 1280
    assert create_model("mobilenet_v2", width_mult=1.4).num_features == 1792


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("resolution", [224, 160, 97])
def test_forward_returns_logits_for_any_resolution(name: str, resolution: int) -> None:
    model = create_model(name, width_mult=0.25, num_classes=7).eval()
    x = torch.randn(2, 3, resolution, resolution)
    out = model(x)
    assert out.shape == (2, 7)
    feats = model.forward_features(x)
    assert feats.shape[:2] == (2, model.num_features)
    assert feats.shape[-1] == -(-resolution // 32)
    # forward returns logits: softmax is not applied inside.
    assert not torch.allclose(out.sum(1), torch.ones(2))


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_small_input_has_total_stride_8(name: str) -> None:
    model = create_model(name, width_mult=0.25, num_classes=10, small_input=True, in_chans=1)
    assert model.stride == 8
    assert model.forward_features(torch.randn(1, 1, 32, 32)).shape[-1] == 4
    assert count_params(model) == count_params(
        create_model(name, width_mult=0.25, num_classes=10, in_chans=1)
    )


def test_weight_init_follows_the_reference() -> None:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", width_mult=0.5)
    bn = model.features[1].depthwise.bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    fc = model.classifier.fc
    assert abs(fc.weight.std().item() - 0.01) < 0.001 and torch.all(fc.bias == 0)
    conv = model.features[2].expand.conv  # kaiming normal: std = sqrt(2 / fan_out)
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(conv.weight.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.1


def test_registry() -> None:
    assert {"mobilenet_v1", "mobilenet_v2"} <= set(mobilenets.list_models())
    with pytest.raises(MobileNetError, match="unknown model 'resnet50'"):
        create_model("resnet50")
    with pytest.raises(MobileNetError, match="does not take depth"):
        create_model("mobilenet_v2", depth=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width_mult": 0}, "width_mult"),
        ({"width_mult": -0.5}, "width_mult"),
        ({"width_mult": float("nan")}, "width_mult"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"num_classes": -3}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"in_chans": 0}, "in_chans"),
    ],
)
@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_bad_arguments_raise_one_line_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(MobileNetError, match=match) as info:
        create_model(name, **kwargs)
    assert "\n" not in str(info.value)


def test_any_positive_width_works() -> None:
    model = create_model("mobilenet_v1", width_mult=0.1, num_classes=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_resolution_too_small_is_refused() -> None:
    model = create_model("mobilenet_v2", width_mult=0.35)
    check_resolution(model, 32)
    with pytest.raises(MobileNetError, match="too small"):
        check_resolution(model, 31)
    small = create_model("mobilenet_v2", width_mult=0.35, small_input=True)
    check_resolution(small, 8)
    with pytest.raises(MobileNetError, match="at least 8x8"):
        check_resolution(small, 4)

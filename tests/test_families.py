"""The families after V2 on the one builder: MobileNetV3, EfficientNet (compound scaling, Lite),
MobileNetV4-Conv. Counts are the issue's acceptance numbers (1000 classes; params include BN;
mult-adds count convolutions, SE's 1x1 convolutions and FC layers)."""

from __future__ import annotations

import pytest
import torch
from conftest import meta_model
from torch import nn

from mobilenets import MobileNetError, create_model
from mobilenets.analysis.cost import profile_model
from mobilenets.layers import (
    FusedInvertedResidual,
    InvertedResidual,
    SqueezeExcitation,
    StochasticDepth,
    UniversalInvertedBottleneck,
)
from mobilenets.models import (
    EFFICIENTNET_B0_TABLE,
    V3_LARGE_TABLE,
    V4_CONV_SMALL_TABLE,
    MobileNetV2,
    Row,
)

COUNTS = [
    ("mobilenet_v3_large", {}, 224, 5_483_032, 216_589_760),
    ("mobilenet_v3_large", {"width_mult": 0.75}, 224, 3_993_528, 154_560_624),
    ("mobilenet_v3_small", {}, 224, 2_542_856, 56_510_400),
    ("mobilenet_v3_small", {"width_mult": 0.75}, 224, 2_041_872, 43_399_344),
    ("efficientnet_b0", {}, 224, 5_288_548, 385_814_752),
    ("efficientnet_b1", {}, 240, 7_794_184, 686_802_832),
    ("efficientnet_b2", {}, 260, 9_109_994, 993_561_872),
    ("efficientnet_b3", {}, 300, 12_233_232, 1_827_141_392),
    ("efficientnet_lite0", {}, 224, 4_652_008, 385_187_552),
    ("mobilenetv4_conv_small", {}, 224, 3_774_024, 186_005_568),
    ("mobilenetv4_conv_medium", {}, 256, 9_715_512, 1_080_244_224),
]


@pytest.mark.parametrize(("name", "kwargs", "resolution", "params", "macs"), COUNTS)
def test_exact_counts(name: str, kwargs: dict, resolution: int, params: int, macs: int) -> None:
    report = profile_model(meta_model(name, **kwargs), resolution)
    assert report.total_params == params
    assert report.total_macs == macs


def test_v3_large_reads_like_table_1() -> None:
    model = create_model("mobilenet_v3_large")
    blocks = [m for m in model.features if isinstance(m, InvertedResidual)]
    rows = [row for row in V3_LARGE_TABLE if row.kind == "ir"]
    assert len(blocks) == len(rows) == 15
    assert [b.hidden_channels for b in blocks] == [row.exp for row in rows]
    assert [b.se is not None for b in blocks] == [row.se for row in rows]
    assert [b.depthwise.conv.kernel_size[0] for b in blocks] == [row.k for row in rows]
    acts = [type(b.depthwise.act).__name__ for b in blocks]
    assert acts[:6] == ["ReLU"] * 6 and acts[6:] == ["Hardswish"] * 9
    assert blocks[0].expand is None  # exp size 16 == input 16: nothing to expand
    assert isinstance(model.features[0].act, nn.Hardswish)
    head = model.classifier.head
    assert head.conv.bias is not None and not hasattr(head, "bn")  # "conv2d 1x1, NBN"
    assert (head.conv.in_channels, head.conv.out_channels) == (960, 1280)
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    keys = model.state_dict().keys()
    assert "features.4.se.reduce.weight" in keys and "features.4.se.expand.bias" in keys
    assert "features.4.expand.conv.weight" in keys and "features.4.project.bn.weight" in keys


def test_se_widths_follow_each_family() -> None:
    v3 = [
        m for m in create_model("mobilenet_v3_small").modules() if isinstance(m, SqueezeExcitation)
    ]
    assert all(se.reduced_channels % 8 == 0 for se in v3)  # a quarter of the hidden, rounded to 8
    assert [se.reduced_channels for se in v3][:2] == [8, 24]  # 16/4 -> 8, 96/4 -> 24
    assert all(isinstance(se.gate, nn.Hardsigmoid) for se in v3)
    b0 = [m for m in create_model("efficientnet_b0").features if isinstance(m, InvertedResidual)]
    assert [b.se.reduced_channels for b in b0[:3]] == [8, 4, 6]  # a quarter of the block input
    assert all(isinstance(b.se.gate, nn.Sigmoid) for b in b0)
    lite = create_model("efficientnet_lite0")
    assert not any(isinstance(m, SqueezeExcitation | nn.SiLU) for m in lite.modules())
    assert lite.features[0].conv.out_channels == 32 and lite.features[-1].conv.out_channels == 1280


def test_compound_scaling_scales_depth_width_and_stochastic_depth() -> None:
    def repeats(model: nn.Module) -> int:
        return sum(isinstance(m, InvertedResidual) for m in model.features)

    assert [repeats(create_model(f"efficientnet_b{i}")) for i in range(4)] == [16, 23, 23, 26]
    b3 = create_model("efficientnet_b3")
    assert b3.features[0].conv.out_channels == 40  # make_divisible(32 * 1.2)
    rates = [m.p for m in b3.modules() if isinstance(m, StochasticDepth)]
    assert rates == sorted(rates) and 0 < rates[0] and rates[-1] < 0.2


def test_stochastic_depth_drops_whole_samples_in_training_only() -> None:
    torch.manual_seed(0)
    drop = StochasticDepth(0.5)
    x = torch.ones(64, 3, 2, 2)
    y = drop(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert 10 < int((per_sample[:, 0] == 0).sum()) < 54
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(MobileNetError, match="stochastic depth"):
        StochasticDepth(1.0)


def test_v4_blocks_are_the_papers_uib_variants() -> None:
    model = create_model("mobilenetv4_conv_medium")
    uibs = [m for m in model.features if isinstance(m, UniversalInvertedBottleneck)]
    kinds = {
        (m.start_depthwise is not None, m.depthwise is not None) for m in uibs
    }  # ExtraDW, IB (small), ConvNext, FFN
    assert kinds == {(True, True), (True, False), (False, False)}
    assert isinstance(model.features[1], FusedInvertedResidual)
    small = [m for m in create_model("mobilenetv4_conv_small").features]
    assert {(m.start_depthwise is not None, m.depthwise is not None)
            for m in small if isinstance(m, UniversalInvertedBottleneck)} == {
        (True, True), (False, True), (True, False)}  # fmt: skip
    assert isinstance(model.classifier.head.bn, nn.BatchNorm2d)
    assert len(V4_CONV_SMALL_TABLE) == 14


def test_uib_puts_the_stride_on_the_middle_depthwise_and_ffn_cannot_downsample() -> None:
    block = UniversalInvertedBottleneck(16, 24, 2, 64, kernel_size=3, start_kernel_size=5)
    assert block.start_depthwise.conv.stride == (1, 1) and block.depthwise.conv.stride == (2, 2)
    assert block(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)
    convnext = UniversalInvertedBottleneck(16, 16, 2, 64, kernel_size=0, start_kernel_size=3)
    assert convnext.start_depthwise.conv.stride == (2, 2)
    with pytest.raises(MobileNetError, match="cannot downsample"):
        UniversalInvertedBottleneck(16, 16, 2, 64, kernel_size=0, start_kernel_size=0)


@pytest.mark.parametrize(
    "name",
    ["mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0",
     "mobilenetv4_conv_small", "mobilenetv4_conv_medium"],
)  # fmt: skip
def test_small_input_gives_total_stride_8_and_runs(name: str) -> None:
    model = create_model(name, num_classes=10, small_input=True).eval()
    assert model.stride == 8
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert create_model(name).stride == 32


def test_bad_variants_and_widths_are_one_line_errors() -> None:
    with pytest.raises(MobileNetError, match="does not take width_mult"):
        create_model("efficientnet_b0", width_mult=0.5)
    with pytest.raises(MobileNetError, match="does not take width_mult"):
        create_model("mobilenetv4_conv_small", width_mult=0.75)
    with pytest.raises(MobileNetError, match="unknown model 'mobilenet_v3_medium'"):
        create_model("mobilenet_v3_medium")
    with pytest.raises(MobileNetError, match="unknown block kind 'bneck'"):
        MobileNetV2(blocks=[Row("bneck", c=16)])


def test_a_custom_table_builds_through_the_same_loop() -> None:
    table = (EFFICIENTNET_B0_TABLE[0], Row("ir", k=5, t=4, c=24, n=2, s=2, se=True, act="silu"))
    model = MobileNetV2(num_classes=5, blocks=table).eval()
    assert [type(m).__name__ for m in model.features] == ["ConvBNAct", *["InvertedResidual"] * 2]
    assert model.features[1].se is not None and model.num_features == 24
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_split_inference_refuses_blocks_with_se() -> None:
    block = create_model("mobilenet_v3_small").features[1]
    with pytest.raises(MobileNetError, match="squeeze-and-excitation cannot run split"):
        block.split = 2


def test_cost_pairs_depthwise_with_the_projection_across_se() -> None:
    report = profile_model(create_model("mobilenet_v3_large"), 224)
    assert all(p.pointwise.endswith("project.conv") for p in report.pairs)
    assert len(report.pairs) == 15
    assert all(abs(p.ratio - p.closed_form_ratio) < 1e-12 for p in report.pairs)  # across SE
    kinds = report.macs_by_kind()
    assert kinds["se"] == sum(layer.macs for layer in report.layers if ".se." in layer.name) > 0
    b0 = profile_model(create_model("efficientnet_b0"), 224)
    assert any(layer.kind == "drop_path" and layer.macs == 0 for layer in b0.layers)

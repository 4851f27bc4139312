"""The cost model: the lecture's worked example and the papers' mult-add tables."""

from __future__ import annotations

import math

import pytest
from conftest import meta_model
from torch import nn

from mobilenets import DepthwiseConv, MobileNetError, PointwiseConv, create_model
from mobilenets.analysis.cost import (
    conv_output_size,
    depthwise_conv_macs,
    pointwise_conv_macs,
    profile_model,
    separable_cost_ratio,
    standard_conv_macs,
)


def test_lecture_example_closed_forms() -> None:
    n_out = conv_output_size(6, 3)  # 6x6x3 input, 3x3 filters, no padding, stride 1
    assert n_out == 4
    assert standard_conv_macs(f=3, n_c=3, n_out=n_out, n_c_out=5) == 2160
    assert depthwise_conv_macs(f=3, n_c=3, n_out=n_out) == 432
    assert pointwise_conv_macs(n_c=3, n_out=n_out, n_c_out=5) == 240
    separable = 432 + 240
    assert separable == 672
    assert round(separable / 2160, 3) == 0.311
    assert math.isclose(separable / 2160, separable_cost_ratio(f=3, n_c_out=5))
    assert math.isclose(separable_cost_ratio(3, 5), 1 / 5 + 1 / 9)


def test_lecture_example_traced_from_real_modules() -> None:
    standard = nn.Conv2d(3, 5, 3, bias=False)
    separable = nn.Sequential(DepthwiseConv(3, 3, padding=0), PointwiseConv(3, 5))
    std_report = profile_model(standard, resolution=6)
    sep_report = profile_model(separable, resolution=6)
    assert std_report.total_macs == 2160
    assert [(r.kind, r.macs) for r in sep_report.layers] == [("depthwise", 432), ("pointwise", 240)]
    assert sep_report.total_macs == 672
    (pair,) = sep_report.pairs
    assert pair.standard_macs == 2160
    assert pair.separable_macs == 672
    assert round(pair.ratio, 3) == 0.311
    assert math.isclose(pair.ratio, pair.closed_form_ratio)
    assert sep_report.layers[0].output_shape == (1, 3, 4, 4)
    assert sep_report.layers[1].output_shape == (1, 5, 4, 4)


@pytest.mark.parametrize(
    ("width", "macs"),
    [(1.4, 582_195_824), (1.0, 300_774_272), (0.75, 209_069_792), (0.5, 97_131_840),
     (0.35, 59_285_808)],
)  # fmt: skip
def test_v2_mult_adds(width: float, macs: int) -> None:
    assert profile_model(meta_model("mobilenet_v2", width_mult=width)).total_macs == macs


@pytest.mark.parametrize(
    ("width", "resolution", "macs"),
    [(1.0, 224, 568_740_352), (1.0, 192, 418_121_728), (1.0, 160, 290_675_200),
     (1.0, 128, 186_400_768), (0.75, 224, 325_400_448), (0.5, 224, 149_497_088),
     (0.25, 224, 41_030_272)],
)  # fmt: skip
def test_v1_mult_adds(width: float, resolution: int, macs: int) -> None:
    model = meta_model("mobilenet_v1", width_mult=width)
    assert profile_model(model, resolution).total_macs == macs


def test_report_rows_and_pairs_for_v1() -> None:
    report = profile_model(create_model("mobilenet_v1"))
    kinds = report.macs_by_kind()
    assert set(kinds) == {"standard", "depthwise", "pointwise", "linear"}
    assert kinds["linear"] == 1024 * 1000
    # The paper (Table 2): 1x1 convolutions take about 95% of the mult-adds.
    assert 0.94 < kinds["pointwise"] / report.total_macs < 0.96
    assert len(report.pairs) == 13
    for pair in report.pairs:
        assert math.isclose(pair.ratio, 1 / pair.out_channels + 1 / 9)
    first = report.layers[0]
    assert (first.kind, first.input_shape, first.output_shape) == (
        "standard", (1, 3, 224, 224), (1, 32, 112, 112),
    )  # fmt: skip
    assert first.activations == 32 * 112 * 112
    assert report.total_params == 4_231_976


def test_batch_scales_macs_and_report_serialises() -> None:
    model = create_model("mobilenet_v2", width_mult=0.35, num_classes=10)
    one = profile_model(model, 96)
    four = profile_model(model, 96, batch_size=4)
    assert four.total_macs == 4 * one.total_macs
    data = one.to_dict()
    assert data["total_macs"] == one.total_macs
    assert len(data["separable_pairs"]) == 17
    assert model.training  # profiling restores the mode


def test_profile_refuses_bad_input() -> None:
    with pytest.raises(MobileNetError, match="too small"):
        profile_model(create_model("mobilenet_v2"), 16)
    with pytest.raises(MobileNetError, match=r"nn\.Module"):
        profile_model("mobilenet_v2")  # type: ignore[arg-type]

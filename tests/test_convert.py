"""to_separable on any CNN, the VGG example baseline, and the separable speed-up measurement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mobilenets import DepthwiseConv, MobileNetError, PointwiseConv, create_model
from mobilenets.analysis.convert import to_separable
from mobilenets.analysis.cost import count_params, layer_kind, profile_model
from mobilenets.cli import main
from mobilenets.latency.speedup import ConvShape, geometric_mean, measure_separable_speedup
from mobilenets.runs import load_run

RUNS = {"vgg_small": "original", "vgg_small_separable": "converted"}


def snapshot(model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: tuple[str, dict[str, torch.Tensor]]) -> None:
    structure, state = before
    assert repr(model) == structure
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_vgg_small_converts_to_depthwise_separable() -> None:
    torch.manual_seed(0)
    model = create_model("vgg_small")
    before = snapshot(model)
    converted, replaced = to_separable(model)
    assert_untouched(model, before)
    assert [r.name for r in replaced] == [f"features.{i}.conv" for i in (0, 1, 3, 4, 6, 7)]
    kinds = [layer_kind(m) for m in converted.modules() if isinstance(m, nn.Conv2d)]
    assert "standard" not in kinds and kinds.count("depthwise") == kinds.count("pointwise") == 6
    for r in replaced:  # per output position: k*k*n_c*n_c' before, k*k*n_c + n_c*n_c' after
        assert r.macs_per_position_before == 9 * r.in_channels * r.out_channels
        assert math.isclose(r.macs_ratio, 1 / r.out_channels + 1 / 9, rel_tol=0.02)
    original, separable = profile_model(model, 32), profile_model(converted, 32)
    assert original.total_macs >= 5 * separable.total_macs
    assert len(separable.pairs) == 6
    assert converted(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_registered_separable_variant_rebuilds_the_conversion() -> None:
    model = create_model("vgg_small_separable", num_classes=7, width_mult=0.5)
    reference, _ = to_separable(create_model("vgg_small", num_classes=7, width_mult=0.5))
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert "features.0.conv.depthwise.weight" in model.state_dict()


def test_replacement_keeps_geometry_and_bias() -> None:
    conv = nn.Conv2d(6, 10, 5, stride=2, padding=4, dilation=2, bias=True)
    stack, (record,) = to_separable(nn.Sequential(conv, nn.ReLU()))
    assert record.name == "0" and record.stride == (2, 2) and record.kernel_size == (5, 5)
    depthwise, pointwise = stack[0].depthwise, stack[0].pointwise
    assert isinstance(depthwise, DepthwiseConv) and isinstance(pointwise, PointwiseConv)
    assert (depthwise.stride, depthwise.padding, depthwise.dilation) == ((2, 2), (4, 4), (2, 2))
    assert pointwise.bias is not None and pointwise.out_channels == 10
    x = torch.randn(1, 6, 17, 17)
    assert stack(x).shape == conv(x).shape == (1, 10, 9, 9)
    assert record.params_before == 6 * 10 * 25 + 10
    assert record.params_after == 6 * 25 + 2 * 6 + 6 * 10 + 10  # depthwise, BN, pointwise+bias


def test_a_bare_convolution_converts_and_small_kernels_stay() -> None:
    stack, replaced = to_separable(nn.Conv2d(3, 8, 3))
    assert [r.name for r in replaced] == [""] and isinstance(stack, nn.Sequential)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 5))
    _, replaced = to_separable(model, min_kernel=5)
    assert [r.name for r in replaced] == ["2"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "it has no convolution"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), DepthwiseConv(4)), "grouped or depthwise"),
        (nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, groups=4)), "none of its 2"),
    ],
)
def test_nothing_to_convert_is_a_clear_error(bad: nn.Module, message: str) -> None:
    before = snapshot(bad)
    with pytest.raises(MobileNetError, match=message):
        to_separable(bad)
    assert_untouched(bad, before)


def test_non_modules_and_bad_min_kernel_are_rejected() -> None:
    with pytest.raises(MobileNetError, match=r"expects a torch\.nn\.Module, got str"):
        to_separable("vgg_small")  # type: ignore[arg-type]
    with pytest.raises(MobileNetError, match="min_kernel"):
        to_separable(nn.Conv2d(3, 3, 3), min_kernel=1)


def test_speedup_measures_real_layers() -> None:
    shape = ConvShape(8, 16, 32)
    assert math.isclose(shape.analytic_speedup, 1 / (1 / 32 + 1 / 9))
    rows = measure_separable_speedup([shape], batch_sizes=[2], budget_s=0.01)
    assert len(rows) == 4  # two memory formats x two passes
    for row in rows:
        assert row.standard_ms > 0 and row.separable_ms > 0 and row.plain_separable_ms > 0
        assert math.isclose(row.ratio, row.standard_ms / row.separable_ms / row.analytic)
    assert math.isclose(geometric_mean([2.0, 0.5]), 1.0)
    with pytest.raises(MobileNetError, match="unknown memory format"):
        measure_separable_speedup([shape], memory_formats=["nhwc"])
    with pytest.raises(MobileNetError, match="batch sizes"):
        measure_separable_speedup([shape], batch_sizes=[0])


def test_layers_are_plain_convolutions_in_either_memory_format() -> None:
    torch.manual_seed(0)
    depthwise, pointwise = DepthwiseConv(16), PointwiseConv(16, 24, bias=True)
    x = torch.randn(2, 16, 9, 9)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = x.contiguous(memory_format=memory_format)
        y = depthwise(x)
        reference = nn.functional.conv2d(x, depthwise.weight, None, 1, 1, 1, 16)
        torch.testing.assert_close(y, reference)
        torch.testing.assert_close(
            pointwise(y), nn.functional.conv2d(y, pointwise.weight, pointwise.bias)
        )
    assert pointwise(x[0]).shape == (24, 9, 9)  # unbatched input, as nn.Conv2d accepts


@pytest.mark.slow
def test_compare_conversion_command_trains_both_and_compares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "convert"
    args = [
        "compare-conversion",
        "--epochs",
        "1",
        "--width-mult",
        "0.5",
        "--out",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads((out / "comparison.json").read_text())
    assert data["macs_reduction"] >= 5 and data["params_reduction"] > 3
    assert [data[k]["model"] for k in ("original", "converted")] == list(RUNS)
    for name in RUNS:
        model, info = load_run(out / name)  # each run rebuilds its own architecture
        assert info.model == name and info.epoch == 1
        assert count_params(model) == data[RUNS[name]]["params"]
        assert 0.1 < data[RUNS[name]]["top1"] <= 1
    before = (out / "comparison.json").read_bytes()
    assert main(args) == 2  # the runs are there: refused, nothing overwritten
    err = capsys.readouterr().err
    assert "already holds a comparison" in err and "--resume" not in err
    assert (out / "comparison.json").read_bytes() == before

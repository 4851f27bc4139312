"""Activation memory: the cost model against a measured peak, and split bottleneck inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import randomize_batchnorm
from PIL import Image
from torch import nn

from mobilenets import InvertedResidual, MobileNetError, create_model
from mobilenets.analysis.cost import profile_model
from mobilenets.analysis.memory import measure_peak_activation_bytes
from mobilenets.cli import main
from mobilenets.layers import set_bottleneck_split


def test_live_set_of_a_conv_bn_relu_by_hand() -> None:
    # Input 1x3x8x8 (192 values), conv to 4 channels (256), BN (256), in-place ReLU (shares).
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    report = profile_model(model, 8)
    live = {layer.name: layer.live_activations for layer in report.layers}
    assert live == {"0": 192 + 256, "1": 192 + 256 + 256, "2": 192 + 256}
    assert report.peak_activations == 704
    assert report.peak_activation_bytes("fp32") == 4 * 704
    assert report.peak_activation_bytes("fp16") == 2 * 704
    assert report.peak_activation_bytes("int8") == 704
    with pytest.raises(MobileNetError, match="unknown dtype 'fp64'"):
        report.peak_activation_bytes("fp64")


def test_residual_add_keeps_the_block_input_alive() -> None:
    block = InvertedResidual(8, 8, stride=1, expand_ratio=2)
    report = profile_model(nn.Sequential(block), 6)  # thin tensors: 8*36 = 288 values
    # At the add: the caller's input, the block input (the same tensor), the projection and
    # the sum; the expanded tensors are freed by then.
    add_step = 288 * 3
    assert report.blocks[0].live_activations >= add_step
    # At the projection's BN: the block input, the projection unit's input (the depthwise
    # output, 16 channels), the 1x1 conv output and the BN output.
    project_bn = next(r for r in report.layers if r.name == "0.project.bn")
    assert project_bn.live_activations == 288 + 576 + 288 + 288


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("batch", [1, 8])
def test_model_matches_measured_peak(name: str, batch: int) -> None:
    model = create_model(name, width_mult=0.25, num_classes=10).eval()
    predicted = profile_model(model, 96, batch_size=batch).peak_activation_bytes("fp32")
    measured = measure_peak_activation_bytes(model, torch.randn(batch, 3, 96, 96))
    assert abs(predicted - measured) <= 0.25 * measured
    assert abs(predicted - measured) <= 0.01 * measured  # in practice, to the byte or nearly


def test_peak_grows_linearly_with_batch() -> None:
    model = create_model("mobilenet_v2", width_mult=0.35)
    one, eight = (profile_model(model, 64, batch_size=b).peak_activations for b in (1, 8))
    assert eight == 8 * one


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_split_bottleneck_equals_the_whole_block(k: int) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("mobilenet_v2", width_mult=0.5, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        assert set_bottleneck_split(model, k) == 17
        split = model(x)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)


def test_split_lowers_the_measured_peak_and_keeps_the_cost() -> None:
    model = create_model("mobilenet_v2", width_mult=0.5).eval()
    x = torch.randn(1, 3, 128, 128)
    whole = measure_peak_activation_bytes(model, x)
    before = profile_model(model, 128)
    set_bottleneck_split(model, 4)
    split = measure_peak_activation_bytes(model, x)
    assert split < 0.7 * whole
    after = profile_model(model, 128)  # traced whole: same mult-adds, split restored after
    assert after.total_macs == before.total_macs
    assert all(m.split == 4 for m in model.modules() if isinstance(m, InvertedResidual))


def test_split_is_inference_only_and_checked() -> None:
    block = InvertedResidual(8, 8, stride=1, expand_ratio=6, split=3).train()
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    block(x).sum().backward()  # training runs the whole block; gradients flow as usual
    assert x.grad is not None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(MobileNetError, match="split must be a positive integer"):
            block.split = bad
    with pytest.raises(MobileNetError, match="no inverted residual blocks"):
        set_bottleneck_split(create_model("mobilenet_v1", width_mult=0.25), 2)


def test_measure_rejects_non_modules() -> None:
    with pytest.raises(MobileNetError, match=r"expected a torch\.nn\.Module"):
        measure_peak_activation_bytes("mobilenet_v2", torch.zeros(1))  # type: ignore[arg-type]


@pytest.mark.slow
def test_cost_cli_shows_the_peak_and_draws_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "v2.png"
    assert main(["cost", "mobilenet_v2", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "peak activation memory in inference: 10.53 MiB fp32" in out
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 800
    assert main(["cost", "mobilenet_v1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak_activation_bytes"]["int8"] == data["peak_activations"] == 2_558_976
    assert max(r["live_activations"] for r in data["layers"]) == 2_558_976
    (tmp_path / "file").write_text("not a directory")
    assert main(["cost", "mobilenet_v1", "--plot", str(tmp_path / "file" / "x.png")]) == 2
    assert f"error: cannot write {tmp_path / 'file' / 'x.png'}: " in capsys.readouterr().err

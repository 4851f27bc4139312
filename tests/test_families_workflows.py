"""The families after V2 through every workflow: features, BN folding, ONNX, train, evaluate,
predict. Hard-swish, hard-sigmoid and squeeze-and-excitation are where exports break, so their
ONNX operators are pinned. Tiny widths, ``small_input`` and 32 px keep it fast; the registered
full-width models are covered by the exact counts in test_families.py.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import onnx
import pytest
import torch
from conftest import check_one_line_error, randomize_batchnorm, write_digit_png
from torch import nn

from mobilenets import create_model
from mobilenets.cli import main
from mobilenets.deploy.compat import compare_with_torch
from mobilenets.deploy.targets.onnx import EXPORT_TOLERANCE, write_onnx
from mobilenets.evaluation.evaluate import evaluate
from mobilenets.int8.fold import count_batchnorms, fold_batchnorm
from mobilenets.layers import SqueezeExcitation
from mobilenets.models import (
    V4_CONV_MEDIUM_TABLE,
    V4_CONV_SMALL_TABLE,
    EfficientNet,
    MobileNetV4,
)
from mobilenets.runs import load_run
from mobilenets.train.loop import train
from mobilenets.train.recipe import TrainConfig

SLOW_FIXTURES = {"v3_run"}  # they train, import or time: conftest marks their tests slow

# name -> a tiny model of the family (10 classes, total stride 8 for 32 px inputs)
TINY = {
    "mobilenet_v3_large": lambda: create_model(
        "mobilenet_v3_large", num_classes=10, width_mult=0.25, small_input=True
    ),
    "mobilenet_v3_small": lambda: create_model(
        "mobilenet_v3_small", num_classes=10, width_mult=0.25, small_input=True
    ),
    # B1's depth (1.1 -> more blocks per stage), at a tiny width.
    "efficientnet": lambda: EfficientNet(
        num_classes=10, width_mult=0.25, depth_mult=1.1, small_input=True
    ),
    "efficientnet_lite": lambda: EfficientNet(
        create_model("efficientnet_lite0").table, 10, width_mult=0.25, small_input=True
    ),
    "mobilenetv4_conv_small": lambda: MobileNetV4(
        V4_CONV_SMALL_TABLE, 10, width_mult=0.25, small_input=True
    ),
    "mobilenetv4_conv_medium": lambda: MobileNetV4(
        V4_CONV_MEDIUM_TABLE, 10, width_mult=0.25, small_input=True
    ),
}


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize(
    ("name", "levels"),
    [
        ("mobilenet_v3_large", [(16, 2), (24, 4), (40, 8), (112, 16), (960, 32)]),
        ("mobilenet_v3_small", [(16, 2), (16, 4), (24, 8), (48, 16), (576, 32)]),
        ("efficientnet_b0", [(16, 2), (24, 4), (40, 8), (112, 16), (1280, 32)]),
        ("efficientnet_lite0", [(16, 2), (24, 4), (40, 8), (112, 16), (1280, 32)]),
        ("mobilenetv4_conv_small", [(32, 2), (32, 4), (64, 8), (96, 16), (960, 32)]),
        ("mobilenetv4_conv_medium", [(32, 2), (48, 4), (80, 8), (160, 16), (960, 32)]),
    ],
)
def test_feature_maps_at_strides_2_to_32(name: str, levels: list[tuple[int, int]]) -> None:
    """The stage outputs dense heads use (V3-Large's 40/112/960 are what torchvision's
    LR-ASPP and SSDLite read), and maps of those shapes."""
    model = create_model(name, features_only=True).eval()
    assert [(f.channels, f.reduction) for f in model.feature_info] == levels
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(c, 64 // r, 64 // r) for c, r in levels]


# --------------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("name", list(TINY))
def test_folding_keeps_outputs_and_leaves_unnormalised_convs_alone(name: str) -> None:
    """Every BatchNorm folds; SE's convolutions and V3's head (bias, no BN) pass unchanged."""
    model = randomize_batchnorm(TINY[name]())
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0 < count_batchnorms(model)
    state = model.state_dict()
    head_has_bn = "classifier.head.bn.weight" in state  # MobileNetV4's head folds, V3's has none
    kept = [
        k
        for k in state
        if ".se." in k or (k.startswith("classifier.head.conv") and not head_has_bn)
    ]
    for key in kept:
        assert torch.equal(folded.state_dict()[key], model.state_dict()[key]), key
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    # Float32 rounding alone reaches 1e-5 in the 24 random blocks of MNv4-Conv-M; a misplaced
    # or dropped BatchNorm is off by tenths.
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4


def test_v3_head_has_a_bias_and_no_batchnorm() -> None:
    head = create_model("mobilenet_v3_small").classifier.head
    assert head.conv.bias is not None and not hasattr(head, "bn")


# --------------------------------------------------------------------------- ONNX


def onnx_ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_onnx_export_agrees_with_pytorch_in_onnxruntime(name: str, tmp_path: Path) -> None:
    model = randomize_batchnorm(TINY[name]())
    path = write_onnx(fold_batchnorm(model), tmp_path / f"{name}.onnx", (3, 32, 32), {})
    inputs = [torch.randn(1, 3, 32, 32), torch.randn(3, 3, 32, 32)]  # the dynamic batch axis
    assert compare_with_torch(path, model, inputs) <= EXPORT_TOLERANCE
    ops = onnx_ops(path)
    assert ops["BatchNormalization"] == 0  # folded before export
    squeeze_excitations = sum(isinstance(m, SqueezeExcitation) for m in model.modules())
    if name.startswith("mobilenet_v3"):
        # Hard-swish and the SE's hard-sigmoid gate stay single operators, one per use.
        assert ops["HardSwish"] > 0 and ops["HardSigmoid"] == squeeze_excitations > 0
    elif name == "efficientnet":
        # SiLU is x * sigmoid(x); the SE gate is a sigmoid too; SE squeezes by a mean.
        assert ops["Sigmoid"] >= squeeze_excitations > 0
        assert ops["ReduceMean"] + ops["GlobalAveragePool"] == squeeze_excitations + 1
    else:  # Lite and MobileNetV4: no SE, no swish, the int8-friendly operators only
        assert squeeze_excitations == 0
        assert not {"Sigmoid", "HardSigmoid", "HardSwish"} & set(ops)


# --------------------------------------------------------------------------- train, evaluate


@pytest.fixture(scope="module")
def v3_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of MobileNetV3-Small (width 0.25) on the digits at 16 px."""
    out = tmp_path_factory.mktemp("families") / "v3"
    return train(
        TrainConfig(
            model="mobilenet_v3_small",
            width_mult=0.25,
            resolution=16,
            batch_size=64,
            epochs=1,
            out=str(out),
            quiet=True,
        )
    )


def test_v3_trains_and_evaluates_as_training_measured(v3_run: Path) -> None:
    model, info = load_run(v3_run)
    assert info.model == "mobilenet_v3_small" and info.model_kwargs["small_input"]
    assert any(isinstance(m, nn.Hardswish) for m in model.modules())
    report = evaluate(v3_run, plot=v3_run.parent / "confusion.png")
    assert report.num_images == 359
    assert report.top1 == pytest.approx(info.metrics["test_top1"])


def test_v3_predicts_from_the_cli(v3_run: Path, digit_pngs, capsys) -> None:
    image = digit_pngs[0][0]
    assert main(["predict", str(v3_run), str(image), "--top-k", "3", "--json"]) == 0
    (prediction,) = json.loads(capsys.readouterr().out)["predictions"]
    assert prediction["image"] == str(image) and len(prediction["top"]) == 3


@pytest.mark.slow
def test_efficientnet_lite0_trains_at_its_full_width(tmp_path: Path, capsys) -> None:
    """The registered Lite0 (no width multiplier): one epoch through ``mobilenets train``, on
    a folder of 60 digits (how many images is not what this checks). The run records no
    width, and a width given for it is refused in one line, nothing written (it would be
    ignored and recorded as if used)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(60):
        folder = tmp_path / "digits" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        write_digit_png(folder / f"{i}.png", digits.images[i])
    out = tmp_path / "lite0"
    argv = ["train", "--model", "efficientnet_lite0", "--resolution", "16", "--epochs", "1"]
    argv += ["--data", str(tmp_path / "digits")]
    assert main([*argv, "--batch-size", "64", "--quiet", "--out", str(out)]) == 0
    _, info = load_run(out)
    assert info.model_kwargs == {
        "num_classes": 10,
        "in_chans": 3,
        "dropout": 0.2,
        "small_input": True,
    }
    assert info.train_config["width_mult"] is None
    capsys.readouterr()  # the run's lines
    refused = tmp_path / "refused"
    check_one_line_error(
        [*argv, "--width-mult", "0.5", "--out", str(refused)], "has no width multiplier", capsys
    )
    assert not refused.exists()

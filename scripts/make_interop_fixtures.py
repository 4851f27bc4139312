"""Make the torchvision and timm fixtures that tests/test_interop.py checks our import against.

Not part of the package and not run by CI: it needs torchvision and timm, which the project does
not depend on (torchvision does not import beside the CPU torch build we use). The fixtures were
made once, in a separate virtual environment, with::

    python3 -m venv /tmp/srcvenv
    /tmp/srcvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31
    /tmp/srcvenv/bin/python scripts/make_interop_fixtures.py [--only NAME ...]

(``--only`` remakes just the named fixtures; the V3, EfficientNet and MobileNetV4 ones were
added that way, leaving the V1/V2 files as they were.) For each source model it writes, into
tests/fixtures/interop/:

    <name>.pth or <name>.safetensors   the source library's state dict, as a user would hold it
                                       (half precision for the later families, to stay small)
    <name>.io.safetensors              fixed random inputs ("inputs") and the source model's
                                       eval-mode outputs on them ("logits")
    state_dict_shapes.json             tensor names and shapes of the full-size ImageNet models

The models are randomly initialised, not pretrained (nothing here downloads), but every
BatchNorm gets random affine parameters and measured running statistics, and the classifier a
weight large enough for logits of order one: with the libraries' default init (running mean 0,
variance 1, classifier N(0, 0.01)) a BN tensor mapped to the wrong place, or dropped, would
change the logits by less than the 1e-5 the test allows. BN scales of 1 to 3 and shifts around
1 push many activations past 6, so ReLU6 clips and a ReLU model gives other logits (timm's
MobileNetV1 uses ReLU6).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import timm
import torch
import torchvision
from safetensors.torch import save_file
from timm.models.efficientnet import (
    _gen_efficientnet,
    _gen_efficientnet_lite,
    _gen_mobilenet_v1,
)
from timm.models.mobilenetv3 import _gen_mobilenet_v3, _gen_mobilenet_v4
from torch import nn
from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "interop"
NUM_CLASSES = 10


def randomise(model: nn.Module, generator: torch.Generator, size: int) -> nn.Module:
    """Random BatchNorm affine parameters and statistics, and a unit-scale classifier.

    The running statistics are measured on a random batch (as a real training run's would be),
    so every layer passes on values of order one; statistics drawn at random instead would let
    the signal grow layer after layer until float rounding alone exceeded the test's 1e-5.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.empty(n).uniform_(1.0, 3.0, generator=generator))
                m.bias.copy_(torch.randn(n, generator=generator) + 1.0)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
            elif isinstance(m, nn.Linear):
                bound = 1 / math.sqrt(m.in_features)
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * bound)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
        model.train()(torch.randn(32, 3, size, size, generator=generator))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))
    return model.eval()


class Fixture(NamedTuple):
    """A source model to write: its constructor, the weights file's suffix, whether its
    weights are stored in half precision, and the side of the input images."""

    build: Callable[[], nn.Module]
    suffix: str
    half: bool = False
    size: int = 96


# Fixture name -> how to make it. Both readers (.pth, .safetensors) are used. Models are built
# after seeding, so every run makes the same fixtures (up to float rounding in the threaded
# calibration pass). Half precision: the source model computes in float32 with the rounded
# weights, so the logits are still exactly its own, and the file is half the size.
SOURCE_MODELS = {
    # torchvision's MobileNetV2; the reference for the 0.35 width is the V2 paper's Table 6.
    "torchvision_mobilenet_v2_035": Fixture(
        lambda: torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=NUM_CLASSES), ".pth"
    ),
    "timm_mobilenetv2_035": Fixture(
        lambda: timm.create_model("mobilenetv2_035", num_classes=NUM_CLASSES), ".safetensors"
    ),
    # timm registers MobileNetV1 only at widths 1.0 and 1.25 ("mobilenetv1_100",
    # "mobilenetv1_125"); its generator builds the same architecture at 0.25.
    "timm_mobilenetv1_025": Fixture(
        lambda: _gen_mobilenet_v1("mobilenetv1_100", 0.25, num_classes=NUM_CLASSES), ".pth"
    ),
    # The later families, at 64 px. torchvision scales MobileNetV3's widths its own way
    # (absolute expansion widths and the head, where the reference keeps ratios and a fixed
    # head), so only its width 1.0 is our V3: the small model, with a head of 256 channels
    # instead of 1024 (torchvision's ``last_channel``, our ``head_channels``) to save 1 MB.
    "torchvision_mobilenet_v3_small_head256": Fixture(
        lambda: MobileNetV3(
            _mobilenet_v3_conf("mobilenet_v3_small")[0], 256, num_classes=NUM_CLASSES
        ),
        ".pth",
        half=True,
        size=64,
    ),
    # torchvision's EfficientNet generator at a small width and B3's depth 1.4: every block
    # kind, the depth rounding and its stage-per-Sequential layout.
    "torchvision_efficientnet_w010_d14": Fixture(
        lambda: EfficientNet(
            _efficientnet_conf("efficientnet_b3", width_mult=0.1, depth_mult=1.4)[0],
            dropout=0.3,
            num_classes=NUM_CLASSES,
        ),
        ".safetensors",
        half=True,
        size=64,
    ),
    # timm's generators below width 0.75 keep V3's stem at 16 channels (as mobilenetv3_small_050).
    "timm_mobilenetv3_small_025": Fixture(
        lambda: _gen_mobilenet_v3("mobilenetv3_small_100", 0.25, num_classes=NUM_CLASSES),
        ".safetensors",
        half=True,
        size=64,
    ),
    "timm_mobilenetv3_large_010": Fixture(
        lambda: _gen_mobilenet_v3("mobilenetv3_large_100", 0.1, num_classes=NUM_CLASSES),
        ".pth",
        half=True,
        size=64,
    ),
    "timm_efficientnet_w010_d12": Fixture(
        lambda: _gen_efficientnet("efficientnet_b2", 0.1, 1.2, num_classes=NUM_CLASSES),
        ".pth",
        half=True,
        size=64,
    ),
    "timm_efficientnet_lite_w010": Fixture(
        lambda: _gen_efficientnet_lite("efficientnet_lite0", 0.1, 1.0, num_classes=NUM_CLASSES),
        ".safetensors",
        half=True,
        size=64,
    ),
    "timm_mobilenetv4_conv_small_010": Fixture(
        lambda: _gen_mobilenet_v4("mobilenetv4_conv_small", 0.1, num_classes=NUM_CLASSES),
        ".pth",
        half=True,
        size=64,
    ),
    "timm_mobilenetv4_conv_medium_010": Fixture(
        lambda: _gen_mobilenet_v4("mobilenetv4_conv_medium", 0.1, num_classes=NUM_CLASSES),
        ".safetensors",
        half=True,
        size=64,
    ),
}


# The ImageNet models users hold weights for (1000 classes). Only the names and shapes of their
# state dicts are kept, a few kB each: enough to check that the name tables cover the full-size
# networks exactly, and that the variants we do not build are refused.
# name -> (source library model, our model, width_mult, whether it should import)
REFERENCE_ARCHITECTURES = {
    "torchvision mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(),
        "torchvision",
        "mobilenet_v2",
        1.0,
        True,
    ),
    **{
        f"timm mobilenetv2_{w}": (
            lambda w=w: timm.create_model(f"mobilenetv2_{w}"),
            "timm",
            "mobilenet_v2",
            int(w) / 100,
            True,
        )
        for w in ("050", "100", "140")
    },
    **{
        f"timm mobilenetv1_{w}": (
            lambda w=w: timm.create_model(f"mobilenetv1_{w}"),
            "timm",
            "mobilenet_v1",
            int(w) / 100,
            True,
        )
        for w in ("100", "125")
    },
    # A 1x1 head convolution after the last block, which MobileNetV1 does not have.
    "timm mobilenetv1_100h": (
        lambda: timm.create_model("mobilenetv1_100h"),
        "timm",
        "mobilenet_v1",
        1.0,
        False,
    ),
    # Deeper stages (depth multiplier 1.1), not the V2 of the paper.
    "timm mobilenetv2_110d": (
        lambda: timm.create_model("mobilenetv2_110d"),
        "timm",
        "mobilenet_v2",
        1.1,
        False,
    ),
    **{
        f"torchvision {name}": (
            lambda name=name: getattr(torchvision.models, name)(),
            "torchvision",
            name,
            1.0,
            True,
        )
        for name in (
            "mobilenet_v3_large",
            "mobilenet_v3_small",
            "efficientnet_b0",
            "efficientnet_b1",
            "efficientnet_b2",
            "efficientnet_b3",
        )
    },
    # torchvision's V3 at another width scales the expansions and the head, unlike ours.
    "torchvision mobilenet_v3_large width 0.75": (
        lambda: torchvision.models.mobilenet_v3_large(width_mult=0.75),
        "torchvision",
        "mobilenet_v3_large",
        0.75,
        False,
    ),
    **{
        f"timm mobilenetv3_{size}_{w}": (
            lambda size=size, w=w: timm.create_model(f"mobilenetv3_{size}_{w}"),
            "timm",
            f"mobilenet_v3_{size}",
            int(w) / 100,
            True,
        )
        for size, w in (
            ("large", "075"),
            ("large", "100"),
            ("small", "050"),
            ("small", "075"),
            ("small", "100"),
        )
    },
    **{
        f"timm {name}": (lambda name=name: timm.create_model(name), "timm", name, 1.0, True)
        for name in (
            "efficientnet_b0",
            "efficientnet_b1",
            "efficientnet_b2",
            "efficientnet_b3",
            "efficientnet_lite0",
        )
    },
    **{
        f"timm mobilenetv4_conv_{size}": (
            lambda size=size: timm.create_model(f"mobilenetv4_conv_{size}"),
            "timm",
            f"mobilenetv4_conv_{size}",
            1.0,
            True,
        )
        for size in ("small", "medium")
    },
    # Another family's file: the import names what it expected and what it found.
    "timm efficientnet_b0 as mobilenet_v3_large": (
        lambda: timm.create_model("efficientnet_b0"),
        "timm",
        "mobilenet_v3_large",
        1.0,
        False,
    ),
    "timm mobilenetv4_conv_large": (
        lambda: timm.create_model("mobilenetv4_conv_large"),
        "timm",
        "mobilenetv4_conv_medium",
        1.0,
        False,
    ),
}


def write_shapes(path: Path) -> None:
    """One line per reference model: its source, our model, width, and tensor shapes."""
    lines = []
    for name, (build, source, model, width, importable) in REFERENCE_ARCHITECTURES.items():
        shapes = {k: list(v.shape) for k, v in build().state_dict().items()}
        entry = {
            "source": source,
            "model": model,
            "width_mult": width,
            "importable": importable,
            "shapes": shapes,
        }
        lines.append(f"  {json.dumps(name)}: {json.dumps(entry)}")
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"{path.name}: {len(lines)} architectures, {path.stat().st_size:,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="fixture directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", nargs="+", choices=list(SOURCE_MODELS), help="make just these fixtures"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}"
    )

    for i, (name, fixture) in enumerate(SOURCE_MODELS.items()):
        if args.only and name not in args.only:
            continue
        generator = torch.Generator().manual_seed(args.seed + i)
        torch.manual_seed(args.seed + i)  # the libraries' own weight init
        model = randomise(fixture.build(), generator, fixture.size)
        if fixture.half:
            with torch.no_grad():
                for t in model.state_dict().values():
                    if t.is_floating_point():
                        t.copy_(t.half().float())
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if fixture.half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        weights = args.out / f"{name}{fixture.suffix}"
        if fixture.suffix == ".safetensors":
            save_file(state, str(weights))
        else:
            torch.save(state, weights)
        inputs = torch.randn(2, 3, fixture.size, fixture.size, generator=generator)
        with torch.no_grad():
            logits = model(inputs)
        metadata = {
            "source": name,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
        }
        save_file(
            {"inputs": inputs, "logits": logits.contiguous()},
            str(args.out / f"{name}.io.safetensors"),
            metadata=metadata,
        )
        print(
            f"{weights.name}: {len(state)} tensors, {weights.stat().st_size:,} bytes; "
            f"logits std {logits.std():.3f}"
        )
    write_shapes(args.out / "state_dict_shapes.json")


if __name__ == "__main__":
    main()

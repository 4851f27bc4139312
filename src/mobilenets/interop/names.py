"""The name tables: our submodule names against torchvision's and timm's, per kind of block
and per family layout, and the full tensor-name mapping they give for a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.layers import InvertedResidual
from mobilenets.models import (
    EFFICIENTNET_B0_TABLE,
    EFFICIENTNET_LITE0_TABLE,
    LRASPP,
    REPEATED_KINDS,
    V1_TABLE,
    V2_TABLE,
    V3_LARGE_TABLE,
    V3_SMALL_TABLE,
    V4_CONV_MEDIUM_TABLE,
    V4_CONV_SMALL_TABLE,
    DeepLabV3,
    Row,
    SSDLite,
    scale_depth,
)
from mobilenets.models.dense import TappedTrunk

Source = Literal["torchvision", "timm"]
SOURCES: tuple[str, ...] = ("torchvision", "timm")

# --- the name tables: our submodule -> the source's submodule, per kind of layer -------------
#
# A model here is a table of rows (mobilenets.models._builder); each row becomes one layer of
# ``features`` per repeat. What differs between the libraries is data: how each kind of block
# names its parts (one table per source and block kind, below) and how the blocks are grouped
# (one layout per source and family, further below). One loop per source reads them. The
# block tables are keyed by the row's kind; an "ir" row without expansion (t = 1) is
# "ir_no_expand", a depthwise-separable block in both libraries, its parts shifted down.

# timm: every family is its EfficientNet/MobileNetV3 builder's conv_stem/bn1,
# blocks.<stage>.<block>, [conv_head/bn2 | conv_head/norm_head after pooling], classifier.
TIMM_SE = {"se.reduce": "se.conv_reduce", "se.expand": "se.conv_expand"}
TIMM_BLOCKS: dict[str, dict[str, str]] = {
    "conv": {"conv": "conv", "bn": "bn1"},  # timm's ConvBnAct block ("cn")
    "ds": {  # MobileNetV1's separable block
        "depthwise.conv": "conv_dw",
        "depthwise.bn": "bn1",
        "pointwise.conv": "conv_pw",
        "pointwise.bn": "bn2",
    },
    "ir_no_expand": {  # timm's DepthwiseSeparableConv ("ds"), with optional SE
        "depthwise.conv": "conv_dw",
        "depthwise.bn": "bn1",
        **TIMM_SE,
        "project.conv": "conv_pw",
        "project.bn": "bn2",
    },
    "ir": {  # InvertedResidual ("ir")
        "expand.conv": "conv_pw",
        "expand.bn": "bn1",
        "depthwise.conv": "conv_dw",
        "depthwise.bn": "bn2",
        **TIMM_SE,
        "project.conv": "conv_pwl",
        "project.bn": "bn3",
    },
    "fused": {  # EdgeResidual ("er"), MobileNetV4's FusedIB
        "expand.conv": "conv_exp",
        "expand.bn": "bn1",
        **TIMM_SE,
        "project.conv": "conv_pwl",
        "project.bn": "bn2",
    },
    "uib": {  # UniversalInvertedResidual ("uir")
        "start_depthwise.conv": "dw_start.conv",
        "start_depthwise.bn": "dw_start.bn",
        "expand.conv": "pw_exp.conv",
        "expand.bn": "pw_exp.bn",
        "depthwise.conv": "dw_mid.conv",
        "depthwise.bn": "dw_mid.bn",
        **TIMM_SE,
        "project.conv": "pw_proj.conv",
        "project.bn": "pw_proj.bn",
    },
}
TIMM_STEM = {"conv": "conv_stem", "bn": "bn1"}
TIMM_LAST_CONV = {"conv": "conv_head", "bn": "bn2"}  # a last 1x1 row outside the stages
TIMM_HEAD = {"classifier.head.conv": "conv_head", "classifier.head.bn": "norm_head"}
TIMM_CLASSIFIER = "classifier"

# How many rows of each table (after the stem row) each of timm's stages holds; rows after
# the stages are its conv_head. From timm's arch_def lists, which group by resolution and
# width but not by one rule (MNv4-Conv-S's second stage holds a 96- and a 64-channel conv).
TIMM_STAGES: dict[str, tuple[int, ...]] = {
    "mobilenet_v1": (1, 2, 2, 6, 2),
    "mobilenet_v2": (1, 1, 1, 1, 1, 1, 1),
    "mobilenet_v3_large": (1, 2, 3, 4, 2, 3, 1),
    "mobilenet_v3_small": (1, 2, 3, 2, 3, 1),
    "efficientnet": (1, 1, 1, 1, 1, 1, 1),
    "efficientnet_lite": (1, 1, 1, 1, 1, 1, 1),
    "mobilenetv4_conv_small": (2, 2, 3, 5, 1),
    "mobilenetv4_conv_medium": (1, 2, 7, 9, 1),
}

# torchvision: MobileNetV2 keeps a block's layers in one Sequential ``conv`` whose projection
# is a bare convolution and BatchNorm; MobileNetV3 and EfficientNet in ``block``, one
# Conv2dNormActivation (0: conv, 1: bn) or SqueezeExcitation (fc1, fc2) per part present, in
# the order expand, depthwise, SE, project.
TORCHVISION_CONV_BN = {"conv": "0", "bn": "1"}
TORCHVISION_V2_BLOCKS: dict[str, dict[str, str]] = {
    "ir": {
        "expand.conv": "conv.0.0",
        "expand.bn": "conv.0.1",
        "depthwise.conv": "conv.1.0",
        "depthwise.bn": "conv.1.1",
        "project.conv": "conv.2",
        "project.bn": "conv.3",
    },
    "ir_no_expand": {
        "depthwise.conv": "conv.0.0",
        "depthwise.bn": "conv.0.1",
        "project.conv": "conv.1",
        "project.bn": "conv.2",
    },
}
TORCHVISION_BLOCK_PARTS = ("expand", "depthwise", "se", "project")
TORCHVISION_PART_LAYERS = {"conv": "0", "bn": "1", "reduce": "fc1", "expand": "fc2"}

# torchvision's dense models (issue 33) on MobileNetV3: the trunk as above, under
# ``backbone.`` (segmentation: IntermediateLayerGetter) or split at SSDLite's C4 expansion
# (``backbone.features.0``: the layers before it and the expansion; ``backbone.features.1``:
# the rest of that block, which keeps its part indices, and the layers after it); then the
# heads' layers, ours named for what they are, theirs by position.
TORCHVISION_CONV_BN_PAIRS = (("conv", "0"), ("bn", "1"))
TORCHVISION_LRASPP_HEAD = {
    "classifier.branch.conv": "classifier.cbr.0",
    "classifier.branch.bn": "classifier.cbr.1",
    "classifier.gate.conv": "classifier.scale.1",
    "classifier.low_classifier": "classifier.low_classifier",
    "classifier.high_classifier": "classifier.high_classifier",
}
TORCHVISION_DEEPLAB_HEAD = {
    **{
        f"classifier.aspp.branches.{i}.{ours}": f"classifier.0.convs.{i}.{theirs}"
        for i in range(4)
        for ours, theirs in TORCHVISION_CONV_BN_PAIRS
    },
    "classifier.aspp.branches.4.conv.conv": "classifier.0.convs.4.1",  # after the pooling
    "classifier.aspp.branches.4.conv.bn": "classifier.0.convs.4.2",
    "classifier.aspp.project.conv.conv": "classifier.0.project.0",
    "classifier.aspp.project.conv.bn": "classifier.0.project.1",
    "classifier.conv.conv": "classifier.1",
    "classifier.conv.bn": "classifier.2",
    "classifier.score": "classifier.4",
    "aux_classifier.conv.conv": "aux_classifier.0",
    "aux_classifier.conv.bn": "aux_classifier.1",
    "aux_classifier.score": "aux_classifier.4",
}
TORCHVISION_SSDLITE_EXTRA = {"reduce": "0", "depthwise": "1", "expand": "2"}
TORCHVISION_SSDLITE_PREDICTOR = {"depthwise.conv": "0.0", "depthwise.bn": "0.1", "pointwise": "1"}


@dataclass(frozen=True)
class TorchvisionLayout:
    """Where torchvision keeps a model's layers: ``features.<i>`` in one flat list (V2, V3),
    or ``features.<stage>.<block>`` with the stem first and the last convolution after the
    stages (EfficientNet); then the classifier's layers."""

    staged: bool
    fc: str
    head: str | None = None  # V3's Linear after pooling, our 1x1 head convolution
    v2_blocks: bool = False


TORCHVISION_LAYOUTS: dict[str, TorchvisionLayout] = {
    "mobilenet_v2": TorchvisionLayout(staged=False, fc="classifier.1", v2_blocks=True),
    "mobilenet_v3_large": TorchvisionLayout(staged=False, fc="classifier.3", head="classifier.0"),
    "mobilenet_v3_small": TorchvisionLayout(staged=False, fc="classifier.3", head="classifier.0"),
    "efficientnet": TorchvisionLayout(staged=True, fc="classifier.1"),
}

CLASSIFIER_WEIGHT = {
    "torchvision": ("classifier.1.weight", "classifier.3.weight"),
    "timm": (f"{TIMM_CLASSIFIER}.weight",),
}
OPTIONAL_SUFFIX = ".num_batches_tracked"

# The families whose weights move: a model is of a family when its table has the family's
# rows, whatever their activations (MobileNetV1 is built with ReLU or ReLU6). EfficientNet-B1
# to B3 are B0's table under depth and width multipliers.
FAMILIES: dict[str, tuple[Row, ...]] = {
    "mobilenet_v1": V1_TABLE,
    "mobilenet_v2": V2_TABLE,
    "mobilenet_v3_large": V3_LARGE_TABLE,
    "mobilenet_v3_small": V3_SMALL_TABLE,
    "efficientnet": EFFICIENTNET_B0_TABLE,
    "efficientnet_lite": EFFICIENTNET_LITE0_TABLE,
    "mobilenetv4_conv_small": V4_CONV_SMALL_TABLE,
    "mobilenetv4_conv_medium": V4_CONV_MEDIUM_TABLE,
}
# timm's MobileNetV1 clips at 6 (TF-slim's weights); its V3 uses BatchNorm's eps 1e-5 where the
# TensorFlow reference and torchvision use 1e-3.
SOURCE_KWARGS: dict[tuple[str, str], dict[str, Any]] = {
    ("timm", "mobilenet_v1"): {"activation": "relu6"},
    ("timm", "mobilenet_v3_large"): {"bn_eps": 1e-5},
    ("timm", "mobilenet_v3_small"): {"bn_eps": 1e-5},
}


def _block_kind(row: Row, block: nn.Module) -> str:
    """The key of the block tables for one layer built from ``row``."""
    if row.kind == "ir" and getattr(block, "expand", None) is None:
        return "ir_no_expand"
    return row.kind


def _rows_without_activation(table: Sequence[Row]) -> tuple[Row, ...]:
    return tuple(row._replace(act="") for row in table)


_FAMILY_OF_ROWS = {_rows_without_activation(t): name for name, t in FAMILIES.items()}


def family(model: nn.Module) -> str | None:
    """The family in :data:`FAMILIES` that ``model`` is built from, or None."""
    table = getattr(model, "table", None)
    return None if table is None else _FAMILY_OF_ROWS.get(_rows_without_activation(table))


def _layers(model: nn.Module) -> list[tuple[int, Row]]:
    """(row index, row) of each layer of ``model.features``, repeats and depth included."""
    depth = getattr(model, "depth_mult", 1.0)
    layers = []
    for r, row in enumerate(model.table):
        n = scale_depth(row.n, depth) if row.kind in REPEATED_KINDS else row.n
        layers += [(r, row)] * n
    return layers


def _stage_positions(stages: Sequence[int], layers: list[tuple[int, Row]]) -> list[tuple[int, int]]:
    """(stage, index in stage) for each layer; stage -1 before the stages, len after."""
    stage_of_row = {}
    row = 1
    for s, count in enumerate(stages):
        for _ in range(count):
            stage_of_row[row] = s
            row += 1
    positions, seen = [], {}
    for r, _ in layers:
        s = -1 if r == 0 else stage_of_row.get(r, len(stages))
        positions.append((s, seen.get(s, 0)))
        seen[s] = seen.get(s, 0) + 1
    return positions


def timm_module_names(model: nn.Module) -> dict[str, str]:
    """Our module name -> timm's, for every module of ``model`` that holds tensors."""
    name = family(model)
    if name is None:
        raise MobileNetError(f"no timm weights for {type(model).__name__}")
    stages = TIMM_STAGES[name]
    layers = _layers(model)
    names = {"classifier.fc": TIMM_CLASSIFIER, **TIMM_HEAD}
    for i, ((_, row), (s, j)) in enumerate(
        zip(layers, _stage_positions(stages, layers), strict=True)
    ):
        if s < 0:
            parts, prefix = TIMM_STEM, ""
        elif s < len(stages):
            parts, prefix = TIMM_BLOCKS[_block_kind(row, model.features[i])], f"blocks.{s}.{j}."
        else:
            parts, prefix = TIMM_LAST_CONV, ""
        names.update({f"features.{i}.{a}": prefix + b for a, b in parts.items()})
    return names


def _torchvision_block_names(block: nn.Module) -> dict[str, str]:
    """V3 and EfficientNet: ``block.<k>`` for the k-th of the block's parts present."""
    present = [p for p in TORCHVISION_BLOCK_PARTS if getattr(block, p, None) is not None]
    return {
        f"{part}.{layer}": f"block.{k}.{theirs}"
        for k, part in enumerate(present)
        for layer, theirs in TORCHVISION_PART_LAYERS.items()
    }


def torchvision_module_names(model: nn.Module) -> dict[str, str]:
    """Our module name -> torchvision's, for every module of ``model`` that holds tensors."""
    if isinstance(model, TappedTrunk):
        return torchvision_dense_module_names(model)
    name = family(model)
    if name not in TORCHVISION_LAYOUTS:
        name = name or type(model).__name__
        raise MobileNetError(
            f"torchvision has no {name}; torchvision weights import into "
            "mobilenet_v2, mobilenet_v3_large/small and efficientnet_b0-b3 "
            "(MobileNetV1, EfficientNet-Lite and MobileNetV4 weights come from timm: "
            "--source timm)"
        )
    layout = TORCHVISION_LAYOUTS[name]
    layers = _layers(model)
    names = {"classifier.fc": layout.fc}
    if layout.head:
        names["classifier.head.conv"] = layout.head
    stages = (1,) * sum(1 for row in model.table[1:] if row.kind in REPEATED_KINDS)
    positions = _stage_positions(stages, layers)
    for i, ((_, row), (s, j)) in enumerate(zip(layers, positions, strict=True)):
        block = model.features[i]
        if layout.staged:
            prefix = f"features.{s + 1}.{j}." if 0 <= s < len(stages) else f"features.{s + 1}."
        else:
            prefix = f"features.{i}."
        if row.kind == "conv":
            parts = TORCHVISION_CONV_BN
        elif layout.v2_blocks:
            parts = TORCHVISION_V2_BLOCKS[_block_kind(row, block)]
        else:
            parts = _torchvision_block_names(block)
        names.update({f"features.{i}.{a}": prefix + b for a, b in parts.items()})
    return names


def _torchvision_trunk_layer(layer: nn.Module) -> dict[str, str]:
    if isinstance(layer, InvertedResidual):
        return _torchvision_block_names(layer)
    return dict(TORCHVISION_CONV_BN)


def torchvision_dense_module_names(model: TappedTrunk) -> dict[str, str]:
    """Our module name -> torchvision's for SSDLite, LR-ASPP and DeepLabV3 on MobileNetV3
    (``ssdlite320_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``,
    ``deeplabv3_mobilenet_v3_large``: torchvision builds these heads on no other trunk)."""
    if not any(isinstance(m, nn.Hardswish) for m in model.features.modules()):
        raise MobileNetError(
            f"torchvision has no {type(model).__name__} on this trunk; its detection and "
            "segmentation heads sit on MobileNetV3"
        )
    names: dict[str, str] = {}
    c4 = next((int(t.layer) for t in model.taps if t.expansion), None)
    for name, layer in model.features.named_children():
        i = int(name)
        for ours, theirs in _torchvision_trunk_layer(layer).items():
            if not isinstance(model, SSDLite):
                target = f"backbone.{i}.{theirs}"
            elif c4 is None or i < c4:
                target = f"backbone.features.0.{i}.{theirs}"
            elif i > c4:
                target = f"backbone.features.1.{i - c4}.{theirs}"
            elif theirs.startswith("block.0."):  # the expansion: C4's map
                target = f"backbone.features.0.{i}.{theirs.removeprefix('block.0.')}"
            else:  # the rest of the block, its parts' indices kept
                target = f"backbone.features.1.0.{theirs.removeprefix('block.')}"
            names[f"features.{name}.{ours}"] = target
    if isinstance(model, LRASPP):
        names.update(TORCHVISION_LRASPP_HEAD)
    elif isinstance(model, DeepLabV3):
        names.update(TORCHVISION_DEEPLAB_HEAD)
    else:
        for k in range(len(model.extra)):
            for part, index in TORCHVISION_SSDLITE_EXTRA.items():
                for ours, theirs in TORCHVISION_CONV_BN_PAIRS:
                    names[f"extra.{k}.{part}.{ours}"] = f"backbone.extra.{k}.{index}.{theirs}"
        for head in ("classification_head", "regression_head"):
            for k in range(len(getattr(model, head))):
                for ours, theirs in TORCHVISION_SSDLITE_PREDICTOR.items():
                    names[f"{head}.{k}.{ours}"] = f"head.{head}.module_list.{k}.{theirs}"
    return names


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise MobileNetError(f"unknown source {source!r}; known sources: {', '.join(SOURCES)}")


def tensor_names(model: nn.Module, source: Source) -> dict[str, str]:
    """Our state-dict key -> the source library's key, for every tensor of ``model``."""
    check_source(source)
    modules = (
        torchvision_module_names(model) if source == "torchvision" else timm_module_names(model)
    )
    names = {}
    for key in model.state_dict():
        module, leaf = key.rsplit(".", 1)
        if module not in modules:
            raise MobileNetError(f"no {source} name for {key} of {type(model).__name__}")
        names[key] = f"{modules[module]}.{leaf}"
    return names


# --- reading files from other libraries ---------------------------------------------------------

"""ImageNet weights from torchvision and timm checkpoint files, and our weights back to them.

Nothing here downloads: the user points us at a checkpoint file they hold (torchvision's
``mobilenet_v2``, ``mobilenet_v3_large/small``, ``efficientnet_b0``-``b3``; timm's
``mobilenetv1/v2/v3_*``, ``efficientnet_b0``-``b3``, ``efficientnet_lite0``,
``mobilenetv4_conv_small/medium``), as ``.pth``/``.pt`` or ``.safetensors``. Such a file is
read with ``torch.load(weights_only=True)`` or safetensors, never by plain unpickling: a pickle
that needs anything beyond tensors and plain containers to load is refused before any of it runs.

The three libraries build the same networks with different module names. The mapping is data:
per source, one table per kind of block (our ``features.3.expand.conv`` is timm's
``blocks.1.0.conv_pw``, torchvision's ``features.3.block.0.0``) and one layout per family (how
timm groups a table's rows into stages, where torchvision keeps its stages and classifier). It
is checked both ways: every tensor of the model must come from the file and every tensor of the
file must land in the model, or the import fails naming what is missing, left over or
mis-shaped, or which released model the file is when it is another one.

Details of the sources that matter for equal outputs. timm's MobileNetV1 uses ReLU6 where the
paper (and our default) uses ReLU, so it imports into ``mobilenet_v1`` with
``activation="relu6"``; timm's ``mobilenetv1_100h`` adds a 1x1 head convolution that our V1 does
not have, and is refused. timm's MobileNetV3 uses BatchNorm's eps 1e-5 where torchvision and the
TensorFlow reference use 1e-3, so it imports with ``bn_eps=1e-5``. torchvision's V3 head is a
Linear layer after pooling, ours the equivalent 1x1 convolution: its weight is reshaped both
ways. torchvision scales V3's widths its own way (absolute expansion widths and the head), so
only its width 1.0 is our V3. Released timm checkpoints omit BatchNorm's ``num_batches_tracked``
counter (it only matters for cumulative-average momentum, which no MobileNet recipe uses), so a
missing counter is set to zero rather than failing the import; half-precision files load into
the float32 model.
"""

from __future__ import annotations

import functools
import inspect
import os
import pickle
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from mobilenets.data import IMAGENET_MEAN, IMAGENET_STD
from mobilenets.errors import MobileNetError
from mobilenets.imagenet import default_class_names
from mobilenets.io import atomic_path
from mobilenets.layers import InvertedResidual
from mobilenets.models import (
    EFFICIENTNET_B0_TABLE,
    EFFICIENTNET_LITE0_TABLE,
    EFFICIENTNET_SCALING,
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
    create_model,
    get_model_factory,
    scale_depth,
)
from mobilenets.models.dense import TappedTrunk
from mobilenets.runs import (
    ImportRecord,
    RunInfo,
    load_run,
    load_state_dict_file,
    load_weights_into,
    save_run,
)

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


def tensor_names(model: nn.Module, source: Source) -> dict[str, str]:
    """Our state-dict key -> the source library's key, for every tensor of ``model``."""
    _check_source(source)
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

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since 1.6
PICKLE_MAGIC = b"\x80"  # the legacy torch.save format starts with a pickle protocol opcode
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a torchvision or timm checkpoint file, read without running its code.

    Accepts a bare state dict or one inside a training checkpoint (under ``state_dict``,
    ``model``, ...), with ``module.`` or ``_orig_mod.`` prefixes removed.
    """
    path = Path(path)
    if not path.is_file():
        raise MobileNetError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_MAGIC):
        obj: Any = _torch_load(path)
    elif _looks_like_safetensors(head, path.stat().st_size):
        obj = load_state_dict_file(path)
    else:
        raise MobileNetError(
            f"{path} is not a checkpoint: neither a PyTorch file (.pth/.pt) nor safetensors"
        )
    return _strip_wrappers(_unwrap(obj, path), path)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then '{'."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + header_len <= size


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needed = re.search(r"GLOBAL ([\w.]+)", str(e))
        if needed:
            raise MobileNetError(
                f"refusing {path}: it needs more than plain tensors to load ({needed[1]}); "
                "only weights-only checkpoints (a state_dict) and safetensors are read"
            ) from None
        raise MobileNetError(f"{path} is not a readable PyTorch checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        reason = str(e).split(".")[0].strip() or type(e).__name__
        raise MobileNetError(f"{path} is truncated or corrupt: {reason}") from None


def _unwrap(obj: Any, path: Path) -> dict[str, Any]:
    """Find the state dict inside a training checkpoint's dictionary."""
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(sorted(map(str, obj))[:8])
            raise MobileNetError(f"{path} holds no state dict (top-level keys: {keys or 'none'})")
        obj = obj[inner]
    if not isinstance(obj, dict):
        raise MobileNetError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_state_dict(obj: dict[Any, Any]) -> bool:
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip_wrappers(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if not _is_state_dict(state):
        raise MobileNetError(f"{path} holds no state dict of tensors")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


# --- mapping state dicts --------------------------------------------------------------------


# The released ImageNet checkpoints of each source: their name -> our model and width. An
# import that does not fit says which of these the file is, when it is one.
RELEASED: dict[str, dict[str, tuple[str, float]]] = {
    "torchvision": {
        "mobilenet_v2": ("mobilenet_v2", 1.0),
        "mobilenet_v3_large": ("mobilenet_v3_large", 1.0),
        "mobilenet_v3_small": ("mobilenet_v3_small", 1.0),
        **{f"efficientnet_b{i}": (f"efficientnet_b{i}", 1.0) for i in range(4)},
    },
    "timm": {
        "mobilenetv1_100": ("mobilenet_v1", 1.0),
        "mobilenetv1_125": ("mobilenet_v1", 1.25),
        **{f"mobilenetv2_{w:03d}": ("mobilenet_v2", w / 100) for w in (35, 50, 75, 100, 140)},
        "mobilenetv3_large_075": ("mobilenet_v3_large", 0.75),
        "mobilenetv3_large_100": ("mobilenet_v3_large", 1.0),
        **{f"mobilenetv3_small_{w:03d}": ("mobilenet_v3_small", w / 100) for w in (50, 75, 100)},
        **{f"efficientnet_b{i}": (f"efficientnet_b{i}", 1.0) for i in range(4)},
        "efficientnet_lite0": ("efficientnet_lite0", 1.0),
        "mobilenetv4_conv_small": ("mobilenetv4_conv_small", 1.0),
        "mobilenetv4_conv_medium": ("mobilenetv4_conv_medium", 1.0),
    },
}


# The input size each family's released weights were trained at, when it is not 224 px.
IMPORT_RESOLUTION: dict[str, int] = {
    **{f"efficientnet_{v}": scaling.resolution for v, scaling in EFFICIENTNET_SCALING.items()},
    "mobilenetv4_conv_medium": 256,
}


def model_kwargs(source: str, model_name: str, width_mult: float = 1.0) -> dict[str, Any]:
    """Constructor keywords of our ``model_name`` for weights from ``source`` at this width.

    A family without a width multiplier is only asked for one when it is not 1, so that
    ``create_model`` refuses it in one line.
    """
    kwargs: dict[str, Any] = dict(SOURCE_KWARGS.get((source, model_name), {}))
    if (
        width_mult != 1.0
        or "width_mult" in inspect.signature(get_model_factory(model_name)).parameters
    ):
        kwargs["width_mult"] = width_mult
    return kwargs


def _source_shapes(model: nn.Module, source: str) -> dict[str, tuple[int, ...]]:
    """The source's key -> shape for ``model``: torchvision's V3 head is a Linear layer."""
    names = tensor_names(model, source)
    linear = _linear_in_source(model, source)
    return {
        names[k]: tuple(v.shape[:2]) if k in linear else tuple(v.shape)
        for k, v in model.state_dict().items()
    }


def _linear_in_source(model: nn.Module, source: str) -> set[str]:
    """Our 1x1-convolution weights that the source holds as a Linear layer's."""
    layout = TORCHVISION_LAYOUTS.get(family(model) or "")
    if source == "torchvision" and layout is not None and layout.head:
        return {"classifier.head.conv.weight"}
    return set()


def identify(state: dict[str, torch.Tensor], source: str) -> str | None:
    """Which released model ``state`` is (any class count), "<library> <name>", or None.

    ``source``'s models are tried first, then the other library's."""
    shapes = _without_counters({k: tuple(v.shape) for k, v in state.items()})
    for library in sorted(SOURCES, key=lambda s: s != source):
        for name in RELEASED[library]:
            theirs, fc = _released_shapes(library, name)
            if theirs.keys() == shapes.keys() and all(
                shapes[k][1:] == v[1:] if k in fc else shapes[k] == v for k, v in theirs.items()
            ):
                return f"{library} {name}"
    return None


@functools.cache
def _released_shapes(source: str, name: str) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """The tensor shapes of a released model under the source's names, and its classifier's
    names (the class count may differ). Built once per process: only a failed import asks."""
    ours, width = RELEASED[source][name]
    model = create_model(ours, **model_kwargs(source, ours, width))
    names = tensor_names(model, source)
    fc = {names["classifier.fc.weight"], names["classifier.fc.bias"]}
    return _without_counters(_source_shapes(model, source)), fc


def _without_counters(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in shapes.items() if not k.endswith(OPTIONAL_SUFFIX)}


def from_source_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: Source, origin: str = "the state dict"
) -> dict[str, torch.Tensor]:
    """Rename a torchvision or timm state dict to ``model``'s names, checking it fits exactly.

    A file that does not fit is named: which released model it is, when it is one.
    """
    names = tensor_names(model, source)
    own = model.state_dict()
    wanted = _source_shapes(model, source)
    missing = [k for k, theirs in names.items() if theirs not in state]
    missing_needed = [k for k in missing if not k.endswith(OPTIONAL_SUFFIX)]
    leftover = sorted(set(state) - set(names.values()))
    misfit = [
        k
        for k, theirs in names.items()
        if theirs in state and tuple(state[theirs].shape) != wanted[theirs]
    ]
    arch = f"{source} {_describe(model)}"
    if missing_needed or leftover or misfit:
        found = identify(state, source)
        if found:
            raise MobileNetError(f"{origin} is a {found} checkpoint, not a {arch} one")
        problems = []
        if missing_needed:
            k = missing_needed[0]
            problems.append(
                f"{len(missing_needed)} tensor(s) of the model are not in the file "
                f"(first: {names[k]} for {k})"
            )
        if leftover:
            problems.append(
                f"{len(leftover)} tensor(s) of the file have no place in the model "
                f"(first: {leftover[0]})"
            )
        if misfit and not problems:
            k = misfit[0]
            problems.append(
                f"{names[k]} has shape {tuple(state[names[k]].shape)}, the model's {k} needs "
                f"{wanted[names[k]]} (another width, class count or architecture?)"
            )
        raise MobileNetError(f"{origin} is not a {arch} checkpoint: {'; '.join(problems)}")
    renamed = {}
    for ours, theirs in names.items():
        if theirs not in state:  # an omitted num_batches_tracked counter
            renamed[ours] = torch.zeros_like(own[ours])
            continue
        # Half-precision files load into the float32 model; V3's Linear head into its conv.
        renamed[ours] = state[theirs].to(own[ours].dtype).reshape(own[ours].shape)
    return renamed


def _describe(model: nn.Module) -> str:
    name = family(model) or type(model).__name__
    width = getattr(model, "width_mult", None)
    depth = getattr(model, "depth_mult", 1.0)
    described = f"{name} width {width:g}" if isinstance(width, int | float) else name
    return described + (f" depth {depth:g}" if depth != 1.0 else "")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise MobileNetError(f"unknown source {source!r}; known sources: {', '.join(SOURCES)}")


def _check_activation(model: nn.Module, source: str) -> None:
    """timm's V1 clips at 6: moving weights between it and a ReLU model changes the outputs."""
    if source == "timm" and family(model) == "mobilenet_v1" and model.activation != "relu6":
        raise MobileNetError(
            "timm's MobileNetV1 uses ReLU6, this model ReLU: weights move between them only "
            "for a model built with activation='relu6'"
        )


def load_weights(model: nn.Module, path: str | os.PathLike[str], source: Source) -> nn.Module:
    """Load a torchvision or timm checkpoint file into ``model`` (in place) and return it."""
    _check_source(source)
    _check_activation(model, source)
    state = read_checkpoint(path)
    renamed = from_source_state_dict(model, state, source, origin=str(path))
    load_weights_into(model, renamed, str(path))
    return model


def to_torchvision_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under torchvision's names: ``torchvision.models.mobilenet_v2(...)``
    of the same width and class count loads it with ``load_state_dict`` (strict)."""
    return _to_source_state_dict(model, "torchvision")


def to_timm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under timm's names (``mobilenetv2_*``, or the V1 generator)."""
    return _to_source_state_dict(model, "timm")


def _to_source_state_dict(model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    _check_activation(model, source)
    names = tensor_names(model, source)
    shapes = _source_shapes(model, source)
    return {
        names[k]: v.detach().reshape(shapes[names[k]]).clone()
        for k, v in model.state_dict().items()
    }


def export_weights(
    run_dir: str | os.PathLike[str], target: Source, out: str | os.PathLike[str]
) -> dict[str, torch.Tensor]:
    """Write a run's weights under torchvision's or timm's names, for use in that library.

    ``out`` ending in ``.safetensors`` gets safetensors, anything else a ``torch.save`` file
    of the bare state dict (which ``torch.load(weights_only=True)`` reads).
    """
    _check_source(target)
    model, _ = load_run(run_dir)
    state = _to_source_state_dict(model, target)
    out = Path(out)
    with atomic_path(out) as tmp:
        if out.suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        else:
            torch.save(state, tmp)
    return state


# --- a run directory from a checkpoint ------------------------------------------------------


def import_checkpoint(
    path: str | os.PathLike[str],
    source: Source,
    model_name: str,
    out_dir: str | os.PathLike[str],
    width_mult: float = 1.0,
    labels: str | os.PathLike[str] | None = None,
) -> RunInfo:
    """Turn a torchvision or timm checkpoint into a run directory that every command reads.

    The class count comes from the checkpoint's classifier; ``labels`` (one class name per line)
    names the classes. Everything is checked before anything is written, and ``out_dir`` must be
    new or empty, so a failed import leaves nothing behind and overwrites nothing.
    """
    _check_source(source)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MobileNetError(f"{out_dir} already exists and is not an empty directory")
    kwargs = model_kwargs(source, model_name, width_mult)
    tensor_names(create_model(model_name, **kwargs), source)  # can this source hold the model?
    state = read_checkpoint(path)
    classifier = next((state[k] for k in CLASSIFIER_WEIGHT[source] if k in state), None)
    if classifier is None or classifier.ndim != 2:
        found = identify(state, source)
        if found:
            raise MobileNetError(f"{path} is a {found} checkpoint, not a {source} {model_name} one")
        raise MobileNetError(
            f"{path} is not a {source} {model_name} checkpoint: "
            f"it has no classifier weight {' or '.join(CLASSIFIER_WEIGHT[source])}"
        )
    kwargs["num_classes"] = int(classifier.shape[0])
    model = create_model(model_name, **kwargs)
    class_names = read_labels(labels, model.num_classes) if labels else None
    renamed = from_source_state_dict(model, state, source, origin=str(path))
    load_weights_into(model, renamed, str(path))
    info = RunInfo(
        model=model_name,
        model_kwargs=kwargs,
        class_names=class_names or default_class_names(model.num_classes),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=(
            3,
            IMPORT_RESOLUTION.get(model_name, 224),
            IMPORT_RESOLUTION.get(model_name, 224),
        ),
        imported_from=ImportRecord(file=str(Path(path).resolve()), source=source),
    )
    save_run(out_dir, model.eval(), info)
    return info


def read_labels(path: str | os.PathLike[str], num_classes: int) -> list[str]:
    """Class names from a text file, one per line, exactly ``num_classes`` of them."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MobileNetError(f"cannot read labels file {path}: {e}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if "" in names:
        raise MobileNetError(f"labels file {path} has an empty line {names.index('') + 1}")
    if len(names) != num_classes:
        raise MobileNetError(
            f"labels file {path} has {len(names)} class names, but the checkpoint's "
            f"classifier has {num_classes} outputs"
        )
    return names

"""ImageNet weights from torchvision and timm checkpoint files, and our weights back to them.

Nothing here downloads: the user points us at a checkpoint file they hold, a torchvision
``mobilenet_v2`` or a timm ``mobilenetv1_*`` / ``mobilenetv2_*`` state dict, as ``.pth``/``.pt``
or ``.safetensors``. Such a file is read with ``torch.load(weights_only=True)`` or safetensors,
never by plain unpickling: a pickle that needs anything beyond tensors and plain containers to
load is refused before any of it runs.

The three libraries build the same networks with different module names. The mapping is written
out below as tables, one per block kind, from our names (``features.3.expand.conv``) to theirs
(torchvision ``features.3.conv.0.0``, timm ``blocks.1.1.conv_pw``). It is checked both ways: every
tensor of the model must come from the file and every tensor of the file must land in the model,
or the import fails naming what is missing or left over; a shape mismatch names the layer.

Two details of the sources matter for equal outputs. timm's MobileNetV1 uses ReLU6 where the
paper (and our default) uses ReLU, so it imports into ``mobilenet_v1`` with
``activation="relu6"``; timm's ``mobilenetv1_100h`` adds a 1x1 head convolution that our V1 does
not have, and is refused. Released timm checkpoints omit BatchNorm's ``num_batches_tracked``
counter (it only matters for cumulative-average momentum, which no MobileNet recipe uses), so a
missing counter is set to zero rather than failing the import.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
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
from mobilenets.models import V2_BOTTLENECKS, MobileNetV1, MobileNetV2, create_model
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

# torchvision's Conv2dNormActivation (the V2 stem and last 1x1 convolution) is a Sequential of
# convolution, BatchNorm, activation.
TORCHVISION_CONV_BN = {"conv": "0", "bn": "1"}
# torchvision's InvertedResidual keeps its layers in one Sequential, ``conv``; without an
# expansion (t = 1) the positions shift down by one.
TORCHVISION_BOTTLENECK = {
    "expand.conv": "conv.0.0",
    "expand.bn": "conv.0.1",
    "depthwise.conv": "conv.1.0",
    "depthwise.bn": "conv.1.1",
    "project.conv": "conv.2",
    "project.bn": "conv.3",
}
TORCHVISION_BOTTLENECK_NO_EXPAND = {
    "depthwise.conv": "conv.0.0",
    "depthwise.bn": "conv.0.1",
    "project.conv": "conv.1",
    "project.bn": "conv.2",
}
TORCHVISION_CLASSIFIER = "classifier.1"  # classifier.0 is the dropout

# timm builds both versions as an EfficientNet: conv_stem/bn1, blocks.<stage>.<block>,
# conv_head/bn2 (V2 only), classifier. Its V2 first block (t = 1) is a "ds" block.
TIMM_STEM = {"conv": "conv_stem", "bn": "bn1"}
TIMM_HEAD = {"conv": "conv_head", "bn": "bn2"}
TIMM_BOTTLENECK = {
    "expand.conv": "conv_pw",
    "expand.bn": "bn1",
    "depthwise.conv": "conv_dw",
    "depthwise.bn": "bn2",
    "project.conv": "conv_pwl",
    "project.bn": "bn3",
}
TIMM_BOTTLENECK_NO_EXPAND = {
    "depthwise.conv": "conv_dw",
    "depthwise.bn": "bn1",
    "project.conv": "conv_pw",
    "project.bn": "bn2",
}
TIMM_SEPARABLE = {
    "depthwise.conv": "conv_dw",
    "depthwise.bn": "bn1",
    "pointwise.conv": "conv_pw",
    "pointwise.bn": "bn2",
}
TIMM_CLASSIFIER = "classifier"
# timm's V1 arch_def has five rows ("dsa_r1_k3_s1_c64", "dsa_r2_k3_s2_c128", ...): the 13 blocks
# of V1_BLOCKS grouped into stages that each start at a stride-2 block. Its V2 rows are the rows
# of V2_BOTTLENECKS.
TIMM_V1_STAGE_DEPTHS = (1, 2, 2, 6, 2)
TIMM_V2_STAGE_DEPTHS = tuple(row.n for row in V2_BOTTLENECKS)

CLASSIFIER_WEIGHT = {
    "torchvision": f"{TORCHVISION_CLASSIFIER}.weight",
    "timm": f"{TIMM_CLASSIFIER}.weight",
}
OPTIONAL_SUFFIX = ".num_batches_tracked"


def torchvision_module_names(model: nn.Module) -> dict[str, str]:
    """Our module name -> torchvision's, for every module of ``model`` that holds tensors."""
    if not isinstance(model, MobileNetV2):
        raise MobileNetError(
            f"torchvision has no {type(model).__name__}; only mobilenet_v2 imports from "
            "torchvision (MobileNetV1 weights come from timm: --source timm)"
        )
    names = {"classifier.fc": TORCHVISION_CLASSIFIER}
    for i, layer in enumerate(model.features):
        if isinstance(layer, InvertedResidual):
            table = (
                TORCHVISION_BOTTLENECK
                if layer.expand is not None
                else TORCHVISION_BOTTLENECK_NO_EXPAND
            )
        else:
            table = TORCHVISION_CONV_BN
        names.update({f"features.{i}.{a}": f"features.{i}.{b}" for a, b in table.items()})
    return names


def timm_module_names(model: nn.Module) -> dict[str, str]:
    """Our module name -> timm's, for every module of ``model`` that holds tensors."""
    if isinstance(model, MobileNetV1):
        depths = TIMM_V1_STAGE_DEPTHS
    elif isinstance(model, MobileNetV2):
        depths = TIMM_V2_STAGE_DEPTHS
    else:
        raise MobileNetError(f"no timm mapping for {type(model).__name__}")
    stages = [(s, j) for s, n in enumerate(depths) for j in range(n)]
    names = {f"features.0.{a}": b for a, b in TIMM_STEM.items()}
    names["classifier.fc"] = TIMM_CLASSIFIER
    blocks = list(model.features)[1 : 1 + len(stages)]
    for i, ((s, j), block) in enumerate(zip(stages, blocks, strict=True), start=1):
        if isinstance(block, InvertedResidual):
            table = TIMM_BOTTLENECK if block.expand is not None else TIMM_BOTTLENECK_NO_EXPAND
        else:
            table = TIMM_SEPARABLE
        names.update({f"features.{i}.{a}": f"blocks.{s}.{j}.{b}" for a, b in table.items()})
    if isinstance(model, MobileNetV2):
        last = len(model.features) - 1
        names.update({f"features.{last}.{a}": b for a, b in TIMM_HEAD.items()})
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


def from_source_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: Source, origin: str = "the state dict"
) -> dict[str, torch.Tensor]:
    """Rename a torchvision or timm state dict to ``model``'s names, checking it fits exactly."""
    names = tensor_names(model, source)
    own = model.state_dict()
    missing = [k for k, theirs in names.items() if theirs not in state]
    missing_needed = [k for k in missing if not k.endswith(OPTIONAL_SUFFIX)]
    leftover = sorted(set(state) - set(names.values()))
    arch = f"{source} {_describe(model)}"
    if missing_needed or leftover:
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
        raise MobileNetError(f"{origin} is not a {arch} checkpoint: {'; '.join(problems)}")
    renamed = {}
    for ours, theirs in names.items():
        if theirs not in state:  # an omitted num_batches_tracked counter
            renamed[ours] = torch.zeros_like(own[ours])
            continue
        tensor = state[theirs]
        if tensor.shape != own[ours].shape:
            raise MobileNetError(
                f"{origin} does not fit {arch}: {theirs} has shape {tuple(tensor.shape)}, "
                f"the model's {ours} needs {tuple(own[ours].shape)} "
                "(another width, class count or architecture?)"
            )
        renamed[ours] = tensor
    return renamed


def _describe(model: nn.Module) -> str:
    name = {MobileNetV1: "mobilenet_v1", MobileNetV2: "mobilenet_v2"}.get(type(model), "model")
    width = getattr(model, "width_mult", None)
    return f"{name} width {width:g}" if isinstance(width, int | float) else name


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise MobileNetError(f"unknown source {source!r}; known sources: {', '.join(SOURCES)}")


def _check_activation(model: nn.Module, source: str) -> None:
    """timm's V1 clips at 6: moving weights between it and a ReLU model changes the outputs."""
    if source == "timm" and isinstance(model, MobileNetV1) and model.activation != "relu6":
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
    return {names[k]: v.detach().clone() for k, v in model.state_dict().items()}


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
    kwargs: dict[str, Any] = {"width_mult": width_mult}
    if source == "timm" and model_name == "mobilenet_v1":
        kwargs["activation"] = "relu6"
    tensor_names(create_model(model_name, **kwargs), source)  # can this source hold the model?
    state = read_checkpoint(path)
    classifier = state.get(CLASSIFIER_WEIGHT[source])
    if classifier is None or classifier.ndim != 2:
        raise MobileNetError(
            f"{path} is not a {source} {model_name} checkpoint: "
            f"it has no classifier weight {CLASSIFIER_WEIGHT[source]}"
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
        input_size=(3, 224, 224),
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

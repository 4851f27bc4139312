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
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mobilenets.data import IMAGENET_MEAN, IMAGENET_STD
from mobilenets.data.imagenet import default_class_names
from mobilenets.errors import MobileNetError
from mobilenets.interop.checkpoint import read_checkpoint
from mobilenets.interop.names import (
    CLASSIFIER_WEIGHT,
    OPTIONAL_SUFFIX,
    SOURCE_KWARGS,
    SOURCES,
    TORCHVISION_LAYOUTS,
    Source,
    check_source,
    family,
    tensor_names,
)
from mobilenets.io import atomic_path
from mobilenets.models import (
    EFFICIENTNET_SCALING,
    create_model,
    takes_width,
)
from mobilenets.runs import (
    ImportRecord,
    RunInfo,
    load_run,
    load_weights_into,
    save_run,
)

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
    if width_mult != 1.0 or takes_width(model_name):
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


def _check_activation(model: nn.Module, source: str) -> None:
    """timm's V1 clips at 6: moving weights between it and a ReLU model changes the outputs."""
    if source == "timm" and family(model) == "mobilenet_v1" and model.activation != "relu6":
        raise MobileNetError(
            "timm's MobileNetV1 uses ReLU6, this model ReLU: weights move between them only "
            "for a model built with activation='relu6'"
        )


def load_weights(model: nn.Module, path: str | os.PathLike[str], source: Source) -> nn.Module:
    """Load a torchvision or timm checkpoint file into ``model`` (in place) and return it."""
    check_source(source)
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
    check_source(target)
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
    check_source(source)
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

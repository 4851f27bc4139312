"""Starting a run from another run's weights (``--init``): the weights loaded (its classifier
replaced when the classes differ), the recipe it inherits, the trunk frozen if asked, and what
the new run records of where it started.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.models import get_model_factory, takes_width
from mobilenets.runs import (
    META_FILE,
    RunInfo,
    load_state_dict_file,
    load_weights_into,
    read_run_info,
)
from mobilenets.train.recipe import DEFAULT_MODEL, DEFAULT_MODELS, DEFAULT_WIDTH_MULT, TrainConfig


def load_init_weights(
    model: nn.Module, source: str, model_name: str | None = None, kwargs: dict | None = None
) -> None:
    """Start from the weights of a run directory or a safetensors file.

    A classifier trained for another number of classes is kept freshly initialised (transfer
    learning); any other mismatch (another architecture or width) is an error, which for a run
    directory says which ``--model``/``--width-mult`` its weights need.
    """
    path = Path(source)
    file = path / "model.safetensors" if path.is_dir() else path
    state = load_state_dict_file(file)
    own = model.state_dict()
    for name, tensor in own.items():
        if name.startswith("classifier.") and name in state and state[name].shape != tensor.shape:
            state[name] = tensor
    try:
        load_weights_into(model, state, str(file))
    except MobileNetError as e:
        hint = _init_hint(path, model_name, kwargs or {}) if path.is_dir() else ""
        raise MobileNetError(f"{e}{hint}") from None


def load_trunk_weights(model: nn.Module, source: str) -> int:
    """Start a detector's or segmenter's trunk (``model.features``) from a classifier's weights
    (a run directory or a safetensors file): every trunk tensor must be there with its shape;
    the head starts fresh. Returns the number of tensors loaded."""
    path = Path(source)
    file = path / "model.safetensors" if path.is_dir() else path
    state = load_state_dict_file(file)
    trunk = {f"features.{k}" for k in model.features.state_dict()}
    wanted = {k: v for k, v in state.items() if k in trunk}
    own = model.state_dict()
    missing = sorted(trunk - set(wanted))
    mismatched = [k for k in wanted if wanted[k].shape != own[k].shape]
    if missing or mismatched:
        first = missing[0] if missing else mismatched[0]
        found = "missing" if missing else f"of shape {tuple(wanted[first].shape)}"
        raise MobileNetError(
            f"{file} does not hold this head's trunk: {first} is {found} (expected shape "
            f"{tuple(own[first].shape)}); pass --model and --width-mult of the classifier's "
            "family and width"
        )
    model.load_state_dict(wanted, strict=False)
    return len(wanted)


def _init_hint(run_dir: Path, model_name: str | None, kwargs: dict) -> str:
    """What to pass so the model fits the weights of ``run_dir``, from its record."""
    try:
        info = read_run_info(run_dir)
    except MobileNetError:
        return ""
    flags, what = [], []
    if model_name is not None and info.model != model_name:
        flags.append(f"--model {info.model}")
        what.append(info.model)
    width = info.model_kwargs.get("width_mult")
    if width is not None and kwargs.get("width_mult") not in (None, width):
        flags.append(f"--width-mult {width}")
        what.append(f"width {width}")
    if not flags:
        return ""
    return f"; the weights are {' '.join(what)}: pass {' '.join(flags)}"


def freeze_features(model: nn.Module) -> None:
    """Train only ``model.classifier``: the trunk's weights stop learning and its BatchNorm
    statistics stop moving (they are put in eval mode at every epoch)."""
    if not isinstance(getattr(model, "features", None), nn.Module):
        raise MobileNetError(f"{type(model).__name__} has no .features to freeze")
    for p in model.features.parameters():
        p.requires_grad_(False)


def init_run_info(init: str | None) -> RunInfo | None:
    """The record of the run directory ``init`` names, or None for a weights file (or a
    directory without a record: loading its weights says what is wrong)."""
    if init is None or not (Path(init) / META_FILE).is_file():
        return None
    return read_run_info(Path(init))


def inherit_init(config: TrainConfig, init: RunInfo | None) -> TrainConfig:
    """``config`` with the architecture the caller left open (``model``, ``width_mult``,
    ``resolution`` None) taken from the run it starts from, ``init``: fine-tuning
    ``--init runs/imagenet-v2`` builds that run's model at its width and input size, not
    the digits defaults. What the caller set stays; without an ``init`` run the defaults
    apply (mobilenet_v2, width 0.5, the dataset's resolution). A model without a width
    multiplier (EfficientNet, MobileNetV4) keeps ``width_mult`` None, and refuses one."""
    changes: dict[str, Any] = {}
    if config.dense:  # the init run is a classifier whose trunk the head is put on
        if config.model is None:
            changes["model"] = DEFAULT_MODELS[config.task]
        if _has_width(changes.get("model", config.model), config) and config.width_mult is None:
            width = None if init is None else init.model_kwargs.get("width_mult")
            changes["width_mult"] = DEFAULT_WIDTH_MULT if width is None else float(width)
        return dataclasses.replace(config, **changes)
    if config.model is None:
        changes["model"] = init.model if init is not None else DEFAULT_MODEL
    model = changes.get("model", config.model)
    if _has_width(model, config) and config.width_mult is None:
        width = None
        if init is not None and init.model == model:
            width = init.model_kwargs.get("width_mult")
            if width is None:  # recorded without one: the constructor's own default
                param = inspect.signature(get_model_factory(model)).parameters.get("width_mult")
                if param is not None and param.default is not inspect.Parameter.empty:
                    width = param.default
        changes["width_mult"] = DEFAULT_WIDTH_MULT if width is None else float(width)
    if config.resolution is None and init is not None:
        changes["resolution"] = init.resolution
    return dataclasses.replace(config, **changes)


def _has_width(model: str, config: TrainConfig) -> bool:
    """Whether ``model`` has a width multiplier; a width given to one without it is refused
    in one line (it would be ignored, and recorded as if it had been used)."""
    if takes_width(model):
        return True
    if config.width_mult is not None:
        raise MobileNetError(f"{model} has no width multiplier; drop --width-mult")
    return False


def init_origin(init: str | None, info: RunInfo | None) -> dict[str, Any] | None:
    """Where the weights ``init`` names came from, for the run's record: the run directory or
    file, and from its record the model, the data it was trained on, the checkpoint it was
    imported from and what it was itself started from."""
    if init is None:
        return None
    origin: dict[str, Any] = {"path": str(Path(init).expanduser().resolve())}
    if info is not None:
        origin["model"] = info.model
        origin["width_mult"] = info.model_kwargs.get("width_mult")
        origin["data"] = None if info.data is None else info.data.name
        origin["imported_from"] = None if info.imported_from is None else vars(info.imported_from)
        origin["init_from"] = info.init_from
    return origin

"""Models by name: ``create_model("mobilenet_v2", width_mult=0.5, num_classes=10)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.models.features import FeatureExtractor

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
_TASKS: dict[str, str] = {}
_BACKBONES: dict[str, str] = {}
TASKS = ("classification", "detection", "segmentation")


def register_model(
    name: str, task: str = "classification", backbone: str | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Class or function decorator that makes a model constructible by ``name``.

    ``task`` says what its forward returns (class logits, per-box predictions, per-pixel
    logits), so the workflows built for classifiers (choose, calibrate) list only those. A
    detector or segmenter names its ``backbone``: the registered classifier whose trunk it is
    built on, whose weights its trunk loads.
    """
    if task not in TASKS:
        raise RuntimeError(f"unknown task {task!r} for model {name!r}; known: {TASKS}")
    if (backbone is None) != (task == "classification"):
        raise RuntimeError(f"model {name!r}: a backbone is named by heads, and only by them")

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        _TASKS[name] = task
        if backbone is not None:
            _BACKBONES[name] = backbone
        return factory

    return decorator


def list_models(task: str | None = "classification") -> list[str]:
    """The registered model names for ``task`` (every task with None), sorted."""
    return sorted(name for name in _REGISTRY if task is None or _TASKS[name] == task)


def model_task(name: str) -> str:
    """What the model registered as ``name`` predicts: one of :data:`TASKS`."""
    get_model_factory(name)
    return _TASKS[name]


def backbone_of(name: str) -> str:
    """The classifier whose trunk the detector or segmenter ``name`` is built on."""
    if model_task(name) == "classification":
        raise MobileNetError(f"{name} is a classifier, not a head on one")
    return _BACKBONES[name]


def get_model_factory(name: str) -> ModelFactory:
    """The constructor registered as ``name``, or a one-line error that lists the known names."""
    if not isinstance(name, str) or name not in _REGISTRY:
        known = ", ".join(list_models(None))
        raise MobileNetError(f"unknown model {name!r}; known models: {known}")
    return _REGISTRY[name]


def takes_keyword(name: str, keyword: str) -> bool:
    """Whether the constructor of the model ``name`` takes ``keyword``; one line if ``name``
    is not registered."""
    return keyword in inspect.signature(get_model_factory(name)).parameters


def takes_width(name: str) -> bool:
    """Whether the model ``name`` has a width multiplier (EfficientNet and MobileNetV4 fix
    their widths in their tables)."""
    return takes_keyword(name, "width_mult")


def create_model(
    name: str,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build the model registered as ``name`` with constructor keywords ``kwargs``.

    With ``features_only`` the result is a :class:`~mobilenets.models.features.FeatureExtractor`
    over the model's trunk, returning the feature maps of the levels in ``out_indices`` (default:
    all), for detection and segmentation heads.
    """
    factory = get_model_factory(name)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise MobileNetError(
            f"{name} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    if out_indices is not None and not features_only:
        raise MobileNetError("out_indices is only used with features_only=True")
    model = factory(**kwargs)
    return FeatureExtractor(model, out_indices) if features_only else model

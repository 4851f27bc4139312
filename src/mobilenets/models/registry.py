"""Models by name: ``create_model("mobilenet_v2", width_mult=0.5, num_classes=10)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from mobilenets.errors import MobileNetError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class or function decorator that makes a model constructible by ``name``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_factory(name: str) -> ModelFactory:
    """The constructor registered as ``name``, or a one-line error that lists the known names."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise MobileNetError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the model registered as ``name`` with constructor keywords ``kwargs``."""
    factory = get_model_factory(name)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise MobileNetError(
            f"{name} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    return factory(**kwargs)

"""mobilenets: MobileNet V1 and V2 and the depthwise separable convolution, on PyTorch.

The public names below are imported on first use (PEP 562), not with the package: the
``mobilenets`` command imports this package too, and ``mobilenets --version`` must not wait
for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mobilenets.errors import MobileNetError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "ConvBNAct": "mobilenets.layers",
    "DepthwiseConv": "mobilenets.layers",
    "DepthwiseSeparableConv": "mobilenets.layers",
    "InvertedResidual": "mobilenets.layers",
    "PointwiseConv": "mobilenets.layers",
    "make_divisible": "mobilenets.layers",
    "MobileNetV1": "mobilenets.models",
    "MobileNetV2": "mobilenets.models",
    "create_model": "mobilenets.models",
    "list_models": "mobilenets.models",
}

if TYPE_CHECKING:
    from mobilenets.layers import (
        ConvBNAct,
        DepthwiseConv,
        DepthwiseSeparableConv,
        InvertedResidual,
        PointwiseConv,
        make_divisible,
    )
    from mobilenets.models import MobileNetV1, MobileNetV2, create_model, list_models


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ConvBNAct",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "MobileNetError",
    "MobileNetV1",
    "MobileNetV2",
    "PointwiseConv",
    "__version__",
    "create_model",
    "list_models",
    "make_divisible",
]

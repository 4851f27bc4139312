"""mobilenets: MobileNet V1 and V2 and the depthwise separable convolution, on PyTorch."""

from mobilenets.errors import MobileNetError
from mobilenets.layers import (
    ConvBNAct,
    DepthwiseConv,
    DepthwiseSeparableConv,
    InvertedResidual,
    PointwiseConv,
    make_divisible,
)
from mobilenets.models import MobileNetV1, MobileNetV2, create_model, list_models

__version__ = "0.1.0"

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

"""The model families and the registry that builds them by name."""

from mobilenets.models._common import check_resolution
from mobilenets.models.mobilenet_v1 import V1_BLOCKS, MobileNetV1
from mobilenets.models.mobilenet_v2 import V2_BOTTLENECKS, MobileNetV2
from mobilenets.models.registry import create_model, get_model_factory, list_models, register_model
from mobilenets.models.vgg import VGG_SMALL, VGGSmall

__all__ = [
    "V1_BLOCKS",
    "V2_BOTTLENECKS",
    "VGG_SMALL",
    "MobileNetV1",
    "MobileNetV2",
    "VGGSmall",
    "check_resolution",
    "create_model",
    "get_model_factory",
    "list_models",
    "register_model",
]

"""The model families, the one builder that reads their tables, and the registry."""

from mobilenets.models._builder import (
    REPEATED_KINDS,
    SE,
    Head,
    Row,
    TableNet,
    build_trunk,
    scale_depth,
)
from mobilenets.models._common import check_resolution
from mobilenets.models.efficientnet import (
    EFFICIENTNET_B0_TABLE,
    EFFICIENTNET_LITE0_TABLE,
    EFFICIENTNET_SCALING,
    EfficientNet,
)
from mobilenets.models.mobilenet_v1 import V1_BLOCKS, V1_TABLE, MobileNetV1
from mobilenets.models.mobilenet_v2 import V2_BOTTLENECKS, V2_TABLE, MobileNetV2
from mobilenets.models.mobilenet_v3 import V3_LARGE_TABLE, V3_SMALL_TABLE, MobileNetV3
from mobilenets.models.mobilenet_v4 import V4_CONV_MEDIUM_TABLE, V4_CONV_SMALL_TABLE, MobileNetV4
from mobilenets.models.registry import (
    backbone_of,
    create_model,
    get_model_factory,
    list_models,
    model_task,
    register_model,
    takes_keyword,
    takes_width,
)
from mobilenets.models.segmentation import LRASPP, DeepLabV3
from mobilenets.models.ssdlite import SSDLite, default_boxes
from mobilenets.models.vgg import VGG_SMALL, VGGSmall

__all__ = [
    "EFFICIENTNET_B0_TABLE",
    "EFFICIENTNET_LITE0_TABLE",
    "EFFICIENTNET_SCALING",
    "LRASPP",
    "REPEATED_KINDS",
    "SE",
    "V1_BLOCKS",
    "V1_TABLE",
    "V2_BOTTLENECKS",
    "V2_TABLE",
    "V3_LARGE_TABLE",
    "V3_SMALL_TABLE",
    "V4_CONV_MEDIUM_TABLE",
    "V4_CONV_SMALL_TABLE",
    "VGG_SMALL",
    "DeepLabV3",
    "EfficientNet",
    "Head",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3",
    "MobileNetV4",
    "Row",
    "SSDLite",
    "TableNet",
    "VGGSmall",
    "backbone_of",
    "build_trunk",
    "check_resolution",
    "create_model",
    "default_boxes",
    "get_model_factory",
    "list_models",
    "model_task",
    "register_model",
    "scale_depth",
    "takes_keyword",
    "takes_width",
]

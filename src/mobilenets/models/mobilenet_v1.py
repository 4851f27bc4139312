"""MobileNetV1 (Howard et al. 2017, "MobileNets", arXiv 1704.04861, Table 1)."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.layers import ConvBNAct, DepthwiseSeparableConv, make_divisible
from mobilenets.models._common import ConvClassifier, check_model_args
from mobilenets.models.registry import register_model


class SepConv(NamedTuple):
    """One "Conv dw / s + Conv / s1" pair of Table 1: output channels and depthwise stride."""

    c: int
    s: int


STEM_CHANNELS = 32
# Table 1 of the paper, after the first "Conv / s2 3x3x3x32": the 13 depthwise separable
# blocks. (The paper prints s2 for the last depthwise layer, but its own output size, 7x7,
# and every reference implementation use s1.)
V1_BLOCKS: tuple[SepConv, ...] = (
    SepConv(64, 1),
    SepConv(128, 2),
    SepConv(128, 1),
    SepConv(256, 2),
    SepConv(256, 1),
    SepConv(512, 2),
    SepConv(512, 1),
    SepConv(512, 1),
    SepConv(512, 1),
    SepConv(512, 1),
    SepConv(512, 1),
    SepConv(1024, 2),
    SepConv(1024, 1),
)
# The paper puts a ReLU after every layer; Google's TF-slim and Keras implementations, whose
# ImageNet weights timm's MobileNetV1 follows, use ReLU6. Both are offered so that those weights
# give the same outputs here as in their own library.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}


@register_model("mobilenet_v1")
class MobileNetV1(ConvClassifier):
    """A standard 3x3 stride-2 convolution, 13 depthwise separable blocks, pool, dropout, FC.

    ``width_mult`` (the paper's alpha) thins every layer; channels are rounded with
    ``make_divisible(c * width_mult, 8)`` like the reference implementations. ``small_input``
    keeps the stem and the first strided block at stride 1 (total stride 8 instead of 32), the
    usual adaptation for 32x32 images such as CIFAR or the embedded digits. ``activation`` is
    ``"relu"`` (the paper) or ``"relu6"`` (TF-slim, Keras and timm).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        small_input: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_model_args(num_classes, width_mult, dropout, in_chans)
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise MobileNetError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        act = ACTIVATIONS[activation]
        self.num_classes = num_classes
        self.width_mult = width_mult
        self.small_input = small_input
        self.activation = activation

        strides_to_relax = 2 if small_input else 0
        stem_stride = 1 if strides_to_relax else 2
        strides_to_relax = max(0, strides_to_relax - 1)
        channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["0"] = ConvBNAct(in_chans, channels, 3, stem_stride, activation=act)
        total_stride = stem_stride
        for i, block in enumerate(V1_BLOCKS, start=1):
            stride = block.s
            if stride == 2 and strides_to_relax:
                stride, strides_to_relax = 1, strides_to_relax - 1
            out_channels = make_divisible(block.c * width_mult)
            layers[str(i)] = DepthwiseSeparableConv(channels, out_channels, stride, activation=act)
            channels, total_stride = out_channels, total_stride * stride
        self._finish(layers, channels, total_stride, num_classes, dropout)

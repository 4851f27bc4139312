"""MobileNetV2 (Sandler et al. 2018, "Inverted Residuals and Linear Bottlenecks",
arXiv 1801.04381, Table 2)."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from torch import nn

from mobilenets.layers import ConvBNAct, InvertedResidual, make_divisible
from mobilenets.models._common import ConvClassifier, check_model_args
from mobilenets.models.registry import register_model


class Bottleneck(NamedTuple):
    """One row of Table 2: expansion factor t, output channels c, repeats n, first stride s."""

    t: int
    c: int
    n: int
    s: int


STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# Table 2 of the paper, between "conv2d 3x3, 32, s2" and "conv2d 1x1, 1280": 17 blocks.
V2_BOTTLENECKS: tuple[Bottleneck, ...] = (
    Bottleneck(t=1, c=16, n=1, s=1),
    Bottleneck(t=6, c=24, n=2, s=2),
    Bottleneck(t=6, c=32, n=3, s=2),
    Bottleneck(t=6, c=64, n=4, s=2),
    Bottleneck(t=6, c=96, n=3, s=1),
    Bottleneck(t=6, c=160, n=3, s=2),
    Bottleneck(t=6, c=320, n=1, s=1),
)


@register_model("mobilenet_v2")
class MobileNetV2(ConvClassifier):
    """3x3 stride-2 convolution, 17 inverted residual blocks, 1x1 conv to 1280, pool, FC.

    ``width_mult`` scales every layer (rounded with ``make_divisible(., 8)``) except the last
    1x1 convolution, which the paper only widens for multipliers above 1 (section 6.1: it keeps
    accuracy for small models). ``small_input`` keeps the stem and the first strided stage at
    stride 1 (total stride 8), the usual adaptation for 32x32 images.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, width_mult, dropout, in_chans)
        self.num_classes = num_classes
        self.width_mult = width_mult
        self.small_input = small_input

        strides_to_relax = 1 if small_input else 0
        stem_stride = 1 if small_input else 2
        channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["0"] = ConvBNAct(in_chans, channels, 3, stem_stride, activation=nn.ReLU6)
        total_stride = stem_stride
        for row in V2_BOTTLENECKS:
            out_channels = make_divisible(row.c * width_mult)
            first_stride = row.s
            if first_stride == 2 and strides_to_relax:
                first_stride, strides_to_relax = 1, strides_to_relax - 1
            for i in range(row.n):
                stride = first_stride if i == 0 else 1
                layers[str(len(layers))] = InvertedResidual(channels, out_channels, stride, row.t)
                channels, total_stride = out_channels, total_stride * stride
        last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers[str(len(layers))] = ConvBNAct(channels, last_channels, 1, activation=nn.ReLU6)
        self._finish(layers, last_channels, total_stride, num_classes, dropout)

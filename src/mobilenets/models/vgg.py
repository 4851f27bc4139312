"""A small VGG-style CNN (Simonyan and Zisserman 2014): the baseline that ``to_separable``
converts, to show what depthwise separable convolutions save on a network not designed for them.

Stages of standard 3x3 convolutions (each with BatchNorm and ReLU) separated by 2x2 max
pooling, then the same global-pool classifier as the MobileNets. Sized for 32 px inputs such
as the embedded digits or CIFAR: three poolings, total stride 8.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from mobilenets.convert import to_separable
from mobilenets.layers import ConvBNAct, make_divisible
from mobilenets.models._common import ConvClassifier, check_model_args
from mobilenets.models.registry import register_model

POOL = "M"
# Output channels of each 3x3 convolution, "M" for a 2x2 max pooling (VGG's configuration
# notation, at a quarter of VGG-11's first widths and without its wide last stages).
VGG_SMALL: tuple[int | str, ...] = (32, 32, POOL, 64, 64, POOL, 128, 128, POOL)


@register_model("vgg_small")
class VGGSmall(ConvClassifier):
    """The table ``VGG_SMALL`` read into conv-BN-ReLU units and max poolings, then a classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, width_mult, dropout, in_chans)
        self.num_classes = num_classes
        self.width_mult = width_mult
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, stride = in_chans, 1
        for row in VGG_SMALL:
            if row == POOL:
                layers[str(len(layers))] = nn.MaxPool2d(2)
                stride *= 2
            else:
                out_channels = make_divisible(row * width_mult)
                layers[str(len(layers))] = ConvBNAct(channels, out_channels, 3)
                channels = out_channels
        self._finish(layers, channels, stride, num_classes, dropout)


@register_model("vgg_small_separable")
def vgg_small_separable(
    num_classes: int = 10,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    in_chans: int = 3,
) -> nn.Module:
    """``vgg_small`` with every 3x3 convolution made depthwise separable by ``to_separable``.

    Registered under its own name so that a trained run directory rebuilds this architecture.
    """
    return to_separable(VGGSmall(num_classes, width_mult, dropout, in_chans)).model

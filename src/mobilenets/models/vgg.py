"""A small VGG-style CNN (Simonyan and Zisserman 2014): the baseline that ``to_separable``
converts, to show what depthwise separable convolutions save on a network not designed for them.

Stages of standard 3x3 convolutions (each with BatchNorm and ReLU) separated by 2x2 max
pooling, then the same global-pool classifier as the MobileNets. Sized for 32 px inputs such
as the embedded digits or CIFAR: three poolings, total stride 8.
"""

from __future__ import annotations

from collections.abc import Sequence

from mobilenets.models._builder import Row, TableNet
from mobilenets.models.registry import register_model

POOL = Row("pool", k=2, s=2)


def conv(c: int) -> Row:
    """A 3x3 convolution -> BN -> ReLU to ``c`` channels."""
    return Row("conv", k=3, c=c)


# VGG's configuration notation ("M" is a 2x2 max pooling), at a quarter of VGG-11's first widths
# and without its wide last stages.
VGG_SMALL: tuple[Row, ...] = (
    conv(32),
    conv(32),
    POOL,
    conv(64),
    conv(64),
    POOL,
    conv(128),
    conv(128),
    POOL,
)


def separable(rows: Sequence[Row]) -> tuple[Row, ...]:
    """The table with every standard convolution made depthwise separable (``to_separable``'s
    replacement, in the place of the convolution inside each conv-BN-ReLU unit)."""
    return tuple(row._replace(kind="sepconv") if row.kind == "conv" else row for row in rows)


@register_model("vgg_small")
class VGGSmall(TableNet):
    """The table ``VGG_SMALL`` read into conv-BN-ReLU units and max poolings, then a classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        blocks: Sequence[Row] = VGG_SMALL,
    ) -> None:
        super().__init__(
            blocks,
            num_classes=num_classes,
            width_mult=width_mult,
            dropout=dropout,
            in_chans=in_chans,
        )


@register_model("vgg_small_separable")
def vgg_small_separable(
    num_classes: int = 10,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    in_chans: int = 3,
) -> VGGSmall:
    """``vgg_small`` with every 3x3 convolution depthwise separable, as ``to_separable`` makes it.

    Registered under its own name so that a trained run directory rebuilds this architecture.
    """
    return VGGSmall(num_classes, width_mult, dropout, in_chans, blocks=separable(VGG_SMALL))

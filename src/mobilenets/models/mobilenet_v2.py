"""MobileNetV2 (Sandler et al. 2018, "Inverted Residuals and Linear Bottlenecks",
arXiv 1801.04381, Table 2)."""

from __future__ import annotations

from collections.abc import Sequence

from mobilenets.models._builder import Row, TableNet
from mobilenets.models.registry import register_model


def bottleneck(t: int, c: int, n: int, s: int) -> Row:
    """One row of Table 2: expansion factor t, output channels c, repeats n, first stride s."""
    return Row("ir", k=3, t=t, c=c, n=n, s=s, act="relu6")


# Table 2 of the paper: "conv2d 3x3, 32, s2", 17 bottlenecks in 7 rows, "conv2d 1x1, 1280";
# avgpool 7x7 and the final "conv2d 1x1, k" are the classifier. The last convolution is only
# widened for multipliers above 1 (section 6.1: it keeps accuracy for small models).
V2_TABLE: tuple[Row, ...] = (
    Row("conv", k=3, c=32, s=2, act="relu6"),
    bottleneck(t=1, c=16, n=1, s=1),
    bottleneck(t=6, c=24, n=2, s=2),
    bottleneck(t=6, c=32, n=3, s=2),
    bottleneck(t=6, c=64, n=4, s=2),
    bottleneck(t=6, c=96, n=3, s=1),
    bottleneck(t=6, c=160, n=3, s=2),
    bottleneck(t=6, c=320, n=1, s=1),
    Row("conv", k=1, c=1280, act="relu6", width="grow"),
)
V2_BOTTLENECKS: tuple[Row, ...] = tuple(row for row in V2_TABLE if row.kind == "ir")


@register_model("mobilenet_v2")
class MobileNetV2(TableNet):
    """3x3 stride-2 convolution, 17 inverted residual blocks, 1x1 conv to 1280, pool, FC.

    ``width_mult`` scales every layer (rounded with ``make_divisible(., 8)``) except the last
    1x1 convolution, which grows only above 1. ``small_input`` keeps the stem and the first
    strided stage at stride 1 (total stride 8), the usual adaptation for 32x32 images.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        small_input: bool = False,
        blocks: Sequence[Row] = V2_TABLE,
    ) -> None:
        super().__init__(
            blocks,
            num_classes=num_classes,
            width_mult=width_mult,
            dropout=dropout,
            in_chans=in_chans,
            small_input=small_input,
        )

"""EfficientNet-B0 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", arXiv 1905.11946, Table 1), its compound-scaled B1-B3, and EfficientNet-Lite0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from mobilenets.errors import MobileNetError
from mobilenets.models._builder import SE, Row, TableNet
from mobilenets.models.registry import register_model


def mbconv(t: int, k: int, s: int, c: int, n: int) -> Row:
    """One stage of Table 1: MBConv``t`` with a k x k depthwise, first stride, #channels, #layers.

    Every MBConv has squeeze-and-excitation and SiLU (the paper's swish).
    """
    return Row("ir", k=k, t=t, c=c, n=n, s=s, se=True, act="silu")


# Table 1 (EfficientNet-B0 baseline network): stage 1 the stem, stages 2-8 MBConv, stage 9
# "Conv1x1 & Pooling & FC" (the 1x1 conv to 1280 here, pooling and FC in the classifier).
EFFICIENTNET_B0_TABLE: tuple[Row, ...] = (
    Row("conv", k=3, c=32, s=2, act="silu"),
    mbconv(t=1, k=3, s=1, c=16, n=1),
    mbconv(t=6, k=3, s=2, c=24, n=2),
    mbconv(t=6, k=5, s=2, c=40, n=2),
    mbconv(t=6, k=3, s=2, c=80, n=3),
    mbconv(t=6, k=5, s=1, c=112, n=3),
    mbconv(t=6, k=5, s=2, c=192, n=4),
    mbconv(t=6, k=3, s=1, c=320, n=1),
    Row("conv", k=1, c=1280, act="silu"),
)

# EfficientNet-Lite (the TensorFlow reference's edge variant): no SE and ReLU6, both friendlier
# to int8, and a stem and head that do not change with the width.
EFFICIENTNET_LITE0_TABLE: tuple[Row, ...] = tuple(
    row._replace(
        se=False,
        act="relu6",
        width="fixed" if row.kind == "conv" else row.width,
    )
    for row in EFFICIENTNET_B0_TABLE
)

# SE squeezes to a quarter of the block's input channels (not of the expanded ones), floored.
EFFICIENTNET_SE = SE(ratio=0.25, of_input=True, divisor=1, act="silu", gate="sigmoid")


class Scaling(NamedTuple):
    """One model of the compound-scaled family: width and depth multipliers, resolution,
    dropout.

    Section 3.3's rule is depth 1.2^phi, width 1.1^phi, resolution 1.15^phi; the released B1-B7
    use these rounded coefficients (the reference code's ``efficientnet_params`` table), which
    is what torchvision and timm build and what the weights were trained at.
    """

    width_mult: float
    depth_mult: float
    resolution: int
    dropout: float


EFFICIENTNET_SCALING: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
}


class EfficientNet(TableNet):
    """An EfficientNet table with stochastic depth growing to ``drop_path_rate`` (0.2) over
    the MBConv blocks; channels scale with ``make_divisible(c * width_mult, 8)``, repeats
    with ``ceil(n * depth_mult)``.
    """

    def __init__(
        self,
        blocks: Sequence[Row] = EFFICIENTNET_B0_TABLE,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        small_input: bool = False,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__(
            blocks,
            num_classes=num_classes,
            width_mult=width_mult,
            depth_mult=depth_mult,
            dropout=dropout,
            in_chans=in_chans,
            small_input=small_input,
            se=EFFICIENTNET_SE,
            drop_path_rate=drop_path_rate,
        )
        self.depth_mult = depth_mult


def efficientnet(
    variant: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    small_input: bool = False,
    dropout: float | None = None,
    drop_path_rate: float = 0.2,
) -> EfficientNet:
    """EfficientNet-``variant`` (b0-b3) with the reference's compound-scaling coefficients."""
    if variant not in EFFICIENTNET_SCALING:
        raise MobileNetError(
            f"unknown EfficientNet variant {variant!r}; known: {', '.join(EFFICIENTNET_SCALING)}"
        )
    scaling = EFFICIENTNET_SCALING[variant]
    return EfficientNet(
        EFFICIENTNET_B0_TABLE,
        num_classes,
        scaling.width_mult,
        scaling.depth_mult,
        scaling.dropout if dropout is None else dropout,
        in_chans,
        small_input,
        drop_path_rate,
    )


def _register_scaled(variant: str) -> None:
    def factory(
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        dropout: float | None = None,
        drop_path_rate: float = 0.2,
    ) -> EfficientNet:
        return efficientnet(variant, num_classes, in_chans, small_input, dropout, drop_path_rate)

    scaling = EFFICIENTNET_SCALING[variant]
    factory.__doc__ = (
        f"EfficientNet-{variant.upper()}: width x{scaling.width_mult}, depth "
        f"x{scaling.depth_mult}, {scaling.resolution} px."
    )
    register_model(f"efficientnet_{variant}")(factory)


for _variant in EFFICIENTNET_SCALING:
    _register_scaled(_variant)


@register_model("efficientnet_lite0")
def efficientnet_lite0(
    num_classes: int = 1000,
    in_chans: int = 3,
    small_input: bool = False,
    dropout: float = 0.2,
    drop_path_rate: float = 0.2,
) -> EfficientNet:
    """EfficientNet-Lite0: B0 without SE, with ReLU6, for int8 edge accelerators."""
    return EfficientNet(
        EFFICIENTNET_LITE0_TABLE,
        num_classes,
        dropout=dropout,
        in_chans=in_chans,
        small_input=small_input,
        drop_path_rate=drop_path_rate,
    )

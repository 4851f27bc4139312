"""MobileNetV3-Large and -Small (Howard et al. 2019, "Searching for MobileNetV3",
arXiv 1905.02244, Tables 1 and 2)."""

from __future__ import annotations

from collections.abc import Sequence

from mobilenets.models._builder import SE, Head, Row, TableNet
from mobilenets.models.registry import register_model


def bneck(k: int, exp: int, c: int, se: bool, nl: str, s: int) -> Row:
    """One "bneck" row of Tables 1-2: kernel, exp size, #out, SE, NL (nonlinearity), stride."""
    return Row("ir", k=k, exp=exp, c=c, se=se, act=nl, s=s)


HS, RE = "hswish", "relu"

# Table 1 (MobileNetV3-Large). The rows after the last bneck: conv2d 1x1 960 (hard-swish),
# pool 7x7, then "conv2d 1x1, NBN" 1280 and the classifier, which are the head. The 16-channel
# stem only grows with the width (Keras keeps it at 16, timm below width 0.75): so
# timm's mobilenetv3_small_050 has a 16-channel stem, not 8.
V3_LARGE_TABLE: tuple[Row, ...] = (
    Row("conv", k=3, c=16, s=2, act=HS, width="grow"),
    bneck(3, 16, 16, False, RE, 1),
    bneck(3, 64, 24, False, RE, 2),
    bneck(3, 72, 24, False, RE, 1),
    bneck(5, 72, 40, True, RE, 2),
    bneck(5, 120, 40, True, RE, 1),
    bneck(5, 120, 40, True, RE, 1),
    bneck(3, 240, 80, False, HS, 2),
    bneck(3, 200, 80, False, HS, 1),
    bneck(3, 184, 80, False, HS, 1),
    bneck(3, 184, 80, False, HS, 1),
    bneck(3, 480, 112, True, HS, 1),
    bneck(3, 672, 112, True, HS, 1),
    bneck(5, 672, 160, True, HS, 2),
    bneck(5, 960, 160, True, HS, 1),
    bneck(5, 960, 160, True, HS, 1),
    Row("conv", k=1, c=960, act=HS),
)

# Table 2 (MobileNetV3-Small); its head is "conv2d 1x1, NBN" 1024.
V3_SMALL_TABLE: tuple[Row, ...] = (
    Row("conv", k=3, c=16, s=2, act=HS, width="grow"),
    bneck(3, 16, 16, True, RE, 2),
    bneck(3, 72, 24, False, RE, 2),
    bneck(3, 88, 24, False, RE, 1),
    bneck(5, 96, 40, True, HS, 2),
    bneck(5, 240, 40, True, HS, 1),
    bneck(5, 240, 40, True, HS, 1),
    bneck(5, 120, 48, True, HS, 1),
    bneck(5, 144, 48, True, HS, 1),
    bneck(5, 288, 96, True, HS, 2),
    bneck(5, 576, 96, True, HS, 1),
    bneck(5, 576, 96, True, HS, 1),
    Row("conv", k=1, c=576, act=HS),
)

# Section 5.3: the SE bottleneck is a quarter of the expansion layer's channels (rounded to a
# multiple of 8 in the reference code), with ReLU inside and a hard-sigmoid gate.
V3_SE = SE(ratio=0.25, of_input=False, divisor=8, act=RE, gate="hsigmoid")


class MobileNetV3(TableNet):
    """A MobileNetV3 table, then pool -> 1x1 conv with hard-swish (no BN) -> dropout -> FC.

    ``width_mult`` scales every layer but the head, rounded with ``make_divisible(., 8)``, and
    keeps each bottleneck's expansion ratio, as the TensorFlow reference and timm do
    (torchvision instead scales the absolute expansion widths and the head: at width 0.75 its
    V3-Large has 3.38M parameters, not the reference's 3.99M). BatchNorm uses eps 0.001, as the
    TensorFlow reference and torchvision.
    """

    def __init__(
        self,
        blocks: Sequence[Row],
        head_channels: int,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        small_input: bool = False,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__(
            blocks,
            num_classes=num_classes,
            width_mult=width_mult,
            dropout=dropout,
            in_chans=in_chans,
            small_input=small_input,
            head=Head(head_channels, act=HS, norm=False, width="fixed"),
            se=V3_SE,
            bn_eps=bn_eps,
        )


@register_model("mobilenet_v3_large")
def mobilenet_v3_large(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    in_chans: int = 3,
    small_input: bool = False,
    bn_eps: float = 1e-3,
) -> MobileNetV3:
    """MobileNetV3-Large (Table 1): 219M mult-adds and 5.4M parameters in the paper."""
    return MobileNetV3(
        V3_LARGE_TABLE, 1280, num_classes, width_mult, dropout, in_chans, small_input, bn_eps
    )


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    in_chans: int = 3,
    small_input: bool = False,
    bn_eps: float = 1e-3,
) -> MobileNetV3:
    """MobileNetV3-Small (Table 2): 56M mult-adds and 2.5M parameters in the paper."""
    return MobileNetV3(
        V3_SMALL_TABLE, 1024, num_classes, width_mult, dropout, in_chans, small_input, bn_eps
    )

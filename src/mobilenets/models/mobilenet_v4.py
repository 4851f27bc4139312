"""MobileNetV4 convolutional models (Qin et al. 2024, "MobileNetV4: Universal Models for the
Mobile Ecosystem", arXiv 2404.10518, Tables 11 and 12: MNv4-Conv-S and -M)."""

from __future__ import annotations

from collections.abc import Sequence

from mobilenets.models._builder import Head, Row, TableNet
from mobilenets.models.registry import register_model


def conv(k: int, c: int, s: int = 1) -> Row:
    """A plain convolution -> BN -> ReLU ("Conv2D" in the tables)."""
    return Row("conv", k=k, c=c, s=s)


def fused_ib(k: int, t: float, c: int, s: int) -> Row:
    """FusedIB: a k x k convolution expanding by t, then a 1x1 projection to c."""
    return Row("fused", k=k, t=t, c=c, s=s)


def extra_dw(start: int, mid: int, t: float, c: int, s: int = 1, n: int = 1) -> Row:
    """ExtraDW: depthwise (start) -> expand by t -> depthwise (mid) -> project to c."""
    return Row("uib", k_start=start, k=mid, t=t, c=c, s=s, n=n)


def ib(mid: int, t: float, c: int, s: int = 1, n: int = 1) -> Row:
    """IB, the inverted bottleneck: expand by t -> depthwise (mid) -> project to c."""
    return Row("uib", k_start=0, k=mid, t=t, c=c, s=s, n=n)


def convnext(start: int, t: float, c: int, n: int = 1) -> Row:
    """ConvNext-like: depthwise (start) -> expand by t -> project to c."""
    return Row("uib", k_start=start, k=0, t=t, c=c, n=n)


def ffn(t: float, c: int, n: int = 1) -> Row:
    """FFN: expand by t -> project to c, two 1x1 convolutions."""
    return Row("uib", k_start=0, k=0, t=t, c=c, n=n)


# Table 11 (MNv4-Conv-S), from the 224 px input; the head is pool -> 1x1 1280 (BN, ReLU) -> FC.
# The stem only grows with the width, and the head keeps 1280 channels, as in timm's generator.
V4_CONV_SMALL_TABLE: tuple[Row, ...] = (
    Row("conv", k=3, c=32, s=2, width="grow"),
    conv(3, 32, s=2),
    conv(1, 32),
    conv(3, 96, s=2),
    conv(1, 64),
    extra_dw(5, 5, 3.0, 96, s=2),
    ib(3, 2.0, 96, n=4),
    convnext(3, 4.0, 96),
    extra_dw(3, 3, 6.0, 128, s=2),
    extra_dw(5, 5, 4.0, 128),
    ib(5, 4.0, 128),
    ib(5, 3.0, 128),
    ib(3, 4.0, 128, n=2),
    conv(1, 960),
)

# Table 12 (MNv4-Conv-M), at 256 px.
V4_CONV_MEDIUM_TABLE: tuple[Row, ...] = (
    Row("conv", k=3, c=32, s=2, width="grow"),
    fused_ib(3, 4.0, 48, s=2),
    extra_dw(3, 5, 4.0, 80, s=2),
    extra_dw(3, 3, 2.0, 80),
    extra_dw(3, 5, 6.0, 160, s=2),
    extra_dw(3, 3, 4.0, 160, n=2),
    extra_dw(3, 5, 4.0, 160),
    extra_dw(3, 3, 4.0, 160),
    convnext(3, 4.0, 160),
    ffn(2.0, 160),
    convnext(3, 4.0, 160),
    extra_dw(5, 5, 6.0, 256, s=2),
    extra_dw(5, 5, 4.0, 256),
    extra_dw(3, 5, 4.0, 256, n=2),
    ffn(4.0, 256),
    convnext(3, 4.0, 256),
    extra_dw(3, 5, 2.0, 256),
    extra_dw(5, 5, 4.0, 256),
    ffn(4.0, 256, n=2),
    convnext(5, 2.0, 256),
    conv(1, 960),
)


class MobileNetV4(TableNet):
    """A MobileNetV4 table, then pool -> 1x1 conv to 1280 with BN and ReLU -> dropout -> FC.

    The paper scales the conv models by search, not by a width multiplier, so the registered
    models take none; the class's ``width_mult`` is timm's channel multiplier (the stem only
    grows, the 1280-channel head stays), which the small interop fixtures are made with.
    """

    def __init__(
        self,
        blocks: Sequence[Row],
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        small_input: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            blocks,
            num_classes=num_classes,
            width_mult=width_mult,
            dropout=dropout,
            in_chans=in_chans,
            small_input=small_input,
            head=Head(1280, act="relu", norm=True, width="fixed"),
            drop_path_rate=drop_path_rate,
        )


@register_model("mobilenetv4_conv_small")
def mobilenetv4_conv_small(
    num_classes: int = 1000,
    dropout: float = 0.2,
    in_chans: int = 3,
    small_input: bool = False,
    drop_path_rate: float = 0.0,
) -> MobileNetV4:
    """MNv4-Conv-S (Table 11): 0.2G mult-adds and 3.8M parameters in the paper, at 224 px."""
    return MobileNetV4(
        V4_CONV_SMALL_TABLE,
        num_classes,
        dropout=dropout,
        in_chans=in_chans,
        small_input=small_input,
        drop_path_rate=drop_path_rate,
    )


@register_model("mobilenetv4_conv_medium")
def mobilenetv4_conv_medium(
    num_classes: int = 1000,
    dropout: float = 0.2,
    in_chans: int = 3,
    small_input: bool = False,
    drop_path_rate: float = 0.0,
) -> MobileNetV4:
    """MNv4-Conv-M (Table 12): 1.0G mult-adds and 9.2M parameters in the paper, at 256 px."""
    return MobileNetV4(
        V4_CONV_MEDIUM_TABLE,
        num_classes,
        dropout=dropout,
        in_chans=in_chans,
        small_input=small_input,
        drop_path_rate=drop_path_rate,
    )

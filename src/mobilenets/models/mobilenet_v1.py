"""MobileNetV1 (Howard et al. 2017, "MobileNets", arXiv 1704.04861, Table 1)."""

from __future__ import annotations

from collections.abc import Sequence

from mobilenets.errors import MobileNetError
from mobilenets.models._builder import Row, TableNet
from mobilenets.models.registry import register_model


def sep(c: int, s: int) -> Row:
    """One "Conv dw / s + Conv / s1" pair of Table 1: output channels and depthwise stride."""
    return Row("ds", k=3, c=c, s=s)


# Table 1 of the paper: the standard "Conv / s2 3x3x3x32", then 13 depthwise separable blocks.
# (The paper prints s2 for the last depthwise layer, but its own output size, 7x7, and every
# reference implementation use s1.) Avg pool 7x7, FC and softmax are the classifier.
V1_TABLE: tuple[Row, ...] = (
    Row("conv", k=3, c=32, s=2),
    sep(64, 1),
    sep(128, 2),
    sep(128, 1),
    sep(256, 2),
    sep(256, 1),
    sep(512, 2),
    sep(512, 1),
    sep(512, 1),
    sep(512, 1),
    sep(512, 1),
    sep(512, 1),
    sep(1024, 2),
    sep(1024, 1),
)
V1_BLOCKS: tuple[Row, ...] = tuple(row for row in V1_TABLE if row.kind == "ds")
# The paper puts a ReLU after every layer; Google's TF-slim and Keras implementations, whose
# ImageNet weights timm's MobileNetV1 follows, use ReLU6. Both are offered so that those weights
# give the same outputs here as in their own library.
V1_ACTIVATIONS = ("relu", "relu6")


@register_model("mobilenet_v1")
class MobileNetV1(TableNet):
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
        blocks: Sequence[Row] = V1_TABLE,
    ) -> None:
        if not isinstance(activation, str) or activation not in V1_ACTIVATIONS:
            raise MobileNetError(
                f"activation must be one of {', '.join(V1_ACTIVATIONS)}, got {activation!r}"
            )
        super().__init__(
            [row._replace(act=activation) for row in blocks],
            num_classes=num_classes,
            width_mult=width_mult,
            dropout=dropout,
            in_chans=in_chans,
            small_input=small_input,
        )
        self.activation = activation

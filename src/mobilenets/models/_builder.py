"""One builder for every family: a model is a table of rows, read by one loop.

A row says what the papers' tables say: the block ``kind``, its kernel ``k``, expansion ``t``
(or the absolute expanded width ``exp``, as MobileNetV3's Table 1 gives it), output channels
``c``, repeats ``n``, first stride ``s``, whether it has squeeze-and-excitation ``se`` and its
activation ``act``. The loop does what every family needs once: channel rounding under a width
multiplier, repeats under a depth multiplier, the stride relaxation of ``small_input``, the
names (``features.N.expand/depthwise/project``), each block's stride and output channels for
feature extraction, and the stochastic-depth rate of each residual block. A new family is a
table, and at most one new block class in :data:`BLOCKS`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.layers import (
    ConvBNAct,
    DepthwiseSeparableConv,
    FusedInvertedResidual,
    InvertedResidual,
    SEFactory,
    SqueezeExcitation,
    UniversalInvertedBottleneck,
    activation,
    make_divisible,
)
from mobilenets.models._common import ConvClassifier, check_model_args


class Row(NamedTuple):
    """One row of a model table (repeated ``n`` times, the first repeat with stride ``s``).

    ``kind`` names the block class in :data:`BLOCKS`. ``k`` is the depthwise kernel (or the
    convolution's kernel; 0: no middle depthwise in a UIB), ``k_start`` the leading depthwise
    kernel of a UIB. ``width`` says how the width multiplier applies to ``c``: ``"scale"``
    (rounded with make_divisible), ``"fixed"``, or ``"grow"`` (only multipliers above 1, the
    rule of MobileNetV2's last convolution).
    """

    kind: str
    k: int = 3
    t: float = 1
    c: int = 0
    n: int = 1
    s: int = 1
    se: bool = False
    act: str = "relu"
    k_start: int = 0
    exp: int = 0
    width: str = "scale"


@dataclass(frozen=True)
class SE:
    """A family's squeeze-and-excitation: the reduced width and the two nonlinearities.

    MobileNetV3 reduces to a quarter of the expanded (hidden) width rounded to a multiple of 8,
    with ReLU and a hard-sigmoid gate; EfficientNet to a quarter of the block's *input* width,
    floored, with SiLU and a sigmoid gate.
    """

    ratio: float = 0.25
    of_input: bool = False
    divisor: int = 8
    act: str = "relu"
    gate: str = "hsigmoid"

    def __call__(self, in_channels: int, hidden_channels: int) -> SqueezeExcitation:
        base = (in_channels if self.of_input else hidden_channels) * self.ratio
        reduced = make_divisible(base, self.divisor) if self.divisor > 1 else max(1, int(base))
        return SqueezeExcitation(
            hidden_channels, reduced, activation(self.act), activation(self.gate)
        )


@dataclass(frozen=True)
class Head:
    """What follows the trunk: pool -> [1x1 conv (+ BN) + activation] -> dropout -> fc.

    ``channels=0`` is the plain head of V1, V2 and EfficientNet. MobileNetV3 puts a 1x1
    convolution with a bias after the pooling (its "efficient last stage"), MobileNetV4 one
    with BatchNorm (``norm=True``).
    """

    channels: int = 0
    act: str = "relu"
    norm: bool = False
    width: str = "scale"


@dataclass(frozen=True)
class _Context:
    """What a block factory needs beyond its row: the family's SE and the stochastic depth."""

    se: SEFactory
    drop_path: float


BlockFactory = Callable[[Row, int, int, int, int, _Context], nn.Module]


def _conv(row: Row, cin: int, cout: int, stride: int, hidden: int, ctx: _Context) -> nn.Module:
    return ConvBNAct(cin, cout, row.k, stride, activation=activation(row.act))


def _separable_conv(
    row: Row, cin: int, cout: int, stride: int, hidden: int, ctx: _Context
) -> nn.Module:
    return ConvBNAct(cin, cout, row.k, stride, activation=activation(row.act), separable=True)


def _max_pool(row: Row, cin: int, cout: int, stride: int, hidden: int, ctx: _Context) -> nn.Module:
    return nn.MaxPool2d(row.k, stride)


def _depthwise_separable(
    row: Row, cin: int, cout: int, stride: int, hidden: int, ctx: _Context
) -> nn.Module:
    return DepthwiseSeparableConv(cin, cout, stride, row.k, activation=activation(row.act))


def _inverted_residual(
    row: Row, cin: int, cout: int, stride: int, hidden: int, ctx: _Context
) -> nn.Module:
    return InvertedResidual(
        cin,
        cout,
        stride,
        kernel_size=row.k,
        activation=activation(row.act),
        hidden_channels=hidden,
        se=ctx.se if row.se else None,
        drop_path=ctx.drop_path,
    )


def _fused(row: Row, cin: int, cout: int, stride: int, hidden: int, ctx: _Context) -> nn.Module:
    return FusedInvertedResidual(
        cin,
        cout,
        stride,
        hidden,
        row.k,
        activation(row.act),
        se=ctx.se if row.se else None,
        drop_path=ctx.drop_path,
    )


def _universal(row: Row, cin: int, cout: int, stride: int, hidden: int, ctx: _Context) -> nn.Module:
    return UniversalInvertedBottleneck(
        cin,
        cout,
        stride,
        hidden,
        row.k,
        row.k_start,
        activation(row.act),
        se=ctx.se if row.se else None,
        drop_path=ctx.drop_path,
    )


# Row kind -> block. "conv", "sepconv" and "pool" are single layers; the others are the blocks
# that repeat (the depth multiplier scales their ``n``; stochastic depth counts them).
BLOCKS: dict[str, BlockFactory] = {
    "conv": _conv,
    "sepconv": _separable_conv,
    "pool": _max_pool,
    "ds": _depthwise_separable,
    "ir": _inverted_residual,
    "fused": _fused,
    "uib": _universal,
}
REPEATED_KINDS = frozenset({"ds", "ir", "fused", "uib"})
WIDTH_RULES = ("scale", "fixed", "grow")


def scale_width(channels: int, width_mult: float, rule: str = "scale") -> int:
    """Channels under a width multiplier, rounded as the reference implementations round."""
    if rule == "fixed":
        return channels
    if rule == "grow":
        return make_divisible(channels * max(1.0, width_mult))
    return make_divisible(channels * width_mult)


def scale_depth(repeats: int, depth_mult: float) -> int:
    """Repeats under a depth multiplier, rounded up as EfficientNet's reference code does."""
    return math.ceil(repeats * depth_mult)


def _hidden_channels(row: Row, in_channels: int, base_in_channels: int) -> int:
    """A block's expanded width: its expansion ratio times its (width-scaled) input.

    An absolute ``exp`` (MobileNetV3's tables) is read as the ratio ``exp`` / the block's input
    at width 1, so a width multiplier keeps each block's expansion ratio, as the TensorFlow
    reference (and timm) scale V3; ``t == 1`` means no expansion at all.
    """
    t = row.exp / base_in_channels if row.exp else row.t
    return in_channels if t == 1 else make_divisible(in_channels * t)


def _check_row(row: Row) -> None:
    if not isinstance(row, Row):
        raise MobileNetError(f"a model table holds Row entries, got {row!r}")
    if row.kind not in BLOCKS:
        raise MobileNetError(f"unknown block kind {row.kind!r}; known: {', '.join(BLOCKS)}")
    if row.width not in WIDTH_RULES:
        raise MobileNetError(f"unknown width rule {row.width!r}; known: {', '.join(WIDTH_RULES)}")
    if row.kind != "pool" and row.c < 1:
        raise MobileNetError(f"row {row} has no output channels")
    if row.n < 1 or row.s not in (1, 2):
        raise MobileNetError(f"row {row} needs n >= 1 and stride 1 or 2")


def build_trunk(
    rows: Sequence[Row],
    *,
    in_chans: int,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    small_input: bool = False,
    se: SEFactory | None = None,
    drop_path_rate: float = 0.0,
) -> tuple[OrderedDict[str, nn.Module], int, int]:
    """Read ``rows`` into the trunk's layers; return them, the output channels and the stride.

    ``small_input`` keeps the first two stride-2 rows (the stem and the first strided stage)
    at stride 1: total stride 8 instead of 32, the usual adaptation for 32x32 images.
    Stochastic depth grows linearly over the repeated blocks, from 0 to ``drop_path_rate``
    (EfficientNet's rule).
    """
    for row in rows:
        _check_row(row)
    repeats = [
        scale_depth(row.n, depth_mult) if row.kind in REPEATED_KINDS else row.n for row in rows
    ]
    total_blocks = sum(
        n for row, n in zip(rows, repeats, strict=True) if row.kind in REPEATED_KINDS
    )
    se = SE() if se is None else se
    strides_to_relax = 2 if small_input else 0
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, total_stride, block_index = in_chans, 1, 0
    base_channels = in_chans  # the same, at width 1
    for row, n in zip(rows, repeats, strict=True):
        out_channels = channels if row.kind == "pool" else scale_width(row.c, width_mult, row.width)
        first_stride = row.s
        if first_stride == 2 and strides_to_relax and row.kind != "pool":
            first_stride, strides_to_relax = 1, strides_to_relax - 1
        for i in range(n):
            stride = first_stride if i == 0 else 1
            drop_path = 0.0
            if row.kind in REPEATED_KINDS:
                drop_path = drop_path_rate * block_index / total_blocks
                block_index += 1
            hidden = _hidden_channels(row, channels, base_channels)
            context = _Context(se, drop_path)
            block = BLOCKS[row.kind](row, channels, out_channels, stride, hidden, context)
            layers[str(len(layers))] = block
            channels, total_stride = out_channels, total_stride * stride
        if row.kind != "pool":
            base_channels = row.c
    return layers, channels, total_stride


class TableNet(ConvClassifier):
    """A network read from a table: the trunk of :func:`build_trunk`, then a :class:`Head`.

    Every family is one of these with its own table and defaults; ``blocks=`` takes a custom
    table, as torchvision's ``inverted_residual_setting=`` does. BatchNorm's ``bn_eps`` is the
    family's (1e-3 in the TensorFlow references of V3, 1e-5 elsewhere), so imported weights
    give the source library's outputs.
    """

    def __init__(
        self,
        blocks: Sequence[Row],
        *,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        dropout: float = 0.2,
        in_chans: int = 3,
        small_input: bool = False,
        head: Head = Head(),
        se: SEFactory | None = None,
        bn_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, width_mult, dropout, in_chans)
        self.num_classes = num_classes
        self.width_mult = width_mult
        self.small_input = small_input
        self.table = tuple(blocks)
        layers, channels, stride = build_trunk(
            self.table,
            in_chans=in_chans,
            width_mult=width_mult,
            depth_mult=depth_mult,
            small_input=small_input,
            se=se,
            drop_path_rate=drop_path_rate,
        )
        head_layer = None
        if head.channels:
            head_channels = scale_width(head.channels, width_mult, head.width)
            head_layer = ConvBNAct(
                channels, head_channels, 1, activation=activation(head.act), norm=head.norm
            )
        self._finish(layers, channels, stride, num_classes, dropout, head_layer)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = bn_eps

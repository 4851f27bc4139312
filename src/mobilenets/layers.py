"""The building blocks of MobileNet: depthwise, pointwise and depthwise separable convolutions,
and the MobileNetV2 inverted residual (bottleneck) block.

A standard f x f convolution from n_c to n_c' channels mixes space and channels in one step and
costs f*f*n_c*n_c' multiplications per output pixel. The depthwise separable convolution splits
that into a *depthwise* step (one f x f filter per input channel: space only) and a *pointwise*
1x1 step (channels only), costing f*f*n_c + n_c*n_c' per pixel, a fraction 1/n_c' + 1/f^2 of
the standard one. Each kind is its own class so that a model's structure, its state dict and the
cost model all say which kind of convolution a layer is.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from mobilenets.errors import MobileNetError

Activation = type[nn.Module] | None


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value``.

    This is the rounding of the reference implementations (TF-slim, torchvision, timm); using
    it for every width multiplier makes our parameter counts equal theirs.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """The padding that keeps the spatial size at stride 1 (and halves it, rounding up, at 2)."""
    return (kernel_size - 1) // 2 * dilation


class DepthwiseConv(nn.Conv2d):
    """A depthwise convolution: one ``kernel_size`` x ``kernel_size`` filter per input channel.

    Each output channel sees exactly one input channel (``groups == channels``), so it filters
    space without mixing channels: f*f*n_c multiplications per output pixel instead of
    f*f*n_c*n_c'.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        padding = same_padding(kernel_size, dilation) if padding is None else padding
        super().__init__(
            channels,
            channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=channels,
            bias=bias,
        )


class PointwiseConv(nn.Conv2d):
    """A pointwise (1x1) convolution: mixes channels at each pixel, never looks at neighbours."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)


def _make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    groups: int,
    padding: int | None,
) -> nn.Conv2d:
    """Pick the convolution class that names what the layer is (depthwise, pointwise, standard)."""
    if groups == in_channels == out_channels and kernel_size > 1:
        return DepthwiseConv(in_channels, kernel_size, stride=stride, padding=padding)
    if kernel_size == 1 and groups == 1 and stride == 1 and not padding:
        return PointwiseConv(in_channels, out_channels)
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=same_padding(kernel_size) if padding is None else padding,
        groups=groups,
        bias=False,
    )


class ConvBNAct(nn.Sequential):
    """Convolution -> BatchNorm -> activation, the unit every MobileNet layer is made of.

    The convolution has no bias because BatchNorm's shift replaces it. ``activation=None`` gives
    a linear layer (the V2 projection). Submodules are named ``conv``, ``bn``, ``act``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Activation = nn.ReLU,
        padding: int | None = None,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = _make_conv(in_channels, out_channels, kernel_size, stride, groups, padding)
        layers["bn"] = nn.BatchNorm2d(out_channels)
        if activation is not None:
            layers["act"] = activation(inplace=True)
        super().__init__(layers)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride


class DepthwiseSeparableConv(nn.Module):
    """MobileNetV1's block: depthwise 3x3 -> BN -> ReLU, then pointwise 1x1 -> BN -> ReLU.

    It replaces a standard 3x3 convolution from ``in_channels`` to ``out_channels`` at
    1/out_channels + 1/9 of its cost (Howard et al. 2017, section 3.1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        activation: Activation = nn.ReLU,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise MobileNetError(f"stride must be 1 or 2, got {stride}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.depthwise = ConvBNAct(
            in_channels, in_channels, kernel_size, stride, groups=in_channels, activation=activation
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNetV2's bottleneck block (Sandler et al. 2018, Table 1).

    1x1 *expansion* by ``expand_ratio`` -> BN -> ReLU6, 3x3 *depthwise* -> BN -> ReLU6, 1x1
    linear *projection* -> BN. The expansion gives the depthwise filter a wide space to work
    in; the projection has no activation because a ReLU in the narrow bottleneck would destroy
    information (the paper's "linear bottleneck"). The thin tensors are the ones passed between
    blocks, so the residual joins those, and only where stride is 1 and the channel count is
    unchanged. With ``expand_ratio == 1`` there is nothing to expand and the layer is skipped.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        kernel_size: int = 3,
        activation: Activation = nn.ReLU6,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise MobileNetError(f"stride must be 1 or 2, got {stride}")
        if expand_ratio < 1:
            raise MobileNetError(f"expand_ratio must be >= 1, got {expand_ratio}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.expand_ratio = expand_ratio
        hidden = round(in_channels * expand_ratio)
        self.hidden_channels = hidden
        self.use_residual = stride == 1 and in_channels == out_channels

        self.expand = (
            ConvBNAct(in_channels, hidden, 1, activation=activation) if expand_ratio != 1 else None
        )
        self.depthwise = ConvBNAct(
            hidden, hidden, kernel_size, stride, groups=hidden, activation=activation
        )
        self.project = ConvBNAct(hidden, out_channels, 1, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return x + out if self.use_residual else out

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

import itertools
from collections import OrderedDict

import torch
import torch.nn.functional as F
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


# How the layers run on CPU (measured on 2 cores at batch 1; benchmarks/separable_speedup.py):
# oneDNN's depthwise kernel is 2-3x faster on a channels_last tensor than on NCHW (112x112x32:
# 0.11 against 0.29 ms), so depthwise layers take and hand on channels_last tensors. A 1x1
# convolution is a matrix product over the channel axis; as one GEMM on the NHWC view (no copy
# for a channels_last input) it is as fast as oneDNN's convolution path on large maps and twice
# as fast on small ones (7x7x1024->1024: 0.53 against 0.99 ms). Intra-op threading stays at
# PyTorch's default, one thread per core: one thread was 1.7-1.9x slower on these kernels.
# Exports (ONNX) see the plain convolutions, so exported graphs keep their Conv nodes.


def pointwise(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A 1x1 convolution as one matrix product over channels: (N*H*W, n_c) @ (n_c, n_c').

    Works on batched (N, C, H, W) and unbatched (C, H, W) inputs; returns a channels_last
    tensor (free for a channels_last input, one transpose for an NCHW one).
    """
    return F.linear(x.movedim(-3, -1), weight.flatten(1), bias).movedim(-1, -3)


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_scripting() or torch.jit.is_tracing()


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and not _exporting():
            x = x.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class PointwiseConv(nn.Conv2d):
    """A pointwise (1x1) convolution: mixes channels at each pixel, never looks at neighbours."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _exporting():
            return super().forward(x)
        return pointwise(x, self.weight, self.bias)


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

    ``split=k`` is the paper's memory-efficient inference (section 6): expansion and depthwise
    act per channel and the projection is linear, so in eval mode the block runs on k groups of
    the hidden channels (expand a slice, depthwise it, project it, accumulate) and the expanded
    tensor never exists whole. Outputs equal the unsplit block up to float rounding; training
    always runs whole (BatchNorm there needs the statistics of the batch).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float,
        kernel_size: int = 3,
        activation: Activation = nn.ReLU6,
        split: int = 1,
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
        self.split = split

    @property
    def split(self) -> int:
        """Channel groups the hidden tensor is computed in at inference (1: whole)."""
        return self._split

    @split.setter
    def split(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise MobileNetError(f"split must be a positive integer, got {k!r}")
        self._split = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split > 1 and not self.training:
            out = self._forward_split(x)
        else:
            # One statement per layer, so each intermediate is freed as soon as it is used.
            out = x if self.expand is None else self.expand(x)
            out = self.depthwise(out)
            out = self.project(out)
        return x + out if self.use_residual else out

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise and project one channel group at a time; sum the projections."""
        projection = self.project.conv
        out: torch.Tensor | None = None
        for group in _channel_groups(self.hidden_channels, self.split):
            h = x[:, group] if self.expand is None else _unit_on_channels(self.expand, x, group)
            h = _unit_on_channels(self.depthwise, h, group)
            part = pointwise(h, projection.weight[:, group])
            out = part if out is None else out.add_(part)
            del h, part
        assert out is not None
        if projection.bias is not None:
            out = out + projection.bias.view(-1, 1, 1)
        return _apply_norm_act(self.project, out, slice(None))


def _channel_groups(channels: int, k: int) -> list[slice]:
    """``k`` contiguous, near-equal channel ranges (fewer when there are fewer channels)."""
    bounds = [round(i * channels / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _unit_on_channels(unit: ConvBNAct, x: torch.Tensor, group: slice) -> torch.Tensor:
    """The output channels ``group`` of a ConvBNAct whose conv is pointwise or depthwise.

    A depthwise unit takes just those channels as input; a pointwise one takes all of ``x``.
    """
    conv = unit.conv
    bias = None if conv.bias is None else conv.bias[group]
    if isinstance(conv, DepthwiseConv):
        x = x.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(
            x,
            conv.weight[group],
            bias,
            conv.stride,
            conv.padding,
            conv.dilation,
            groups=x.shape[1],
        )
    else:
        y = pointwise(x, conv.weight[group], bias)
    return _apply_norm_act(unit, y, group)


def _apply_norm_act(unit: ConvBNAct, y: torch.Tensor, group: slice) -> torch.Tensor:
    """BatchNorm (inference statistics) and activation of ``unit`` on channels ``group``."""
    bn = getattr(unit, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        y = F.batch_norm(
            y,
            bn.running_mean[group],
            bn.running_var[group],
            None if bn.weight is None else bn.weight[group],
            None if bn.bias is None else bn.bias[group],
            training=False,
            momentum=0.0,
            eps=bn.eps,
        )
    elif bn is not None and not isinstance(bn, nn.Identity):
        raise MobileNetError(
            f"split inference needs BatchNorm2d or no norm, got {type(bn).__name__}"
        )
    act = getattr(unit, "act", None)
    return y if act is None else act(y)


def set_bottleneck_split(model: nn.Module, k: int) -> int:
    """Run every inverted residual block of ``model`` in ``k`` channel groups at inference.

    Returns the number of blocks changed; ``k=1`` restores whole-tensor inference.
    """
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    if not blocks:
        raise MobileNetError("the model has no inverted residual blocks to split")
    for block in blocks:
        block.split = k
    return len(blocks)

"""The building blocks of the MobileNets: depthwise, pointwise and depthwise separable
convolutions, the V2 inverted residual (bottleneck) and what the later families add to it:
squeeze-and-excitation, hard-swish, stochastic depth, MobileNetV4's fused and universal
inverted bottlenecks.

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
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import MobileNetError

Activation = type[nn.Module] | None

# The activations the papers use, by the names the model tables give them.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,  # MobileNetV3: x * ReLU6(x + 3) / 6, a cheap swish
    "silu": nn.SiLU,  # EfficientNet's swish
    "sigmoid": nn.Sigmoid,
    "hsigmoid": nn.Hardsigmoid,  # MobileNetV3's gate: ReLU6(x + 3) / 6
}


def activation(name: str) -> type[nn.Module]:
    """The activation class a table names, or a one-line error listing the known names."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise MobileNetError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


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


# Every layer is a plain ``nn.Conv2d`` call, so the graph that torch.export, torch.compile, FX and
# both ONNX exporters capture is the model's own: standard convolutions, nothing rewritten for
# the eager CPU path. (An earlier version ran pointwise layers as a GEMM on the NHWC view; the
# captured graphs then held movedim + linear pairs that XNNPACK refused to lower.) For speed in
# eager PyTorch on a CPU, put the model and its input in channels_last memory format, as the
# trainer does.


def is_depthwise(conv: nn.Module) -> bool:
    """One filter per channel, whatever class built it (``groups == in == out > 1``): the one
    test costing, int8 and equalization ask."""
    depthwise = isinstance(conv, nn.Conv2d) and conv.groups > 1
    return depthwise and conv.groups == conv.in_channels == conv.out_channels


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
    bias: bool = False,
) -> nn.Conv2d:
    """Pick the convolution class that names what the layer is (depthwise, pointwise, standard)."""
    if groups == in_channels == out_channels and kernel_size > 1 and not bias:
        return DepthwiseConv(in_channels, kernel_size, stride=stride, padding=padding)
    if kernel_size == 1 and groups == 1 and stride == 1 and not padding:
        return PointwiseConv(in_channels, out_channels, bias=bias)
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=same_padding(kernel_size) if padding is None else padding,
        groups=groups,
        bias=bias,
    )


class SeparableConv(nn.Sequential):
    """A drop-in replacement for a standard convolution: depthwise -> BN -> activation ->
    pointwise, with the standard one's geometry (kernel, stride, padding, dilation).

    The pointwise layer takes the replaced convolution's bias, so whatever followed it (a
    BatchNorm, an activation, nothing) still sees what it expects. ``to_separable`` puts one in
    the place of every standard convolution of a network; ``vgg_small_separable`` is built of
    them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        activation: Activation = nn.ReLU,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
        d = dilation if isinstance(dilation, int) else dilation[0]
        layers["depthwise"] = DepthwiseConv(
            in_channels,
            kernel_size,
            stride=stride,
            padding=same_padding(k, d) if padding is None else padding,
            dilation=dilation,
        )
        layers["bn"] = nn.BatchNorm2d(in_channels)
        if activation is not None:
            layers["act"] = activation(inplace=True)
        layers["pointwise"] = PointwiseConv(in_channels, out_channels, bias=bias)
        super().__init__(layers)


class ConvBNAct(nn.Sequential):
    """Convolution -> BatchNorm -> activation, the unit every MobileNet layer is made of.

    The convolution has no bias because BatchNorm's shift replaces it. ``activation=None`` gives
    a linear layer (the V2 projection); ``norm=False`` drops the BatchNorm and gives the
    convolution a bias instead (MobileNetV3's last 1x1 convolution, after pooling).
    ``separable=True`` makes the convolution a :class:`SeparableConv`. Submodules are named
    ``conv``, ``bn``, ``act``.
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
        norm: bool = True,
        separable: bool = False,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if separable:
            layers["conv"] = SeparableConv(
                in_channels, out_channels, kernel_size, stride, padding, bias=not norm
            )
        else:
            layers["conv"] = _make_conv(
                in_channels, out_channels, kernel_size, stride, groups, padding, bias=not norm
            )
        if norm:
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
        _check_stride(stride)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.depthwise = ConvBNAct(
            in_channels, in_channels, kernel_size, stride, groups=in_channels, activation=activation
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise MobileNetError(f"stride must be 1 or 2, got {stride}")


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018), as MobileNetV3 and EfficientNet use it.

    Global average pooling squeezes each channel to one number; a 1x1 convolution ``reduce``s
    them to ``reduced_channels``, an activation, a 1x1 convolution ``expand``s back, and the
    ``gate`` (hard-sigmoid in V3, sigmoid in EfficientNet) turns the result into per-channel
    weights that rescale the input. Both convolutions have biases and act on a 1x1 map, so
    they cost ``2 * channels * reduced_channels`` mult-adds: little, but counted.
    """

    def __init__(
        self,
        channels: int,
        reduced_channels: int,
        activation: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Hardsigmoid,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.reduced_channels = reduced_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced_channels, 1)
        self.act = activation(inplace=True)
        self.expand = nn.Conv2d(reduced_channels, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class StochasticDepth(nn.Module):
    """Drop a residual branch for whole samples with probability ``p`` while training
    (Huang et al. 2016; EfficientNet's "drop connect"), scaling kept ones by 1/(1-p).

    The identity at inference, so it costs nothing in a deployed network.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise MobileNetError(f"stochastic depth probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


SEFactory = Callable[[int, int], nn.Module]
"""Builds a block's squeeze-and-excitation from (block input channels, hidden channels)."""


class _Residual(nn.Module):
    """What the bottleneck blocks share: their residual rule and its stochastic depth.

    The thin tensors are the ones passed between blocks, so the residual joins those, and only
    where the stride is 1 and the channel count is unchanged.
    """

    def _init_residual(
        self, in_channels: int, out_channels: int, stride: int, drop_path: float
    ) -> None:
        _check_stride(stride)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_path = StochasticDepth(drop_path) if self.use_residual and drop_path > 0 else None

    def _join(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if not self.use_residual:
            return out
        return x + (out if self.drop_path is None else self.drop_path(out))


class InvertedResidual(_Residual):
    """MobileNetV2's bottleneck block (Sandler et al. 2018, Table 1), and the V3 and
    EfficientNet (MBConv) blocks built on it.

    1x1 *expansion* to ``hidden_channels`` (default ``expand_ratio`` x the input) -> BN ->
    activation, k x k *depthwise* -> BN -> activation, optional squeeze-and-excitation (V3,
    EfficientNet), 1x1 linear *projection* -> BN. The expansion gives the depthwise filter a
    wide space to work in; the projection has no activation because a ReLU in the narrow
    bottleneck would destroy information (the paper's "linear bottleneck"). With nothing to
    expand (hidden width equal to the input's) the expansion is skipped. ``drop_path`` is the
    stochastic depth of the residual branch (EfficientNet).

    ``split=k`` is the paper's memory-efficient inference (section 6): expansion and depthwise
    act per channel and the projection is linear, so in eval mode the block runs on k groups of
    the hidden channels (expand a slice, depthwise it, project it, accumulate) and the expanded
    tensor never exists whole. Outputs equal the unsplit block up to float rounding; training
    always runs whole (BatchNorm there needs the statistics of the batch). A block with
    squeeze-and-excitation cannot be split: its gate needs every hidden channel at once.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: float = 6,
        kernel_size: int = 3,
        activation: Activation = nn.ReLU6,
        split: int = 1,
        *,
        hidden_channels: int | None = None,
        se: SEFactory | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if expand_ratio < 1:
            raise MobileNetError(f"expand_ratio must be >= 1, got {expand_ratio}")
        self._init_residual(in_channels, out_channels, stride, drop_path)
        hidden = round(in_channels * expand_ratio) if hidden_channels is None else hidden_channels
        self.expand_ratio = hidden / in_channels
        self.hidden_channels = hidden
        self.expand = (
            ConvBNAct(in_channels, hidden, 1, activation=activation)
            if hidden != in_channels
            else None
        )
        self.depthwise = ConvBNAct(
            hidden, hidden, kernel_size, stride, groups=hidden, activation=activation
        )
        self.se = None if se is None else se(in_channels, hidden)
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
        if k > 1 and self.se is not None:
            raise MobileNetError(
                "a block with squeeze-and-excitation cannot run split: its gate needs every "
                "hidden channel at once"
            )
        self._split = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split > 1 and not self.training:
            return self._join(x, self._forward_split(x))
        # One statement per layer, so each intermediate is freed as soon as it is used.
        out = x if self.expand is None else self.expand(x)
        out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return self._join(x, out)

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise and project one channel group at a time; sum the projections."""
        projection = self.project.conv
        out: torch.Tensor | None = None
        for group in _channel_groups(self.hidden_channels, self.split):
            h = x[:, group] if self.expand is None else _unit_on_channels(self.expand, x, group)
            h = _unit_on_channels(self.depthwise, h, group)
            part = F.conv2d(h, projection.weight[:, group])
            out = part if out is None else out.add_(part)
            del h, part
        assert out is not None
        if projection.bias is not None:
            out = out + projection.bias.view(-1, 1, 1)
        return _apply_norm_act(self.project, out, slice(None))


class FusedInvertedResidual(_Residual):
    """The fused inverted bottleneck (MobileNetV4's FusedIB; EdgeTPU's and EfficientNetV2's
    fused MBConv): one full k x k convolution does the *expansion* and the spatial filtering
    at once, then a 1x1 linear *projection*.

    Early in a network, where maps are large and channels few, one dense convolution runs
    faster on accelerators than a 1x1 + depthwise pair, for more mult-adds.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        hidden_channels: int,
        kernel_size: int = 3,
        activation: Activation = nn.ReLU,
        *,
        se: SEFactory | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self._init_residual(in_channels, out_channels, stride, drop_path)
        self.hidden_channels = hidden_channels
        self.expand = ConvBNAct(
            in_channels, hidden_channels, kernel_size, stride, activation=activation
        )
        self.se = None if se is None else se(in_channels, hidden_channels)
        self.project = ConvBNAct(hidden_channels, out_channels, 1, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x)
        if self.se is not None:
            out = self.se(out)
        return self._join(x, self.project(out))


class UniversalInvertedBottleneck(_Residual):
    """MobileNetV4's Universal Inverted Bottleneck (Qin et al. 2024, section 3.2).

    An inverted bottleneck with two optional depthwise convolutions: ``start_depthwise``
    (kernel ``start_kernel_size``, BN, no activation) before the 1x1 *expansion*, and the
    usual ``depthwise`` (kernel ``kernel_size``) between expansion and *projection*. The four
    combinations are the paper's four blocks: both (ExtraDW), middle only (the inverted
    bottleneck, IB), start only (ConvNext-like), neither (FFN). The stride sits on the middle
    depthwise when there is one, otherwise on the start one; an FFN cannot downsample.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        hidden_channels: int,
        kernel_size: int = 3,
        start_kernel_size: int = 0,
        activation: Activation = nn.ReLU,
        *,
        se: SEFactory | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self._init_residual(in_channels, out_channels, stride, drop_path)
        if stride != 1 and not (kernel_size or start_kernel_size):
            raise MobileNetError("a UIB without depthwise convolutions (FFN) cannot downsample")
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.start_kernel_size = start_kernel_size
        self.start_depthwise = (
            ConvBNAct(
                in_channels,
                in_channels,
                start_kernel_size,
                1 if kernel_size else stride,
                groups=in_channels,
                activation=None,
            )
            if start_kernel_size
            else None
        )
        self.expand = ConvBNAct(in_channels, hidden_channels, 1, activation=activation)
        self.depthwise = (
            ConvBNAct(
                hidden_channels,
                hidden_channels,
                kernel_size,
                stride,
                groups=hidden_channels,
                activation=activation,
            )
            if kernel_size
            else None
        )
        self.se = None if se is None else se(in_channels, hidden_channels)
        self.project = ConvBNAct(hidden_channels, out_channels, 1, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.start_depthwise is None else self.start_depthwise(x)
        out = self.expand(out)
        if self.depthwise is not None:
            out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        return self._join(x, self.project(out))


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
        y = F.conv2d(x, conv.weight[group], bias)
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

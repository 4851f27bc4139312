"""Semantic segmentation heads on a MobileNet trunk: LR-ASPP (MobileNetV3, Howard et al. 2019,
section 6.4) and DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution"), in the layout
of torchvision's ``lraspp_mobilenet_v3_large`` and ``deeplabv3_mobilenet_v3_large``.

Both dilate the trunk's last stage to output stride 16 (:func:`set_output_stride`), as the
MobileNetV3 paper does, and read the trunk's last map; LR-ASPP adds the map of the block that
steps to stride 8 for detail, and so does DeepLabV3's optional auxiliary head.

``forward`` returns one tensor, the per-pixel class logits (N, num_classes, H, W) upsampled
bilinearly to the input's size, as the classifiers return logits: evaluate, predict and
export see one output, and softmax/argmax belong to the loss and to predict. (torchvision
returns a dict ``{"out": ...}``; a dict output makes every exported program and every caller
unpack it.) The auxiliary logits, wanted only by a training loss, come from
:meth:`DeepLabV3.forward_aux`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.layers import ConvBNAct, PointwiseConv, SeparableConv
from mobilenets.models._common import check_model_args, init_weights
from mobilenets.models.dense import Tap, TappedTrunk, missing_levels, output_tap, set_output_stride
from mobilenets.models.efficientnet import EfficientNet
from mobilenets.models.mobilenet_v2 import MobileNetV2
from mobilenets.models.mobilenet_v3 import V3_LARGE_TABLE, V3_SMALL_TABLE, MobileNetV3
from mobilenets.models.registry import create_model, register_model

# Where LR-ASPP reads its detail map: stride 8 is the paper's and torchvision's; stride 4 halves
# the step of the mask's edges (benchmarks/results/segment_ceiling.md: at 320 px, an exact
# mask averaged over 8x8 cells tops out at mIoU 0.94, over 4x4 cells at 0.98) for a 1x1
# classifier on a map four times as large.
LOW_STRIDES = (8, 4)


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _Segmenter(TappedTrunk):
    """What both heads share: the dilated trunk and its taps at strides 8 and 16."""

    def _init_segmenter(
        self,
        name: str,
        backbone: nn.Module,
        num_classes: int,
        output_stride: int,
        low_stride: int = 8,
    ) -> tuple[Tap, Tap]:
        check_model_args(num_classes, 1.0, 0.0, 1)
        if low_stride not in LOW_STRIDES:
            raise MobileNetError(
                f"{name}'s detail map is taken at stride {' or '.join(map(str, LOW_STRIDES))}; "
                f"got low_stride={low_stride}"
            )
        low = output_tap(backbone, low_stride, first=True)
        if low is None or getattr(backbone, "stride", 0) < output_stride:
            raise missing_levels(
                name, backbone, f"strides {low_stride} and {output_stride} or more"
            )
        set_output_stride(backbone, output_stride)
        high = output_tap(backbone, output_stride)  # the last layer, once dilated
        assert high is not None
        self.num_classes = num_classes
        self.stride = output_stride
        return low, high


class LRASPPHead(nn.Module):
    """Lite R-ASPP (MobileNetV3 Figure 10): on the stride-16 map, a 1x1 ``branch`` (BN,
    ReLU) gated per channel by ``gate`` (global pooling, 1x1, sigmoid: a squeeze-and-
    excitation), upsampled to stride 8 and scored by ``high_classifier``; added to the
    stride-8 map scored by ``low_classifier``.

    The paper pools with a large strided kernel; torchvision (and so this) pools globally.

    ``score_first`` scores the stride-16 branch before upsampling it instead of after: the same
    function (a 1x1 convolution and bilinear resizing are both linear, and the resizing's
    weights sum to one, so they commute, bias included), with ``num_classes`` channels
    resized instead of ``inter_channels`` and the classifier run on the small map. Off by
    default, as torchvision orders it and its counts are pinned; a stride-4 detail map turns
    it on (four times the pixels to resize and score).
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        num_classes: int,
        inter_channels: int = 128,
        score_first: bool = False,
    ) -> None:
        super().__init__()
        self.score_first = score_first
        self.branch = ConvBNAct(high_channels, inter_channels, 1, activation=nn.ReLU)
        self.gate = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                conv=PointwiseConv(high_channels, inter_channels),
                act=nn.Sigmoid(),
            )
        )
        self.low_classifier = PointwiseConv(low_channels, num_classes, bias=True)
        self.high_classifier = PointwiseConv(inter_channels, num_classes, bias=True)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.branch(high) * self.gate(high)
        if self.score_first:
            return self.low_classifier(low) + _upsample(self.high_classifier(x), low.shape[-2:])
        return self.low_classifier(low) + self.high_classifier(_upsample(x, low.shape[-2:]))


class LRASPP(_Segmenter):
    """LR-ASPP on ``backbone``, a classifier of this library, dilated in place to output
    stride 16. ``num_classes`` counts the background (21 for Pascal VOC). ``low_stride`` is
    where the detail map is read: 8 (the paper's) or 4, for masks whose edges a stride of 8
    blurs (thin strokes at a small input)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 21,
        *,
        inter_channels: int = 128,
        low_stride: int = 8,
    ) -> None:
        super().__init__()
        low, high = self._init_segmenter("LR-ASPP", backbone, num_classes, 16, low_stride)
        self._init_trunk(backbone, [low, high])
        self.classifier = LRASPPHead(
            low.channels, high.channels, num_classes, inter_channels, score_first=low_stride < 8
        )
        init_weights(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.forward_taps(x)
        return _upsample(self.classifier(low, high), x.shape[-2:])


class AtrousConv(nn.Sequential):
    """A 3x3 convolution with ``rate`` - 1 holes between its taps, BN, ReLU: ASPP's branch.

    ``separable`` makes it depthwise (dilated) -> BN -> ReLU -> pointwise, the atrous
    separable convolution of DeepLabV3+ (Chen et al. 2018, section 3.2)."""

    def __init__(self, in_channels: int, out_channels: int, rate: int, separable: bool) -> None:
        conv = (
            SeparableConv(in_channels, out_channels, 3, dilation=rate)
            if separable
            else nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False)
        )
        super().__init__(
            OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels), act=nn.ReLU(inplace=True))
        )


class ImagePooling(nn.Sequential):
    """ASPP's image-level feature: global pooling, 1x1 (BN, ReLU), upsampled back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                conv=ConvBNAct(in_channels, out_channels, 1, activation=nn.ReLU),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample(super().forward(x), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3 section 3.3): a 1x1 branch, one atrous 3x3
    branch per rate, image pooling; concatenated and ``project``ed by a 1x1 (BN, ReLU,
    dropout 0.5)."""

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int] = (12, 24, 36),
        out_channels: int = 256,
        separable: bool = False,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNAct(in_channels, out_channels, 1, activation=nn.ReLU)]
        branches += [AtrousConv(in_channels, out_channels, r, separable) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            OrderedDict(
                conv=ConvBNAct(len(branches) * out_channels, out_channels, 1, activation=nn.ReLU),
                dropout=nn.Dropout(0.5),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], 1))


class DeepLabHead(nn.Sequential):
    """ASPP, a 3x3 convolution (BN, ReLU), and the 1x1 ``score`` layer with bias."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int] = (12, 24, 36),
        channels: int = 256,
        separable: bool = False,
    ) -> None:
        super().__init__(
            OrderedDict(
                aspp=ASPP(in_channels, rates, channels, separable),
                conv=ConvBNAct(channels, channels, 3, activation=nn.ReLU, separable=separable),
                score=PointwiseConv(channels, num_classes, bias=True),
            )
        )


class FCNHead(nn.Sequential):
    """The auxiliary head (FCN's): 3x3 to a quarter of the channels (BN, ReLU), dropout 0.1,
    1x1 ``score`` layer. It only adds a training loss on the stride-8 map."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        hidden = in_channels // 4
        super().__init__(
            OrderedDict(
                conv=ConvBNAct(in_channels, hidden, 3, activation=nn.ReLU),
                dropout=nn.Dropout(0.1),
                score=PointwiseConv(hidden, num_classes, bias=True),
            )
        )


class DeepLabV3(_Segmenter):
    """DeepLabV3 on ``backbone``, a classifier of this library, dilated in place to output
    stride 16.

    The ASPP rates (12, 24, 36) and 256 channels are torchvision's, whose counts this
    matches with ``separable=False`` (the default): standard 3x3 atrous convolutions, 8M of
    the model's 11M parameters. ``separable=True`` makes the ASPP branches and the 3x3 after
    it depthwise separable (DeepLabV3+): 4.64M parameters and 3.47G mult-adds at 520x520
    instead of 11.03M and 10.44G. ``aux`` adds
    :class:`FCNHead` on the stride-8 map as ``aux_classifier``, for :meth:`forward_aux`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 21,
        *,
        aux: bool = False,
        rates: Sequence[int] = (12, 24, 36),
        aspp_channels: int = 256,
        separable: bool = False,
    ) -> None:
        super().__init__()
        low, high = self._init_segmenter("DeepLabV3", backbone, num_classes, 16)
        self._init_trunk(backbone, [low, high] if aux else [high])
        self.classifier = DeepLabHead(high.channels, num_classes, rates, aspp_channels, separable)
        self.aux_classifier = FCNHead(low.channels, num_classes) if aux else None
        init_weights(self.classifier)
        if self.aux_classifier is not None:
            init_weights(self.aux_classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = self.forward_taps(x)[-1]
        return _upsample(self.classifier(high), x.shape[-2:])

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the auxiliary head's logits, both at the input's size (training)."""
        if self.aux_classifier is None:
            raise MobileNetError("this DeepLabV3 was built without aux=True: no auxiliary head")
        low, high = self.forward_taps(x)
        size = x.shape[-2:]
        return _upsample(self.classifier(high), size), _upsample(self.aux_classifier(low), size)


# ---------------------------------------------------------------------------------------------
# Registered models: the heads on the backbones they fit (maps at strides 8 and 16 after
# dilation). Each builds its classifier at width ``width_mult`` and puts the head on it.
# ---------------------------------------------------------------------------------------------


def _v3_large(width_mult: float, in_chans: int) -> nn.Module:
    return MobileNetV3(V3_LARGE_TABLE, 1280, width_mult=width_mult, in_chans=in_chans)


def _v3_small(width_mult: float, in_chans: int) -> nn.Module:
    return MobileNetV3(V3_SMALL_TABLE, 1024, width_mult=width_mult, in_chans=in_chans)


def _v2(width_mult: float, in_chans: int) -> nn.Module:
    return MobileNetV2(width_mult=width_mult, in_chans=in_chans)


@register_model("lraspp_mobilenet_v3_large", task="segmentation", backbone="mobilenet_v3_large")
def lraspp_mobilenet_v3_large(
    num_classes: int = 21, width_mult: float = 1.0, in_chans: int = 3, low_stride: int = 8
) -> LRASPP:
    """LR-ASPP on MobileNetV3-Large (torchvision's layout): 3.22M parameters, 2.09G mult-adds
    at 520x520 with 21 classes."""
    return LRASPP(_v3_large(width_mult, in_chans), num_classes, low_stride=low_stride)


@register_model("lraspp_mobilenet_v3_small", task="segmentation", backbone="mobilenet_v3_small")
def lraspp_mobilenet_v3_small(
    num_classes: int = 21, width_mult: float = 1.0, in_chans: int = 3, low_stride: int = 8
) -> LRASPP:
    """LR-ASPP on MobileNetV3-Small (MobileNetV3 Table 7's smaller network)."""
    return LRASPP(_v3_small(width_mult, in_chans), num_classes, low_stride=low_stride)


@register_model("lraspp_mobilenet_v2", task="segmentation", backbone="mobilenet_v2")
def lraspp_mobilenet_v2(
    num_classes: int = 21, width_mult: float = 1.0, in_chans: int = 3, low_stride: int = 8
) -> LRASPP:
    """LR-ASPP on MobileNetV2 (the trunk's 1x1 convolution to 1280 is the stride-16 map)."""
    return LRASPP(_v2(width_mult, in_chans), num_classes, low_stride=low_stride)


@register_model("deeplabv3_mobilenet_v3_large", task="segmentation", backbone="mobilenet_v3_large")
def deeplabv3_mobilenet_v3_large(
    num_classes: int = 21,
    width_mult: float = 1.0,
    in_chans: int = 3,
    aux: bool = False,
    separable: bool = False,
) -> DeepLabV3:
    """DeepLabV3 on MobileNetV3-Large (torchvision's layout): 11.03M parameters (3,851 more
    with ``aux``), 10.44G mult-adds at 520x520 with 21 classes."""
    return DeepLabV3(_v3_large(width_mult, in_chans), num_classes, aux=aux, separable=separable)


@register_model("deeplabv3_mobilenet_v2", task="segmentation", backbone="mobilenet_v2")
def deeplabv3_mobilenet_v2(
    num_classes: int = 21,
    width_mult: float = 1.0,
    in_chans: int = 3,
    aux: bool = False,
    separable: bool = False,
) -> DeepLabV3:
    """DeepLabV3 on MobileNetV2 (V2 paper section 6.3 puts DeepLabv3 on it, at output
    stride 16)."""
    return DeepLabV3(_v2(width_mult, in_chans), num_classes, aux=aux, separable=separable)


def _efficientnet_b0(in_chans: int) -> EfficientNet:
    return create_model("efficientnet_b0", in_chans=in_chans)  # type: ignore[return-value]


@register_model("lraspp_efficientnet_b0", task="segmentation", backbone="efficientnet_b0")
def lraspp_efficientnet_b0(num_classes: int = 21, in_chans: int = 3, low_stride: int = 8) -> LRASPP:
    """LR-ASPP on EfficientNet-B0."""
    return LRASPP(_efficientnet_b0(in_chans), num_classes, low_stride=low_stride)


@register_model(
    "lraspp_mobilenetv4_conv_small", task="segmentation", backbone="mobilenetv4_conv_small"
)
def lraspp_mobilenetv4_conv_small(
    num_classes: int = 21, in_chans: int = 3, low_stride: int = 8
) -> LRASPP:
    """LR-ASPP on MobileNetV4-Conv-Small."""
    backbone = create_model("mobilenetv4_conv_small", in_chans=in_chans)
    return LRASPP(backbone, num_classes, low_stride=low_stride)

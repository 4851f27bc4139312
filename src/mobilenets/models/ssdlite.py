"""SSDLite: the single-shot detector with separable convolutions of MobileNetV2 (Sandler et al.
2018, section 6.2), on a MobileNet trunk, in the layout of torchvision's
``ssdlite320_mobilenet_v3_large`` (MobileNetV3 section 6.3).

SSD (Liu et al. 2016) predicts, at every position of six feature maps of falling resolution,
class scores and box offsets for a fixed set of *default boxes* (anchors). SSDLite replaces
every 3x3 convolution of SSD's prediction layers and extra layers by a depthwise separable
one, which is what makes it fit a phone: the first map is the expansion output of the block
that steps from stride 16 to 32 (wide, at stride 16), the second the trunk's last output
(stride 32), and four *extra blocks* (1x1 down to half, 3x3 depthwise stride 2, 1x1 up) add
strides 64 to 512.

``forward`` returns the raw predictions for every default box, ``(cls_logits,
bbox_regression)`` of shapes (N, A, num_classes) and (N, A, 4), in the order of
:meth:`SSDLite.default_boxes`; matching, box decoding and non-maximum suppression belong to the
loss and to predict, as softmax does for the classifiers, so the exported graph is the network.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.layers import ConvBNAct, PointwiseConv
from mobilenets.models.dense import (
    TappedTrunk,
    expansion_tap,
    halve_last_stage,
    missing_levels,
    output_tap,
)
from mobilenets.models.mobilenet_v2 import MobileNetV2
from mobilenets.models.mobilenet_v3 import V3_LARGE_TABLE, V3_SMALL_TABLE, MobileNetV3
from mobilenets.models.registry import register_model

# torchvision's SSDLite320: aspect ratios 2 and 3 on all six maps (six boxes per position),
# scales from 0.2 to 0.95 of the image.
SSDLITE_ASPECT_RATIOS: tuple[tuple[float, ...], ...] = ((2, 3),) * 6
SSDLITE_EXTRA_CHANNELS = (512, 256, 256, 128)
MIN_DEPTH = 16  # the TensorFlow Object Detection API's floor for the extra layers' widths


class SSDLiteOutput(NamedTuple):
    """Raw predictions for every default box: class logits (background is class 0) and box
    offsets (dx, dy, dw, dh) relative to the default box, as SSD encodes them."""

    cls_logits: torch.Tensor
    bbox_regression: torch.Tensor


class ExtraBlock(nn.Sequential):
    """One SSDLite extra layer: 1x1 ``reduce`` to half the output channels, 3x3 stride-2
    ``depthwise``, 1x1 ``expand`` to the output channels; BatchNorm and ReLU6 after each.

    It halves the map as SSD's 3x3 stride-2 convolution did, at a fraction of its cost."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        hidden = out_channels // 2
        super().__init__(
            OrderedDict(
                reduce=ConvBNAct(in_channels, hidden, 1, activation=nn.ReLU6),
                depthwise=ConvBNAct(hidden, hidden, 3, 2, groups=hidden, activation=nn.ReLU6),
                expand=ConvBNAct(hidden, out_channels, 1, activation=nn.ReLU6),
            )
        )
        self.out_channels = out_channels


class PredictionHead(nn.Sequential):
    """SSDLite's separable prediction layer: 3x3 ``depthwise`` (BN, ReLU6), then a 1x1
    ``pointwise`` convolution with bias to ``boxes`` x ``values`` outputs per position."""

    def __init__(self, in_channels: int, boxes: int, values: int) -> None:
        super().__init__(
            OrderedDict(
                depthwise=ConvBNAct(
                    in_channels, in_channels, 3, groups=in_channels, activation=nn.ReLU6
                ),
                pointwise=PointwiseConv(in_channels, boxes * values, bias=True),
            )
        )
        self.values = values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, H * W * boxes, values): position-major, then box, as the
        default boxes are laid out."""
        out = super().forward(x)
        n, _, h, w = out.shape
        out = out.view(n, -1, self.values, h, w).permute(0, 3, 4, 1, 2)
        return out.reshape(n, -1, self.values)


class SSDLite(TappedTrunk):
    """SSDLite on ``backbone``, a classifier of this library (its ``features`` trunk is used).

    The backbone needs maps at strides 16 and 32: the first is the expansion output of the
    block that steps to 32 when that block is an inverted residual (V2, V3, EfficientNet),
    otherwise the last map at stride 16 (V1, V4); the second is the trunk's output. Extra
    blocks widen as torchvision's and the TensorFlow reference's do: ``max(16, int(c *
    width_mult))``. ``num_classes`` counts the background (91 for COCO in torchvision's
    numbering). BatchNorm uses eps 0.001 and momentum 0.03, and the new layers start from
    N(0, 0.03), as torchvision's SSDLite does.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 91,
        *,
        width_mult: float = 1.0,
        extra_channels: Sequence[int] = SSDLITE_EXTRA_CHANNELS,
        aspect_ratios: Sequence[Sequence[float]] = SSDLITE_ASPECT_RATIOS,
        min_ratio: float = 0.2,
        max_ratio: float = 0.95,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise MobileNetError(
                f"num_classes counts the background and must be at least 2, got {num_classes!r}"
            )
        c4 = expansion_tap(backbone, 16) or output_tap(backbone, 16)
        c5 = output_tap(backbone, 32)
        if c4 is None or c5 is None or c5.layer != str(len(backbone.features) - 1):
            raise missing_levels("SSDLite", backbone, "strides 16 and 32 (the trunk's output)")
        if len(aspect_ratios) != 2 + len(extra_channels):
            raise MobileNetError(
                f"SSDLite predicts on {2 + len(extra_channels)} maps, so it needs as many "
                f"aspect-ratio lists; got {len(aspect_ratios)}"
            )
        self._init_trunk(backbone, [c4, c5])
        self.num_classes = num_classes
        self.stride = 32
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.scales = _scales(len(self.aspect_ratios), min_ratio, max_ratio)
        widths = [max(MIN_DEPTH, int(c * width_mult)) for c in extra_channels]
        self.extra = nn.ModuleList(
            ExtraBlock(cin, cout)
            for cin, cout in zip([c5.channels, *widths[:-1]], widths, strict=True)
        )
        channels = [c4.channels, c5.channels, *widths]
        boxes = [2 + 2 * len(r) for r in self.aspect_ratios]
        self.classification_head = nn.ModuleList(
            PredictionHead(c, b, num_classes) for c, b in zip(channels, boxes, strict=True)
        )
        self.regression_head = nn.ModuleList(
            PredictionHead(c, b, 4) for c, b in zip(channels, boxes, strict=True)
        )
        self.reductions = (16, 32, *(64 * 2**i for i in range(len(widths))))
        for part in (self.extra, self.classification_head, self.regression_head):
            normal_init(part)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps, module.momentum = 1e-3, 0.03

    def forward(self, x: torch.Tensor) -> SSDLiteOutput:
        maps = self.forward_taps(x)
        y = maps[-1]
        for block in self.extra:
            y = block(y)
            maps.append(y)
        cls_logits = [head(m) for head, m in zip(self.classification_head, maps, strict=True)]
        boxes = [head(m) for head, m in zip(self.regression_head, maps, strict=True)]
        return SSDLiteOutput(torch.cat(cls_logits, 1), torch.cat(boxes, 1))

    def feature_sizes(self, image_size: int | tuple[int, int]) -> list[tuple[int, int]]:
        """(H, W) of the six maps for an input of ``image_size``: every stride-2 layer with
        an odd kernel and "same" padding rounds up (ceil(n / 2))."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        sizes = []
        for reduction in self.reductions:
            steps = int(math.log2(reduction))
            sizes.append((_halve(h, steps), _halve(w, steps)))
        return sizes

    def default_boxes(self, image_size: int | tuple[int, int]) -> torch.Tensor:
        """The default boxes of an input of ``image_size`` as (x1, y1, x2, y2) in pixels, one
        row per prediction, in the order of ``forward``'s outputs."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        boxes = default_boxes(self.feature_sizes((h, w)), self.aspect_ratios, self.scales)
        return center_to_corners(boxes) * torch.tensor([w, h, w, h], dtype=boxes.dtype)


def _halve(n: int, times: int) -> int:
    for _ in range(times):
        n = (n + 1) // 2
    return n


def _scales(maps: int, min_ratio: float, max_ratio: float) -> list[float]:
    """SSD's box scales (its equation 4): evenly from ``min_ratio`` to ``max_ratio`` over the
    maps, then 1.0 for the geometric mean the last map's second square box needs."""
    if maps == 1:
        return [min_ratio, max_ratio]
    step = (max_ratio - min_ratio) / (maps - 1)
    return [*(min_ratio + step * k for k in range(maps)), 1.0]


def default_boxes(
    feature_sizes: Sequence[tuple[int, int]],
    aspect_ratios: Sequence[Sequence[float]] = SSDLITE_ASPECT_RATIOS,
    scales: Sequence[float] | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """SSD's default boxes (section 2.2) as (cx, cy, w, h) in fractions of the image.

    At each position of map k (centred, ((i + 0.5) / W, (j + 0.5) / H)): a square box of
    scale s_k, one of sqrt(s_k * s_k+1), and for each aspect ratio a the pair s_k * sqrt(a)
    by s_k / sqrt(a) and its transpose. ``clip`` limits widths and heights to [0, 1], as
    torchvision's ``DefaultBoxGenerator`` does.
    """
    if scales is None:
        scales = _scales(len(feature_sizes), 0.2, 0.95)
    if len(aspect_ratios) != len(feature_sizes) or len(scales) != len(feature_sizes) + 1:
        raise MobileNetError(
            f"{len(feature_sizes)} maps need as many aspect-ratio lists and one scale more; "
            f"got {len(aspect_ratios)} and {len(scales)}"
        )
    per_map = []
    for k, (h, w) in enumerate(feature_sizes):
        s, s_next = scales[k], scales[k + 1]
        shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for a in aspect_ratios[k]:
            shapes += [(s * math.sqrt(a), s / math.sqrt(a)), (s / math.sqrt(a), s * math.sqrt(a))]
        wh = torch.tensor(shapes, dtype=torch.float32)
        if clip:
            wh = wh.clamp(0, 1)
        cy, cx = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32) + 0.5) / h,
            (torch.arange(w, dtype=torch.float32) + 0.5) / w,
            indexing="ij",
        )
        centres = torch.stack((cx.reshape(-1), cy.reshape(-1)), 1)
        per_map.append(
            torch.cat((centres.repeat_interleave(len(shapes), 0), wh.repeat(h * w, 1)), 1)
        )
    return torch.cat(per_map, 0)


def center_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((centre - size / 2, centre + size / 2), -1)


def normal_init(module: nn.Module, std: float = 0.03) -> None:
    """torchvision's initialisation of SSDLite's layers (and of a backbone trained from
    scratch): convolution weights N(0, ``std``), biases zero."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_model("ssdlite_mobilenet_v3_large", task="detection", backbone="mobilenet_v3_large")
def ssdlite_mobilenet_v3_large(
    num_classes: int = 91,
    width_mult: float = 1.0,
    in_chans: int = 3,
    reduced_tail: bool = True,
) -> SSDLite:
    """SSDLite on MobileNetV3-Large, torchvision's ``ssdlite320_mobilenet_v3_large`` layout
    (trained at 320x320). ``reduced_tail`` halves the last stage (MobileNetV3 Table 6), as
    torchvision does for a backbone trained from scratch; pass False to load ImageNet weights
    into the trunk. 3.44M parameters and 0.58G mult-adds at 320x320 with 91 classes."""
    table = halve_last_stage(V3_LARGE_TABLE) if reduced_tail else V3_LARGE_TABLE
    backbone = MobileNetV3(table, 1280, width_mult=width_mult, in_chans=in_chans)
    normal_init(backbone.features)
    return SSDLite(backbone, num_classes, width_mult=width_mult)


@register_model("ssdlite_mobilenet_v3_small", task="detection", backbone="mobilenet_v3_small")
def ssdlite_mobilenet_v3_small(
    num_classes: int = 91,
    width_mult: float = 1.0,
    in_chans: int = 3,
    reduced_tail: bool = True,
) -> SSDLite:
    """SSDLite on MobileNetV3-Small, as MobileNetV3 Table 6 reports it (reduced tail)."""
    table = halve_last_stage(V3_SMALL_TABLE) if reduced_tail else V3_SMALL_TABLE
    backbone = MobileNetV3(table, 1024, width_mult=width_mult, in_chans=in_chans)
    normal_init(backbone.features)
    return SSDLite(backbone, num_classes, width_mult=width_mult)


@register_model("ssdlite_mobilenet_v2", task="detection", backbone="mobilenet_v2")
def ssdlite_mobilenet_v2(
    num_classes: int = 91, width_mult: float = 1.0, in_chans: int = 3
) -> SSDLite:
    """SSDLite on MobileNetV2 (section 6.2): the first map is the expansion of block 14
    (``features.14.expand``, 576 channels at stride 16), the second the 1x1 convolution to
    1280 at stride 32."""
    backbone = MobileNetV2(width_mult=width_mult, in_chans=in_chans)
    normal_init(backbone.features)
    return SSDLite(backbone, num_classes, width_mult=width_mult)

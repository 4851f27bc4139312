"""What the models share: argument checks, the trunk-plus-head shape, weight init."""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.layers import ConvBNAct


def check_model_args(num_classes: int, width_mult: float, dropout: float, in_chans: int) -> None:
    """Reject constructor arguments that would build a broken model, with one clear line."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise MobileNetError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes < 1:
        raise MobileNetError(f"num_classes must be a positive integer, got {num_classes}")
    if isinstance(width_mult, bool) or not isinstance(width_mult, numbers.Real):
        raise MobileNetError(f"width_mult must be a positive number, got {width_mult!r}")
    if not math.isfinite(width_mult) or width_mult <= 0:
        raise MobileNetError(f"width_mult must be a positive number, got {width_mult}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise MobileNetError(f"dropout must be in [0, 1), got {dropout!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, numbers.Integral) or in_chans < 1:
        raise MobileNetError(f"in_chans must be a positive integer, got {in_chans!r}")


def check_resolution(model: nn.Module, resolution: int) -> None:
    """Refuse inputs smaller than the network's total stride.

    A 3x3 stride-2 convolution with padding 1 rounds odd sizes up, so any size survives
    arithmetically; but below the total stride (32, or 8 with ``small_input``) the last feature
    map is computed mostly from zero padding and the result is meaningless.
    """
    stride = getattr(model, "stride", 32)
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral):
        raise MobileNetError(f"resolution must be an integer number of pixels, got {resolution!r}")
    if resolution < stride:
        raise MobileNetError(
            f"resolution {resolution} is too small for this network: it downsamples by "
            f"{stride}, so the input must be at least {stride}x{stride}"
        )


def classifier(
    in_features: int, num_classes: int, dropout: float, head: ConvBNAct | None = None
) -> nn.Sequential:
    """Global average pooling -> [1x1 ``head`` conv] -> dropout -> fully connected.

    Softmax lives in the loss. The optional head is MobileNetV3's and V4's last 1x1
    convolution, run after the pooling, where it costs 49 times less than before it.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(pool=nn.AdaptiveAvgPool2d(1))
    if head is not None:
        layers["head"] = head
        in_features = head.out_channels
    layers["flatten"] = nn.Flatten(1)
    layers["dropout"] = nn.Dropout(dropout)
    layers["fc"] = nn.Linear(in_features, num_classes)
    return nn.Sequential(layers)


class ConvClassifier(nn.Module):
    """A convolutional trunk (``features``) and a pooled linear head (``classifier``).

    Every model here has this shape, as torchvision's do, so training, feature extraction,
    export and weight import can rely on ``.features``, ``.classifier``, ``.num_features``
    (the trunk's output channels) and ``.stride`` (its total downsampling).
    """

    def _finish(
        self,
        features: OrderedDict[str, nn.Module],
        num_features: int,
        stride: int,
        num_classes: int,
        dropout: float,
        head: ConvBNAct | None = None,
    ) -> None:
        """Attach the trunk and the head, then initialise every weight once."""
        self.features = nn.Sequential(features)
        self.num_features = num_features
        self.stride = stride
        self.classifier = classifier(num_features, num_classes, dropout, head)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's output before pooling: (N, num_features, H/stride, W/stride)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def init_weights(model: nn.Module) -> None:
    """Initialise as the reference implementations do, so training recipes carry over.

    Kaiming-normal (fan_out) for convolutions, BatchNorm to identity, linear layers N(0, 0.01).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

"""Backbone features: the trunk's feature maps at each downsampling level, for dense heads.

Detection and segmentation heads (FPN, SSDLite, DeepLab) take a classification network's
feature maps at several strides rather than its logits. :class:`FeatureExtractor` runs a model's
``features`` trunk and returns, for each requested level, the output of the *last* layer at that
level's total stride, which is the convention of torchvision's detection backbones. For a
standard MobileNet the levels are strides 2, 4, 8, 16 and 32, so the last map is exactly
``model.forward_features(x)`` (for V2 that includes the final 1x1 convolution to 1280
channels). With ``small_input`` the trunk downsamples less and the levels are 1, 2, 4 and 8.

The extractor keeps the trunk's own module names (``features.3.depthwise.conv.weight``), so a
classification checkpoint loads into it after dropping the ``classifier.`` tensors.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mobilenets.errors import MobileNetError


class FeatureInfo(NamedTuple):
    """One feature level: the layer it is taken after, its channels and its total stride."""

    module: str
    channels: int
    reduction: int


def trunk_levels(model: nn.Module) -> list[FeatureInfo]:
    """The feature levels of ``model.features``: the last layer at each distinct total stride.

    Read from the layers' own ``stride`` and ``out_channels`` rather than from a probing forward
    pass, so it costs nothing and does not touch BatchNorm statistics.
    """
    trunk = getattr(model, "features", None)
    if not isinstance(trunk, nn.Sequential):
        raise MobileNetError(f"{type(model).__name__} has no `features` trunk to take maps from")
    levels: OrderedDict[int, FeatureInfo] = OrderedDict()
    reduction = 1
    for name, layer in trunk.named_children():
        stride, channels = getattr(layer, "stride", None), getattr(layer, "out_channels", None)
        if not isinstance(stride, int) or not isinstance(channels, int):
            raise MobileNetError(
                f"{type(model).__name__} does not support features_only: layer features.{name} "
                "does not declare its stride and output channels"
            )
        reduction *= stride
        levels[reduction] = FeatureInfo(f"features.{name}", channels, reduction)
    return list(levels.values())


class FeatureExtractor(nn.Module):
    """Wrap a classification model's trunk so that ``forward`` returns a list of feature maps.

    ``out_indices`` index the model's feature levels (see :func:`trunk_levels`); by default all
    of them. Layers after the deepest requested level are dropped, and so is the classifier.
    ``feature_info`` lists (module, channels, reduction) for each returned map, in order.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels = trunk_levels(model)
        indices = tuple(range(len(levels))) if out_indices is None else tuple(out_indices)
        _check_out_indices(indices, levels)
        self.out_indices = indices
        self.feature_info = [levels[i] for i in indices]
        deepest = max(int(info.module.split(".")[1]) for info in self.feature_info)
        kept = [(n, m) for n, m in model.features.named_children() if int(n) <= deepest]
        self.features = nn.Sequential(OrderedDict(kept))
        self._taps = frozenset(info.module.split(".")[1] for info in self.feature_info)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for name, layer in self.features.named_children():
            x = layer(x)
            if name in self._taps:
                maps.append(x)
        return maps


def _check_out_indices(indices: tuple[int, ...], levels: list[FeatureInfo]) -> None:
    available = ", ".join(f"{i} (stride {info.reduction})" for i, info in enumerate(levels))
    if not indices:
        raise MobileNetError(f"out_indices is empty; this model has levels {available}")
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < len(levels):
            raise MobileNetError(
                f"out_index {i!r} does not exist; this model has levels {available}"
            )
    if list(indices) != sorted(set(indices)):
        raise MobileNetError(f"out_indices must be increasing without repeats, got {indices}")

"""What the dense heads (SSDLite, LR-ASPP, DeepLabV3) need of a classification trunk.

A head takes a registered classifier's ``features`` trunk and reads feature maps out of it, as
``features_only`` does, with three additions the papers' detection and segmentation networks
need:

* :class:`Tap`: a map taken at a trunk layer's output, or at its *expansion* output (the
  hidden tensor of an inverted residual). SSDLite (MobileNetV2 section 6.2, MobileNetV3
  section 6.3) attaches its first prediction layer to the expansion of the block that steps
  down from stride 16 to 32: a wide map at stride 16, where the block's output is at 32.
* :func:`set_output_stride`: atrous convolution in place of the last strides (DeepLabV3
  section 3.1; MobileNetV3 section 6.4 dilates its last block), so a segmentation head sees
  a map at stride 16 instead of 32 with the same weights.
* :func:`halve_last_stage`: MobileNetV3's "reduced tail" (Table 6: channels between C4 and C5
  halved), which its SSDLite uses when the backbone is trained from scratch.

A head keeps the trunk under its own ``features`` with the classifier's names
(``features.13.expand.conv.weight``), so a classification checkpoint loads into it after
dropping the ``classifier.`` tensors, and the trainer's ``freeze_features`` freezes it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.layers import InvertedResidual, same_padding
from mobilenets.models._builder import Row
from mobilenets.models.features import FeatureInfo, trunk_levels


class Tap(NamedTuple):
    """One map a head reads: trunk layer ``layer`` (its name in ``features``), its channels and
    total stride; ``expansion`` takes the layer's expansion output instead of its output."""

    layer: str
    channels: int
    reduction: int
    expansion: bool = False


def trunk_layers(model: nn.Module) -> list[FeatureInfo]:
    """Every trunk layer with its output channels and the total stride after it.

    Checked by :func:`~mobilenets.models.features.trunk_levels` first, so a model without a trunk of
    declared strides gets the same one-line error as ``features_only``.
    """
    trunk_levels(model)
    layers, reduction = [], 1
    for name, layer in model.features.named_children():
        reduction *= layer.stride
        layers.append(FeatureInfo(name, layer.out_channels, reduction))
    return layers


def strides_found(model: nn.Module) -> str:
    """The strides a trunk offers, as a one-line error names them: ``2, 4, 8, 16, 32``."""
    return ", ".join(str(info.reduction) for info in trunk_levels(model))


def missing_levels(head: str, model: nn.Module, needed: str) -> MobileNetError:
    """The one-line error for a head on a backbone without the levels it reads."""
    return MobileNetError(
        f"{head} needs backbone feature maps at {needed}; {type(model).__name__} has maps at "
        f"strides {strides_found(model)}"
    )


def output_tap(model: nn.Module, reduction: int, first: bool = False) -> Tap | None:
    """The trunk layer whose output is at ``reduction``: the last one (the ``features_only``
    level), or with ``first`` the one that steps down to it (torchvision's C_n taps)."""
    layers = [info for info in trunk_layers(model) if info.reduction == reduction]
    if not layers:
        return None
    info = layers[0] if first else layers[-1]
    return Tap(info.module, info.channels, reduction)


def expansion_tap(model: nn.Module, reduction: int) -> Tap | None:
    """The expansion output at ``reduction`` of the block that steps down from it, if that
    block is an inverted residual with an expansion (V2, V3, EfficientNet's MBConv)."""
    previous = 1
    for info in trunk_layers(model):
        if previous == reduction and info.reduction == 2 * reduction:
            block = model.features.get_submodule(info.module)
            if isinstance(block, InvertedResidual) and block.expand is not None:
                return Tap(info.module, block.hidden_channels, reduction, expansion=True)
            return None
        previous = info.reduction
    return None


def set_output_stride(model: nn.Module, output_stride: int) -> None:
    """Trade the trunk's strides beyond ``output_stride`` for atrous (dilated) convolutions.

    The layer that would step past ``output_stride`` keeps stride 1 and from it on every k x k
    convolution is dilated by the strides removed so far, with padding that keeps the size;
    the weights are unchanged, so an ImageNet checkpoint still loads. This is torchvision's
    ``dilated=True`` for MobileNetV3 (the stepping block itself is dilated, as there), so its
    segmentation checkpoints give the same maps. A residual keeps the rule it was built with:
    the stepping block, built with stride 2, stays without one.
    """
    if output_stride not in (8, 16, 32):
        raise MobileNetError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    trunk_levels(model)
    reduction, dilation = 1, 1
    for name, layer in model.features.named_children():
        stride = layer.stride
        if reduction * stride > output_stride:
            dilation, stride = dilation * stride, 1
        if dilation > 1:
            _dilate(name, layer, dilation)
        reduction *= stride
    model.stride = reduction


def _dilate(name: str, layer: nn.Module, dilation: int) -> None:
    for module in layer.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
            kh, kw = module.kernel_size
            module.stride = (1, 1)
            module.dilation = (dilation, dilation)
            module.padding = (same_padding(kh, dilation), same_padding(kw, dilation))
        elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            raise MobileNetError(
                f"features.{name} pools with stride; only convolutions can be dilated for an "
                "output stride below the trunk's"
            )
    layer.stride = 1


def halve_last_stage(rows: Sequence[Row]) -> tuple[Row, ...]:
    """MobileNetV3's reduced tail: the last stage (from the last stride-2 row on) and the 1x1
    convolution after it get half the channels; the stepping block keeps its expansion, as
    its input is unchanged (torchvision's ``reduced_tail``)."""
    last = max((i for i, row in enumerate(rows) if row.s == 2), default=None)
    if last is None:
        raise MobileNetError("a table without a stride-2 row has no last stage to halve")
    return tuple(
        row if i < last else row._replace(c=row.c // 2, exp=row.exp if i == last else row.exp // 2)
        for i, row in enumerate(rows)
    )


class TappedTrunk(nn.Module):
    """A head's base: the trunk layers up to the deepest tap, run once, returning the taps.

    Layers after the deepest tap are dropped (and with them the classifier), as in
    :class:`~mobilenets.models.features.FeatureExtractor`; the layer names are the classifier's.
    """

    def _init_trunk(self, model: nn.Module, taps: Sequence[Tap]) -> None:
        taps = sorted(taps, key=lambda tap: (int(tap.layer), not tap.expansion))
        deepest = max(int(tap.layer) for tap in taps)
        kept = [(n, m) for n, m in model.features.named_children() if int(n) <= deepest]
        self.features = nn.Sequential(OrderedDict(kept))
        self.taps = tuple(taps)
        self._expansions = frozenset(tap.layer for tap in taps if tap.expansion)
        self._outputs = frozenset(tap.layer for tap in taps if not tap.expansion)

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's maps at the taps, shallowest first."""
        maps = []
        for name, layer in self.features.named_children():
            if name in self._expansions:
                hidden = layer.expand(x)
                maps.append(hidden)
                x = _after_expansion(layer, hidden)
            else:
                x = layer(x)
            if name in self._outputs:
                maps.append(x)
        return maps


def _after_expansion(block: InvertedResidual, hidden: torch.Tensor) -> torch.Tensor:
    """The rest of a strided inverted residual (no residual: it changes the size)."""
    out = block.depthwise(hidden)
    if block.se is not None:
        out = block.se(out)
    return block.project(out)

"""Fold BatchNorm into the convolution before it, for inference.

At inference BatchNorm is a fixed per-channel affine map, ``y = gamma * (x - mu) / sigma + beta``
with ``sigma = sqrt(running_var + eps)``. Applied to a convolution's output it can be absorbed
into the convolution itself: scale each output filter by ``gamma / sigma`` and give the
convolution the bias ``beta + (b - mu) * gamma / sigma``. The folded network computes the same
function with one layer fewer per ConvBNAct, i.e. one full pass over every activation map less,
which matters for MobileNets, whose depthwise layers are memory-bound.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from mobilenets.errors import MobileNetError


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new convolution equal to ``bn(conv(x))`` with ``bn``'s running statistics.

    The arithmetic is done in float64 so that the folded weights differ from the exact ones by
    one rounding, not by the accumulated error of several float32 operations.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise MobileNetError("cannot fold a BatchNorm without running statistics")
    if conv.out_channels != bn.num_features:
        raise MobileNetError(
            f"cannot fold BatchNorm({bn.num_features}) into a convolution with "
            f"{conv.out_channels} output channels"
        )
    dtype = conv.weight.dtype
    weight = conv.weight.detach().double()
    bias = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(conv.out_channels, dtype=torch.float64, device=weight.device)
    )
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(bias)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(bias)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)

    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter((weight * scale.view(-1, 1, 1, 1)).to(dtype))
    folded.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + beta).to(dtype))
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv2d -> BatchNorm2d pair folded.

    A pair is a BatchNorm2d that directly follows a Conv2d inside an ``nn.Sequential`` (the
    ``conv``, ``bn`` of every :class:`~mobilenets.layers.ConvBNAct`): only there does the order
    of the children say that the BatchNorm reads the convolution's output. The BatchNorm is
    replaced by ``nn.Identity`` so module names, and the state dict keys of every other layer,
    stay the same. The input model is not modified.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for prev_name, name in itertools.pairwise(names):
            prev, current = module._modules[prev_name], module._modules[name]
            if isinstance(prev, nn.Conv2d) and isinstance(current, nn.BatchNorm2d):
                module._modules[prev_name] = fold_conv_bn(prev, current)
                module._modules[name] = nn.Identity()
    return folded


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers ``model`` still has (0 after a complete fold)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

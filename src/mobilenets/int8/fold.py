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


def unfold_into(model: nn.Module, folded: nn.Module) -> nn.Module:
    """Write the weights of ``folded`` (a :func:`fold_batchnorm` of ``model``, then trained)
    back into ``model``, whose BatchNorms become the identity plus the folded bias.

    A model fine-tuned in its folded form (quantization-aware training of what the runtimes
    run) is kept as an ordinary run this way: same modules, same state dict keys, and folding
    it again gives back the trained weights (each BatchNorm's scale is exactly 1).
    """
    trained = folded.state_dict()
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in trained.items() if k in own}, strict=False)
    convs = dict(folded.named_modules())
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, nn.Sequential):
                continue
            for (conv_name, conv), (_, bn) in itertools.pairwise(module.named_children()):
                if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                    continue
                bias = convs[f"{name}.{conv_name}" if name else conv_name].bias
                if conv.bias is not None:  # the folded bias stays where it was
                    conv.bias.copy_(bias)
                    bias = torch.zeros_like(bias)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)  # sqrt(var + eps) == 1
                if bn.affine:
                    bn.weight.fill_(1.0)
                    bn.bias.copy_(bias)
    return model


def count_batchnorms(model: nn.Module) -> int:
    """How many BatchNorm layers ``model`` still has (0 after a complete fold)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

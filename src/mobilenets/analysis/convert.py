"""Turn any network's standard convolutions into depthwise separable ones.

MobileNet's idea applies to any CNN: a standard k x k convolution from n_c to n_c' channels is
replaced by a depthwise k x k convolution (same stride, padding and dilation), BatchNorm and an
activation, then a pointwise 1x1 convolution to the same n_c' channels, at 1/n_c' + 1/k^2 of
the mult-adds and about as small a share of the parameters. The converted network has new
weights (a depthwise + pointwise pair cannot represent a general standard convolution, so there
is nothing exact to copy) and is meant to be trained, as the MobileNet paper trains its models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from mobilenets.analysis.cost import count_params
from mobilenets.errors import MobileNetError
from mobilenets.layers import Activation, SeparableConv
from mobilenets.models._common import init_weights


@dataclass(frozen=True)
class ReplacedConv:
    """One standard convolution and what it costs before and after the conversion.

    Mult-adds are per output position (multiply by the output's N*H*W for a layer's total):
    k*k*n_c*n_c' before, k*k*n_c + n_c*n_c' after.
    """

    name: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    params_before: int
    params_after: int
    macs_per_position_before: int
    macs_per_position_after: int

    @property
    def macs_ratio(self) -> float:
        """After over before: 1/n_c' + 1/k^2 for square kernels."""
        return self.macs_per_position_after / self.macs_per_position_before


class Conversion(NamedTuple):
    """The converted copy and the layers that were replaced in it, in module order."""

    model: nn.Module
    replaced: list[ReplacedConv]


def _is_standard(conv: nn.Module, min_kernel: int) -> bool:
    return (
        type(conv) is nn.Conv2d and conv.groups == 1 and min(conv.kernel_size) >= max(2, min_kernel)
    )


def separable_replacement(conv: nn.Conv2d, activation: Activation = nn.ReLU) -> SeparableConv:
    """The depthwise -> BN -> activation -> pointwise stack that takes ``conv``'s place, with
    ``conv``'s geometry and bias, on its device and dtype, initialised as the models are."""
    stack = SeparableConv(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        activation=activation,
    )
    stack.depthwise.padding_mode = conv.padding_mode
    stack.to(device=conv.weight.device, dtype=conv.weight.dtype)
    init_weights(stack)
    return stack


def to_separable(
    model: nn.Module, min_kernel: int = 3, activation: Activation = nn.ReLU
) -> Conversion:
    """A copy of ``model`` with every standard k x k convolution (groups 1, k >= ``min_kernel``)
    replaced by depthwise k x k -> BatchNorm -> ``activation`` -> pointwise 1x1.

    Convolutions that are grouped or depthwise already and 1x1 convolutions are left as they
    are. ``model`` itself is never changed. Raises :class:`MobileNetError` when there is
    nothing to convert.
    """
    if not isinstance(model, nn.Module):
        raise MobileNetError(f"to_separable expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(min_kernel, bool) or not isinstance(min_kernel, int) or min_kernel < 2:
        raise MobileNetError(f"min_kernel must be an integer of at least 2, got {min_kernel!r}")
    targets = [
        name for name, m in model.named_modules() if _is_standard(m, min_kernel) and name != ""
    ]
    if not targets and not _is_standard(model, min_kernel):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        grouped = sum(1 for m in convs if m.groups > 1)
        if not convs:
            reason = "it has no convolution"
        elif grouped == len(convs):
            reason = f"its {len(convs)} convolution(s) are grouped or depthwise already"
        else:
            reason = (
                f"none of its {len(convs)} convolution(s) is a standard one with groups=1 and a "
                f"kernel of at least {min_kernel}x{min_kernel} ({grouped} grouped or depthwise)"
            )
        raise MobileNetError(f"nothing to convert in {type(model).__name__}: {reason}")

    converted = copy.deepcopy(model)
    if _is_standard(converted, min_kernel):  # the model is one convolution
        stack = separable_replacement(converted, activation)
        return Conversion(stack, [_describe("", converted, stack)])
    replaced = []
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = converted.get_submodule(parent_name)
        conv = parent.get_submodule(child)
        stack = separable_replacement(conv, activation)
        setattr(parent, child, stack)
        replaced.append(_describe(name, conv, stack))
    return Conversion(converted, replaced)


def _describe(name: str, conv: nn.Conv2d, stack: nn.Sequential) -> ReplacedConv:
    kh, kw = conv.kernel_size
    n_c, n_out = conv.in_channels, conv.out_channels
    return ReplacedConv(
        name=name,
        in_channels=n_c,
        out_channels=n_out,
        kernel_size=(kh, kw),
        stride=tuple(conv.stride),
        params_before=count_params(conv),
        params_after=count_params(stack),
        macs_per_position_before=kh * kw * n_c * n_out,
        macs_per_position_after=kh * kw * n_c + n_c * n_out,
    )

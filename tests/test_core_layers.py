"""The layers compute what the lecture describes, and the V2 block follows the paper's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mobilenets import (
    DepthwiseConv,
    DepthwiseSeparableConv,
    InvertedResidual,
    MobileNetError,
    PointwiseConv,
    make_divisible,
)


def depthwise_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The definition, as loops: channel c of the output is input channel c convolved with the
    c-th f x f filter (no padding, stride 1)."""
    n_c, n, _ = x.shape
    f = w.shape[-1]
    n_out = n - f + 1
    out = np.zeros((n_c, n_out, n_out))
    for c in range(n_c):
        for i in range(n_out):
            for j in range(n_out):
                for u in range(f):
                    for v in range(f):
                        out[c, i, j] += x[c, i + u, j + v] * w[c, 0, u, v]
    return out


def pointwise_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The definition, as loops: each output pixel of filter k is a weighted sum over the input
    channels at that pixel."""
    n_c, n, _ = x.shape
    n_c_out = w.shape[0]
    out = np.zeros((n_c_out, n, n))
    for k in range(n_c_out):
        for i in range(n):
            for j in range(n):
                for c in range(n_c):
                    out[k, i, j] += x[c, i, j] * w[k, c, 0, 0]
    return out


@pytest.fixture
def lecture_input() -> torch.Tensor:
    """The lecture's example: a 6x6x3 input."""
    return torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_depthwise_equals_nested_loop_definition(lecture_input: torch.Tensor) -> None:
    conv = DepthwiseConv(3, kernel_size=3, padding=0).double()
    out = conv(lecture_input)
    assert out.shape == (1, 3, 4, 4)
    ref = depthwise_reference(lecture_input[0].numpy(), conv.weight.detach().numpy())
    np.testing.assert_allclose(out[0].detach().numpy(), ref, rtol=1e-12, atol=1e-12)


def test_pointwise_equals_nested_loop_definition(lecture_input: torch.Tensor) -> None:
    x = DepthwiseConv(3, 3, padding=0).double()(lecture_input).detach()
    conv = PointwiseConv(3, 5).double()
    out = conv(x)
    assert out.shape == (1, 5, 4, 4)
    ref = pointwise_reference(x[0].numpy(), conv.weight.detach().numpy())
    np.testing.assert_allclose(out[0].detach().numpy(), ref, rtol=1e-12, atol=1e-12)


def test_depthwise_conv_has_one_filter_per_channel() -> None:
    conv = DepthwiseConv(7, kernel_size=3)
    assert conv.weight.shape == (7, 1, 3, 3)
    assert conv.groups == 7
    # Padding keeps the size at stride 1 and halves it at stride 2.
    assert conv(torch.zeros(1, 7, 10, 10)).shape == (1, 7, 10, 10)
    assert DepthwiseConv(7, 3, stride=2)(torch.zeros(1, 7, 10, 10)).shape == (1, 7, 5, 5)


def test_separable_conv_is_depthwise_bn_relu_pointwise_bn_relu() -> None:
    block = DepthwiseSeparableConv(8, 16, stride=2)
    kinds = [type(m) for m in block.modules() if not isinstance(m, nn.Sequential)][1:]
    assert kinds == [
        DepthwiseConv, nn.BatchNorm2d, nn.ReLU, PointwiseConv, nn.BatchNorm2d, nn.ReLU,
    ]  # fmt: skip
    assert block(torch.randn(2, 8, 16, 16)).shape == (2, 16, 8, 8)


@pytest.mark.parametrize(
    ("cin", "cout", "stride", "residual"),
    [(16, 16, 1, True), (16, 24, 1, False), (16, 16, 2, False), (24, 32, 2, False)],
)
def test_residual_exactly_when_stride_1_and_same_channels(
    cin: int, cout: int, stride: int, residual: bool
) -> None:
    block = InvertedResidual(cin, cout, stride, expand_ratio=6).eval()
    assert block.use_residual is residual
    x = torch.randn(1, cin, 8, 8)
    body = block.project(block.depthwise(block.expand(x)))
    expected = x + body if residual else body
    torch.testing.assert_close(block(x), expected)


def test_bottleneck_expands_then_projects_linearly() -> None:
    block = InvertedResidual(3, 3, stride=1, expand_ratio=6)
    assert block.expand.conv.out_channels == 18  # 3 channels become 18, as in the lecture
    assert isinstance(block.expand.act, nn.ReLU6)
    assert isinstance(block.depthwise.conv, DepthwiseConv)
    assert block.depthwise.conv.padding == (1, 1)
    assert isinstance(block.project.conv, PointwiseConv)
    assert not hasattr(block.project, "act")  # the linear bottleneck: no activation
    # A linear projection can output negative values; a ReLU6 one could not.
    block.eval()
    assert (block.project(block.depthwise(block.expand(torch.randn(4, 3, 8, 8)))) < 0).any()


def test_expand_ratio_one_has_no_expansion() -> None:
    block = InvertedResidual(32, 16, stride=1, expand_ratio=1)
    assert block.expand is None
    assert not any(k.startswith("expand") for k in block.state_dict())


def test_bad_block_arguments_raise_our_error() -> None:
    with pytest.raises(MobileNetError, match="stride"):
        InvertedResidual(8, 8, stride=3, expand_ratio=6)
    with pytest.raises(MobileNetError, match="expand_ratio"):
        InvertedResidual(8, 8, stride=1, expand_ratio=0.5)
    with pytest.raises(MobileNetError, match="stride"):
        DepthwiseSeparableConv(8, 8, stride=4)


@pytest.mark.parametrize(
    ("value", "expected"), [(32 * 0.35, 16), (24 * 0.35, 8), (16 * 1.4, 24), (24 * 1.4, 32),
                            (1280 * 1.4, 1792), (3.0, 8), (96 * 0.75, 72), (1024 * 0.25, 256)]
)  # fmt: skip
def test_make_divisible_rounds_like_the_reference_implementations(
    value: float, expected: int
) -> None:
    assert make_divisible(value) == expected

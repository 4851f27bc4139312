"""The PT2E flow of the XNNPACK runtimes: each convolution -> ReLU6 pair quantized as one."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import folded_random, raises_one_line, uniform_batches
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

from mobilenets.int8.pt2e import (
    CLAMPS,
    CONVOLUTIONS,
    LINEARS,
    OBSERVERS,
    activation_config,
    calibrated_pt2e,
    capture_any_batch,
    conv_clamp_pairs,
    layer_nodes,
    residual_adds,
    without_batchnorm_patterns,
)

pytestmark = [pytest.mark.forked, pytest.mark.slow]  # PT2E captures; XNNPACK stays forked
QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default
SIZE = 32


def test_every_relu6_after_a_convolution_is_found() -> None:
    """MobileNetV2: the stem, each block's expansion (none in the first) and depthwise layer,
    and the last 1x1 convolution end in ReLU6: 1 + 1 + 16 * 2 + 1."""
    model = folded_random()
    graph = capture_any_batch(model, torch.zeros(1, 3, SIZE, SIZE))
    assert len(conv_clamp_pairs(graph)) == 35


def test_the_int8_tensor_after_relu6_is_rounded_on_the_clamped_range() -> None:
    """No quantize/dequantize pair between a convolution and its ReLU6, and the one after it
    spans at most [-6, 6]: XNNPACK's quantizer alone rounds the convolution's output on its
    range before the clamp and lets ReLU6 share it."""
    model = folded_random()
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    batches = uniform_batches(2, SIZE)
    converted = calibrated_pt2e(model, batches[0][:1], batches, quantizer)
    clamps = [n for n in converted.graph.nodes if n.target in CLAMPS]
    assert len(clamps) == 35
    for clamp in clamps:
        assert clamp.args[0].target in CONVOLUTIONS  # read straight from the float convolution
        (quantize,) = clamp.users
        assert quantize.target == QUANTIZE
        scale = quantize.args[1]
        assert scale <= 6 / 127, f"{clamp.name} rounded on a range wider than ReLU6's"
    with torch.no_grad():  # still the same function, up to int8 rounding
        x = batches[1]
        assert (
            torch.nn.functional.cosine_similarity(converted(x).flatten(), model(x).flatten(), dim=0)
            > 0.9
        )


def test_min_max_ranges_span_what_calibration_saw() -> None:
    """With ``observer="minmax"`` (what AdaRound rounded for), the model's input is rounded on
    exactly the calibration images' range; the histogram observer clips it. Checked in the
    graph the ExecuTorch writer lowers (``export --format executorch --int8 --adaround``)."""
    from mobilenets.deploy.targets.executorch import quantize_pt2e

    model = folded_random()
    batches = uniform_batches(2, SIZE)
    low, high = float(torch.cat(batches).min()), float(torch.cat(batches).max())
    scales = {}
    for observer in OBSERVERS:
        converted = quantize_pt2e(model, batches[0][:1], batches, observer=observer)
        first = next(n for n in converted.graph.nodes if n.target == QUANTIZE)
        scales[observer] = first.args[1]
    assert scales["minmax"] == pytest.approx((high - low) / 255, rel=1e-5)
    assert scales["histogram"] < scales["minmax"]
    with raises_one_line("unknown observer 'mse'; choose from histogram, minmax"):
        activation_config(get_symmetric_quantization_config(is_per_channel=True), "mse")


def test_float_residuals_sum_the_stream_in_float() -> None:
    """With ``float_residuals`` a sum that follows another in the same stage reads it as it
    is; otherwise every addition reads dequantized int8. Checked in the graph the ExecuTorch
    writer lowers (``export --format executorch --int8 --wide-residuals``). V1 has no
    residual additions."""
    from mobilenets.deploy.targets.executorch import quantize_pt2e

    model = folded_random()
    batches = uniform_batches(2, SIZE)

    def sums_read_as_they_are(float_residuals: bool) -> int:
        graph = quantize_pt2e(model, batches[0][:1], batches, wide_residuals=float_residuals)
        adds = residual_adds(graph)
        assert adds
        with torch.no_grad():
            x = batches[1]
            similarity = torch.nn.functional.cosine_similarity(
                graph(x).flatten(), model(x).flatten(), dim=0
            )
        assert similarity > 0.9
        return sum(arg in adds for add in adds for arg in add.args[:2])

    assert sums_read_as_they_are(False) == 0
    assert sums_read_as_they_are(True) > 0
    v1 = capture_any_batch(folded_random("mobilenet_v1"), torch.zeros(1, 3, SIZE, SIZE))
    assert residual_adds(v1) == []


def test_float_modules_leave_their_layers_unquantized() -> None:
    """The named convolution and the classifier keep their float weights; every other layer
    reads dequantized int8 weights, in the graph the ExecuTorch writer lowers for mixed
    precision (``quantize-mixed --format executorch``). An unknown name is one line."""
    from mobilenets.deploy.targets.executorch import quantize_pt2e

    model = folded_random()
    batches = uniform_batches(2, SIZE)
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    keep = ["features.1.depthwise.conv", "classifier.fc"]
    graph = quantize_pt2e(model, batches[0][:1], batches, fp32_modules=keep)
    kept = set(layer_nodes(graph, keep).values())  # still reading their named float weights
    layers = [n for n in graph.graph.nodes if n.target in (*CONVOLUTIONS, *LINEARS)]
    assert len(kept) == 2 and len(layers) == 53  # 52 convolutions and the classifier
    for layer in layers:  # (an input may still arrive dequantized from an int8 producer)
        int8_weight = "dequantize" in str(layer.args[1].target)
        assert int8_weight == (layer not in kept), layer.name
    with raises_one_line("no layer named features.99.conv"):
        calibrated_pt2e(
            model, batches[0][:1], batches, quantizer, fp32_modules=["features.99.conv"]
        )


@pytest.mark.parametrize("float_residuals", [False, True])
def test_every_layer_named_is_the_float_network(float_residuals: bool) -> None:
    """With every layer in float, what lies between them (residual additions, pooling,
    flatten, dropout) stays float too: no quantize node is left, and the graph computes what
    the model does. FloatResiduals, composed after, accepts the additions already float."""
    model = folded_random()
    batches = uniform_batches(2, SIZE)
    every = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    graph = calibrated_pt2e(
        model,
        batches[0][:1],
        batches,
        quantizer,
        fp32_modules=every,
        float_residuals=float_residuals,
    )
    assert not [n for n in graph.graph.nodes if n.target == QUANTIZE]
    with torch.no_grad():
        torch.testing.assert_close(graph(batches[1]), model(batches[1]), rtol=1e-4, atol=1e-4)


def test_a_graph_without_batchnorm_is_marked_the_same_without_its_patterns() -> None:
    """XNNPACK's quantizer skips its convolution -> BatchNorm patterns on a BN-folded graph
    (they cost most of ``prepare_pt2e``'s time and match nothing there): the prepared graph
    is the one the whole pattern list gives. A graph with BatchNorm keeps every pattern."""

    def quantizer() -> XNNPACKQuantizer:
        config = get_symmetric_quantization_config(is_per_channel=True)
        return XNNPACKQuantizer().set_global(config)

    example = torch.zeros(1, 3, SIZE, SIZE)
    graph = capture_any_batch(folded_random(), example)
    skipping = without_batchnorm_patterns(quantizer(), graph)
    assert len(skipping.SUPPORTED_PATTERNS) < len(XNNPACKQuantizer.SUPPORTED_PATTERNS)
    whole = prepare_pt2e(copy.deepcopy(graph), quantizer())
    assert prepare_pt2e(graph, skipping).code == whole.code
    conv_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
    with_bn = capture_any_batch(conv_bn, example)
    kept = without_batchnorm_patterns(quantizer(), with_bn).SUPPORTED_PATTERNS
    assert kept == XNNPACKQuantizer.SUPPORTED_PATTERNS

"""One-layer ONNX graphs to time: a layer alone, in context between two others, side by side
(to push weights past the cache), and chains of tiny layers for the runtime's overheads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mobilenets.analysis.cost import LayerCost
from mobilenets.latency.model import (
    IN_CONTEXT_KINDS,
    numel,
)
from mobilenets.latency.samples import Sample

OPSET = 18
# IR version 8 is what opset 18 needs; the onnx package would write its newest, which an older
# onnxruntime refuses ("Unsupported model IR version").
IR_VERSION = 8

# --------------------------------------------------------------------------- one-layer graphs


def _initializer(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def channel_block() -> int:
    """onnxruntime's channel block on this CPU: its convolutions run in a layout of 16-channel
    blocks with AVX-512, 8-channel blocks with AVX2, and without blocking otherwise."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 1
    flags = set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def last_level_cache_bytes() -> int:
    """The CPU's last-level cache (Linux reports it; 32 MiB where it does not)."""
    for index in (3, 2):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        try:
            text = path.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        return int(text.rstrip("KM")) * scale
    return 32 * 2**20


def cold_copies(sample: Sample) -> int:
    """How many copies of a fully connected layer, each with its own weights, a one-layer
    graph runs so that its weights come from memory rather than cache, as in a network where
    every other layer has passed through the cache since (a 5 MB classifier measured 3.6x
    slower inside MobileNetV2 than alone with warm weights)."""
    if sample.kind != "fc":
        return 1
    return copies_past_cache(sample.row.params * 4)


def copies_past_cache(weight_bytes: int, at_least: int = 1) -> int:
    """How many side-by-side copies of a layer with ``weight_bytes`` of weights pass twice the
    last-level cache (at most 64), so that each call finds its weights in memory."""
    weights = max(weight_bytes, 1)
    return int(min(64, max(at_least, math.ceil(2 * last_level_cache_bytes() / weights))))


def layer_graph(sample: Sample, seed: int = 0) -> onnx.ModelProto:
    """A one-layer ONNX model computing what ``sample``'s layer computes, as exported.

    Convolutions carry a fused ReLU, which costs nothing (ReLU6's and HardSwish's extra pass
    is a kind of its own); squeeze-and-excitation, SiLU, ReLU6 and HardSwish are measured in
    place, between two convolutions (:func:`context_graph`). The kernel size, stride and
    groups are read back from the traced shapes and mult-adds (all the models here pad
    "same"). A fully connected layer runs :func:`cold_copies` times side by side on the
    same input, each copy with its own weights and output.
    """
    if sample.kind in IN_CONTEXT_KINDS:
        return context_graph(sample, seed=seed)
    copies = cold_copies(sample)
    if copies > 1:
        return side_by_side([one_layer(sample, seed + i) for i in range(copies)])
    return one_layer(sample, seed)


def one_layer(sample: Sample, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    row = sample.row
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(row.input_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(row.output_shape))
    inits: list[TensorProto] = []
    if row.kind == "linear":
        k, n = row.input_shape[-1], row.output_shape[-1]
        inits = [
            _initializer("w", rng.standard_normal((n, k)) * 0.01),
            _initializer("b", np.zeros(n)),
        ]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="layer", transB=1)]
    elif sample.kind == "global pool":
        inits = [numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")]
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="layer", keepdims=1)]
    elif sample.kind == "max pool":
        k = row.input_shape[2] // row.output_shape[2]
        nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[k, k])]
    else:
        nodes, inits = _conv_nodes(row, rng)
    graph = helper.make_graph(nodes, "layer", [x], [y], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def side_by_side(models: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """One graph running ``models`` (one-layer graphs on the same input ``x``) side by side,
    the names of each copy's weights, nodes and output suffixed with its index."""
    nodes, inits, outputs = [], [], []
    for i, model in enumerate(models):
        for init in model.graph.initializer:
            init.name = f"{init.name}{i}"
            inits.append(init)
        for node in model.graph.node:
            node.name = f"{node.name}{i}"
            node.input[:] = [n if n == "x" else f"{n}{i}" for n in node.input]
            node.output[:] = [f"{n}{i}" for n in node.output]
            nodes.append(node)
        output = model.graph.output[0]
        output.name = f"{output.name}{i}"
        outputs.append(output)
    graph = helper.make_graph(nodes, "side_by_side", [models[0].graph.input[0]], outputs, inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def _conv_nodes(row: LayerCost, rng: np.random.Generator) -> tuple[list, list]:
    c_in, c_out = row.input_shape[1], row.output_shape[1]
    groups = c_in if row.kind == "depthwise" else 1
    k = max(1, round(math.sqrt(row.macs / (numel(row.output_shape) * (c_in // groups)))))
    stride = max(1, -(-row.input_shape[2] // row.output_shape[2]))
    weight = rng.standard_normal((c_out, c_in // groups, k, k)) * (1 / math.sqrt(k * k * c_in))
    inits = [_initializer("w", weight), _initializer("b", np.zeros(c_out))]
    conv = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["c"],
        name="layer",
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[k // 2] * 4,
        group=groups,
    )
    return [conv, helper.make_node("Relu", ["c"], ["y"], name="act")], inits


def context_graph(sample: Sample, with_layer: bool = True, seed: int = 0) -> onnx.ModelProto:
    """``sample``'s layer between two 1x1 convolutions, as it sits in a network, or (without
    it) the two convolutions alone: the difference is what the layer costs in place.

    A squeeze-and-excitation gate or a SiLU does not run in onnxruntime's blocked layout, so in
    a network it brings layout conversions with it, which a one-layer graph cannot show (its
    input and output are in the plain layout anyway). A ReLU6 fused into a convolution costs a
    pass over its output that a ReLU does not (a 16-channel 224 x 224 depthwise layer: 255 us
    with ReLU6, 181 us with ReLU), so its sample is the first convolution ending in ReLU6
    against the same ending in ReLU; HardSwish's likewise.
    """
    rng = np.random.default_rng(seed)
    shape = list(sample.row.input_shape)
    c = shape[1]
    inits = [
        _initializer("w_pre", rng.standard_normal((c, c, 1, 1)) / math.sqrt(c)),
        _initializer("w_post", rng.standard_normal((c, c, 1, 1)) / math.sqrt(c)),
        _initializer("lo", np.array(0.0)),
        _initializer("hi", np.array(6.0)),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w_pre"], ["p"], name="pre")]
    if sample.kind == "relu6" and with_layer:
        nodes.append(helper.make_node("Clip", ["p", "lo", "hi"], ["m"], name="layer"))
    elif sample.kind == "hardswish" and with_layer:
        nodes.append(helper.make_node("HardSwish", ["p"], ["m"], name="layer"))
    else:
        nodes.append(helper.make_node("Relu", ["p"], ["m"], name="pre_act"))
    middle = "m"
    if with_layer and sample.kind == "se":
        nodes += [
            helper.make_node("ReduceMean", ["m", "axes"], ["g"], name="layer", keepdims=1),
            helper.make_node("Mul", ["m", "g"], ["l"], name="scale"),
        ]
        middle = "l"
    elif with_layer and sample.kind == "silu":
        nodes += [
            helper.make_node("Sigmoid", ["m"], ["s"], name="sigmoid"),
            helper.make_node("Mul", ["m", "s"], ["l"], name="layer"),
        ]
        middle = "l"
    nodes += [
        helper.make_node("Conv", [middle, "w_post"], ["q"], name="post"),
        helper.make_node("Relu", ["q"], ["y"], name="post_act"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "in_context", [x], [y], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def chain_graph(length: int, channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """``length`` tiny depthwise convolutions in a row: almost nothing but per-node overhead."""
    weight = np.full((channels, 1, 3, 3), 1 / 9)
    inits = [_initializer("w", weight)]
    nodes, prev = [], "x"
    for i in range(length):
        out = "y" if i == length - 1 else f"h{i}"
        nodes.append(
            helper.make_node(
                "Conv", [prev, "w"], [out], kernel_shape=[3, 3], pads=[1] * 4, group=channels
            )
        )
        prev = out
    shape = [1, channels, size, size]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "chain", [x], [y], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )

"""The PT2E int8 flow that both XNNPACK runtimes (ExecuTorch, LiteRT) take, and one fix to it.

``torch.export`` captures the model, a quantizer marks where int8 runs, ``prepare_pt2e``
places observers there, calibration batches run through, and ``convert_pt2e`` turns the
observers into quantize/dequantize pairs that the runtime's lowering fuses into int8 kernels.

The fix: XNNPACK's quantizer, and litert-torch's copy of it, fuse a convolution with a
following ReLU but not with ReLU6 (``hardtanh(0, 6)``). ReLU6 is marked as sharing its input's
quantization, so the int8 tensor that MobileNetV2's expansions and depthwise layers hand on is
rounded on the range of the convolution's output *before* the clamp, several times wider
than ``[0, 6]``. Both runtimes' kernels clamp inside
the convolution anyway (XNNPACK's ``output_min``/``output_max``, TFLite's fused RELU6).
:class:`ConvClampQuantizer` marks each convolution -> ReLU6 pair as one int8 operator whose
output is observed after the clamp, as the ReLU pattern already is, and the runtime's own
quantizer marks everything else. Measured on torchvision's V2 ImageNet weights, ExecuTorch
from 78.0% / 12.5 dB to 82.7% / 15.0 dB top-1 agreement / logit SQNR
(benchmarks/results/deploy_int8_quality_clamps.md).

Both quantizers observe activations with a histogram observer, which clips each range where
its rounding error is least. After AdaRound that is the wrong choice: AdaRound learned each
weight's rounding against the int8 network with min-max ranges (its simulator's, and
onnxruntime's default), so :func:`min_max_ranges` gives the runtime those ranges instead.

Both quantizers also round every residual addition's output to int8: the stream that carries
a stage's signal from block to block is rounded again at each block. :class:`FloatResiduals`
marks those additions as handled with nothing quantized, so the program adds in float and
only the convolution that reads the sum rounds it (ExecuTorch lowers that; LiteRT's converter
quantizes the addition again, so its writer does not offer it).

Neither quantizer can leave a named module in float (XNNPACK's ``set_module_name(name, None)``
is refused, and litert-torch's is "not supported yet"). The same device does it:
:class:`FloatModules` marks the convolutions and linear layers of the named modules as
handled with nothing quantized, so the runtime's quantizer passes them by and the program
runs them in float between int8 neighbours (mixed precision, :mod:`mobilenets.quant.mixed`);
what lies between float layers (an addition of two float branches, the pooling before a float
classifier) stays float with them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import MinMaxObserver
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)
from torchao.quantization.pt2e.quantizer.composable_quantizer import ComposableQuantizer
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

from mobilenets.errors import MobileNetError

CONVOLUTIONS = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
CONCATS = (torch.ops.aten.cat.default, torch.ops.aten.concat.default)
CLAMPS = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
ADDS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
LINEARS = (torch.ops.aten.linear.default,)
# Operations that compute nothing a float layer could not hand on in float: between float
# layers they stay float (the pooling, flatten and dropout before a float classifier; a
# residual addition of two float branches).
PASS_ON = (
    *CLAMPS,
    *ADDS,
    torch.ops.aten.adaptive_avg_pool2d.default,
    torch.ops.aten.mean.dim,
    torch.ops.aten.flatten.using_ints,
    torch.ops.aten.view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten.dropout.default,
    torch.ops.aten.dropout_.default,
)
# How activation ranges are observed: the runtime quantizer's own histogram, or min-max.
OBSERVERS = ("histogram", "minmax")
Config = TypeVar("Config")  # XNNPACK's or litert-torch's QuantizationConfig (a dataclass)


def capture_any_batch(model: nn.Module, example: torch.Tensor) -> GraphModule:
    """``torch.export``'s graph of ``model`` with a free batch axis, so calibration can feed
    batches of any size to a program that will be lowered for ``example``'s."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    pair = example[:1].expand(2, *example.shape[1:])  # a batch of 1 would specialise the axis
    return torch.export.export(model, (pair,), dynamic_shapes=({0: batch},)).module()


def conv_clamp_pairs(graph: GraphModule) -> list[tuple[Node, Node]]:
    """Every (convolution, ReLU6) pair whose convolution feeds nothing but the clamp."""
    pairs = []
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in CLAMPS:
            continue
        conv = node.args[0]
        if isinstance(conv, Node) and conv.target in CONVOLUTIONS and len(conv.users) == 1:
            pairs.append((conv, node))
    return pairs


def _handled(node: Node) -> None:
    """Mark ``node`` as annotated with nothing quantized: quantizers composed after this pass
    it by, so it stays float."""
    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)


def _is_handled(node: Node) -> bool:
    annotation = node.meta.get(Q_ANNOTATION_KEY)
    return annotation is not None and annotation._annotated


class ConvClampQuantizer(Quantizer):
    """Marks convolution -> ReLU6 as one int8 operator: input, weight and bias quantized as
    ``config`` says, the output observed after the clamp. Composed ahead of the runtime's own
    quantizer, which leaves the nodes marked here alone."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config  # a QuantizationConfig: input/output activation, weight, bias specs

    def annotate(self, model: GraphModule) -> GraphModule:
        config = self.config
        for conv, clamp in conv_clamp_pairs(model):
            if _is_handled(conv):  # left in float (FloatModules)
                continue
            specs = {conv.args[0]: config.input_activation, conv.args[1]: config.weight}
            bias = conv.args[2] if len(conv.args) > 2 else None
            if isinstance(bias, Node) and config.bias is not None:
                specs[bias] = config.bias
            conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                input_qspec_map=specs, _annotated=True
            )
            clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                output_qspec=config.output_activation, _annotated=True
            )
            for parameter in (conv.args[1], bias):  # the runtime's quantizer skips these too
                if isinstance(parameter, Node):
                    mark = parameter.meta.setdefault(Q_ANNOTATION_KEY, QuantizationAnnotation())
                    mark._annotated = True
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing beyond what the runtime's quantizer validates."""


def residual_adds(graph: GraphModule) -> list[Node]:
    """Every addition of two computed tensors (a residual connection), not of a constant."""

    def computed(arg: object) -> bool:
        return isinstance(arg, Node) and arg.op == "call_function"

    return [
        node
        for node in graph.graph.nodes
        if node.op == "call_function"
        and node.target in ADDS
        and all(computed(arg) for arg in node.args[:2])
    ]


class FloatResiduals(Quantizer):
    """Marks every residual addition as handled with nothing quantized, so that the runtime's
    quantizer, composed after this one, leaves it in float: the sum keeps its precision along
    the stream and is rounded only where a convolution reads it."""

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in residual_adds(model):
            if not _is_handled(node):  # FloatModules may have left it float already
                _handled(node)
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to check: an unquantized addition is a float addition."""


class ObservedConcats(Quantizer):
    """Gives every concatenation one int8 range, observed min-max over all of its inputs,
    which are requantized to it (the input and output share it, as TFLite's int8
    CONCATENATION needs).

    Left unannotated (litert-torch's own ``cat`` pattern does not match the captured graph),
    a concatenation stays float in the PT2E graph, and LiteRT's converter then quantizes it
    anyway with the scale of its *first* input: a detector's per-level head outputs and its
    class logits beside its box offsets were clipped to the range of one level
    (issue 33: 40% of SSDLite's boxes matched). Min-max rather than the histogram's
    clipped range: these are the outputs a user decodes, and the largest logits, the
    detections, are exactly the values a clipped range loses."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = min_max_ranges(config)  # a QuantizationConfig

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in CONCATS or _is_handled(node):
                continue
            inputs = [a for a in node.args[0] if isinstance(a, Node)]
            if not inputs:
                continue
            shared = SharedQuantizationSpec((inputs[0], node))
            # the first input's observer is made first: the others' refer to it
            specs = {inputs[0]: self.config.input_activation} | {a: shared for a in inputs[1:]}
            node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                input_qspec_map=specs, output_qspec=shared, _annotated=True
            )
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing beyond what the runtime's quantizer validates."""


def layer_nodes(graph: GraphModule, modules: Sequence[str]) -> dict[str, Node]:
    """The convolution or linear node of each PyTorch module in ``modules``
    (``features.1.depthwise.conv``), found by the parameter it reads (the captured graph keeps
    parameter names); a name that is no such layer is one line."""
    weights = {f"{name}.weight": name for name in modules}
    found = {
        weights[node.args[1].target]: node
        for node in graph.graph.nodes
        if node.op == "call_function"
        and node.target in (*CONVOLUTIONS, *LINEARS)
        and isinstance(node.args[1], Node)
        and node.args[1].target in weights
    }
    missing = [name for name in modules if name not in found]
    if missing:
        raise MobileNetError(f"no layer named {', '.join(missing)} in the captured graph")
    return found


class FloatModules(Quantizer):
    """Leaves the convolutions and linear layers of ``modules`` (and a ReLU6 that follows
    one) in float: their inputs are dequantized, their weights stay float, and the next int8
    layer quantizes their output. An operation of ``PASS_ON`` whose inputs all come from float
    nodes stays float too: otherwise the runtime's quantizer would round, say, the pooled
    features between a float last layer and a float classifier, and naming every layer would
    still not give the float network."""

    def __init__(self, modules: Sequence[str]) -> None:
        super().__init__()
        self.modules = list(modules)

    def annotate(self, model: GraphModule) -> GraphModule:
        floats: set[Node] = set()
        for node in layer_nodes(model, self.modules).values():
            for marked in (node, *node.args[1:3]):  # the layer, its weight and bias
                if isinstance(marked, Node):
                    _handled(marked)
            floats.add(node)
        # In order, so that a node's producers come first; a ReLU6 after a float layer is one.
        for node in model.graph.nodes:
            inputs = [a for a in node.args if isinstance(a, Node)]
            if node.target in PASS_ON and inputs and all(a in floats for a in inputs):
                _handled(node)
                floats.add(node)
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to check: a layer left alone runs in float."""


def min_max_ranges(config: Config) -> Config:
    """XNNPACK's (or litert-torch's) quantization ``config`` with its activations observed
    min-max, each observer keeping the arguments it had (its ``eps``)."""

    def swap(spec: QuantizationSpec | None) -> QuantizationSpec | None:
        if spec is None:
            return None
        keywords = getattr(spec.observer_or_fake_quant_ctr, "keywords", None) or {}
        observer = MinMaxObserver.with_args(**keywords)
        return dataclasses.replace(spec, observer_or_fake_quant_ctr=observer)

    return dataclasses.replace(
        config,
        input_activation=swap(config.input_activation),
        output_activation=swap(config.output_activation),
    )


def activation_config(config: Config, observer: str) -> Config:
    """``config`` with its activations observed as ``observer`` says."""
    if observer not in OBSERVERS:
        raise MobileNetError(f"unknown observer {observer!r}; choose from {', '.join(OBSERVERS)}")
    return min_max_ranges(config) if observer == "minmax" else config


def without_batchnorm_patterns(quantizer: Quantizer, graph: GraphModule) -> Quantizer:
    """``quantizer``, told to skip its convolution -> BatchNorm patterns when ``graph`` holds
    no BatchNorm.

    XNNPACK's quantizer tries every pattern it knows on every graph, the QAT-only
    convolution -> BatchNorm ones included (litert-torch's tries those in QAT only), and it
    matches each by tracing the pattern first: most of ``prepare_pt2e``'s time on
    MobileNetV2. A model reaches post-training int8 BN-folded, so those patterns match
    nothing; without them the graph is marked the same, seconds sooner
    (``tests/test_pt2e.py`` compares the two prepared graphs). A quantizer without the
    pattern list, or a graph with BatchNorm (QAT's), keeps every pattern."""
    patterns = getattr(quantizer, "SUPPORTED_PATTERNS", None)
    batchnorm = any("batch_norm" in str(node.target) for node in graph.graph.nodes)
    if patterns is not None and not batchnorm:
        # an instance attribute: the class's list, which other graphs read, stays whole
        quantizer.SUPPORTED_PATTERNS = [p for p in patterns if "_bn" not in p.name]
    return quantizer


def calibrated_pt2e(
    model: nn.Module,
    example: torch.Tensor,
    calibration: list[torch.Tensor],
    quantizer: Quantizer,
    fold_quantize: bool = True,
    float_residuals: bool = False,
    fp32_modules: Sequence[str] = (),
    observed_concats: bool = False,
) -> GraphModule:
    """Capture ``model``, let ``quantizer`` (with ReLU6 fused into the convolution before it,
    the residual additions in float with ``float_residuals``, and the layers of
    ``fp32_modules`` in float, and with ``observed_concats`` each concatenation given its own
    range: :class:`ObservedConcats`) mark what runs int8, observe activation ranges on
    ``calibration``, and convert to quantize/dequantize pairs."""
    first: list[Quantizer] = [FloatModules(fp32_modules)] if fp32_modules else []
    if float_residuals:
        first.append(FloatResiduals())
    first.append(ConvClampQuantizer(quantizer.global_config))  # its global config is set
    if observed_concats:
        first.append(ObservedConcats(quantizer.global_config))
    captured = capture_any_batch(model, example)
    marking = ComposableQuantizer([*first, without_batchnorm_patterns(quantizer, captured)])
    prepared = prepare_pt2e(captured, marking)
    with torch.no_grad():
        for images in calibration:
            prepared(images)
    return convert_pt2e(prepared, fold_quantize=fold_quantize)

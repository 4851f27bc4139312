"""The ONNX target's int8: onnxruntime's static quantizer, calibrated on the training data.

:mod:`mobilenets.deploy.targets.onnx` writes an int8 file through :func:`quantize_model`;
``mobilenets export --format onnx --int8`` (and its alias ``mobilenets quantize``) checks it
like every other program.

Static quantization fixes every activation's scale ahead of time from the ranges seen on
``calibration`` training images (onnxruntime's MinMax calibrator), so inference runs integer
kernels end to end. Choices, each measured on this CPU (benchmarks/results/deploy_latency.md,
int8_labels.md):

- Ranges: the extremes over every calibration image (``minmax``); ``mean_minmax`` takes
  the mean over batches of 8 images of each batch's min and max instead (onnxruntime's
  ``CalibMovingAverage``), so one unusual image does not widen a range for all the others.
  Neither wins on every run measured (int8_labels.md): minmax stays the default.

- Activations uint8, weights int8 ("U8S8"): the pair x86's VNNI instructions multiply
  natively. Signed activations (S8S8) took 4.0 ms (QDQ) and 21 ms (QOperator) on MobileNetV2
  at 224 where U8S8 takes 2.0 ms.
- Weights in 7 bits (onnxruntime's ``reduce_range``): on an x86 CPU without VNNI (AVX2
  only), onnxruntime multiplies U8S8 with ``vpmaddubsw``, which adds two uint8 x int8
  products into a saturating int16; full-range weights overflow it (255 x 127 x 2 > 32767)
  and the result is silently wrong (on such a CPU full range cost the digit segmenter most of
  its mIoU: docs/deploy/onnx.md). 7-bit weights, in [-64, 64], cannot overflow
  (255 x 64 x 2 = 32640), on any CPU the program is shipped to.
- Weights per output channel: a depthwise filter sees one channel, and after BatchNorm is
  folded into it each channel is scaled by its own gamma / sigma, so channels' ranges differ
  widely; one scale per tensor spends most of the 256 levels on the widest channel
  (Krishnamoorthi 2018, section 3.1). Measured on the digits: per tensor loses 8 dB of weight
  SQNR in depthwise layers (4.5 dB in pointwise) and 3.8 dB of logit SQNR; per channel costs
  4% in latency.
- QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops): onnxruntime fuses it
  into the same QLinearConv kernels as the older QOperator format (same latency, measured),
  and it stays a valid float graph that other runtimes read. QOperator files are up to 12%
  smaller (``quant_format="qoperator"``).
- Optionally the residual stream in uint16 (``wide_residuals``): each residual addition's sum
  is kept at 16 bits for the next addition and converted to uint8 only for the convolution
  that reads it, so the stream is not rounded to 256 levels at every block (onnxruntime's
  mixed-precision QDQ, ``TensorQuantOverrides`` with ``convert``). The additions then run in
  float between the int8 convolutions.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch.utils.data import Dataset

from mobilenets.deploy.images import batches
from mobilenets.deploy.runtime import PRECISION_KEY, load_onnx, metadata, set_metadata
from mobilenets.errors import MobileNetError

CALIBRATION_BATCH = 32
OnBatch = Callable[[int], object] | None
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
UINT16_OPSET = 21  # the first opset whose QuantizeLinear takes 16-bit integers
CALIBRATORS = {
    "minmax": CalibrationMethod.MinMax,
    "mean_minmax": CalibrationMethod.MinMax,  # with CalibMovingAverage: see quantize_model
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# mean_minmax: each tensor's range is the mean, over batches of this many calibration images,
# of the batch's min and max, instead of the extremes over all images (minmax, the default:
# neither was better on held-out labels and logit SQNR across runs, benchmarks/results/
# int8_labels.md)
MEAN_MINMAX_BATCH = 8
DEFAULT_CALIBRATE_METHOD = "minmax"


def check_quantizer_options(options: dict[str, object]) -> None:
    """One line for quantizer choices that do not exist or do not go together, before anything
    is exported: an unknown encoding or calibration method, a uint16 residual stream in
    QOperator (which has no 16-bit operators)."""
    quant_format = options.get("quant_format", "qdq")
    method = options.get("calibrate_method", DEFAULT_CALIBRATE_METHOD)
    if quant_format not in FORMATS:
        raise MobileNetError(f"unknown format {quant_format!r}; choose from {', '.join(FORMATS)}")
    if method not in CALIBRATORS:
        raise MobileNetError(
            f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATORS)}"
        )
    if options.get("wide_residuals") and quant_format != "qdq":
        raise MobileNetError("a uint16 residual stream needs the qdq format (no 16-bit QOperator)")


class ImageReader(CalibrationDataReader):
    """Feeds preprocessed images to onnxruntime's calibrator, a batch at a time."""

    def __init__(
        self,
        dataset: Dataset,
        input_name: str,
        on_batch: OnBatch = None,
        batch_size: int = CALIBRATION_BATCH,
    ) -> None:
        self.input_name = input_name
        self.on_batch = on_batch
        self.iterator: Iterator = iter(batches(dataset, batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        images = next(self.iterator, None)
        if images is None:
            return None
        if self.on_batch is not None:
            self.on_batch(len(images[0]))
        return {self.input_name: images[0].numpy()}


def nodes_of_layers(model: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """Names of the nodes that read the weights of the PyTorch modules named in ``layers``
    (``features.1.depthwise.conv``): the exporter keeps parameter names as initializer names."""
    weights = {f"{layer}.weight": layer for layer in layers}
    found = {
        weights[n.input[1]]: n.name
        for n in model.graph.node
        if n.input[1:2] and n.input[1] in weights
    }
    missing = [layer for layer in layers if layer not in found]
    if missing:
        raise MobileNetError(f"no layer named {', '.join(missing)} in the ONNX graph")
    return list(found.values())


def opset_of(model: onnx.ModelProto) -> int:
    """The default (ONNX) domain's opset the model was written for."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def residual_stream_overrides(model: onnx.ModelProto) -> dict[str, list[dict[str, object]]]:
    """onnxruntime ``TensorQuantOverrides`` that keep every residual sum (an Add of two computed
    tensors, not of a constant) in uint16, converted to uint8 for each reader that is not
    another such Add: the convolutions, which have uint8 kernels only."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {o for node in model.graph.node if node.op_type == "Constant" for o in node.output}
    adds = [
        node
        for node in model.graph.node
        if node.op_type == "Add" and not any(name in constants for name in node.input)
    ]
    add_names = {node.name for node in adds}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    overrides = {}
    for node in adds:
        narrow = readers.get(node.output[0], set()) - add_names
        override: dict[str, object] = {"quant_type": QuantType.QUInt16}
        if narrow:
            override["convert"] = {"quant_type": QuantType.QUInt8, "recv_nodes": narrow}
        overrides[node.output[0]] = [override]
    return overrides


def depthwise_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes that are depthwise (one group per input channel, > 1 group)."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = shapes.get(node.input[1])
        if group > 1 and weight is not None and weight[1] == 1:
            names.append(node.name)
    return names


def pre_process(fp32_path: Path, prepared: Path, wide_residuals: bool) -> onnx.ModelProto:
    """Shape inference and onnxruntime's basic graph optimizations, as onnxruntime recommends
    before quantizing (the quantizer needs every tensor's shape to quantize Add and Gemm too),
    written to ``prepared``; opset 21 for a uint16 residual stream."""
    quant_pre_process(str(fp32_path), str(prepared))
    graph = onnx.load(str(prepared))
    if wide_residuals and opset_of(graph) < UINT16_OPSET:
        # 16-bit QuantizeLinear needs opset 21. onnxruntime would convert too, but says so
        # through the root logger, which configures logging for the whole process.
        graph = onnx.version_converter.convert_version(graph, UINT16_OPSET)
        graph = onnx.shape_inference.infer_shapes(graph)
        onnx.save(graph, str(prepared))
    return graph


def quantize_model(
    fp32_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    calibration: Dataset,
    per_channel: bool = True,
    quant_format: str = "qdq",
    fp32_depthwise: bool = False,
    calibrate_method: str = DEFAULT_CALIBRATE_METHOD,
    on_batch: OnBatch = None,
    fp32_modules: Sequence[str] = (),
    symmetric_activations: bool = False,
    wide_residuals: bool = False,
    properties: dict[str, str] | None = None,
) -> Path:
    """Quantize an fp32 ONNX file to ``out`` (written directly; callers make it atomic).

    ``fp32_depthwise`` leaves the depthwise convolutions in float: the usual remedy when they
    are quantized per tensor. ``fp32_modules`` leaves the layers of those PyTorch names in float
    (mixed precision, :mod:`mobilenets.quant.mixed`); ``symmetric_activations`` centres
    activation ranges on 0 (measured in benchmarks/int8_imagenet.py); ``wide_residuals`` keeps
    the residual stream in uint16 (:func:`residual_stream_overrides`). Metadata is carried
    over, or ``properties`` replace it, and marked int8.
    """
    check_quantizer_options(
        {
            "quant_format": quant_format,
            "calibrate_method": calibrate_method,
            "wide_residuals": wide_residuals,
        }
    )
    source = load_onnx(fp32_path)
    with tempfile.TemporaryDirectory(prefix="mobilenets-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        graph = pre_process(Path(fp32_path), prepared, wide_residuals)
        excluded = depthwise_nodes(graph) if fp32_depthwise else []
        excluded += nodes_of_layers(graph, fp32_modules)
        input_name = source.graph.input[0].name
        options: dict[str, object] = {"ActivationSymmetric": symmetric_activations}
        # The histogram calibrators (entropy, percentile) stack every batch's values into one
        # array and fail on a last, smaller batch (200 images in 32s: "inhomogeneous shape");
        # one image per batch always stacks.
        batch = 1
        if calibrate_method == "minmax":
            batch = CALIBRATION_BATCH
        elif calibrate_method == "mean_minmax":
            options["CalibMovingAverage"] = True  # the mean of the batches' ranges
            batch = MEAN_MINMAX_BATCH
        if wide_residuals:
            options["TensorQuantOverrides"] = residual_stream_overrides(graph)
        quantize_static(
            str(prepared),
            str(out),
            ImageReader(calibration, input_name, on_batch, batch),
            quant_format=FORMATS[quant_format],
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            reduce_range=True,  # 7-bit weights: no int16 overflow without VNNI (module doc)
            calibrate_method=CALIBRATORS[calibrate_method],
            extra_options=options,
        )
    quantized = onnx.load(str(out))
    props = metadata(source) if properties is None else dict(properties)
    props[PRECISION_KEY] = "int8"
    props["mobilenets.quantization"] = (
        f"static U8S8 {quant_format}, 7-bit weights "
        f"{'per channel' if per_channel else 'per tensor'}"
        f"{', depthwise in fp32' if fp32_depthwise else ''}"
        f"{f', {len(fp32_modules)} layers in fp32' if fp32_modules else ''}"
        f"{', residual stream uint16' if wide_residuals else ''}, "
        f"{calibrate_method} calibration on {len(calibration)} training images"
    )
    set_metadata(quantized, props)
    onnx.save(quantized, str(out))
    return Path(out)


_MOVED_HERE = ("quantize_onnx", "QuantizeResult")
_warned: set[str] = set()


def __getattr__(name: str) -> object:
    """``quantize_onnx`` and ``QuantizeResult`` lived here; the export pipeline has them now
    (:mod:`mobilenets.deploy.compat`). The old name works and warns once."""
    if name not in _MOVED_HERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"{__name__}.{name} is now mobilenets.deploy.{name} (the export pipeline); "
            "the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
    # by name: compat imports the export pipeline, which imports this module
    return getattr(importlib.import_module("mobilenets.deploy.compat"), name)

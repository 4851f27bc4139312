"""ONNX as a :class:`~mobilenets.deploy.target.Target`: the torch.export-based exporter's file,
run by onnxruntime (on any execution provider this build has); int8 through onnxruntime's
static quantizer (:mod:`mobilenets.deploy.quantize`).

We use the torch.export-based exporter (``torch.onnx.export(..., dynamo=True)``), the default
since PyTorch 2.9; the TorchScript exporter still works in 2.13 but warns that it will be
removed. Both give the same 52 Conv / 35 Clip / 10 Add graph for MobileNetV2 (the
torch.export one without its 70 Constant nodes: every constant is an initializer), which
onnxruntime runs equally fast; the TorchScript exporter is several times faster to export,
but we take the exporter that PyTorch maintains. Most of its time goes to retracing the graph
with a symbolic batch axis, where ReLU6 and HardSwish are by far the slowest layers, so the
writer traces them in forms that retrace fast and write the same ONNX ops
(:func:`fast_to_trace`).

That exporter writes opset 18 and newer; it asks onnxscript's version converter for older
opsets, which cannot convert ``ReduceMean`` and silently keeps 18, so older opsets are refused.

The format's own options, declared in its :class:`~mobilenets.deploy.target.Capabilities`:
``opset``, and for int8 onnxruntime's quantizer choices (``per_channel``, ``quant_format``,
``fp32_depthwise``, ``calibrate_method``) when writing; ``provider`` when loading.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mobilenets.deploy.quantize import (
    DEFAULT_CALIBRATE_METHOD,
    check_quantizer_options,
    quantize_model,
)
from mobilenets.deploy.runtime import (
    DEFAULT_PROVIDER,
    INPUT_NAME,
    OUTPUT_NAME,
    PRECISION_KEY,
    check_provider,
    create_session,
    load_onnx,
    run_session,
    set_metadata,
)
from mobilenets.deploy.target import FP32_TOLERANCE, Capabilities, Job, Runner, Target, quiet
from mobilenets.errors import MobileNetError
from mobilenets.models import check_resolution

DEFAULT_OPSET = 18
MIN_OPSET = 18
MAX_OPSET = onnx.defs.onnx_opset_version()
EXPORT_TOLERANCE = FP32_TOLERANCE  # one tolerance for every fp32 program
ONNX_FILE = "model.onnx"
QUANTIZATION = (
    "onnxruntime static QDQ: weights int8 symmetric per channel, activations uint8 per tensor "
    "(MinMax calibration)"
)


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise MobileNetError(
            f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET} "
            f"(the torch.export-based exporter writes opset {MIN_OPSET} or newer), got {opset!r}"
        )
    return opset


class Clamp(nn.Module):
    """``x.clamp(low, high)``: what ``nn.Hardtanh`` and ``nn.ReLU6`` compute."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.low, self.high)


@torch.library.custom_op("mobilenets::hardswish", mutates_args=())
def _hardswish(x: torch.Tensor) -> torch.Tensor:
    """HardSwish as one opaque op: the exporter traces it by its shape alone."""
    return nn.functional.hardswish(x)


@_hardswish.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class HardSwish(nn.Module):
    """``nn.Hardswish`` through :func:`_hardswish`, written to ONNX as its ``HardSwish``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mobilenets.hardswish(x)


def _hardswish_onnx(x):
    """:func:`_hardswish` in ONNX (the exporter calls it with its own tensor type)."""
    from onnxscript import opset18

    return opset18.HardSwish(x)


def fast_to_trace(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Hardtanh`` (``nn.ReLU6`` is one) as a :class:`Clamp`
    and every ``nn.Hardswish`` as a :class:`HardSwish`.

    The exporter retraces the graph with the batch axis symbolic, and these two activations
    are the slowest layers of MobileNetV2 and V3 to retrace by far, through the formulas that
    define them: ReLU6 took most of V2's export, HardSwish most of V3's. ``aten.clamp`` is the
    same function as hardtanh and exports to the same ONNX ``Clip``; the opaque HardSwish is
    written as ONNX's ``HardSwish`` (:data:`TRANSLATIONS`), as ``aten.hardswish`` is. So the
    file is the same graph, written several times faster. Parameter names do not change (the
    int8 writer finds layers by them)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Hardtanh):
                setattr(parent, name, Clamp(child.min_val, child.max_val))
            elif isinstance(child, nn.Hardswish):
                setattr(parent, name, HardSwish())
    return model


TRANSLATIONS = {torch.ops.mobilenets.hardswish.default: _hardswish_onnx}


def write_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: tuple[int, int, int],
    metadata: dict[str, str],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``model`` to ``path`` with a dynamic batch axis, as it is: BatchNorm is folded
    by the caller (:func:`~mobilenets.int8.fold.fold_batchnorm`), once, before the writer and
    the check see the same model.

    Writes directly to ``path``: callers go through ``atomic_path`` and check the file before
    it gets its final name. Height and width are fixed at ``input_size`` so that onnxruntime
    can plan every layer's memory ahead; the batch axis stays free.
    """
    check_opset(opset)
    channels, height, width = input_size
    for size in (height, width):
        check_resolution(model, size)
    # An example batch of 2: a batch of 1 would let torch.export specialise the axis to 1.
    example = torch.randn(2, channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with quiet():
        try:
            program = torch.onnx.export(
                fast_to_trace(model),
                (example,),
                custom_translation_table=TRANSLATIONS,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                verbose=False,
            )
        except Exception as e:  # the exporter's own error types vary across torch versions
            raise MobileNetError(f"ONNX export failed: {str(e).strip().splitlines()[0]}") from e
    proto = program.model_proto
    _strip_node_annotations(proto)
    set_metadata(proto, metadata)
    onnx.save(proto, str(path))
    return Path(path)


def _strip_node_annotations(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debugging annotations (FX node, module path, Python stack
    trace with this machine's file paths): they made up 14% of an exported file, and a third
    of a small int8 one, and mean nothing to a runtime."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def write_program(
    job: Job,
    path: Path,
    fp32_modules: Sequence[str] = (),
    wide_residuals: bool = False,
    float_file: Path | None = None,
    opset: int = DEFAULT_OPSET,
    per_channel: bool = True,
    quant_format: str = "qdq",
    fp32_depthwise: bool = False,
    calibrate_method: str = DEFAULT_CALIBRATE_METHOD,
) -> None:
    """Write ``job.model`` to ONNX at ``path`` in ``opset``; for int8, the fp32 file goes to a
    temporary folder and onnxruntime's quantizer writes ``path`` from it
    (:func:`~mobilenets.deploy.quantize.quantize_model`, with its choices), leaving the modules
    named in ``fp32_modules`` in float and, with ``wide_residuals``, the residual stream in uint16.

    ``float_file``: ``model``'s fp32 ONNX, already written. Mixed precision quantizes one
    float model many ways, and the export (seconds, even for a small model) is then paid once.
    """
    input_size = tuple(job.example.shape[1:])
    fp32_metadata = {**job.metadata, PRECISION_KEY: "fp32"}
    if job.calibration is None:
        write_onnx(job.model, path, input_size, fp32_metadata, opset)
        load_onnx(path)  # the checker, before anything runs it
        return
    with tempfile.TemporaryDirectory(prefix="mobilenets-onnx-") as tmp:
        if float_file is None:
            float_file = Path(tmp) / ONNX_FILE
            write_onnx(job.model, float_file, input_size, fp32_metadata, opset)
        quantize_model(
            float_file,
            path,
            TensorDataset(torch.cat(job.calibration)),
            per_channel=per_channel,
            quant_format=quant_format,
            fp32_depthwise=fp32_depthwise,
            calibrate_method=calibrate_method,
            fp32_modules=fp32_modules,
            wide_residuals=wide_residuals,
            properties=job.metadata,
        )


def load(path: Path, threads: int | None = None, provider: str = DEFAULT_PROVIDER) -> Runner:
    """Run ``path`` in onnxruntime on ``provider`` (``cpu``, ``cuda``, ...)."""
    session = create_session(path, threads=threads, provider=provider)

    def run(images: np.ndarray) -> np.ndarray:
        return run_session(session, images)

    return run


def check_options(options: dict[str, object]) -> None:
    """One line for an opset, a provider or quantizer choices this machine cannot give, before
    anything is exported."""
    if "opset" in options:
        check_opset(options["opset"])  # type: ignore[arg-type]
    if "provider" in options:
        check_provider(str(options["provider"]))
    check_quantizer_options(options)


# the format's own options (:class:`~mobilenets.deploy.target.Capabilities`)
WRITE_OPTIONS = ("opset", "per_channel", "quant_format", "fp32_depthwise", "calibrate_method")
CAN = Capabilities(
    wide_residuals=True, float_file=True, write_options=WRITE_OPTIONS, load_options=("provider",)
)
TARGET = Target("ONNX", ".onnx", "", ("onnxruntime",), "onnxruntime (CPU)", write_program, load,
    quantization=QUANTIZATION, can=CAN, check_options=check_options,
)  # fmt: skip
write = TARGET.write  # write(model, path, example, calibration, metadata, **options)

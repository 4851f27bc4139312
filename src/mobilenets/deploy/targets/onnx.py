"""ONNX as a :class:`~mobilenets.deploy.target.Target`: the file ``export_onnx`` writes, run by
onnxruntime's CPU kernels; int8 through onnxruntime's static quantizer (``quantize.py``)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mobilenets.deploy.onnx_export import write_onnx
from mobilenets.deploy.quantize import quantize_model
from mobilenets.deploy.runtime import PRECISION_KEY, create_session, run_session
from mobilenets.deploy.target import Capabilities, Runner, Target

QUANTIZATION = (
    "onnxruntime static QDQ: weights int8 symmetric per channel, activations uint8 per tensor "
    "(MinMax calibration)"
)


def write(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    calibration: list[torch.Tensor] | None,
    metadata: dict[str, str],
    fp32_modules: Sequence[str] = (),
    wide_residuals: bool = False,
    float_file: Path | None = None,
) -> None:
    """Write ``model`` to ONNX at ``path``; for int8, the fp32 file goes to a temporary
    folder and onnxruntime's quantizer writes ``path`` from it, leaving the modules named in
    ``fp32_modules`` in float and, with ``wide_residuals``, the residual stream in uint16.

    ``float_file``: ``model``'s fp32 ONNX, already written. Mixed precision quantizes one
    float model many ways, and the export (seconds, even for a small model) is then paid once.
    """
    input_size = tuple(example.shape[1:])
    if calibration is None:
        write_onnx(model, path, input_size, {**metadata, PRECISION_KEY: "fp32"})
        return
    with tempfile.TemporaryDirectory(prefix="mobilenets-onnx-") as tmp:
        if float_file is None:
            float_file = Path(tmp) / "model.onnx"
            write_onnx(model, float_file, input_size, {**metadata, PRECISION_KEY: "fp32"})
        quantize_model(
            float_file,
            path,
            TensorDataset(torch.cat(calibration)),
            fp32_modules=fp32_modules,
            wide_residuals=wide_residuals,
            properties=metadata,
        )


def load(path: Path, threads: int | None = None) -> Runner:
    session = create_session(path, threads=threads)

    def run(images: np.ndarray) -> np.ndarray:
        return run_session(session, images)

    return run


TARGET = Target(
    name="ONNX",
    suffix=".onnx",
    extra="",
    modules=("onnxruntime",),
    runtime="onnxruntime (CPU)",
    write=write,
    load=load,
    quantization=QUANTIZATION,
    can=Capabilities(wide_residuals=True, float_file=True),
)

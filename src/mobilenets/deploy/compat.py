"""The names of the export paths that are now :func:`~mobilenets.deploy.export.export`.

``export_onnx`` (any opset, any onnxruntime provider) and ``quantize_onnx`` (the ONNX int8
path with onnxruntime's quantizer choices) were once pipelines of their own, each with its
own check; each is now one call of the one pipeline, returning its
:class:`~mobilenets.deploy.export.ExportReport` (``ExportResult`` and ``QuantizeResult`` are
that type). ``export_model`` exports a model in memory through the same writer and check.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from mobilenets.deploy.export import ExportReport, Program, export, write_checked
from mobilenets.deploy.images import VERIFY_IMAGES
from mobilenets.deploy.program import read_program_info
from mobilenets.deploy.quantize import DEFAULT_CALIBRATE_METHOD
from mobilenets.deploy.runtime import DEFAULT_PROVIDER, onnx_metadata
from mobilenets.deploy.target import check_program
from mobilenets.deploy.targets.onnx import DEFAULT_OPSET, EXPORT_TOLERANCE, TARGET, check_opset
from mobilenets.errors import MobileNetError
from mobilenets.int8 import DEFAULT_CALIBRATION
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.runs import RunInfo

ExportResult = ExportReport
QuantizeResult = ExportReport


def export_onnx(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    data: str | os.PathLike[str] | None = None,
    provider: str = DEFAULT_PROVIDER,
    verify_images: int = VERIFY_IMAGES,
) -> ExportReport:
    """``export(run_dir, "onnx", opset=opset, provider=provider)``: fp32 ONNX in any opset
    from 18, checked in onnxruntime on ``provider``, recorded in the run."""
    return export(
        run_dir, "onnx", out=out, data=data, verify_images=verify_images, opset=opset,
        provider=provider,
    )  # fmt: skip


def quantize_source(source: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The run directory to quantize, and the default int8 file, for ``quantize SOURCE``: a
    run directory (the export's own default name), or an fp32 ONNX file that ``export``
    wrote (its run, and ``<name>.int8.onnx`` beside it)."""
    source = Path(source)
    if source.is_dir():
        return source, None
    if not source.exists():
        raise MobileNetError(f"{source} does not exist (expected a run directory or ONNX file)")
    if source.suffix != TARGET.suffix:
        raise MobileNetError(f"{source} is neither a run directory nor an ONNX file")
    info = read_program_info(source)
    if info.precision == "int8":
        raise MobileNetError(f"{source} is already quantized to int8")
    run_dir = info.run_dir()
    if run_dir is None:
        raise MobileNetError(
            f"the run {source} was exported from is no longer at {info.recorded_run_dir}; "
            "quantize the run directory instead"
        )
    return run_dir, source.with_name(f"{source.stem}.int8.onnx")


def quantize_onnx(
    source: str | os.PathLike[str],
    calibration: int = DEFAULT_CALIBRATION,
    out: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    per_channel: bool = True,
    quant_format: str = "qdq",
    fp32_depthwise: bool = False,
    calibrate_method: str = DEFAULT_CALIBRATE_METHOD,
    provider: str = DEFAULT_PROVIDER,
    on_batch: object = None,  # accepted for callers of the old path; calibration is one step
    wide_residuals: bool = False,
) -> ExportReport:
    """``export(run_dir, "onnx", int8=True, ...)`` with onnxruntime's quantizer choices, for a
    run directory or the fp32 ONNX file ``export`` wrote from one (:func:`quantize_source`)."""
    run_dir, default = quantize_source(source)
    return export(
        run_dir,
        "onnx",
        int8=True,
        out=out if out is not None else default,
        data=data,
        calibration=calibration,
        wide_residuals=wide_residuals,
        per_channel=None if per_channel else False,
        quant_format=None if quant_format == "qdq" else quant_format,
        fp32_depthwise=fp32_depthwise or None,
        calibrate_method=None if calibrate_method == DEFAULT_CALIBRATE_METHOD else calibrate_method,
        provider=None if provider == DEFAULT_PROVIDER else provider,
    )


def export_model(
    model: nn.Module,
    info: RunInfo,
    out: str | os.PathLike[str],
    inputs: list[torch.Tensor],
    opset: int = DEFAULT_OPSET,
    provider: str = DEFAULT_PROVIDER,
) -> ExportReport:
    """Export ``model`` (described by ``info``) to fp32 ONNX at ``out``, checked on
    ``inputs`` in onnxruntime as every export is (:func:`~mobilenets.deploy.export.
    write_checked`); nothing is recorded, since there is no run directory."""
    check_opset(opset)
    start = time.perf_counter()
    folded = fold_batchnorm(model)
    program = Program(folded, folded, inputs, None, onnx_metadata(info, "fp32"))
    out = Path(out)
    check, replaced = write_checked(
        TARGET, out, program, {"opset": opset}, {"provider": provider}, False
    )
    return ExportReport(
        format="onnx",
        precision="fp32",
        path=out,
        files=[out],
        size_bytes=out.stat().st_size,
        runtime=TARGET.runtime,
        checked_on="the given images",
        check=check,
        replaced=replaced,
        seconds=time.perf_counter() - start,
        extra={"opset": opset},
    )


def compare_with_torch(
    path: str | os.PathLike[str],
    model: nn.Module,
    inputs: list[torch.Tensor],
    provider: str = DEFAULT_PROVIDER,
    tolerance: float = EXPORT_TOLERANCE,
) -> float:
    """The check of every fp32 export (:func:`~mobilenets.deploy.target.check_program`) on an
    ONNX file: the largest difference relative to the largest PyTorch logit, or one line
    refusing a file above ``tolerance``."""
    check = check_program(
        TARGET, Path(path), model.eval(), inputs, False, 1, {"provider": provider}, tolerance
    )
    return check.max_rel_error

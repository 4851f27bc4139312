"""OpenVINO: an IR (``model.xml`` graph + ``model.bin`` weights) run by OpenVINO's own runtime.

fp32: ``openvino.convert_model`` reads the BN-folded PyTorch model directly (through
``torch.export``/TorchScript, no ONNX in between) with a dynamic batch axis, and
``save_model`` writes the IR with fp32 weights (its default would halve them to fp16).

int8: ``nncf.quantize`` inserts FakeQuantize nodes (weights symmetric per output channel,
activations per tensor) calibrated on the given images, then corrects each layer's bias for
the shift quantization introduces, measured by running the rest of the quantized network
(NNCF's full bias correction: 88.7% top-1 agreement on torchvision's V2 against 84.0% with
its fast one, for 24 s against 14 s to make and check); the CPU plugin runs them as int8
kernels (VNNI where the CPU has it). The MIXED preset makes activations asymmetric: ReLU6
outputs are never negative, and a symmetric range would waste half of its 256 levels on them.
Weights of every layer are quantized to 7 bits (NNCF's overflow fix, which by default covers
the first layer only): without VNNI the CPU plugin adds pairs of uint8 x int8 products in a
saturating int16, which full-range weights overflow (the ONNX target's note in
:mod:`mobilenets.deploy.quantize`).

The runtime is OpenVINO's native one, not onnxruntime's OpenVINO plugin: that plugin registers
on any x86 CPU but lists no device on non-Intel ones (an AMD EPYC here), while the native
runtime runs on both. The run's description travels inside the IR (``rt_info``), as it does
in an ONNX file's metadata.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.deploy.target import Capabilities, Job, Runner, Target, first_line, input_array
from mobilenets.errors import MobileNetError

RT_INFO_SECTION = "mobilenets"
QUANTIZATION = (
    "NNCF post-training: weights int8 symmetric per channel, activations int8 per tensor "
    "(MIXED preset: asymmetric), full bias correction"
)


def convert(model: nn.Module, example: torch.Tensor):
    """``model`` as an OpenVINO model taking any batch of ``example``'s image size."""
    import openvino as ov

    shape = ov.PartialShape([-1, *example.shape[1:]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ov.convert_model(model, example_input=example, input=[shape])
        except Exception as e:  # the frontends raise their own types
            raise MobileNetError(f"OpenVINO cannot convert this model: {first_line(e)}") from e


def module_pattern(name: str) -> str:
    """The NNCF ignored-scope pattern of every node converted from PyTorch module ``name``:
    OpenVINO's PyTorch frontend names them ``__module.<name>/aten::...``."""
    return rf"__module\.{re.escape(name)}/"


def residual_adds(ov_model) -> list[str]:
    """Names of the Add nodes that sum two computed tensors (residual connections); the
    converter also writes each convolution's and the classifier's bias as an Add, of a
    constant."""
    return [
        op.get_friendly_name()
        for op in ov_model.get_ops()
        if op.get_type_name() == "Add"
        and not any(
            i.get_source_output().get_node().get_type_name() == "Constant" for i in op.inputs()
        )
    ]


def quantize_nncf(
    ov_model,
    calibration: list[torch.Tensor],
    fp32_modules: Sequence[str] = (),
    wide_residuals: bool = False,
):
    """``ov_model`` with int8 FakeQuantize nodes, ranges from ``calibration``.

    ``fp32_modules`` (PyTorch module names: ``classifier.fc``) stay in float, which is mixed
    precision (:mod:`mobilenets.quant.mixed`); ``wide_residuals`` the residual additions
    (:func:`residual_adds`), so the stream from block to block is summed in float and rounded only
    where a convolution reads it.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    ignored = None
    names = residual_adds(ov_model) if wide_residuals else []
    if fp32_modules or names:
        patterns = [module_pattern(name) for name in fp32_modules]
        ignored = nncf.IgnoredScope(names=names, patterns=patterns)
    dataset = nncf.Dataset([images.numpy() for images in calibration])
    # NNCF draws its own progress bars ("Statistics collection", "Applying Bias correction")
    # on stdout, where `--json` output goes and where the export's own line follows: they are
    # dropped, as its logger's notes are (which nodes an ignored scope matched); its warnings
    # stay, and failures are raised
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return nncf.quantize(
                ov_model,
                dataset,
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(calibration),  # NNCF counts the dataset's items: here, batches
                fast_bias_correction=False,
                ignored_scope=ignored,
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
            )
        except nncf.ValidationError as e:  # an ignored module that matches no node
            raise MobileNetError(f"OpenVINO cannot keep that in float: {first_line(e)}") from e
        finally:
            logger.setLevel(level)


def write_program(
    job: Job, path: Path, fp32_modules: Sequence[str] = (), wide_residuals: bool = False
) -> None:
    """Convert ``job.model`` (int8 when ``job.calibration`` is given, with the modules named in
    ``fp32_modules`` and, with ``wide_residuals``, the residual additions left in float) and save
    the IR at ``path`` (``.xml``) and beside it (``.bin``)."""
    import openvino as ov

    ov_model = convert(job.model, job.example)
    if job.calibration is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ov_model = quantize_nncf(
                ov_model, job.calibration, fp32_modules, wide_residuals=wide_residuals
            )
    for key, value in job.metadata.items():
        ov_model.set_rt_info(value, [RT_INFO_SECTION, key])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)


def load(path: Path, threads: int | None = None) -> Runner:
    """Compile ``path`` for OpenVINO's CPU plugin, fp32 arithmetic, tuned for latency.

    Asked for nothing, OpenVINO picks bf16 inference on CPUs that have it (this one does),
    which is no longer the fp32 model the check compares against.
    """
    import openvino as ov

    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as e:  # RuntimeError with OpenVINO's exception text
        raise MobileNetError(f"OpenVINO cannot load {path}: {first_line(e)}") from None
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        return request.infer([input_array(images)])[0].copy()

    return run


def metadata_of(path: Path) -> dict[str, str]:
    """The run description saved in an IR's ``rt_info``."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    if not model.has_rt_info([RT_INFO_SECTION]):
        return {}
    section = model.get_rt_info()[RT_INFO_SECTION]
    return {key: section[key].astype(str) for key in section}  # str() names the type


TARGET = Target("OpenVINO", ".xml", "openvino", ("openvino", "nncf"), "OpenVINO (CPU plugin)",
    write_program, load, sidecars=(".bin",), quantization=QUANTIZATION,
    can=Capabilities(wide_residuals=True),
)  # fmt: skip
write = TARGET.write  # write(model, path, example, calibration, metadata, **options)

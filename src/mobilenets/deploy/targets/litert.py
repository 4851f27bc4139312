"""LiteRT (formerly TensorFlow Lite): a ``.tflite`` flatbuffer run by ``ai-edge-litert``'s
interpreter with its XNNPACK delegate, as Android apps run it.

fp32: ``litert_torch.convert`` (the successor of the deprecated ``ai-edge-torch``) lowers the
``torch.export`` graph of the BN-folded model through StableHLO to TFLite operators. LiteRT is
NHWC inside; the converter inserts the layout transposes at the input and output, so the file
takes NCHW images like every other target.

int8: the converter's own PT2E quantizer (``litert_torch.quantize.pt2e_quantizer``), in the same
flow as ExecuTorch's (:mod:`mobilenets.int8.pt2e`, ReLU6 fused into its convolution):
weights int8 symmetric per channel, activations int8 per tensor from a histogram observer,
lowered to TFLite's int8 kernels. The program's input and outputs are int8 too (the runner
quantizes and dequantizes them with their recorded scales, as an app would), and every
concatenation gets a range of its own (``pt2e.ObservedConcats``); a detector's class logits
and box offsets are two outputs with a range each (:func:`~mobilenets.deploy.heads.
separate_outputs`), which the runner joins.

A ``.tflite`` takes the batch size of the example it was converted with, like a ``.pte``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import mobilenets.deploy.target as runtimes  # the helpers every runtime's code uses
from mobilenets.deploy.heads import join_outputs, separate_outputs
from mobilenets.deploy.target import Capabilities, Job, Runner, Target
from mobilenets.errors import MobileNetError

QUANTIZATION = (
    "PT2E, litert-torch PT2EQuantizer: weights int8 symmetric per channel, activations int8 "
    "per tensor (histogram observer)"
)


@runtimes.quiet()
def write_program(
    job: Job, path: Path, observer: str = "histogram", fp32_modules: Sequence[str] = ()
) -> None:
    """Convert ``job.model`` (int8 when ``job.calibration`` is given) to a ``.tflite`` at
    ``path``; ``observer="minmax"`` observes activation ranges min-max, as AdaRound assumed.

    Every layer the quantizer matches runs int8 but those of ``fp32_modules``, which
    ``pt2e.FloatModules`` leaves in float (the quantizer's own ``set_module_name(name, None)``
    is "not supported yet"). Residual additions cannot be left in float: the converter
    quantizes them again, so this writer takes no ``wide_residuals``.
    ``metadata`` goes to ``<path>.json`` beside the program.
    """
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig

    from mobilenets.int8.pt2e import activation_config, calibrated_pt2e  # torchao: an extra

    # a detector's logits and offsets as two outputs, fp32 as int8: two int8 ranges
    model, example = separate_outputs(job.model), job.example
    try:
        quant_config = None
        if job.calibration is not None:
            config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                activation_config(config, observer)
            )
            model = calibrated_pt2e(
                model,
                example,
                job.calibration,
                quantizer,
                fold_quantize=False,
                fp32_modules=fp32_modules,
                observed_concats=True,
            )
            quant_config = QuantConfig(pt2e_quantizer=quantizer)
        edge_model = litert_torch.convert(model, (example,), quant_config=quant_config)
        edge_model.export(str(path))
    except Exception as e:  # the converter raises many types; the first line says which
        raise MobileNetError(f"LiteRT cannot convert this model: {runtimes.first_line(e)}") from e
    runtimes.write_metadata_file(path, job.metadata)


@runtimes.quiet()
def load(path: Path, threads: int | None = None) -> Runner:
    """Run ``path`` in the LiteRT interpreter (XNNPACK delegate) on ``threads`` threads."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
        interpreter.allocate_tensors()
    except Exception as e:  # ValueError or RuntimeError with the interpreter's message
        raise MobileNetError(f"LiteRT cannot load {path}: {runtimes.first_line(e)}") from None
    source, sinks = interpreter.get_input_details()[0], _outputs(interpreter)

    def run(images: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], _to_tensor(runtimes.input_array(images), source))
        interpreter.invoke()
        return join_outputs([_from_tensor(interpreter.get_tensor(s["index"]), s) for s in sinks])

    return run


def _outputs(interpreter) -> list[dict]:
    """The output tensors in the order the model returns them (its signature's ``output_0``,
    ``output_1``...), which the interpreter's own list need not follow."""
    if not interpreter.get_signature_list():  # a file converted without a signature
        return interpreter.get_output_details()
    return list(interpreter.get_signature_runner().get_output_details().values())


def _to_tensor(images: np.ndarray, detail: dict) -> np.ndarray:
    """Float images in the input's dtype: an int8 program (the PT2E flow quantizes its input
    and output too) takes ``round(x / scale) + zero_point``, as an app feeding it would."""
    if detail["dtype"] == np.float32:
        return images
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    q = np.round(images / scale) + zero_point
    return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(detail["dtype"]))


def _from_tensor(values: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return values.copy()
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


TARGET = Target("LiteRT", ".tflite", "litert", ("litert_torch", "ai_edge_litert", "torchao"),
    "LiteRT interpreter (XNNPACK)", write_program, load, quantization=QUANTIZATION,
    metadata_file=True, equalize=True, can=Capabilities(observer=True, fixed_batch=True),
)  # fmt: skip
write = TARGET.write  # write(model, path, example, calibration, metadata, **options)

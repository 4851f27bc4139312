"""ExecuTorch: a ``.pte`` program with its convolutions delegated to XNNPACK, as phones run it.

fp32: ``torch.export`` captures the BN-folded model, ``to_edge_transform_and_lower`` hands every
subgraph XNNPACK supports (here all of it: conv, hardtanh, add, mean, linear) to the XNNPACK
delegate, and ``to_executorch`` plans the activations' memory ahead of time into one buffer.

int8: the PT2E flow (:mod:`mobilenets.int8.pt2e`): ``prepare_pt2e`` inserts observers where
``XNNPACKQuantizer`` says XNNPACK has int8 kernels (and each convolution -> ReLU6 pair, which
it leaves unfused, is made one), the calibration batches run through, and ``convert_pt2e``
replaces observers with quantize/dequantize pairs that the XNNPACK partitioner fuses into int8
operators. Weights are symmetric per output channel (a depthwise filter after BN folding has
one scale per channel, Krishnamoorthi 2018 section 3.1); activations are asymmetric per
tensor, their ranges from a histogram observer.

A program takes the batch size of the example it was exported with: mobile inference runs one
image at a time, and a fixed shape lets the memory planner size every buffer exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.deploy.target import (
    Capabilities,
    Job,
    Runner,
    Target,
    first_line,
    input_array,
    quiet,
    write_metadata_file,
)
from mobilenets.errors import MobileNetError

QUANTIZATION = (
    "PT2E, XNNPACKQuantizer: weights int8 symmetric per channel, activations int8 per tensor "
    "(histogram observer)"
)


@quiet()
def quantize_pt2e(
    model: nn.Module,
    example: torch.Tensor,
    calibration: list[torch.Tensor],
    observer: str = "histogram",
    wide_residuals: bool = False,
    fp32_modules: Sequence[str] = (),
) -> torch.fx.GraphModule:
    """``model`` with int8 quantize/dequantize pairs where XNNPACK runs int8, its activation
    ranges observed on ``calibration``: every layer XNNPACK can run in int8 but those of
    ``fp32_modules`` (``pt2e.FloatModules``: XNNPACK's quantizer itself refuses to leave a
    named module in float), and with ``wide_residuals`` the residual additions in float
    (``pt2e.FloatResiduals``)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    from mobilenets.int8.pt2e import activation_config, calibrated_pt2e  # torchao: an extra

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = XNNPACKQuantizer().set_global(activation_config(config, observer))
    return calibrated_pt2e(
        model,
        example,
        calibration,
        quantizer,
        float_residuals=wide_residuals,
        fp32_modules=fp32_modules,
    )


@quiet()
def write_program(
    job: Job,
    path: Path,
    observer: str = "histogram",
    wide_residuals: bool = False,
    fp32_modules: Sequence[str] = (),
) -> None:
    """Lower ``job.model`` (int8 when ``job.calibration`` is given) to an XNNPACK-delegated
    ExecuTorch program at ``path``; ``observer="minmax"`` observes activation ranges min-max,
    as AdaRound assumed; ``wide_residuals`` adds the residual streams in float (XNNPACK has no
    int16 addition); ``fp32_modules`` run in float (mixed precision).

    A ``.pte`` holds no free-form properties: ``metadata`` goes to ``<path>.json`` beside it.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = job.model
    try:
        if job.calibration is not None:
            model = quantize_pt2e(
                model,
                job.example,
                job.calibration,
                observer=observer,
                wide_residuals=wide_residuals,
                fp32_modules=fp32_modules,
            )
        program = torch.export.export(model, (job.example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        buffer = lowered.to_executorch().buffer
    except Exception as e:  # export and lowering raise many types; the first line says which
        raise MobileNetError(f"ExecuTorch cannot lower this model: {first_line(e)}") from e
    Path(path).write_bytes(buffer)
    write_metadata_file(path, job.metadata)


@quiet()
def load(path: Path, threads: int | None = None) -> Runner:
    """Run ``path`` with ExecuTorch's runtime (the XNNPACK delegate on ``threads`` threads)."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    _unsafe_reset_threadpool(threads or os.cpu_count() or 1)
    try:
        method = Runtime.get().load_program(Path(path)).load_method("forward")
    except Exception as e:  # the runtime raises RuntimeError or ValueError with a code
        raise MobileNetError(f"ExecuTorch cannot load {path}: {first_line(e)}") from None
    if method is None:
        raise MobileNetError(f"{path} has no forward method")

    def run(images: np.ndarray) -> np.ndarray:
        # ExecuTorch reads the tensor's buffer as contiguous, whatever its strides say
        return method.execute([torch.from_numpy(input_array(images))])[0].numpy()

    return run


@quiet()
def planned_memory_bytes(path: Path) -> int:
    """Bytes of the buffers ExecuTorch's memory planner laid out for ``forward``.

    With the whole graph delegated to XNNPACK this is only the tensors crossing the delegate's
    boundary (the input and the logits): XNNPACK plans and allocates the activations inside
    its subgraph itself, in its own workspace, which the process's resident set shows.
    """
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(Path(path).read_bytes())
    program = getattr(program, "program", program)  # newer versions wrap it
    return sum(program.execution_plan[0].non_const_buffer_sizes)


TARGET = Target("ExecuTorch", ".pte", "executorch", ("executorch", "torchao"),
    "ExecuTorch (XNNPACK)", write_program, load, quantization=QUANTIZATION, metadata_file=True,
    equalize=True,
    can=Capabilities(wide_residuals=True, lowers_pt2e=True, observer=True, fixed_batch=True),
)  # fmt: skip
write = TARGET.write  # write(model, path, example, calibration, metadata, **options)

"""Export to ONNX, with BatchNorm folded, and prove the file computes what PyTorch computes.

We use the torch.export-based exporter (``torch.onnx.export(..., dynamo=True)``), the default
since PyTorch 2.9; the TorchScript exporter still works in 2.13 but warns that it will be
removed. Measured here on MobileNetV2 1.0: the TorchScript exporter takes about 1.6 s and the
torch.export one about 10 s; both give the same 52 Conv / 35 Clip / 10 Add graph (the
torch.export one without its 70 Constant nodes: every constant is an initializer), which
onnxruntime runs equally fast (3.27 vs 3.25 ms, batch 1, 2 threads). Export time is paid once;
we take the exporter that PyTorch maintains.

That exporter writes opset 18 and newer; it asks onnxscript's version converter for older
opsets, which cannot convert ``ReduceMean`` and silently keeps 18, so older opsets are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import torch
from torch import nn

from mobilenets.deploy.images import VERIFY_IMAGES, held_out_inputs
from mobilenets.deploy.runtime import (
    DEFAULT_PROVIDER,
    INPUT_NAME,
    OUTPUT_NAME,
    check_provider,
    create_session,
    load_onnx,
    onnx_metadata,
    run_session,
    set_metadata,
    short_provider_name,
)
from mobilenets.deploy.target import (
    FP32_TOLERANCE,
    agreement,
    pytorch_logits,
    quiet,
    run_batches,
)
from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.io import atomic_path
from mobilenets.models import check_resolution
from mobilenets.runs import RunInfo, load_run

DEFAULT_OPSET = 18
MIN_OPSET = 18
MAX_OPSET = onnx.defs.onnx_opset_version()
EXPORT_TOLERANCE = FP32_TOLERANCE  # one tolerance for every fp32 program
ONNX_FILE = "model.onnx"


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and how closely onnxruntime reproduces PyTorch."""

    path: Path
    opset: int
    size_bytes: int
    max_rel_error: float  # max |onnxruntime - PyTorch| / max |PyTorch| over the checked logits
    images_checked: int
    checked_on: str = "held-out images"

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "size_bytes": self.size_bytes,
            "max_rel_error": self.max_rel_error,
            "images_checked": self.images_checked,
            "checked_on": self.checked_on,
            "tolerance": EXPORT_TOLERANCE,
        }


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise MobileNetError(
            f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET} "
            f"(the torch.export-based exporter writes opset {MIN_OPSET} or newer), got {opset!r}"
        )
    return opset


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
                model,
                (example,),
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


def compare_with_torch(
    path: str | os.PathLike[str],
    model: nn.Module,
    inputs: list[torch.Tensor],
    provider: str = DEFAULT_PROVIDER,
    tolerance: float = EXPORT_TOLERANCE,
) -> float:
    """Run ``path`` in onnxruntime and ``model`` in PyTorch on ``inputs`` (a list of batches):
    the largest difference relative to the largest PyTorch logit, measured as every export's
    check measures it (:func:`~mobilenets.deploy.target.agreement`); a file above
    ``tolerance`` computes something else and is refused."""
    session = create_session(path, provider=provider)
    expected = pytorch_logits(model.eval(), inputs)
    got = run_batches(lambda images: run_session(session, images), inputs, None)
    error = agreement(expected, got).max_rel_error
    if not error <= tolerance:
        raise MobileNetError(
            f"the ONNX program differs from PyTorch by {error:.2e} (relative to the largest "
            f"logit) in onnxruntime ({short_provider_name(provider)}), more than "
            f"{tolerance:.0e}: not writing {Path(path).name}"
        )
    return error


def export_model(
    model: nn.Module,
    info: RunInfo,
    out: str | os.PathLike[str],
    inputs: list[torch.Tensor],
    opset: int = DEFAULT_OPSET,
    provider: str = DEFAULT_PROVIDER,
) -> ExportResult:
    """Export ``model`` (described by ``info``), check it on ``inputs``, then write ``out``.

    The file is written under a temporary name and renamed only once onnxruntime has reproduced
    PyTorch's logits, so a failed export leaves nothing behind.
    """
    check_opset(opset)
    check_provider(provider)
    out = Path(out)
    with atomic_path(out) as tmp:
        write_onnx(
            fold_batchnorm(model), tmp, tuple(info.input_size), onnx_metadata(info, "fp32"), opset
        )
        load_onnx(tmp)  # the checker, before anything runs it
        error = compare_with_torch(tmp, model, inputs, provider)
    return ExportResult(
        path=out,
        opset=opset,
        size_bytes=out.stat().st_size,
        max_rel_error=error,
        images_checked=sum(len(b) for b in inputs),
    )


def export_onnx(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    data: str | os.PathLike[str] | None = None,
    provider: str = DEFAULT_PROVIDER,
    verify_images: int = VERIFY_IMAGES,
) -> ExportResult:
    """Export a run directory to ONNX (default ``RUN_DIR/model.onnx``) in any opset from 18,
    checked in onnxruntime (on ``provider``) against PyTorch on the images every export is
    checked on (:func:`~mobilenets.deploy.images.held_out_inputs`); ``export(run_dir)``
    writes the same file and records its check in the run."""
    check_opset(opset)
    check_provider(provider)
    model, info = load_run(run_dir)
    out = Path(run_dir) / ONNX_FILE if out is None else Path(out)
    # a run that records no data set (imported weights) is checked on the bundled photos
    inputs, checked_on = held_out_inputs(info, data, verify_images)
    result = export_model(model, info, out, inputs, opset, provider)
    return replace(result, checked_on=checked_on)

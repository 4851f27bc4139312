"""An exported program on its own: what it records, and the program as a PyTorch module.

``mobilenets export`` writes the run's description with every program (:func:`~mobilenets.
deploy.runtime.onnx_metadata`: class names, mean, std, input size, crop, precision, the whole
run record with the data it was trained on, and the run directory it came from): in an ONNX
file's ``metadata_props``, an OpenVINO IR's ``rt_info``, and for the formats that hold no
free-form properties (ExecuTorch's ``.pte``, LiteRT's ``.tflite``) in ``<file>.json`` beside
the program, one of its files (:meth:`~mobilenets.deploy.target.Target.files`).

:func:`read_program_info` reads it back from any of them, so ``evaluate`` can rebuild the
run's held-out split and ``predict`` preprocess images as the run did, and
:class:`ProgramModule` runs the program in its own runtime behind the ``nn.Module`` interface
the run's model has: evaluation and prediction count and rank its logits the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobilenets.deploy.export import FORMATS
from mobilenets.deploy.runtime import (
    PRECISION_KEY,
    RUN_DIR_KEY,
    load_onnx,
    metadata,
    run_info_from,
)
from mobilenets.deploy.target import Runner, Target, quiet, read_metadata_file, run_batches
from mobilenets.errors import MobileNetError
from mobilenets.runs import META_FILE, RunInfo

# A program of a fixed-batch format (.pte, .tflite) takes the batch of the example it was
# exported with: one image, as ``export`` writes them.
FIXED_BATCH = 1


def suffixes() -> str:
    """``.onnx, .pte, .tflite or .xml``."""
    names = [t.suffix for t in FORMATS.values()]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def target_of_file(path: str | os.PathLike[str]) -> Target:
    """The format of the program at ``path``, by its suffix, or one line."""
    path = Path(path)
    for target in FORMATS.values():
        if path.suffix == target.suffix:
            return target
    raise MobileNetError(
        f"{path} is neither a run directory nor an exported program ({suffixes()})"
    )


@dataclass
class ProgramInfo:
    """What an exported program records: the run it was exported from and its precision."""

    path: Path
    target: Target
    run: RunInfo  # class names, mean, std, input size, crop, the data record
    precision: str  # "fp32" or "int8"
    recorded_run_dir: Path | None  # where the run was when the program was exported

    @property
    def class_names(self) -> list[str]:
        return list(self.run.class_names)

    def run_dir(self) -> Path | None:
        """The run directory the program came from, if it still holds a run: the recorded
        one, else the program's own folder (where ``export`` puts it by default)."""
        for candidate in (self.recorded_run_dir, self.path.parent):
            if candidate is not None and (candidate / META_FILE).is_file():
                return candidate
        return None


def program_metadata(path: Path, target: Target) -> dict[str, str]:
    """The metadata keys the program at ``path`` records (empty when it records none)."""
    if target.metadata_file:
        return read_metadata_file(path)
    if target.suffix == ".onnx":
        return metadata(load_onnx(path, check=False))
    from mobilenets.deploy.targets.openvino import metadata_of

    try:
        with quiet():  # its frontends print why each could not read the file
            return metadata_of(path)
    except Exception:  # RuntimeError whose first lines name OpenVINO's source files
        raise MobileNetError(f"{path} is not an OpenVINO IR that OpenVINO can read") from None


def read_program_info(path: str | os.PathLike[str]) -> ProgramInfo:
    """What the program at ``path`` (``.onnx``, ``.pte``, ``.tflite``, ``.xml``) records, or
    one line: no such file, not a program, no class names recorded (not exported by
    ``mobilenets export``, or a ``.pte``/``.tflite`` moved without its ``.json``)."""
    path = Path(path)
    target = target_of_file(path).require()
    if not path.is_file():
        raise MobileNetError(f"exported program {path} does not exist")
    props = program_metadata(path, target)
    sidecar = f" (its metadata file {path.name}.json is not beside it)"
    run = run_info_from(props, path, sidecar if target.metadata_file else "")
    recorded = props.get(RUN_DIR_KEY)
    return ProgramInfo(
        path=path,
        target=target,
        run=run,
        precision=props.get(PRECISION_KEY, "fp32"),
        recorded_run_dir=None if recorded is None else Path(recorded),
    )


class ProgramModule(nn.Module):
    """An exported program run in its own runtime, called like the run's model: a batch of
    preprocessed images (N, C, H, W) in, logits (N, classes) out, as a CPU float tensor.
    A fixed-batch program is fed one image at a time."""

    def __init__(self, runner: Runner, batch: int | None) -> None:
        super().__init__()
        self.runner, self.batch = runner, batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = run_batches(self.runner, [images], self.batch)
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


def load_program(
    path: str | os.PathLike[str], threads: int | None = None
) -> tuple[ProgramModule, ProgramInfo]:
    """The program at ``path`` loaded in its runtime (on ``threads`` threads), and what it
    records."""
    info = read_program_info(path)
    runner = info.target.load(info.path, threads)
    return ProgramModule(runner, FIXED_BATCH if info.target.can.fixed_batch else None), info

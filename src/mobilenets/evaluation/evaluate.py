"""How good a trained run is on the held-out split of its data: top-1, top-5, per-class
accuracy and the confusion matrix (counted by :mod:`mobilenets.train.metrics`); for a
detector COCO mAP, for a segmenter mIoU and pixel accuracy (the scores its training reports).

An exported program (``.onnx``, ``.pte``, ``.tflite``, ``.xml``) is scored the same way, in
its own runtime, on the held-out split of the run it records, beside the run's fp32 PyTorch
weights when that run directory is still there: what int8 cost on real labels. A detector's
program outputs raw class logits and box offsets; they are decoded against the run's default
boxes, with PyTorch's score threshold and NMS, outside the runtime (as ``predict`` does).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mobilenets.data import make_loader
from mobilenets.errors import MobileNetError
from mobilenets.evaluation.tta import TestTimeAugmentation
from mobilenets.models import model_task
from mobilenets.plots import confusion_matrix_figure, save_figure
from mobilenets.runs import RunInfo, load_run, load_run_data, names_a_file
from mobilenets.train.detection_metrics import evaluate_detector
from mobilenets.train.devices import parse_device
from mobilenets.train.metrics import Evaluation, tally_predictions
from mobilenets.train.segmentation_metrics import evaluate_segmenter
from mobilenets.train.task import COCO_MAX_DETECTIONS

CONFUSION_FILE = "confusion_matrix.png"


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    class_names: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device | None = None,
    tta: str | None = None,
) -> Evaluation:
    """Top-1, top-5, per-class accuracy and the confusion matrix of ``model`` on ``dataset``,
    with ``tta`` the mean answer over those test-time views (:mod:`mobilenets.evaluation.tta`)."""
    if batch_size < 1:
        raise MobileNetError(f"batch size must be at least 1, got {batch_size}")
    device = parse_device(device)
    if tta is not None:
        model = TestTimeAugmentation(model, tta)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0)
    tally = tally_predictions(model.to(device), loader, len(class_names), device)
    return Evaluation.from_tally(tally, class_names)


def evaluate(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    plot: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    tta: str | None = None,
) -> Evaluation:
    """Evaluate a run on the held-out split of its training data, or of ``data`` (with
    ``tta``, averaged over those test-time views).

    The held-out split is rebuilt from what the run recorded (data source, resolution, split
    seed), so it is the very split the run was tested on. The confusion matrix is drawn to
    ``plot`` (default ``RUN_DIR/confusion_matrix.png``).
    """
    run_dir = Path(run_dir)
    device = parse_device(device)
    model, info = load_run(run_dir, map_location=device)
    bundle = load_run_data(info, data)
    result = evaluate_model(model, bundle.test, info.class_names, batch_size, device, tta)
    plot_path = run_dir / CONFUSION_FILE if plot is None else Path(plot)
    title = f"{info.model} on {bundle.name}: top-1 {result.top1:.2%}"
    save_figure(confusion_matrix_figure(result.confusion, result.class_names, title), plot_path)
    result.figure = str(plot_path)
    return result


@dataclass
class ProgramEvaluation:
    """An exported program scored in its runtime, and the run's fp32 weights in PyTorch on
    the same images (None, with the reason in ``fp32_note``, when that run is not there)."""

    program: str
    format: str
    runtime: str
    precision: str
    data: str  # what the held-out images are
    result: Evaluation
    run_dir: str | None = None
    fp32: Evaluation | None = None
    fp32_note: str | None = None

    @property
    def top1_change(self) -> float | None:
        """The program's top-1 minus the fp32 run's, as a fraction."""
        return None if self.fp32 is None else self.result.top1 - self.fp32.top1

    def to_dict(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "format": self.format,
            "runtime": self.runtime,
            "precision": self.precision,
            "data": self.data,
            **self.result.to_dict(),
            "run_dir": self.run_dir,
            "fp32": None if self.fp32 is None else self.fp32.to_dict(),
            "fp32_note": self.fp32_note,
            "top1_change": self.top1_change,
        }


def evaluate_program(
    path: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    plot: str | os.PathLike[str] | None = None,
    fp32: bool = True,
    threads: int | None = None,
    tta: str | None = None,
) -> ProgramEvaluation:
    """Score an exported program in its own runtime on the held-out split of the run it
    records (or of ``data``), and, with ``fp32``, the run's PyTorch weights on the same images
    when the run directory it was exported from still holds that run.

    The split is rebuilt from the data record the program carries, so it is the split the
    run was tested on, and its images were never among the training images int8 was
    calibrated on. ``data`` whose classes differ from the program's raises one line. The
    confusion matrix is drawn only when ``plot`` names a file. ``tta`` averages both over those
    test-time views.
    """
    from mobilenets.deploy.program import load_program

    program, info = load_program(path, threads)
    bundle = load_run_data(info.run, data)
    result = evaluate_model(program, bundle.test, info.class_names, batch_size, "cpu", tta)
    report = ProgramEvaluation(
        program=str(info.path),
        format=info.target.name,
        runtime=info.target.runtime,
        precision=info.precision,
        data=f"{len(bundle.test)} held-out images of {bundle.name}",
        result=result,
    )
    run_dir = info.run_dir()
    if run_dir is None:
        report.fp32_note = "the run directory it was exported from is not there"
    elif fp32:
        report.run_dir = str(run_dir)
        report.fp32, report.fp32_note = _run_beside(run_dir, info.run, bundle.test, batch_size, tta)
    if plot is not None:
        title = f"{Path(path).name} on {bundle.name}: top-1 {result.top1:.2%}"
        save_figure(confusion_matrix_figure(result.confusion, result.class_names, title), plot)
        result.figure = str(plot)
    return report


def _run_beside(
    run_dir: Path, exported: RunInfo, test: Dataset, batch_size: int, tta: str | None = None
) -> tuple[Evaluation | None, str | None]:
    """The fp32 score of the run a program was exported from, or why there is none."""
    model, note = _exported_run(run_dir, exported)
    if model is None:
        return None, note
    return evaluate_model(model, test, exported.class_names, batch_size, "cpu", tta), None


def _exported_run(run_dir: Path, exported: RunInfo) -> tuple[nn.Module | None, str | None]:
    """The fp32 model of the run a program was exported from, or why it is not there."""
    try:
        model, run = load_run(run_dir)
    except MobileNetError as e:  # the folder is there, complete weights are not (any more)
        return None, str(e)
    keys = ("model", "model_kwargs", "class_names", "input_size")
    if any(getattr(run, k) != getattr(exported, k) for k in keys):
        return None, f"{run_dir} now holds another model than the one exported"
    return model, None


# What a dense task reports, in the order shown: the keys of its scores.
DENSE_SCORES = {
    "detection": (("map_50", "mAP@.5"), ("map", "mAP@[.5:.95]"), ("map_75", "mAP@.75")),
    "segmentation": (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy")),
}


@dataclass
class DenseEvaluation:
    """A detector or segmenter (a run, or an exported program in its runtime) scored on its
    held-out split, and for a program the run's fp32 weights in PyTorch on the same images
    (None, with the reason in ``fp32_note``, when that run is not there)."""

    source: str
    task: str  # detection or segmentation
    engine: str  # "PyTorch", or the program's format, precision and runtime
    precision: str
    data: str
    scores: dict[str, float]
    run_dir: str | None = None
    fp32: dict[str, float] | None = None
    fp32_note: str | None = None

    @property
    def changes(self) -> dict[str, float] | None:
        """Each score minus the fp32 run's, in points (hundredths)."""
        if self.fp32 is None:
            return None
        return {k: 100 * (v - self.fp32[k]) for k, v in self.scores.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "task": self.task,
            "engine": self.engine,
            "precision": self.precision,
            "data": self.data,
            **self.scores,
            "run_dir": self.run_dir,
            "fp32": self.fp32,
            "fp32_note": self.fp32_note,
            "change_points": self.changes,
        }


class ProgramDetector(nn.Module):
    """A detector's program called like its SSDLite: the one output (N, boxes, classes + 4)
    split into class logits and box offsets, and the run's default boxes, so that
    :func:`~mobilenets.train.detection_metrics.evaluate_detector` decodes and scores it as it
    does the PyTorch model."""

    def __init__(self, program: nn.Module, reference: nn.Module) -> None:
        super().__init__()
        self.program, self.default_boxes = program, reference.default_boxes

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.program(images)
        return outputs[..., :-4], outputs[..., -4:]


def dense_scores(
    model: nn.Module, task: str, dataset: Dataset, num_classes: int, batch_size: int
) -> dict[str, float]:
    """The held-out scores training reports for ``task``: COCO mAP over each image's best
    100 detections, or mIoU and pixel accuracy."""
    if batch_size < 1:
        raise MobileNetError(f"batch size must be at least 1, got {batch_size}")
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0, num_workers=0)
    with torch.no_grad():
        if task == "detection":
            return evaluate_detector(model, loader, detections_per_img=COCO_MAX_DETECTIONS)
        return evaluate_segmenter(model, loader, num_classes)


def evaluate_dense(
    source: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    fp32: bool = True,
    threads: int | None = None,
) -> DenseEvaluation:
    """Score a detector's or segmenter's run directory, or its exported program in the
    program's runtime, on the held-out split of the run's data (or of ``data``); a program
    beside the run's fp32 weights (``fp32``) when its run directory still holds that run."""
    from mobilenets.deploy.images import run_data

    if names_a_file(source):
        from mobilenets.deploy.program import load_program

        program, program_info = load_program(source, threads)
        info = program_info.run
        task = model_task(info.model)
        model = ProgramDetector(program, info.build_model()) if task == "detection" else program
        engine = f"{program_info.target.name} {program_info.precision}, "
        engine += program_info.target.runtime
        precision, run_dir = program_info.precision, program_info.run_dir()
    else:
        model, info = load_run(source)
        task, engine, precision, run_dir = model_task(info.model), "PyTorch", "fp32", None
    if task not in DENSE_SCORES:
        raise MobileNetError(f"{source} is a {task} model, not a detector or segmenter")
    bundle = run_data(info, data)
    classes = len(info.class_names)
    report = DenseEvaluation(
        source=str(source),
        task=task,
        engine=engine,
        precision=precision,
        data=f"{len(bundle.test)} held-out images of {bundle.name}",
        scores=dense_scores(model, task, bundle.test, classes, batch_size),
    )
    if names_a_file(source):
        if run_dir is None:
            report.fp32_note = "the run directory it was exported from is not there"
        elif fp32:
            reference, report.fp32_note = _exported_run(run_dir, info)
            report.run_dir = str(run_dir)
            if reference is not None:
                report.fp32 = dense_scores(reference, task, bundle.test, classes, batch_size)
    return report

"""What a trained run says about images, preprocessed exactly as its run records.

``predict`` takes what people point inference tools at: files, folders (searched
recursively for image files; other files are listed as skipped) and glob patterns. Every
image gets one row: its most probable classes, or the reason it could not be read. A bad
file is a row, not the end of the run, so one corrupt photo in a folder of thousands costs
one line.

The classifier is a run directory's model in PyTorch, or an exported program (``.onnx``,
``.pte``, ``.tflite``, ``.xml``) in its own runtime: the class names, mean, std, input size
and crop it records are the run's, so its images are preprocessed the same way.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobilenets.data import IMAGE_EXTENSIONS, eval_transform, load_image
from mobilenets.errors import MobileNetError
from mobilenets.evaluation.tta import TestTimeAugmentation
from mobilenets.runs import RunInfo, load_run, names_a_file
from mobilenets.train.devices import parse_device

GLOB_CHARS = frozenset("*?[")


@dataclass
class Prediction:
    """The ``top_k`` most probable classes for one image, most probable first; or, for an
    image that could not be read, empty lists and the ``error``."""

    image: str
    classes: list[str]
    probabilities: list[float]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "top": [
                {"class": c, "probability": p}
                for c, p in zip(self.classes, self.probabilities, strict=True)
            ],
            "error": self.error,
        }


@dataclass
class PredictionReport:
    """One row per image found, in the order given (a folder's images sorted by path), and
    the files of folders that were not images."""

    predictions: list[Prediction]
    skipped: list[str] = field(default_factory=list)
    tta: str | None = None  # the test-time views averaged, if any

    @property
    def errors(self) -> int:
        return sum(p.error is not None for p in self.predictions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "predictions": [p.to_dict() for p in self.predictions],
            "skipped": self.skipped,
            "tta": self.tta,
        }


@dataclass
class ImageList:
    """What the paths and patterns given to :func:`predict` name."""

    images: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (what was given, why)
    skipped: list[str] = field(default_factory=list)


def find_images(inputs: Sequence[str | os.PathLike[str]]) -> ImageList:
    """Expand files, folders (recursively: files with an image extension, hidden files
    ignored, the rest skipped) and glob patterns (``**`` included) into image paths.

    A file named outright is taken whatever its extension (decoding decides); a path that
    does not exist, or a pattern that matches nothing, is reported as missing.
    """
    found = ImageList()

    def add(path: Path) -> None:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
                if child.is_file() and not hidden:
                    ok = child.suffix.lower() in IMAGE_EXTENSIONS
                    (found.images if ok else found.skipped).append(str(child))
        else:
            found.images.append(str(path))

    for given in map(str, inputs):
        path = Path(given).expanduser()
        if path.exists():
            add(path)
        elif GLOB_CHARS & set(given):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                found.missing.append((given, "no file matches this pattern"))
            for match in matches:
                add(Path(match))
        else:
            found.missing.append((given, f"image not found: {given}"))
    return found


def load_classifier(
    source: str | os.PathLike[str], device: torch.device
) -> tuple[torch.nn.Module, RunInfo, torch.device]:
    """The model of a run directory on ``device``, or an exported program in its runtime
    (on the CPU), with the run record that says how to preprocess its images."""
    if not names_a_file(source):
        model, info = load_run(source, map_location=device)
        return model, info, device
    from mobilenets.deploy.program import load_program

    program, program_info = load_program(source)
    return program, program_info.run, torch.device("cpu")


@torch.no_grad()
def predict(
    run_dir: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    tta: str | None = None,
) -> PredictionReport:
    """Classify the images that ``images`` names (files, folders, globs: :func:`find_images`)
    with a trained run, or an exported program in its runtime, preprocessed exactly as the
    run records; with ``tta`` (``flips`` or ``dihedral``) each image's probabilities are the
    mean over those test-time views (:mod:`mobilenets.evaluation.tta`), as ``evaluate --tta``
    scores them.

    Images are read a batch at a time, so a folder of any size fits in memory. An image that
    cannot be read (missing, truncated, not an image, a decompression bomb) is a row with
    its ``error``. Raises :class:`MobileNetError` for a bad run, or when nothing was named.
    """
    if not images:
        raise MobileNetError("no images given to predict")
    if top_k < 1:
        raise MobileNetError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise MobileNetError(f"batch size must be at least 1, got {batch_size}")
    device = parse_device(device)
    model, info, device = load_classifier(run_dir, device)
    if tta is not None:  # which refuses unknown views, and dihedral ones of a non-square image
        model = TestTimeAugmentation(model, tta)
    found = find_images(images)
    if not found.images and not found.missing:
        raise MobileNetError(
            f"no image files in {', '.join(map(str, images))} "
            f"({len(found.skipped)} other file(s) skipped)"
        )
    transform = eval_transform(info.mean, info.std, info.input_size, info.crop_pct)
    k = min(top_k, len(info.class_names))
    rows = [Prediction(given, [], [], why) for given, why in found.missing]
    for start in range(0, len(found.images), batch_size):
        inputs, readable = [], []
        for path in found.images[start : start + batch_size]:
            try:
                inputs.append(transform(load_image(path)))
                readable.append(path)
            except MobileNetError as e:
                rows.append(Prediction(path, [], [], str(e)))
        if not inputs:
            continue
        probabilities = model(torch.stack(inputs).to(device)).float().softmax(1).cpu()
        top = probabilities.topk(k, 1)
        for path, p, idx in zip(readable, top.values, top.indices, strict=True):
            rows.append(Prediction(path, [info.class_names[j] for j in idx.tolist()], p.tolist()))
    order = {path: i for i, path in enumerate([g for g, _ in found.missing] + found.images)}
    rows.sort(key=lambda row: order[row.image])
    return PredictionReport(rows, found.skipped, tta)

"""The detection and segmentation sources, as :class:`~mobilenets.data.sources.DataBundle`s
the trainer reads as it reads a classification bundle.

``load_dense_data(task, data, resolution, seed)`` with ``task`` ``"detection"`` or
``"segmentation"`` and ``data``:

- ``None`` or ``"digits"``: the digit canvases (:mod:`mobilenets.data.canvases`), resized
  to ``CANVAS_INPUT[task]`` unless ``resolution`` says otherwise, normalised with the train
  canvases' mean and std, not flipped.
- a folder: for detection ``instances.json`` and ``images/`` (COCO JSON), for segmentation
  ``images/`` and ``masks/``; either directly in it (split by ``val_fraction``, seeded) or in
  its ``train/`` and ``val/`` subfolders. ImageNet's mean and std, flipped half of the time.

Class 0 is the background in both tasks; ``class_names`` starts with it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mobilenets.data.canvases import (
    CANVAS_CLASSES,
    CANVAS_INPUT,
    TRAIN_PER_CANVAS,
    TRAIN_REPEATS,
    Canvases,
    RedrawnCanvases,
    canvas_groups,
    digit_canvases,
    split_digits,
)
from mobilenets.data.coco import CocoDetections, read_coco
from mobilenets.data.dense_datasets import DetectionDataset, SegmentationDataset
from mobilenets.data.dense_transforms import DetectionTransform, SegmentationTransform
from mobilenets.data.mask_folders import MaskFolder, read_mask_folder
from mobilenets.data.sources import DataBundle, SkippedImagesWarning
from mobilenets.data.splits import VAL_FRACTION, stratified_split
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, channel_stats
from mobilenets.errors import MobileNetError

DENSE_TASKS = ("detection", "segmentation")
# Input sizes for folders when none is given: torchvision's SSDLite320 and its segmentation
# references' 520 (the canvases default to CANVAS_INPUT).
DEFAULT_DENSE_RESOLUTION = {"detection": 320, "segmentation": 520}


def load_dense_data(
    task: str,
    data: str | os.PathLike[str] | None = None,
    resolution: int | None = None,
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    strict: bool = False,
) -> DataBundle:
    """Both splits of a detection or segmentation source; see the module's docstring.
    ``strict=False`` (training) skips bad annotations and warns once with their count."""
    if task not in DENSE_TASKS:
        raise MobileNetError(f"task must be one of {', '.join(DENSE_TASKS)}, got {task!r}")
    if data is None or str(data) == "digits":
        return _canvas_bundle(task, resolution or CANVAS_INPUT[task], seed, val_fraction)
    root = Path(data)
    if not root.is_dir():
        raise MobileNetError(f"data folder not found: {root}")
    size = resolution or DEFAULT_DENSE_RESOLUTION[task]
    read = _read_detection if task == "detection" else _read_segmentation
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, test = read(root / "train", strict), read(root / "val", strict)
        if train.class_names != test.class_names:
            raise MobileNetError(
                f"{root}: train/ and val/ name different classes: {train.class_names} and "
                f"{test.class_names}"
            )
        train_idx, test_idx = range(len(train.paths_)), range(len(test.paths_))
    else:
        train = test = read(root, strict)
        train_idx, test_idx = _split(len(train.paths_), val_fraction, seed)
    skipped = [*train.source.skipped, *([] if test is train else test.source.skipped)]
    if skipped:
        warnings.warn(
            f"{len(skipped)} bad annotations or images left out of {root}, e.g. {skipped[0]}",
            SkippedImagesWarning,
            stacklevel=2,
        )
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    return DataBundle(
        train=train.dataset(train_idx, size, mean, std, hflip=True),
        test=test.dataset(test_idx, size, mean, std, hflip=False),
        class_names=train.class_names,
        mean=mean,
        std=std,
        input_size=(3, size, size),
        name=f"{task}-folder",
        train_raw=train.dataset(train_idx, size, mean, std, hflip=False),
        skipped=skipped,
    )


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``n`` items (no labels to stratify by: one class to
    :func:`stratified_split`), at least one on each side."""
    if n < 2:
        raise MobileNetError(f"a split needs at least 2 images, found {n}")
    train, val = stratified_split(np.zeros(n, dtype=np.int64), val_fraction, seed)
    return train.tolist(), val.tolist()


class _Detections:
    """A COCO folder, ready to be cut into datasets."""

    def __init__(self, source: CocoDetections) -> None:
        self.source, self.paths_, self.class_names = source, source.paths, source.class_names

    def dataset(
        self,
        idx: Sequence[int],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        hflip: bool,
    ) -> DetectionDataset:
        s = self.source
        return DetectionDataset(
            [s.paths[i] for i in idx],
            [s.boxes[i] for i in idx],
            [s.labels[i] for i in idx],
            DetectionTransform(size, mean, std, hflip),
        )


class _Masks:
    """A mask folder, ready to be cut into datasets."""

    def __init__(self, source: MaskFolder) -> None:
        self.source, self.paths_, self.class_names = source, source.images, source.class_names

    def dataset(
        self,
        idx: Sequence[int],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        hflip: bool,
    ) -> SegmentationDataset:
        s = self.source
        return SegmentationDataset(
            [s.images[i] for i in idx],
            [s.masks[i] for i in idx],
            SegmentationTransform(size, mean, std, hflip),
        )


def _read_detection(folder: Path, strict: bool) -> _Detections:
    return _Detections(read_coco(folder / "instances.json", folder / "images", strict))


def _read_segmentation(folder: Path, strict: bool) -> _Masks:
    return _Masks(read_mask_folder(folder / "images", folder / "masks", strict))


def canvas_datasets(
    task: str, canvases: Canvases, size: int, mean: Sequence[float], std: Sequence[float]
) -> DetectionDataset | SegmentationDataset:
    """A dataset of canvases for ``task``, resized to ``size`` (never flipped)."""
    if task == "detection":
        return DetectionDataset(
            canvases.images, canvases.boxes, canvases.labels, DetectionTransform(size, mean, std)
        )
    return SegmentationDataset(
        canvases.images, canvases.masks, SegmentationTransform(size, mean, std)
    )


def _canvas_bundle(task: str, size: int, seed: int, val_fraction: float) -> DataBundle:
    """The canvases for ``task``: training canvases of :data:`TRAIN_PER_CANVAS` digits redrawn
    at every visit (:class:`RedrawnCanvases`), the held-out ones and those calibration reads
    (``train_raw``, of one to four digits as the held-out ones) drawn once."""
    train, test = digit_canvases(seed, val_fraction)
    (mean,), (std,) = channel_stats(train.images)
    mean3, std3 = (mean,) * 3, (std,) * 3
    (digits, labels), _ = split_digits(seed, val_fraction)
    groups = canvas_groups(len(digits), seed, TRAIN_REPEATS, TRAIN_PER_CANVAS)
    transform = (DetectionTransform if task == "detection" else SegmentationTransform)(
        size, mean3, std3
    )
    return DataBundle(
        train=RedrawnCanvases(digits, labels, groups, task, transform),
        test=canvas_datasets(task, test, size, mean3, std3),
        class_names=list(CANVAS_CLASSES),
        mean=mean3,
        std=std3,
        input_size=(3, size, size),
        name=f"digits-{task}",
        train_raw=canvas_datasets(task, train, size, mean3, std3),
    )

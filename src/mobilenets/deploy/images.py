"""The images an export is checked and calibrated on, for every format and workflow.

Held-out images check a program against PyTorch; training images (a seeded draw) calibrate
int8 ranges. A run that records no data set (imported weights) uses random crops of the
bundled photographs instead (:mod:`mobilenets.deploy.photos`), drawn with one seed for
checking and another for calibrating. A detector's or a segmenter's run reads its own data
(:func:`~mobilenets.data.dense_sources.load_dense_data`: the digit canvases, COCO JSON or
mask folders), images only.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mobilenets.data.dense_sources import load_dense_data
from mobilenets.data.sources import DataBundle
from mobilenets.data.splits import VAL_FRACTION
from mobilenets.deploy.photos import CALIBRATION_SEED, EVALUATION_SEED, photo_crops
from mobilenets.errors import MobileNetError
from mobilenets.models import model_task
from mobilenets.runs import RunInfo, load_run_data

CHECK_BATCH = 32
VERIFY_IMAGES = 256  # held-out images an export is checked on


def batches(dataset: Dataset, batch_size: int = 64) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The dataset in order, in batches: evaluation and calibration see the same images."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def _images_only(items: list[tuple[torch.Tensor, object]]) -> torch.Tensor:
    return torch.stack([item[0] for item in items])


def first_images(dataset: Dataset, n: int, batch_size: int = 64) -> list[torch.Tensor]:
    """The first ``n`` images in batches, the last one partial so that two batch sizes go
    through the dynamic axis; decoding stops there (an image folder's split can be large).
    Labels are dropped unread: a detection target (boxes of any count) does not stack."""
    kept, count = [], 0
    loader = DataLoader(dataset, batch_size, shuffle=False, collate_fn=_images_only)
    for images in loader:
        if count >= n:
            break
        kept.append(images[: n - count])
        count += len(kept[-1])
    return kept


def calibration_subset(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` images drawn without replacement, seeded, so every class is likely represented."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MobileNetError(f"calibration count must be a positive integer, got {n!r}")
    if n > len(dataset):  # a small data set calibrates on all of it
        warnings.warn(
            f"calibration count {n} is larger than the training data: calibrating on all "
            f"{len(dataset)} images",
            stacklevel=2,
        )
        n = len(dataset)
    order = np.random.default_rng(seed).permutation(len(dataset))[:n]
    return Subset(dataset, sorted(order.tolist()))


def run_data(info: RunInfo, data: str | os.PathLike[str] | None) -> DataBundle:
    """The data a run was trained on (or ``data``), a detector's or segmenter's too."""
    task = model_task(info.model)
    if task == "classification":
        return load_run_data(info, data)
    record = info.data
    source = data if data is not None else (record.source if record else None)
    seed = record.split_seed if record else 0
    val_fraction = record.val_fraction if record else VAL_FRACTION
    return _dense_data(
        task, None if source is None else str(source), info.resolution, seed, val_fraction
    )


@functools.lru_cache(maxsize=2)
def _dense_data(
    task: str, source: str | None, resolution: int, seed: int, val_fraction: float
) -> DataBundle:
    """One read per process of a dense source: the check and the calibration both read it,
    and drawing the digit canvases takes seconds."""
    return load_dense_data(
        task, source, resolution=resolution, seed=seed, val_fraction=val_fraction
    )


def held_out_inputs(
    info: RunInfo, data: str | os.PathLike[str] | None, n: int
) -> tuple[list[torch.Tensor], str]:
    """Up to ``n`` held-out images in batches, and what they are."""
    if data is None and info.data is None:
        crops = photo_crops(n, info.input_size[1], info.mean, info.std, seed=EVALUATION_SEED)
        return list(
            crops.split(CHECK_BATCH)
        ), f"random crops of the bundled photos (seed {EVALUATION_SEED})"
    return first_images(run_data(info, data).test, n, CHECK_BATCH), "held-out images"


def calibration_inputs(
    info: RunInfo, data: str | os.PathLike[str] | None, n: int
) -> tuple[list[torch.Tensor], str]:
    """``n`` training images (seeded draw) in batches, and what they are."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MobileNetError(f"calibration count must be a positive integer, got {n!r}")
    if data is None and info.data is None:
        crops = photo_crops(n, info.input_size[1], info.mean, info.std, seed=CALIBRATION_SEED)
        return list(
            crops.split(CHECK_BATCH)
        ), f"random crops of the bundled photos (seed {CALIBRATION_SEED})"
    bundle = run_data(info, data)
    train = bundle.train_raw if bundle.train_raw is not None else bundle.train
    return first_images(calibration_subset(train, n), n, CHECK_BATCH), "training images"

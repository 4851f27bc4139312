"""Detection and segmentation datasets: images in memory (the digit canvases) or on disk
(COCO, mask folders), each item transformed with its annotation.

Items are ``(image, target)``: for detection the target is ``{"boxes": (K, 4) float xyxy in
input pixels, "labels": (K,) int64}`` and batches need :func:`collate_detection` (the
dataset's ``collate_fn``); for segmentation it is an (H, W) int64 mask (255: ignored), and
the default collate stacks it. Keys are ``index`` or ``(index, seed)`` as for the
classification datasets, so :class:`~mobilenets.data.loader.SeededSampler` seeds the flips.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mobilenets.data.datasets import _unpack_key
from mobilenets.data.dense_transforms import (
    DetectionTransform,
    SegmentationTransform,
    collate_detection,
)
from mobilenets.data.transforms import load_image, pil_to_tensor
from mobilenets.errors import MobileNetError

Images = torch.Tensor | Sequence[str]  # (N, C, H, W) uint8 in memory, or image paths


def _image(images: Images, index: int) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images[index]
    return pil_to_tensor(load_image(images[index]))


def read_mask(path: str | os.PathLike[str]) -> torch.Tensor:
    """A mask PNG as an (H, W) int64 tensor of class ids: a palette PNG's indices or a grey
    PNG's values (255: ignored). A colour PNG is refused: its colours are not class ids."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.array(img) if mode in ("P", "L") else None
    except FileNotFoundError:
        raise MobileNetError(f"mask not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MobileNetError(f"cannot read mask {path}: {e}") from None
    if array is None:
        raise MobileNetError(
            f"mask {path} must be a palette (P) or grey (L) PNG of class ids, found mode {mode}"
        )
    return torch.from_numpy(array.astype(np.int64))


class DetectionDataset(Dataset):
    """Images with boxes and labels, through a :class:`DetectionTransform`."""

    collate_fn = staticmethod(collate_detection)

    def __init__(
        self,
        images: Images,
        boxes: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        transform: DetectionTransform,
    ) -> None:
        if len(images) != len(boxes) or len(boxes) != len(labels):
            raise MobileNetError(
                f"{len(images)} images need as many box and label lists, "
                f"got {len(boxes)} and {len(labels)}"
            )
        self.images, self.boxes, self.labels = images, list(boxes), list(labels)
        self.transform = transform
        self.in_memory = isinstance(images, torch.Tensor)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, generator = _unpack_key(key)
        image = _image(self.images, index)
        return self.transform(image, self.boxes[index], self.labels[index], generator)


class SegmentationDataset(Dataset):
    """Images with class masks (tensors, or mask PNG paths), through a
    :class:`SegmentationTransform`."""

    def __init__(
        self,
        images: Images,
        masks: torch.Tensor | Sequence[str],
        transform: SegmentationTransform,
    ) -> None:
        if len(images) != len(masks):
            raise MobileNetError(f"{len(images)} images need as many masks, got {len(masks)}")
        self.images, self.masks, self.transform = images, masks, transform
        self.in_memory = isinstance(images, torch.Tensor)

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, generator = _unpack_key(key)
        masks = self.masks
        mask = masks[index] if isinstance(masks, torch.Tensor) else read_mask(masks[index])
        return self.transform(_image(self.images, index), mask, generator)

"""Transforms that move an image and its dense annotation together: the boxes of a detection
target, the class mask of a segmentation target.

Both resize the whole image to the model's square input (SSD and torchvision's SSDLite do
not keep the aspect ratio; nothing is cropped away, so no box is cut), optionally flip it
horizontally half of the time, and normalise. The image is resized bilinearly with antialiasing, as
:func:`~mobilenets.data.transforms.resize_center_crop` resizes; a mask by nearest neighbour,
as class ids cannot be averaged; boxes are scaled by the image's factors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mobilenets.data.transforms import normalize, to_float


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (C, H, W) float image resized to ``size`` x ``size`` (bilinear, antialiased)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(
        image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0]


def resize_boxes(boxes: torch.Tensor, from_hw: Sequence[int], to_hw: Sequence[int]) -> torch.Tensor:
    """(K, 4) xyxy boxes of an image of ``from_hw`` (H, W), in the pixels of ``to_hw``."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """(K, 4) xyxy boxes mirrored left to right in an image ``width`` pixels wide."""
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), 1)


def resize_mask(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """An (H, W) int64 class mask resized to ``size`` x ``size`` (or to ``size`` = (height,
    width)) by nearest neighbour: a pixel keeps a class id, never a blend of two."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(mask.shape) == hw:
        return mask
    return F.interpolate(mask[None, None].float(), size=hw, mode="nearest-exact")[0, 0].long()


def _flip(generator: torch.Generator | None) -> bool:
    return torch.rand(1, generator=generator).item() < 0.5


class DetectionTransform:
    """(image, boxes, labels) -> (normalised image ``size`` square, ``{"boxes", "labels"}``).

    ``hflip`` mirrors half of the items (not for the digits: a mirrored 2 is not a 2).
    A single-channel image is replicated to ``len(mean)`` channels.
    """

    def __init__(
        self, size: int, mean: Sequence[float], std: Sequence[float], hflip: bool = False
    ) -> None:
        self.size, self.mean, self.std, self.hflip = size, tuple(mean), tuple(std), hflip

    def __call__(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = resize_image(to_float(image), self.size)
        boxes = resize_boxes(boxes, image.shape[-2:], (self.size, self.size))
        if self.hflip and _flip(generator):
            x, boxes = x.flip(-1), hflip_boxes(boxes, self.size)
        x = normalize(x.expand(len(self.mean), -1, -1), self.mean, self.std)
        return x, {"boxes": boxes, "labels": labels}


class SegmentationTransform:
    """(image, mask) -> (normalised image, int64 mask), both ``size`` square; ``hflip`` as
    :class:`DetectionTransform`'s."""

    def __init__(
        self, size: int, mean: Sequence[float], std: Sequence[float], hflip: bool = False
    ) -> None:
        self.size, self.mean, self.std, self.hflip = size, tuple(mean), tuple(std), hflip

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = resize_image(to_float(image), self.size), resize_mask(mask.long(), self.size)
        if self.hflip and _flip(generator):
            x, mask = x.flip(-1), mask.flip(-1)
        return normalize(x.expand(len(self.mean), -1, -1), self.mean, self.std), mask


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """A batch of detection items: the images stacked, the targets kept as a list (each image
    has its own number of boxes)."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)

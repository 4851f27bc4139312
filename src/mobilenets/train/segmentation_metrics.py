"""Semantic segmentation metrics from one confusion matrix: mean IoU and pixel accuracy.

The matrix counts, over all evaluated pixels, how often true class i was predicted as j
(pixels labelled 255 are not counted). A class's IoU is its diagonal over its row plus its
column minus the diagonal, the mean IoU averages the classes that occur in the ground truth
or the predictions (a class absent from both has no IoU), and pixel accuracy is the trace
over the total, as torchvision's segmentation references compute them. Accumulating counts
rather than averaging per image weighs every pixel alike.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.models.segmentation_loss import upsample_logits

IGNORE_INDEX = 255


class ConfusionMatrix:
    """The (num_classes, num_classes) pixel counts; rows true, columns predicted."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch: ``predicted`` class ids (N, H, W), or logits (N, C, H, W) whose
        argmax is taken, against ``target`` (N, H, W)."""
        if predicted.dim() == target.dim() + 1:
            predicted = predicted.argmax(1)
        if predicted.shape != target.shape:
            raise MobileNetError(
                f"predictions of shape {tuple(predicted.shape)} do not match masks of shape "
                f"{tuple(target.shape)}"
            )
        target, predicted = target.reshape(-1).cpu(), predicted.reshape(-1).cpu()
        counted = target != self.ignore_index
        target, predicted = target[counted].long(), predicted[counted].long()
        if target.numel() and int(target.max()) >= self.num_classes:
            raise MobileNetError(
                f"a mask holds class {int(target.max())}; there are {self.num_classes} classes"
            )
        index = target * self.num_classes + predicted
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view_as(self.matrix)

    def iou(self) -> torch.Tensor:
        """Per class IoU; NaN for a class neither in the masks nor predicted."""
        m = self.matrix.double()
        diagonal = m.diag()
        union = m.sum(0) + m.sum(1) - diagonal
        return torch.where(union > 0, diagonal / union.clamp(min=1), torch.nan)

    def compute(self) -> dict[str, float]:
        """``{"miou", "pixel_accuracy"}``."""
        total = int(self.matrix.sum())
        if total == 0:
            raise MobileNetError("no pixel to score: every pixel is ignored (255)")
        return {
            "miou": float(self.iou().nanmean()),
            "pixel_accuracy": float(self.matrix.diag().sum()) / total,
        }


def segmentation_metrics(
    predicted: torch.Tensor, target: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """mIoU and pixel accuracy of one batch of predictions (ids or logits) against masks."""
    matrix = ConfusionMatrix(num_classes)
    matrix.update(predicted, target)
    return matrix.compute()


@torch.no_grad()
def segmenter_confusion(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device | str = "cpu",
) -> ConfusionMatrix:
    """The confusion matrix of a segmenter's pixels on a loader of (images, masks), in eval
    mode; logits are resized to the masks' size when they differ."""
    model.eval()
    matrix = ConfusionMatrix(num_classes)
    for images, masks in loader:
        logits = model(images.to(device))
        matrix.update(upsample_logits(logits, masks.shape[-2:]).argmax(1), masks)
    return matrix


def evaluate_segmenter(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """mIoU and pixel accuracy of a segmenter on a loader of (images, masks)
    (:func:`segmenter_confusion`)."""
    return segmenter_confusion(model, loader, num_classes, device).compute()

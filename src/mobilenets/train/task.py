"""What a trainer trains for: what a batch is, the loss, and what is counted.

A :class:`Task` is the part of training that depends on the job: the trainer
(:class:`mobilenets.train.trainer.Trainer`) runs the epochs, the optimizer, the checkpoints,
resuming and the NaN check the same for every task. Counts are kept as float64 sums (the
loss times the images, the images last), which add up exactly across batches and across the
processes of a ``torchrun``.

- :class:`Classification`: images and class labels, cross-entropy, top-1 (``train``, and
  ``qat`` with labels);
- :class:`Distillation`: images, a teacher's logits as the target, mean squared error
  (``qat --distill``);
- :class:`Detection`: images and per-image boxes and labels, SSD's multibox loss, COCO mAP
  (``train --task detect``);
- :class:`Segmentation`: images and masks, per-pixel cross-entropy, mIoU and pixel accuracy
  (``train --task segment``).

A task's ``shown`` names the held-out numbers an epoch's line gives, as percentages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from mobilenets.models.multibox import MultiboxLoss
from mobilenets.models.segmentation_loss import segmentation_loss
from mobilenets.train.detection_metrics import evaluate_detector
from mobilenets.train.metrics import Evaluation, tally_predictions
from mobilenets.train.segmentation_metrics import evaluate_segmenter

COCO_MAX_DETECTIONS = 100  # per image, what COCO's mAP counts


class Task(Protocol):
    """One kind of training: how a batch becomes a loss, and what an epoch reports."""

    def step(
        self, model: nn.Module, batch: Any, device: torch.device, memory_format, autocast: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to backpropagate and the batch's sums (float64; the loss times the
        number of images first, the number of images last)."""
        ...

    def train_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        """The epoch's training record from its summed batches."""
        ...

    def evaluate(
        self, model: nn.Module, loader: Any, device: torch.device, channels_last: bool = False
    ) -> dict[str, Any]:
        """The held-out record of ``model`` (summed over all processes)."""
        ...


def mean_loss(sums: torch.Tensor) -> float:
    """The mean loss of the batches summed so far."""
    return float(sums[0] / sums[-1])


@dataclass
class Classification:
    """Images and class labels; ``criterion`` (cross-entropy) on the logits; top-1 counted."""

    class_names: Sequence[str]
    criterion: nn.Module

    def step(self, model, batch, device, memory_format, autocast):
        images, labels = batch
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(**autocast):
            logits = model(images)
            loss = self.criterion(logits, labels)
        correct = (logits.argmax(1) == labels).sum().double()
        n = torch.tensor(len(labels), dtype=torch.float64, device=device)
        return loss, torch.stack([loss.detach().double() * n, correct, n])

    def train_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        loss, correct, images = sums.tolist()
        return {"train_loss": loss / images, "train_top1": correct / images}

    def evaluate(self, model, loader, device, channels_last=False) -> dict[str, Any]:
        test = self.evaluation(model, loader, device, channels_last)
        return {"test_loss": test.loss, "test_top1": test.top1, "test_top5": test.top5}

    def evaluation(self, model, loader, device, channels_last=False) -> Evaluation:
        tally = tally_predictions(
            model, loader, len(self.class_names), device, channels_last=channels_last
        )
        tally.all_reduce()
        return Evaluation.from_tally(tally, self.class_names)


@dataclass
class Distillation:
    """Images (their labels ignored) and ``teacher``'s logits on them as the target, mean
    squared error: the student learns to answer what the teacher answers."""

    teacher: nn.Module

    def step(self, model, batch, device, memory_format, autocast):
        images = batch[0].to(device, non_blocking=True, memory_format=memory_format)
        with torch.no_grad():
            target = self.teacher(images)
        with torch.autocast(**autocast):
            loss = nn.functional.mse_loss(model(images), target)
        return loss, _count(loss, len(images), device)

    def train_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        return {"train_loss": mean_loss(sums)}

    def evaluate(self, model, loader, device, channels_last=False) -> dict[str, Any]:
        raise NotImplementedError("a distillation is measured by its agreement with the teacher")


def _count(loss: torch.Tensor, images: int, device: torch.device) -> torch.Tensor:
    n = torch.tensor(images, dtype=torch.float64, device=device)
    return torch.stack([loss.detach().double() * n, n])


class _Dense:
    """What detection and segmentation share: a batch of images and targets, the task's
    ``loss`` of the outputs, a loss-only training record, and held-out ``scores`` prefixed
    ``test_``, the model's train/eval mode kept."""

    def step(self, model, batch, device, memory_format, autocast):
        images, targets = batch
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        with torch.autocast(**autocast):
            outputs = model(images)
        loss = self.loss(outputs, targets, device)
        return loss, _count(loss, len(images), device)

    def loss(self, outputs, targets, device) -> torch.Tensor:
        raise NotImplementedError

    def train_metrics(self, sums: torch.Tensor) -> dict[str, float]:
        return {"train_loss": mean_loss(sums)}

    def evaluate(self, model, loader, device, channels_last=False) -> dict[str, Any]:
        was_training = model.training
        scores = self.scores(model, loader, device)
        model.train(was_training)
        return {f"test_{k}": v for k, v in scores.items()}

    def scores(self, model, loader, device) -> dict[str, float]:
        raise NotImplementedError


@dataclass
class Detection(_Dense):
    """Images and targets ``{"boxes", "labels"}`` (a list, one per image); SSD's multibox
    ``criterion`` on SSDLite's outputs; COCO mAP@[.5:.95] and mAP@.5 held out (every
    process scores the whole held-out split: COCO's evaluation does not add up by shards)."""

    criterion: MultiboxLoss
    shown = (("test_map_50", "mAP@.5"), ("test_map", "mAP"))

    def loss(self, outputs, targets, device) -> torch.Tensor:
        cls_logits, bbox_regression = outputs
        return self.criterion(cls_logits.float(), bbox_regression.float(), targets).total

    def scores(self, model, loader, device) -> dict[str, float]:
        # COCO scores the best 100 detections of an image: more would change nothing
        return evaluate_detector(model, loader, device, detections_per_img=COCO_MAX_DETECTIONS)


@dataclass
class Segmentation(_Dense):
    """Images and (H, W) masks of class ids (255 ignored); per-pixel cross-entropy; mIoU and
    pixel accuracy held out (the whole held-out split on every process)."""

    num_classes: int
    shown = (("test_miou", "mIoU"), ("test_pixel_accuracy", "pixels"))

    def loss(self, outputs, targets, device) -> torch.Tensor:
        return segmentation_loss(outputs.float(), targets.to(device, non_blocking=True))

    def scores(self, model, loader, device) -> dict[str, float]:
        return evaluate_segmenter(model, loader, self.num_classes, device)

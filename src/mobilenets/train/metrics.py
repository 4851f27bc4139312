"""Accuracy counted as sums: top-1, top-5, per-class accuracy and the confusion matrix.

Everything is counted in a :class:`Tally` of sums (a confusion matrix, a summed loss, a top-5
count) rather than averaged on the fly, because sums from shards evaluated on different
processes add up exactly: training under torchrun evaluates one shard per rank and all-reduces
the tally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import MobileNetError

TOP_K = 5


@dataclass
class Tally:
    """Sums over predictions; tallies of disjoint shards add up to the tally of their union."""

    confusion: torch.Tensor  # (classes, classes) int64: rows true class, columns predicted
    loss_sum: torch.Tensor  # float64 scalar: summed cross-entropy (no label smoothing)
    top5_correct: torch.Tensor  # int64 scalar

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device | str = "cpu") -> Tally:
        return cls(
            confusion=torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device),
            loss_sum=torch.zeros((), dtype=torch.float64, device=device),
            top5_correct=torch.zeros((), dtype=torch.int64, device=device),
        )

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        num_classes = self.confusion.shape[0]
        predicted = logits.argmax(1)
        self.confusion += torch.bincount(
            labels * num_classes + predicted, minlength=num_classes * num_classes
        ).view(num_classes, num_classes)
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        k = min(TOP_K, num_classes)
        self.top5_correct += (logits.topk(k, 1).indices == labels[:, None]).any(1).sum()

    def all_reduce(self) -> None:
        """Sum the tallies of all ranks in place (a no-op outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            for t in (self.confusion, self.loss_sum, self.top5_correct):
                dist.all_reduce(t)


@dataclass
class Evaluation:
    """Accuracy of a model on a labelled set of images."""

    class_names: list[str]
    num_images: int
    loss: float
    top1: float
    top5: float | None  # None with 5 classes or fewer, where it would always be 1
    per_class: dict[str, float]  # accuracy (recall) of each true class
    confusion: list[list[int]]  # rows true class, columns predicted class
    figure: str | None = None  # where the confusion matrix was drawn, if it was

    @classmethod
    def from_tally(cls, tally: Tally, class_names: Sequence[str]) -> Evaluation:
        confusion = tally.confusion.cpu()
        n = int(confusion.sum())
        if n == 0:
            raise MobileNetError("there are no images to evaluate")
        per_class_total = confusion.sum(1)
        per_class = {
            name: float(confusion[i, i] / total) if total else float("nan")
            for i, (name, total) in enumerate(zip(class_names, per_class_total, strict=True))
        }
        return cls(
            class_names=list(class_names),
            num_images=n,
            loss=float(tally.loss_sum) / n,
            top1=float(confusion.diagonal().sum()) / n,
            top5=float(tally.top5_correct) / n if len(class_names) > TOP_K else None,
            per_class=per_class,
            confusion=confusion.tolist(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "loss": self.loss,
            "top1": self.top1,
            "top5": self.top5,
            "per_class": self.per_class,
            "class_names": self.class_names,
            "confusion": self.confusion,
            "figure": self.figure,
        }


@torch.no_grad()
def tally_predictions(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    num_classes: int,
    device: torch.device,
    channels_last: bool = False,
) -> Tally:
    """Run ``model`` (in eval mode) over ``loader`` and count what it got right."""
    was_training = model.training
    model.eval()
    tally = Tally.zeros(num_classes, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        for images, labels in loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            tally.add(model(images), labels)
    model.train(was_training)
    return tally

"""How good a trained model is: top-1, top-5, per-class accuracy and the confusion matrix; and
what it says about single images, with the preprocessing its run directory records.

Everything is counted in a :class:`Tally` of sums (a confusion matrix, a summed loss, a top-5
count) rather than averaged on the fly, because sums from shards evaluated on different
processes add up exactly: training under torchrun evaluates one shard per rank and all-reduces
the tally.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mobilenets.data import eval_transform, load_image, make_loader
from mobilenets.errors import MobileNetError
from mobilenets.plots import confusion_matrix_figure, save_figure
from mobilenets.runs import load_run, load_run_data

CONFUSION_FILE = "confusion_matrix.png"
TOP_K = 5


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a torch device (None: the GPU when there is one), or a one-line error."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MobileNetError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MobileNetError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


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


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    class_names: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Top-1, top-5, per-class accuracy and the confusion matrix of ``model`` on ``dataset``."""
    if batch_size < 1:
        raise MobileNetError(f"batch size must be at least 1, got {batch_size}")
    device = parse_device(device)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0)
    tally = tally_predictions(model.to(device), loader, len(class_names), device)
    return Evaluation.from_tally(tally, class_names)


def evaluate(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    plot: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Evaluate a run on the held-out split of its training data, or of ``data``.

    The held-out split is rebuilt from what the run recorded (data source, resolution, split
    seed), so it is the very split the run was tested on. The confusion matrix is drawn to
    ``plot`` (default ``RUN_DIR/confusion_matrix.png``).
    """
    run_dir = Path(run_dir)
    device = parse_device(device)
    model, info = load_run(run_dir, map_location=device)
    bundle = load_run_data(info, data)
    result = evaluate_model(model, bundle.test, info.class_names, batch_size, device)
    plot_path = run_dir / CONFUSION_FILE if plot is None else Path(plot)
    title = f"{info.model} on {bundle.name}: top-1 {result.top1:.2%}"
    save_figure(confusion_matrix_figure(result.confusion, result.class_names, title), plot_path)
    return result


@dataclass
class Prediction:
    """The ``top_k`` most probable classes for one image, most probable first."""

    image: str
    classes: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "top": [
                {"class": c, "probability": p}
                for c, p in zip(self.classes, self.probabilities, strict=True)
            ],
        }


@torch.no_grad()
def predict(
    run_dir: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> list[Prediction]:
    """Classify image files with a trained run, preprocessed exactly as the run records.

    Every image is opened and checked before any is classified, so a bad file fails fast
    with its name.
    """
    if not images:
        raise MobileNetError("no images given to predict")
    if top_k < 1:
        raise MobileNetError(f"top_k must be at least 1, got {top_k}")
    device = parse_device(device)
    model, info = load_run(run_dir, map_location=device)
    transform = eval_transform(info.mean, info.std, info.input_size, info.crop_pct)
    inputs = torch.stack([transform(load_image(path)) for path in images])
    k = min(top_k, len(info.class_names))
    predictions = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size].to(device)
        probabilities = model(batch).float().softmax(1).cpu()
        top = probabilities.topk(k, 1)
        for i, (p, idx) in enumerate(zip(top.values, top.indices, strict=True)):
            predictions.append(
                Prediction(
                    image=str(images[start + i]),
                    classes=[info.class_names[j] for j in idx.tolist()],
                    probabilities=p.tolist(),
                )
            )
    return predictions

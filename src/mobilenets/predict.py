"""What a trained run says about single images, preprocessed exactly as its run records."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mobilenets.data import eval_transform, load_image
from mobilenets.devices import parse_device
from mobilenets.errors import MobileNetError
from mobilenets.runs import load_run


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

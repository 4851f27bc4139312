"""How good a trained run is on the held-out split of its data: top-1, top-5, per-class
accuracy and the confusion matrix (counted by :mod:`mobilenets.metrics`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from mobilenets.data import make_loader
from mobilenets.devices import parse_device
from mobilenets.errors import MobileNetError
from mobilenets.metrics import Evaluation, tally_predictions
from mobilenets.plots import confusion_matrix_figure, save_figure
from mobilenets.runs import load_run, load_run_data

CONFUSION_FILE = "confusion_matrix.png"


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

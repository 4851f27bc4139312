"""The training recipe: every setting a run depends on, as one dataclass.

Kept apart from the trainer (and free of torch) because the command line is generated from it:
each field is a ``mobilenets train`` flag, its ``help`` metadata the flag's help, its default
the default shown (:func:`mobilenets.cli.train.register`). A new setting is one field here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mobilenets.errors import MobileNetError

OPTIMIZERS = ("sgd", "rmsprop")
# What ``model`` and ``width_mult`` mean when neither the caller nor an ``init`` run says.
DEFAULT_MODEL = "mobilenet_v2"
DEFAULT_WIDTH_MULT = 0.5
# Fields that say how to run, not what to train: a resumed run takes them from the caller.
RUNTIME_FIELDS = ("out", "resume", "quiet", "num_workers", "device", "stop_after_epoch")


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A field with its command-line help (and any extra argparse keywords, e.g. a metavar)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults train MobileNetV2 on the digits to
    over 98.5% held-out top-1 in a few minutes on two CPU cores."""

    # model, width_mult and resolution left None are --init's run's, else the defaults
    # (mobilenet_v2, 0.5, the dataset's): see mobilenets.train.inherit_init
    model: str | None = _opt(
        None,
        "a registered model, see `mobilenets models` (default: --init's, else mobilenet_v2)",
    )
    data: str | None = _opt(None, "'digits' (default), a CIFAR-10/100 directory or an image folder")
    width_mult: float | None = _opt(None, "width multiplier (default: --init's, else 0.5)")
    resolution: int | None = _opt(
        None, "input size (default: --init's, else the dataset's: 32, image folders 224)"
    )
    small_input: bool | None = _opt(None, "total stride 8 instead of 32 (default: on below 128 px)")
    dropout: float = _opt(0.2, "before the classifier")
    epochs: int = _opt(20, "passes over the train split")
    batch_size: int = _opt(32, "global, split evenly across torchrun processes")
    optimizer: str = _opt(
        "sgd", "SGD with Nesterov momentum, or the papers' RMSprop", choices=OPTIMIZERS
    )
    lr: float = _opt(0.05, "peak learning rate")
    momentum: float = _opt(0.9, "SGD's (RMSprop keeps the papers' 0.9)")
    weight_decay: float = _opt(5e-4, "not applied to BatchNorm parameters and biases")
    label_smoothing: float = _opt(0.1, "of the cross-entropy targets")
    warmup_epochs: float = _opt(1.0, "linear warm-up before the cosine decay")
    augment: bool = _opt(True, "augment the train split")
    # NHWC: 1-6% faster on CPU (benchmarks/train_throughput.py)
    channels_last: bool = _opt(True, "NHWC memory format (faster depthwise convolutions on CPU)")
    seed: int = _opt(0, "seeds weights, data order, augmentation and dropout")
    init: str | None = _opt(
        None, "start from a run directory or a .safetensors file", metavar="WEIGHTS"
    )
    freeze_features: bool = _opt(False, "train the classifier only")
    out: str | None = _opt(None, "run directory (default runs/<model>, or -2, -3, ... if taken)")
    resume: str | None = _opt(
        None,
        "continue a killed run where it stopped; the recipe comes from it",
        metavar="RUN_DIR",
    )
    quiet: bool = _opt(False, "no progress bars (the per-epoch lines still print)")
    num_workers: int | None = _opt(None, "data loader processes", flag="--workers")
    device: str | None = _opt(None, "cpu, cuda, cuda:1 ... (default: a GPU when present)")
    # End early, as a killed run would (resume continues); for tests, not a flag.
    stop_after_epoch: int | None = field(default=None, metadata={"flag": None})

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (
                0 <= self.label_smoothing < 1,
                f"label smoothing must be in [0, 1), got {self.label_smoothing}",
            ),
            (self.warmup_epochs >= 0, f"warm-up epochs must be >= 0, got {self.warmup_epochs}"),
            (
                self.optimizer in OPTIMIZERS,
                f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise MobileNetError(message)

    def recipe(self) -> dict[str, Any]:
        """The fields that define what is trained (recorded in the run, reused on resume)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_FIELDS}

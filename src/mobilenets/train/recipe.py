"""The training recipe: every setting a run depends on, as one dataclass.

Kept apart from the trainer (and free of torch) because the command line is generated from it:
each field is a ``mobilenets train`` flag, its ``help`` metadata the flag's help, its default
the default shown (:func:`mobilenets.cli.train.register`). A new setting is one field here.

Two recipes (:data:`RECIPES`) fill the settings a caller leaves None: ``scratch``, the papers'
and reference trainers' for a network trained from random weights, and ``finetune``, for one
started from trained weights (``init``), which is the default whenever ``init`` is given:

- a new head (a classifier of another class count is initialised afresh) trained alone for
  ``freeze_epochs`` epochs with the trunk frozen, BatchNorm statistics included, so the
  first, large gradients of a random head do not reach the pretrained features;
- then the whole network, the trunk at ``trunk_lr`` (half) the head's learning rate;
- SGD with Nesterov momentum at a peak of 0.01 (the scratch recipe's 0.05 on every layer
  wrecked ImageNet features on elpv: the loss rose from 0.61 to 1.04 in the first epoch and
  held-out top-1 fell to 50.3%, below always answering the larger class), no warm-up (the
  frozen epoch is the warm-up), a cosine decay to zero;
- a class-weighted loss (each class weighs n / (k n_c)), so a rare class counts as much as
  a common one;
- BatchNorm statistics that adapt to the new data once the trunk trains (``freeze_bn``
  off): kept at ImageNet's, elpv's grey cells were all called defective after one trunk
  epoch. The adaptation costs a dip in held-out top-1 in the first trunk epoch (the head was
  fitted to features normalised with ImageNet's statistics), recovered within one or two.

Measured on elpv (``benchmarks/results/finetune_elpv.md``): a trunk at half the head's rate
fits the cells where a tenth under-fitted them, and 48 epochs scored higher than 24 and than
64 (which over-fitted, a moving average of the weights included; at 48 the average scored
two cells under the last step); 224 px did not beat 160 px.
Compared at 128 px, no
alternative beat these values: no frozen epoch tied, a trunk at the head's rate, a head rate
of 0.05 and frozen BatchNorm statistics scored lower; BatchNorm statistics adapting during the
frozen epoch removed the dip but left the head at 63.1% after it (160 px).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mobilenets.errors import MobileNetError

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
# What ``model`` and ``width_mult`` mean when neither the caller nor an ``init`` run says.
DEFAULT_MODEL = "mobilenet_v2"
# ``--task`` -> the registry's task of the models it trains, and its default model
TRAIN_TASKS = {"classify": "classification", "detect": "detection", "segment": "segmentation"}
DEFAULT_MODELS = {
    "classify": DEFAULT_MODEL,
    "detect": "ssdlite_mobilenet_v3_large",
    "segment": "lraspp_mobilenet_v3_large",
}
DEFAULT_WIDTH_MULT = 0.5
# The settings a recipe fills where the caller left them None (see the module docstring).
RECIPES: dict[str, dict[str, Any]] = {
    "scratch": {
        "epochs": 20,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.05,
        "weight_decay": 5e-4,
        "warmup_epochs": 1.0,
        "freeze_epochs": 0,
        "trunk_lr": 1.0,
        "class_weights": False,
        "freeze_bn": False,
        "ema": 0.0,
    },
    "finetune": {
        "epochs": 48,
        "batch_size": 32,
        "optimizer": "sgd",
        "lr": 0.01,
        "weight_decay": 1e-4,
        "warmup_epochs": 0.0,
        "freeze_epochs": 1,
        "trunk_lr": 0.5,
        "class_weights": True,
        "freeze_bn": False,
        "ema": 0.0,
    },
}
# What a dense task's scratch recipe changes, where the caller left it None: more epochs, as an
# epoch of the digit canvases is short (each training digit twice, three to six a canvas:
# TRAIN_PER_CANVAS). Detection: 50. Segmentation: 12 in batches of 16, as its default input
# (the canvases at 320 px, CANVAS_INPUT) costs four times 160 px's per image: twice the
# steps of 32 at the same images per second ended 3 points of mIoU higher at 14 epochs
# (benchmarks/results/segment_ceiling.md), and 12 keep the command, the trunk's pretraining
# included, inside the 15-minute budget with a margin. Both are measured on the slowest
# 2-core machine they ran on (benchmarks/results/train_dense_digits.md).
TASK_RECIPES: dict[str, dict[str, Any]] = {
    "detect": {"epochs": 50},
    "segment": {"epochs": 12, "batch_size": 16},
}
# Epochs a head's trunk first trains as a classifier of the digits when the head trains on the
# digit canvases from random weights (mobilenets.train.trunk): segmentation 10 (the digits
# classifier of benchmarks/results/segment_pretrained_trunk.md, 99.16% held-out top-1, under
# 2 minutes), detection none (its default run already meets its target from random weights).
CANVAS_TRUNK_EPOCHS: dict[str, int] = {"segment": 10}
# Fields that say how to run, not what to train: a resumed run takes them from the caller.
RUNTIME_FIELDS = (
    "out",
    "resume",
    "quiet",
    "num_workers",
    "device",
    "threads",
    "stop_after_epoch",
)


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A field with its command-line help (and any extra argparse keywords, e.g. a metavar)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything a training run depends on; the defaults train MobileNetV2 on the digits to
    over 98.5% held-out top-1 in a few minutes on two CPU cores."""

    task: str = _opt(
        "classify",
        "classify (labels), detect (SSDLite: boxes, COCO mAP) or segment (masks, mIoU); "
        "detect and segment default to the digit canvases",
        choices=tuple(TRAIN_TASKS),
    )
    # model, width_mult and resolution left None are --init's run's, else the defaults
    # (mobilenet_v2, 0.5, the dataset's): see mobilenets.train.finetune
    model: str | None = _opt(
        None,
        "a registered model, see `mobilenets models` (default: --init's, else mobilenet_v2)",
    )
    data: str | None = _opt(
        None,
        "'digits' (default), 'elpv' (extra: pip install \"mobilenets[elpv]\"; 'elpv4': its "
        "four defect probabilities), a CIFAR-10/100 directory or an image folder",
    )
    width_mult: float | None = _opt(None, "width multiplier (default: --init's, else 0.5)")
    resolution: int | None = _opt(
        None, "input size (default: --init's, else the dataset's: 32, image folders 224)"
    )
    small_input: bool | None = _opt(None, "total stride 8 instead of 32 (default: on below 128 px)")
    low_stride: int | None = _opt(
        None,
        "LR-ASPP's detail map: stride 8 (the paper's) or 4, for thin-edged masks "
        "(default: 8, the digit canvases 4)",
        choices=(8, 4),
    )
    dropout: float = _opt(0.2, "before the classifier")
    recipe_name: str | None = _opt(
        None,
        "what fills the settings not given: scratch (random weights) or finetune "
        "(default with --init)",
        flag="--recipe",
        choices=tuple(RECIPES),
    )
    epochs: int | None = _opt(
        None, "passes over the train split (scratch 20, detect 50, segment 12, finetune 48)"
    )
    batch_size: int | None = _opt(
        None, "global, split evenly across torchrun processes (both recipes 32, segment 16)"
    )
    optimizer: str | None = _opt(
        None,
        "SGD with Nesterov momentum, the papers' RMSprop, or AdamW (both recipes: sgd)",
        choices=OPTIMIZERS,
    )
    lr: float | None = _opt(None, "peak learning rate (scratch 0.05, finetune 0.01)")
    momentum: float = _opt(0.9, "SGD's (RMSprop keeps the papers' 0.9)")
    weight_decay: float | None = _opt(
        None, "not applied to BatchNorm parameters and biases (scratch 5e-4, finetune 1e-4)"
    )
    label_smoothing: float = _opt(0.1, "of the cross-entropy targets")
    warmup_epochs: float | None = _opt(
        None, "linear warm-up before the cosine decay (scratch 1, finetune 0)"
    )
    freeze_epochs: int | None = _opt(
        None, "first epochs that train the classifier alone (scratch 0, finetune 1)"
    )
    trunk_lr: float | None = _opt(
        None, "the trunk's learning rate as a share of the head's (scratch 1, finetune 0.5)"
    )
    class_weights: bool | None = _opt(
        None, "weigh each class's loss by n / (k n_c) (scratch off, finetune on)"
    )
    freeze_bn: bool | None = _opt(
        None,
        "keep every BatchNorm layer's running statistics as they start (layers in eval mode; "
        "their scale and shift still train) (scratch off, finetune off)",
    )
    ema: float | None = _opt(
        None,
        "decay per step of an exponential moving average of the weights, which is then "
        "evaluated and saved instead of the last step's (e.g. 0.998); 0: off "
        "(scratch 0, finetune 0)",
    )
    augment: bool = _opt(True, "augment the train split")
    # NHWC: 1-6% faster on CPU (benchmarks/train_throughput.py)
    channels_last: bool = _opt(True, "NHWC memory format (faster depthwise convolutions on CPU)")
    seed: int = _opt(0, "seeds weights, data order, augmentation and dropout")
    init: str | None = _opt(
        None, "start from a run directory or a .safetensors file", metavar="WEIGHTS"
    )
    trunk_epochs: int | None = _opt(
        None,
        "a head on the digit canvases: epochs its trunk first trains as a classifier of the "
        "digits, in OUT/trunk (default: segment 10, detect 0; 0 with --init)",
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
    # None: one per core that other processes leave idle (mobilenets.train.devices.pick_threads),
    # a resumed run the count it ran with; the same seed and thread count give the same run
    threads: int | None = _opt(
        None,
        "intra-op CPU threads (default: one per core other processes leave idle; a resumed "
        "run keeps its own)",
    )
    # End early, as a killed run would (resume continues); for tests, not a flag.
    stop_after_epoch: int | None = field(default=None, metadata={"flag": None})

    def with_recipe(self) -> TrainConfig:
        """This config with every setting left None filled from its recipe: ``recipe_name``,
        or ``finetune`` when it starts from ``init`` weights, else ``scratch``."""
        name = self.recipe_name or ("finetune" if self.init is not None else "scratch")
        if name not in RECIPES:
            raise MobileNetError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
        defaults = dict(RECIPES[name])
        if name == "scratch":
            defaults.update(TASK_RECIPES.get(self.task, {}))
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.dense and self.class_weights is None:
            filled["class_weights"] = False  # no class per image to count
        return dataclasses.replace(self, recipe_name=name, **filled)

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
                0 <= self.freeze_epochs <= self.epochs,
                f"freeze epochs must be in [0, epochs], got {self.freeze_epochs}",
            ),
            (
                self.trunk_lr >= 0 and math.isfinite(self.trunk_lr),
                f"trunk lr must be >= 0, got {self.trunk_lr}",
            ),
            (0 <= self.ema < 1, f"ema decay must be in [0, 1), got {self.ema}"),
            (
                self.optimizer in OPTIMIZERS,
                f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}",
            ),
        ]
        if self.task not in TRAIN_TASKS:
            checks.append(
                (False, f"unknown task {self.task!r}; choose from {', '.join(TRAIN_TASKS)}")
            )
        if self.dense and self.class_weights:
            checks.append((False, "class weights are for classification; drop --class-weights"))
        for ok, message in checks:
            if not ok:
                raise MobileNetError(message)

    def recipe(self) -> dict[str, Any]:
        """The fields that define what is trained (recorded in the run, reused on resume);
        ``task`` only when it is not classification, so a classification run's record reads as
        it did before there were tasks."""
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in RUNTIME_FIELDS and not (k == "task" and v == "classify")
        }

    @property
    def dense(self) -> bool:
        """Whether the task is detection or segmentation (not classification)."""
        return self.task != "classify"

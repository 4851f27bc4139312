"""``mobilenets train``, ``evaluate`` and ``predict``: each parses its flags and calls one
library function (:func:`mobilenets.train.train`, :func:`mobilenets.evaluate.evaluate`,
:func:`mobilenets.evaluate.predict`)."""

from __future__ import annotations

import argparse
import dataclasses

from mobilenets.cli._output import console, print_json, table
from mobilenets.evaluate import evaluate, predict
from mobilenets.train import OPTIMIZERS, TrainConfig, train

DEFAULTS = TrainConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (default: MobileNetV2 on the embedded digits)",
        description="Train a model; under torchrun, one DistributedDataParallel replica per "
        "process. Every flag defaults to the recipe shown.",
    )
    d = DEFAULTS
    p.add_argument(
        "--model", help=f"a registered model, see `mobilenets models` (default {d.model})"
    )
    p.add_argument("--data", help="'digits' (default), a CIFAR-10/100 directory or an image folder")
    p.add_argument("--width-mult", type=float, help=f"width multiplier (default {d.width_mult})")
    p.add_argument("--resolution", type=int, help="input size (default: the dataset's, 32)")
    p.add_argument(
        "--small-input",
        action=argparse.BooleanOptionalAction,
        help="total stride 8 instead of 32 (default: on below 128 px)",
    )
    p.add_argument("--dropout", type=float, help=f"before the classifier (default {d.dropout})")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument(
        "--batch-size", type=int, help=f"global, split across processes (default {d.batch_size})"
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay}")
    p.add_argument("--label-smoothing", type=float, help=f"default {d.label_smoothing}")
    p.add_argument("--warmup-epochs", type=float, help=f"default {d.warmup_epochs}")
    p.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, help="augment the train split (on)"
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="NHWC memory format (default on: faster depthwise convolutions on CPU)",
    )
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--out", help="run directory (default runs/<model>, or -2, -3, ... if taken)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run where it stopped")
    p.add_argument(
        "--init", metavar="WEIGHTS", help="start from a run directory or a .safetensors file"
    )
    p.add_argument("--freeze-features", action="store_true", help="train the classifier only")
    p.add_argument("--workers", type=int, dest="num_workers", help="data loader processes")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("evaluate", help="top-1, top-5, per-class accuracy of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", help="evaluate on this dataset's held-out split instead")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--plot", help="confusion matrix PNG (default RUN_DIR/confusion_matrix.png)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser("predict", help="the most probable classes of images")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    train(TrainConfig(**given))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    result = evaluate(args.run_dir, data=args.data, batch_size=args.batch_size, plot=args.plot)
    if args.json:
        print_json(result.to_dict())
        return 0
    out = console()
    top5 = "" if result.top5 is None else f", top-5 {result.top5:.2%}"
    out.print(f"{result.num_images} images: top-1 {result.top1:.2%}{top5}, loss {result.loss:.4f}")
    rows = [
        [name, str(sum(row)), f"{acc:.2%}"]
        for (name, acc), row in zip(result.per_class.items(), result.confusion, strict=True)
    ]
    out.print(table("Per-class accuracy", ["class", "images", "top-1"], rows, right=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    predictions = predict(args.run_dir, args.images, top_k=args.top_k)
    if args.json:
        print_json([p.to_dict() for p in predictions])
        return 0
    rows = [
        [p.image if rank == 0 else "", str(rank + 1), name, f"{prob:.2%}"]
        for p in predictions
        for rank, (name, prob) in enumerate(zip(p.classes, p.probabilities, strict=True))
    ]
    console().print(table(None, ["image", "rank", "class", "probability"], rows, right=1))
    return 0

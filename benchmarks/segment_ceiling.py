"""What bounds a digit segmenter's mIoU: the head's stride, and where a trained run errs.

LR-ASPP scores pixels at stride 8 and resizes its logits bilinearly to the input, so even
perfect scores per cell blur a digit's strokes, a few pixels wide. The *ceiling* of a head at
stride ``s`` on input ``n`` px is measured on the held-out canvases: each canvas's true mask,
one-hot, averaged over the head's ``n / s`` grid (the best a cell can say of its pixels),
resized back bilinearly and taken class by class (argmax), scored as a run is (mIoU over the
background and the ten digits). A trained run can beat it a little (its logits need not be
averages) but not by much.

Given runs (``mobilenets train --task segment --out RUN``), each is scored on the same
canvases and its errors are split: digit pixels called background, called another digit, and
background called a digit (each a share of the digit pixels), with the IoU of each class::

    .venv/bin/python benchmarks/segment_ceiling.py /tmp/dense/segment

Writes benchmarks/results/segment_ceiling.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from mobilenets.data import make_loader
from mobilenets.data.canvases import CANVAS_CLASSES, digit_canvases
from mobilenets.deploy.images import run_data
from mobilenets.models.segmentation_loss import upsample_logits
from mobilenets.runs import load_run
from mobilenets.train.run_dir import read_metrics
from mobilenets.train.segmentation_metrics import ConfusionMatrix, segmenter_confusion
from mobilenets.train.trunk import TRUNK_DIR

from stamp import write_results

RESULTS = Path(__file__).parent / "results"
INPUTS = (160, 320, 480, 640)
STRIDES = (8, 4)


def ceiling(masks: torch.Tensor, size: int, stride: int) -> dict[str, float]:
    """mIoU and pixel accuracy of the best per-cell average at ``stride`` on ``size`` px input,
    resized bilinearly back to the masks."""
    classes = len(CANVAS_CLASSES)
    matrix = ConfusionMatrix(classes)
    for batch in masks.split(32):
        one_hot = F.one_hot(batch, classes).permute(0, 3, 1, 2).float()
        cells = F.interpolate(one_hot, size=(size // stride,) * 2, mode="area")
        matrix.update(upsample_logits(cells, batch.shape[-2:]).argmax(1), batch)
    return matrix.compute()


def trunk_origin(info) -> str:
    """Where a run's trunk started: random weights, its own digit pretraining, or a run."""
    origin = info.init_from
    if origin is None:
        return "random"
    if Path(origin["path"]).name == TRUNK_DIR:
        return f"digits ({origin['model']}, own)"
    return f"{origin['model']} ({origin.get('data')})"


def epochs_seconds(run_dir: Path, info) -> float:
    """Seconds of epochs of the run and of the digits classifier its trunk started from (its
    own ``trunk/``, or the run ``--init`` named), so runs with and without one compare."""
    origin = info.init_from
    runs = [run_dir]
    if origin is not None and origin.get("data") == "digits":
        runs.append(Path(origin["path"]))
    return sum(h["epoch_time_s"] for directory in runs for h in read_metrics(directory))


def run_errors(run_dir: Path) -> tuple[str, list[str]]:
    """A run's summary row, and its held-out scores with its errors split by kind and its
    IoU per class."""
    model, info = load_run(run_dir)
    data = run_data(info, None)
    loader = make_loader(data.test, 16, shuffle=False, seed=0)
    matrix = segmenter_confusion(model, loader, len(CANVAS_CLASSES))
    scores, counts = matrix.compute(), matrix.matrix.double()
    ink = counts[1:].sum()
    to_background = counts[1:, 0].sum() / ink
    to_digit = (counts[1:, 1:].sum() - counts[1:, 1:].diag().sum()) / ink
    from_background = counts[0, 1:].sum() / ink
    iou = matrix.iou().tolist()
    record, width = info.train_config or {}, info.model_kwargs.get("width_mult")
    detail = info.model_kwargs.get("low_stride", 8)
    errors = f"{to_background:.2%} | {to_digit:.2%} | {from_background:.2%}"
    seconds = epochs_seconds(run_dir, info)
    row = (
        f"| `{run_dir}` | {trunk_origin(info)} | {detail} | {record.get('batch_size')} | "
        f"{record.get('epochs')} | {seconds:.0f} | **{scores['miou']:.4f}** | {errors} |"
    )
    return row, [
        f"## `{run_dir}`",
        "",
        f"{info.model} (width {width}, detail map at stride {detail}), trunk from "
        f"{trunk_origin(info)}, {record.get('epochs')} epochs at {info.resolution} px, batch "
        f"{record.get('batch_size')}: mIoU **{scores['miou']:.4f}**, pixel accuracy "
        f"{scores['pixel_accuracy']:.4f}.",
        "",
        "| class | " + " | ".join(CANVAS_CLASSES) + " |",
        "|---|" + "---:|" * len(CANVAS_CLASSES),
        "| IoU | " + " | ".join(f"{v:.3f}" for v in iou) + " |",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="segmentation runs on the canvases")
    parser.add_argument("--seed", type=int, default=0, help="the canvases' seed (a run's own)")
    parser.add_argument("--results", default="segment_ceiling")
    args = parser.parse_args()
    torch.set_num_threads(2)
    _, test = digit_canvases(args.seed)
    lines = [
        "# What bounds the digit segmenter's mIoU",
        "",
        f"The ceiling of a head that scores pixels at a stride, on the {len(test)} held-out "
        "canvases (seed {}): the true masks averaged over the head's cells, resized back "
        "bilinearly, class by class. LR-ASPP scores pixels at the stride of its detail map: 8 "
        "(the paper's) or 4 (`--low-stride 4`, the canvases' default).".format(args.seed),
        "",
        "| input (px) | " + " | ".join(f"stride {s}: mIoU / pixel acc." for s in STRIDES) + " |",
        "|---:|" + "---:|" * len(STRIDES),
    ]
    for size in INPUTS:
        cells = [ceiling(test.masks, size, s) for s in STRIDES]
        row = " | ".join(f"{c['miou']:.4f} / {c['pixel_accuracy']:.4f}" for c in cells)
        lines.append(f"| {size} | {row} |")
    lines.append("")
    measured = [run_errors(run_dir) for run_dir in args.runs]
    if measured:
        lines += [
            "## The runs",
            "",
            "Each run's held-out mIoU, and its errors as shares of the held-out digit pixels: "
            "digit pixels called background, called another digit, and background pixels "
            "called a digit. Seconds: the run's epochs and those of the digits classifier its "
            "trunk started from, if any.",
            "",
            "| run | trunk from | detail stride | batch | epochs | s | mIoU | to background "
            "| to another digit | from background |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(row for row, _ in measured),
            "",
        ]
    for _, section in measured:
        lines += section
    path = RESULTS / f"{args.results}.md"
    write_results(path, "\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

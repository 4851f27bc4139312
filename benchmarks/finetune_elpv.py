"""Fine-tune torchvision's ImageNet MobileNetV2 on the elpv solar cells, the paper's protocol.

Deitsch et al. (Solar Energy 2019, arXiv 1807.02894) train on 1,968 of the 2,624 cells (75%,
stratified) and test on the other 656: a fine-tuned VGG-19 reaches 88.42% average accuracy,
an SVM on hand-crafted features 82.44%; always answering "functional" scores 68.7%. Target:
MobileNetV2 1.0 fine-tuned from ImageNet at least 88.42%, training in under 60 minutes on
2 CPU cores.

The cells come from the optional extra (``pip install "mobilenets[elpv]"``; the images are
CC BY-NC-SA 4.0, non-commercial). The ImageNet weights are fetched and imported by
``scripts/fetch_imagenet_weights.py``. Training is the command a user types::

    mobilenets train --data elpv --init RUN --out OUT --resolution 160 [--epochs N ...]

in a fresh process, so the wall time includes starting Python and decoding the cells. Extra
arguments after ``--`` go to ``mobilenets train`` as they are (another recipe, say)::

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/finetune_elpv.py
    .venv/bin/python benchmarks/finetune_elpv.py --out /tmp/elpv/final --threads 1 \\
        --compare /tmp/elpv/e0-default /tmp/elpv/e3-nofreeze   # runs trained beforehand

``--out DIR`` keeps the run in DIR (for ``int8_labels.py``); a DIR that holds an unfinished
run is resumed (the same command again after a stop), a finished one is reported as it is
(the wall time is then the sum of its epochs). ``--compare RUN ...`` adds a table of other
runs on elpv (the recipe alternatives, trained with ``mobilenets train --data elpv --init
...``), each with the settings in which it differs from the reported run.

Writes benchmarks/results/<results>.md: the per-epoch training loss and held-out top-1, the
final top-1 per cell type and per defect probability, the wall time, and the comparison.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mobilenets.analysis.cost import profile_model, standard_conv_macs
from mobilenets.data import elpv_table, load_data, make_loader
from mobilenets.evaluation.tta import TTA_VIEWS, TestTimeAugmentation
from mobilenets.runs import load_run, read_run_info
from mobilenets.train.run_dir import read_metrics

from stamp import write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
PAPER = {"VGG-19 fine-tuned (Deitsch et al. 2019)": 0.8842, "SVM, hand-crafted features": 0.8244}
MAJORITY = 1803 / 2624  # always "functional"
TARGET_TOP1, TARGET_MINUTES = 0.8842, 60
LEVELS = ("p=0", "p=1/3", "p=2/3", "p=1")


def imagenet_run(directory: Path) -> Path:
    """torchvision's V2 imported into ``directory`` (fetched once into the cache)."""
    if not (directory / "model.json").is_file():
        script = ROOT / "scripts" / "fetch_imagenet_weights.py"
        subprocess.run([sys.executable, str(script), "--run-dir", str(directory)], check=True)
    return directory


# VGG-19 (Simonyan & Zisserman's configuration E): 3x3 convolutions, "M" a 2x2 max-pool
VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M")  # fmt: skip


def vgg19_macs(size: int = 224, classes: int = 2) -> int:
    """VGG-19's mult-adds at ``size`` px (convolutions and fully connected layers, this
    project's convention): 19.6 G at 224 px."""
    macs, channels = 0, 3
    for layer in VGG19:
        if layer == "M":
            size //= 2
        else:
            macs += standard_conv_macs(3, channels, size, layer)
            channels = layer
    return macs + channels * size * size * 4096 + 4096 * 4096 + 4096 * classes


def cost_line(macs: int, model: str, vgg: int) -> str:
    """Mult-adds per cell with one pass, 4 and 8, against VGG-19's (target: a tenth)."""
    return (
        f"Mult-adds per cell: {macs / 1e6:.0f} M ({model}), {4 * macs / 1e6:.0f} M with "
        f"flips, {8 * macs / 1e6:.0f} M dihedral; VGG-19 at 224 px: {vgg / 1e9:.2f} G, so the "
        f"run costs {macs / vgg:.1%} of it ({8 * macs / vgg:.1%} with 8 views; target: a "
        "tenth or less)."
    )


def per_type_top1(run_dir: Path, views: tuple[str | None, ...] = (None,)) -> dict:
    """For each of ``views`` (None: one pass, else test-time views), held-out top-1 over all
    cells, per cell type (mono, poly) and per defect probability (0, 1/3, 2/3, 1: how often
    the two-class answer is right at each level). The run and the cells are loaded once."""
    info = read_run_info(run_dir)
    model, _ = load_run(run_dir)
    bundle = load_data("elpv", info.resolution, augment=False)
    loader = make_loader(bundle.test, batch_size=64, shuffle=False, seed=0, num_workers=0)
    labels = torch.as_tensor(bundle.test.labels)
    table = elpv_table()
    _, test = table.split(info.data.split_seed if info.data else 0)
    types, probabilities = table.types[test], table.probabilities[test]
    scores = {}
    for name in views:
        answer = model.eval() if name is None else TestTimeAugmentation(model.eval(), name)
        with torch.no_grad():
            predicted = torch.cat([answer(x).argmax(1) for x, _ in loader])
        correct = (predicted == labels).numpy()
        out = {"all": float(correct.mean())}
        for kind in ("mono", "poly"):
            out[kind] = float(correct[types == kind].mean())
        for level, level_name in zip((0, 1 / 3, 2 / 3, 1), LEVELS, strict=True):
            out[level_name] = float(correct[np.isclose(probabilities, level)].mean())
        scores[name] = out
    return scores


SETTINGS = (
    "model",
    "width_mult",
    "init",
    "resolution",
    "epochs",
    "optimizer",
    "lr",
    "trunk_lr",
    "freeze_epochs",
    "freeze_bn",
    "class_weights",
    "weight_decay",
    "augment",
    "label_smoothing",
    "ema",
)
# settings a run recorded before they existed: they were off
UNRECORDED = {"freeze_bn": False, "ema": 0.0}


def settings(run_dir: Path) -> dict[str, object]:
    info = read_run_info(run_dir)
    recipe = {k: info.train_config.get(k) for k in SETTINGS}
    recipe["resolution"] = info.resolution
    recipe["model"] = info.model
    recipe["width_mult"] = info.model_kwargs.get("width_mult")  # as built: None for Lite0
    recipe["init"] = recipe["init"] or "none (random weights)"
    for key, off in UNRECORDED.items():
        if recipe[key] is None:
            recipe[key] = off
    return recipe


def comparison(runs: list[Path], reference: dict[str, object]) -> list[str]:
    """One row per run: what differs from ``reference``, held-out top-1 per epoch, the last,
    and what the run cost: mult-adds per cell at its resolution, minutes of epochs."""
    rows = []
    for run in runs:
        own, history = settings(run), read_metrics(run)
        differs = [f"{k} {own[k]}" for k in SETTINGS if own[k] != reference[k]]
        per_epoch = " / ".join(f"{100 * h['test_top1']:.1f}" for h in history)
        speed = sum(h["images_per_s"] for h in history[1:]) / max(1, len(history) - 1)
        model, info = load_run(run)
        macs = profile_model(model, info.resolution).total_macs
        minutes = sum(h["epoch_time_s"] for h in history) / 60
        rows.append(
            f"| {run.name} | {', '.join(differs) or 'as reported'} | {per_epoch} | "
            f"{history[-1]['test_top1']:.2%} | {max(h['test_top1'] for h in history):.2%} | "
            f"{macs / 1e6:.0f} M | {speed:.0f} | {minutes:.1f} |"
        )
    return [
        "| run | settings that differ from the reported run | held-out top-1 per epoch (%) | "
        "last | best | mult-adds per cell | train img/s | minutes |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


def time_verdict(wall: float, finished: bool) -> str:
    """Whether the time target is met; a partial run's time says nothing of the whole."""
    if wall >= TARGET_MINUTES * 60:
        return "not met"
    return "met" if finished else "unknown: a partial run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", type=Path, help="an imported ImageNet run (default: fetch)")
    parser.add_argument("--epochs", type=int, help="default: the finetune recipe's")
    parser.add_argument(
        "--resolution", type=int, default=160, help="160 (measured above 224 px within the hour)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="finetune_elpv")
    parser.add_argument("--out", type=Path, help="keep the run here (default: a temporary one)")
    parser.add_argument("--compare", type=Path, nargs="+", default=[], metavar="RUN")
    parser.add_argument("--note", type=Path, help="a Markdown file appended to the results")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="report the run in --out as it is, finished or not, without training",
    )
    parser.add_argument("train_args", nargs="*", help="more `mobilenets train` flags, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        init = args.init or imagenet_run(Path(tmp) / "imagenet-v2")
        out = args.out or Path(tmp) / "elpv"
        command = ["mobilenets", "train", "--data", "elpv", "--init", str(init), "--out", str(out)]
        if args.epochs is not None:
            command += ["--epochs", str(args.epochs)]
        if args.resolution is not None:
            command += ["--resolution", str(args.resolution)]
        command += [*args.train_args, "--threads", str(args.threads), "--quiet"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        finished = (out / "model.json").is_file() and read_run_info(out).finished
        resumed = (out / "train_state.pt").is_file()
        start = time.perf_counter()
        if not finished and not args.report_only:
            argv = [sys.executable, "-m", "mobilenets", *command[1:]]
            if resumed:  # a stopped run: continue it with the recipe it recorded
                argv = [sys.executable, "-m", "mobilenets", "train", "--resume", str(out)]
                argv += ["--threads", str(args.threads), "--quiet"]
            subprocess.run(argv, check=True, env=env)
        wall = time.perf_counter() - start
        info = read_run_info(out)
        history = read_metrics(out)
        wall_of_command = not (resumed or finished or args.report_only)
        if not wall_of_command:  # not one command from start to end: its epochs' sum
            wall = sum(h["epoch_time_s"] for h in history)
        top1, *viewed = per_type_top1(out, (None, *TTA_VIEWS)).values()
        with_views = dict(zip(TTA_VIEWS, viewed, strict=True))
        macs = profile_model(load_run(out)[0], info.resolution).total_macs
        width, vgg = info.model_kwargs["width_mult"], vgg19_macs()
        reference = settings(out)
    recipe = info.train_config
    lines = [
        "# Fine-tuning ImageNet MobileNetV2 on elpv (the paper's protocol)",
        "",
        f"Command: `{shlex.join(command)}` (OMP_NUM_THREADS={args.threads}). "
        f"Recipe: {recipe['recipe_name']}, {recipe['epochs']} epochs at {info.resolution} px, "
        f"{recipe['optimizer']} lr {recipe['lr']} (trunk x{recipe['trunk_lr']}), "
        f"{recipe['freeze_epochs']} frozen epoch(s), class weights {recipe['class_weights']}. "
        "Data: elpv-dataset (CC BY-NC-SA 4.0), 1,968 cells trained on, 656 held out.",
        "",
        "| epoch | train loss | train top-1 | held-out top-1 | epoch time (s) |",
        "|---|---|---|---|---|",
        *(
            f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_top1']:.2%} | "
            f"{h['test_top1']:.2%} | {h['epoch_time_s']:.0f} |"
            for h in history
        ),
        "",
        "| held-out top-1 | all | mono | poly | " + " | ".join(LEVELS) + " |",
        "|---|---|---|---|" + "---|" * len(LEVELS),
        *(
            f"| this run{label} | {t['all']:.2%} | {t['mono']:.2%} | {t['poly']:.2%} | "
            + " | ".join(f"{t[level]:.2%}" for level in LEVELS)
            + " |"
            for label, t in [
                ("", top1),
                *(
                    (f", {v} test-time views ({len(TTA_VIEWS[v])} passes)", t)
                    for v, t in with_views.items()
                ),
            ]
        ),
        *(f"| {name} | {value:.2%} | | |" + " |" * len(LEVELS) for name, value in PAPER.items()),
        f"| always 'functional' | {MAJORITY:.2%} | | |" + " |" * len(LEVELS),
        "",
        "(p=...: the cells of each defect probability, scored on the two-class answer, "
        "defective for p >= 0.5. Test-time views: `mobilenets evaluate RUN --tta flips` averages "
        "the softmax over the cell and its three mirror images, `dihedral` over those and their "
        "transposes, all views the cells trained on.)",
        "",
        cost_line(macs, f"{info.model} {width} at {info.resolution} px", vgg),
        "",
        *(
            [f"**Stopped after epoch {info.epoch} of {recipe['epochs']}** (a partial run).", ""]
            if not info.finished
            else []
        ),
        f"Wall time {'of the command' if wall_of_command else '(sum of the epochs)'}: "
        f"{wall / 60:.1f} min, "
        f"{sum(h['images_per_s'] for h in history[1:]) / max(1, len(history) - 1):.1f} "
        "training images/s in the epochs that train the trunk. Targets (MobileNetV2 1.0 from "
        f"ImageNet): top-1 >= {TARGET_TOP1:.2%} with a tenth of VGG-19's mult-adds or less "
        f"(one pass: {'met' if top1['all'] >= TARGET_TOP1 else 'not met'}; "
        + "; ".join(
            f"{views} views, {len(TTA_VIEWS[views])} passes: "
            + (
                "met"
                if t["all"] >= TARGET_TOP1 and len(TTA_VIEWS[views]) * macs <= vgg / 10
                else "not met"
            )
            for views, t in with_views.items()
        )
        + f"), under {TARGET_MINUTES} min ({time_verdict(wall, info.finished)}).",
        "",
    ]
    if args.compare:
        lines += [
            "## Other runs: the recipe's alternatives and other networks",
            "",
            *comparison(args.compare, reference),
            "",
        ]
    if args.note:
        lines += [args.note.read_text().rstrip(), ""]
    path = RESULTS / f"{args.results}.md"
    write_results(path, "\n".join(lines), command=shlex.join(sys.argv))
    print("\n".join(lines))
    print(f"written to {path}")


if __name__ == "__main__":
    main()

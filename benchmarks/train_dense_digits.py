"""``mobilenets train --task detect`` and ``--task segment`` with their defaults on the digit
canvases: held-out mAP@.5 / mAP@[.5:.95] and mIoU / pixel accuracy per epoch, and wall time.

Run under the shared CPU lock, so no other job skews the timings::

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/train_dense_digits.py
    .venv/bin/python benchmarks/train_dense_digits.py --tasks segment --extra --epochs 5

Each run is the command a user types (``mobilenets train --task TASK``, in a fresh process,
into a temporary run directory), so the wall time includes starting Python and making the
canvases. Targets (issue 33): mAP@.5 >= 0.95 and mIoU >= 0.90 on the held-out canvases, each
default ``train`` in under 15 minutes on 2 CPU cores. Writes benchmarks/results/<results>.md.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mobilenets.runs import read_run_info
from mobilenets.train.run_dir import read_metrics
from mobilenets.train.trunk import TRUNK_DIR

from stamp import write_results

RESULTS = Path(__file__).parent / "results"
# task -> (the record's score keys shown, the target key, its target, target seconds)
TASKS = {
    "detect": (("test_map_50", "test_map"), "test_map_50", 0.95, 900.0),
    "segment": (("test_miou", "test_pixel_accuracy"), "test_miou", 0.90, 900.0),
}


def run(args: list[str], out: Path) -> tuple[float, list[dict], dict, list[dict]]:
    """Wall time of one ``mobilenets`` command, its per-epoch records, its recipe, and the
    per-epoch records of the trunk it trained first (empty if none)."""
    command = [sys.executable, "-m", "mobilenets", *args, "--quiet", "--out", str(out)]
    print("$", shlex.join(["mobilenets", *args]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    info = read_run_info(out)
    recipe = {"model": info.model, **(info.train_config or {})}
    return seconds, read_metrics(out), recipe, read_metrics(out / TRUNK_DIR)


def report(
    task: str,
    args: list[str],
    seconds: float,
    history: list[dict],
    recipe: dict,
    trunk: list[dict],
):
    shown, key, target, target_seconds = TASKS[task]
    last = history[-1]
    met = last[key] >= target and seconds <= target_seconds
    stride = recipe.get("low_stride")
    detail = f", detail map at stride {stride}" if stride is not None else ""
    first = ""
    if trunk:
        trunk_seconds = sum(h["epoch_time_s"] for h in trunk)
        first = (
            f"First its trunk learned the digits as a classifier ({len(trunk)} epochs, "
            f"{trunk_seconds:.0f} s, held-out top-1 {trunk[-1]['test_top1']:.2%}); then "
        )
    lines = [
        f"## `mobilenets {shlex.join(args)}`",
        "",
        f"{first}{recipe['model']} (width {recipe['width_mult']}{detail}), {recipe['epochs']} "
        f"epochs, batch {recipe['batch_size']}, {recipe['optimizer']} at lr {recipe['lr']}: "
        f"{key} **{last[key]:.4f}** (target {target}) in **{seconds:.0f} s** for the whole "
        f"command (target {target_seconds:.0f} s): target {'met' if met else 'not met'}.",
        "",
        "| epoch | train loss | " + " | ".join(shown) + " | img/s | s |",
        "|---:|---:|" + "---:|" * len(shown) + "---:|---:|",
    ]
    for h in history:
        scores = " | ".join(f"{h[k]:.4f}" for k in shown)
        lines.append(
            f"| {h['epoch']} | {h['train_loss']:.4f} | {scores} | {h['images_per_s']:.0f} | "
            f"{h['epoch_time_s']:.1f} |"
        )
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--results", default="train_dense_digits", help="results file stem")
    parser.add_argument(
        "--keep", type=Path, help="write the runs here and keep them (to predict, export...)"
    )
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="train flags")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="train_dense_"))
    lines = ["# Detection and segmentation on the digit canvases, default `train`", ""]
    try:
        for task in args.tasks:
            argv = ["train", "--task", task, *args.extra]
            lines += report(task, argv, *run(argv, tmp / task))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    path = RESULTS / f"{args.results}.md"
    write_results(path, "\n".join(lines), command=shlex.join(sys.argv))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

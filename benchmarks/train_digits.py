"""``mobilenets train`` with its defaults: held-out top-1 and wall time, per model.

Run under the shared CPU lock, so no other job skews the timings::

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/train_digits.py
    .venv/bin/python benchmarks/train_digits.py --models mobilenet_v3_small efficientnet_lite0 \
        --results train_digits_families

Each model is trained by the command line a user types (``mobilenets train --model NAME``, in a
fresh process, into a temporary run directory), so the wall time includes starting Python,
importing torch and loading the data. Targets: MobileNetV2 and V1 at least 98.5% top-1 on the
held-out digits in under 5 minutes on 2 CPU cores; MobileNetV3-Small and EfficientNet-Lite0 at
least 99% (no time target: on a machine with a GPU, ``train`` uses it). Writes
benchmarks/results/<results>.md and a PNG of the runs' curves beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from mobilenets.plots import save_figure
from mobilenets.runs import read_run_info
from mobilenets.train.run_dir import read_metrics

from stamp import write_results

RESULTS = Path(__file__).parent / "results"
# model -> (the command's arguments, target top-1, target wall time in seconds or None)
COMMANDS: dict[str, tuple[list[str], float, float | None]] = {
    "mobilenet_v2": (["train"], 0.985, 300.0),
    "mobilenet_v1": (["train", "--model", "mobilenet_v1"], 0.985, 300.0),
    "mobilenet_v3_small": (["train", "--model", "mobilenet_v3_small"], 0.99, None),
    "efficientnet_lite0": (["train", "--model", "efficientnet_lite0"], 0.99, None),
}


def run(args: list[str], out: Path) -> tuple[float, dict]:
    """Wall time of one ``mobilenets`` command and the run it wrote."""
    command = [sys.executable, "-m", "mobilenets", *args, "--quiet", "--out", str(out)]
    print("$", " ".join(["mobilenets", *args]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    history = read_metrics(out)
    return seconds, {"info": read_run_info(out), "history": history}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", choices=list(COMMANDS), default=["mobilenet_v2", "mobilenet_v1"]
    )
    parser.add_argument("--results", default="train_digits", help="results file name, no suffix")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="train_digits_"))
    results = {}
    try:
        for model in args.models:
            results[model] = run(COMMANDS[model][0], tmp / model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for model, (seconds, run_) in results.items():
        info, history = run_["info"], run_["history"]
        recipe = info.train_config
        top1 = info.metrics["test_top1"]
        _, target_top1, target_seconds = COMMANDS[model]
        ok = top1 >= target_top1 and (target_seconds is None or seconds < target_seconds)
        train_s = sum(h["epoch_time_s"] for h in history)
        target = f">= {100 * target_top1:g}%" + (
            f", < {target_seconds:.0f} s" if target_seconds else ""
        )
        rows.append(
            f"| {model} | {info.model_kwargs.get('width_mult', 1.0)} | {info.input_size[1]} | "
            f"{recipe['epochs']} | {100 * top1:.2f}% | "
            f"{100 * max(h['test_top1'] for h in history):.2f}% | {seconds:.0f} s | "
            f"{train_s:.0f} s | {target} | {'yes' if ok else 'NO'} |"
        )
        print(
            f"{model}: top-1 {top1:.2%} in {seconds:.0f} s ({'meets' if ok else 'MISSES'} target)"
        )

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, (_, run_) in results.items():
        history = run_["history"]
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [100 * h["test_top1"] for h in history], marker="o", label=model)
    for target in sorted({COMMANDS[m][1] for m in results}):
        ax.axhline(100 * target, color="grey", linestyle="--", label=f"target {100 * target:g}%")
    ax.set(xlabel="epoch", ylabel="held-out top-1 (%)", ylim=(80, 100))
    ax.set_title("mobilenets train, defaults, embedded digits")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, RESULTS / f"{args.results}.png")

    threads = torch.get_num_threads()
    # ``train`` picks the GPU when there is one: name what ran the epochs.
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    text = "\n".join(
        [
            "# `mobilenets train` defaults on the embedded digits",
            "",
            f"Held-out split: 359 of 1,797 digits. {os.cpu_count()} CPU cores, {threads} torch "
            f"threads, {gpu}, torch {torch.__version__}, {platform.machine()}. Wall time is the "
            "whole command (Python start, imports, data, training, per-epoch evaluation and "
            "checkpoints). Produced by `benchmarks/train_digits.py "
            f"--models {' '.join(args.models)} --results {args.results}`.",
            "",
            "| model | width | px | epochs | final top-1 | best epoch top-1 | wall time "
            "| of which epochs | target | target met |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"![held-out accuracy per epoch]({args.results}.png)",
            "",
        ]
    )
    write_results(RESULTS / f"{args.results}.md", text)
    print(f"wrote {RESULTS / args.results}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

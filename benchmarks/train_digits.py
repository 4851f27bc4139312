"""``mobilenets train`` with its defaults, for MobileNetV2 and V1: held-out top-1 and wall time.

Run under the shared CPU lock, so no other job skews the timings::

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/train_digits.py

Each model is trained by the command line a user types (``mobilenets train`` and
``mobilenets train --model mobilenet_v1``, in a fresh process, into a temporary run directory),
so the wall time includes starting Python, importing torch and loading the data. The target:
at least 98.5% top-1 on the held-out digits in under 5 minutes on 2 CPU cores. Writes
benchmarks/results/train_digits.md and a PNG of both runs' curves beside it.
"""

from __future__ import annotations

import json
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

from mobilenets.io import atomic_write_text
from mobilenets.plots import save_figure
from mobilenets.runs import read_run_info
from mobilenets.train import METRICS_FILE

RESULTS = Path(__file__).parent / "results"
TARGET_TOP1, TARGET_SECONDS = 0.985, 300.0
COMMANDS = {
    "mobilenet_v2": ["train"],
    "mobilenet_v1": ["train", "--model", "mobilenet_v1"],
}


def run(args: list[str], out: Path) -> tuple[float, dict]:
    """Wall time of one ``mobilenets`` command and the run it wrote."""
    command = [sys.executable, "-m", "mobilenets", *args, "--quiet", "--out", str(out)]
    print("$", " ".join(["mobilenets", *args]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    history = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    return seconds, {"info": read_run_info(out), "history": history}


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="train_digits_"))
    results = {}
    try:
        for model, args in COMMANDS.items():
            results[model] = run(args, tmp / model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for model, (seconds, run_) in results.items():
        info, history = run_["info"], run_["history"]
        recipe = info.train_config
        top1 = info.metrics["test_top1"]
        ok = top1 >= TARGET_TOP1 and seconds < TARGET_SECONDS
        train_s = sum(h["epoch_time_s"] for h in history)
        rows.append(
            f"| {model} | {recipe['width_mult']} | {info.input_size[1]} | {recipe['epochs']} | "
            f"{100 * top1:.2f}% | {100 * max(h['test_top1'] for h in history):.2f}% | "
            f"{seconds:.0f} s | {train_s:.0f} s | {'yes' if ok else 'NO'} |"
        )
        print(
            f"{model}: top-1 {top1:.2%} in {seconds:.0f} s ({'meets' if ok else 'MISSES'} target)"
        )

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, (_, run_) in results.items():
        history = run_["history"]
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [100 * h["test_top1"] for h in history], marker="o", label=model)
    ax.axhline(100 * TARGET_TOP1, color="grey", linestyle="--", label="target 98.5%")
    ax.set(xlabel="epoch", ylabel="held-out top-1 (%)", ylim=(80, 100))
    ax.set_title("mobilenets train, defaults, embedded digits")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, RESULTS / "train_digits.png")

    threads = torch.get_num_threads()
    text = "\n".join(
        [
            "# `mobilenets train` defaults on the embedded digits",
            "",
            f"Held-out split: 359 of 1,797 digits. {os.cpu_count()} CPU cores, {threads} torch "
            f"threads, torch {torch.__version__}, {platform.machine()}. Wall time is the whole "
            "command (Python start, imports, data, training, per-epoch evaluation and "
            "checkpoints). Target: top-1 >= 98.5% in < 300 s. Produced by "
            "`benchmarks/train_digits.py`.",
            "",
            "| model | width | px | epochs | final top-1 | best epoch top-1 | wall time "
            "| of which epochs | target met |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "![held-out accuracy per epoch](train_digits.png)",
            "",
        ]
    )
    atomic_write_text(RESULTS / "train_digits.md", text)
    print(f"wrote {RESULTS / 'train_digits.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

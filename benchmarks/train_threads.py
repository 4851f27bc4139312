"""Training speed on a shared machine: images/s of one digits epoch (``mobilenets train
--epochs 1``, the default V2 0.5 at 32 px), with the machine idle and with one competing
CPU-bound process, for each way of choosing the intra-op thread count.

The settings, each a fresh ``mobilenets train`` process:

- ``2 threads`` (before: PyTorch's default of one thread per core, whatever else runs);
- ``2 threads, passive wait`` (the same with ``OMP_WAIT_POLICY=PASSIVE``: threads waiting at a
  barrier sleep instead of spinning);
- ``1 thread``;
- ``auto`` (after: ``mobilenets.train.devices.pick_threads``, one per core others leave idle).

Runs are interleaved (round after round of every setting in both conditions), so a change of
load during the benchmark reaches every setting alike; the median of the rounds is kept. The
competitor is a Python busy loop in its own process, started before the run and stopped after.
Writes benchmarks/results/train_threads.md::

    python benchmarks/train_threads.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from stamp import write_results

RESULTS = Path(__file__).parent / "results" / "train_threads.md"
SETTINGS: dict[str, tuple[list[str], dict[str, str]]] = {
    "2 threads (PyTorch's default)": (["--threads", "2"], {}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": (["--threads", "2"], {"OMP_WAIT_POLICY": "PASSIVE"}),
    "1 thread": (["--threads", "1"], {}),
    "auto (pick_threads)": ([], {}),
}
BUSY_LOOP = "while True: pass"


def one_epoch(flags: list[str], env: dict[str, str], out: Path) -> tuple[float, int]:
    """Images/s of one training epoch in a fresh process, and the threads it ran with."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    environment.update(env)
    command = [sys.executable, "-m", "mobilenets", "train", "--epochs", "1", "--quiet"]
    subprocess.run(
        [*command, *flags, "--out", str(out)],
        env=environment,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return float(record["images_per_s"]), int(record["threads"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rates: dict[tuple[str, str], list[float]] = {}
    threads: dict[tuple[str, str], set[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = 0
        for r in range(args.rounds):
            for condition in ("idle", "one busy process"):
                competitor = (
                    subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
                    if condition != "idle"
                    else None
                )
                try:
                    for name, (flags, env) in SETTINGS.items():
                        run += 1
                        rate, used = one_epoch(flags, env, Path(tmp) / f"run{run}")
                        rates.setdefault((condition, name), []).append(rate)
                        threads.setdefault((condition, name), set()).add(used)
                        print(f"round {r + 1}, {condition}, {name}: {rate:.0f} img/s ({used})")
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
    lines = [
        "# Training speed on a shared machine",
        "",
        "One digits epoch (`mobilenets train --epochs 1`: MobileNetV2 0.5 at 32 px, batch 32, "
        f"1,438 images), median of {args.rounds} interleaved rounds, idle and beside one "
        "CPU-bound process (a Python busy loop). Produced by `benchmarks/train_threads.py`.",
        "",
        "| setting | threads used | idle img/s | busy img/s | busy / idle |",
        "|---|---|---|---|---|",
    ]
    for name in SETTINGS:
        idle = statistics.median(rates[("idle", name)])
        busy = statistics.median(rates[("one busy process", name)])
        used = sorted(threads[("idle", name)] | threads[("one busy process", name)])
        lines.append(
            f"| {name} | {', '.join(map(str, used))} | {idle:.0f} | {busy:.0f} | "
            f"{busy / idle:.2f} |"
        )
    before, after = "2 threads (PyTorch's default)", "auto (pick_threads)"
    for condition in ("idle", "one busy process"):
        ratio = statistics.median(rates[(condition, after)]) / statistics.median(
            rates[(condition, before)]
        )
        lines.append("")
        lines.append(f"{condition}: auto / PyTorch's default = **{ratio:.2f}x**")
    write_results(RESULTS, "\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

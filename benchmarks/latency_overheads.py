"""How stable is the runtime overhead the latency model subtracts? Chains of every size.

The calibration splits what a call's wall time adds to the profiler's kernel times into a part
per node and a part per call, from chains of 1 and 24 depthwise layers of one tiny size
(:func:`mobilenets.latency.profiling.measure_overheads`). The profiler's own bookkeeping sits inside
each kernel's time, so the part per node comes out negative, and a network of 64 nodes turns
each microsecond of it into 64 us, a quarter of MobileNetV3-Small 0.35 at 96 px with 2
threads. Whether the tiny chain stands for the layers of real networks is the question: this
benchmark measures the split on chains of several sizes for each thread count, interleaved,
and writes benchmarks/results/latency_overheads.md::

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/latency_overheads.py
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import onnxruntime as ort

from mobilenets.latency.profiling import measure_overheads
from mobilenets.latency.samples import CHAIN_LENGTH

from stamp import write_results

RESULTS = Path(__file__).resolve().parent / "results"
# (channels, map size): the calibration's tiny chain first, then sizes of real layers
CHAINS = ((8, 8), (16, 16), (32, 16), (32, 28), (64, 28), (96, 14), (144, 24), (32, 56))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="measurements per chain (3)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency_overheads.md")
    parser.add_argument("--note", default="", help="conditions of the run, for the report")
    args = parser.parse_args()
    rows: dict[int, list[tuple[int, int, float, float]]] = {t: [] for t in args.threads}
    for channels, size in CHAINS:
        for threads in args.threads:  # interleaved: a busy spell hits every thread count
            # what the calibration measures, on this chain size: the median of the repeats
            found = measure_overheads(
                threads=threads, channels=channels, size=size, repeats=args.repeats
            )
            rows[threads].append((channels, size, *found))
            print(threads, channels, size, rows[threads][-1][2:], flush=True)
    lines = [
        "# Runtime overhead per node and per call, by chain size",
        "",
        f"onnxruntime {ort.__version__} CPU, fp32, batch 1; {platform.machine()}, "
        f"{platform.processor() or platform.machine()}. {args.note}",
        "",
        f"Command: `python benchmarks/latency_overheads.py --threads "
        f"{' '.join(map(str, args.threads))} --repeats {args.repeats}`",
        "",
        f"Each row: chains of 1 and {CHAIN_LENGTH} depthwise 3x3 layers of the size shown; "
        "wall time of a plain call minus the profiler's kernel times, split into a part per node "
        "and a part per call (at least 0), as the calibration measures them on the first "
        "row's size; the median of the repeats.",
        "",
        "| threads | channels | map | per node us | per call us |",
        "|---|---|---|---|---|",
    ]
    for threads, found in rows.items():
        for channels, size, node, call in found:
            row = f"| {threads} | {channels} | {size} | {node * 1e6:.2f} | {call * 1e6:.1f} |"
            lines.append(row)
    lines += ["", "| threads | per node: median | lowest | highest | per call: median |"]
    lines += ["|---|---|---|---|---|"]
    for threads, found in rows.items():
        nodes = [r[2] * 1e6 for r in found]
        calls = [r[3] * 1e6 for r in found]
        lines.append(
            f"| {threads} | {statistics.median(nodes):.2f} | {min(nodes):.2f} | "
            f"{max(nodes):.2f} | {statistics.median(calls):.1f} |"
        )
    write_results(args.out, "\n".join(lines) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()

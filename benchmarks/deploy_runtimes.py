"""Latency and memory of MobileNetV2 1.0 at 224 in every installed runtime, fp32 and int8.

One interleaved run per batch size (1 and 8) of ``mobilenets.deploy.bench.benchmark``:
PyTorch eager, onnxruntime, OpenVINO (native), ExecuTorch (XNNPACK) and LiteRT (XNNPACK), each
in fp32 and int8, with the fp32 and int8 (VNNI) matmul rates measured in the same run and the
floors they imply, and each runtime's inference memory next to the cost model's. Run under the
shared CPU lock, so no other job of ours skews the timings::

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/deploy_runtimes.py

Writes benchmarks/results/deploy_runtimes.md and .json (``--tag T``: deploy_runtimes_T.*).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from mobilenets.deploy.bench import BenchReport, benchmark
from mobilenets.io import atomic_write_json

from stamp import write_results

RESULTS = Path(__file__).parent / "results"
ONNX_FP32 = "onnxruntime fp32"


def best(report: BenchReport, precision: str):
    """The fastest runtime (not PyTorch) at ``precision``, and its ratio to that floor."""
    timing = min(
        (t for t in report.timings if t.engine.endswith(precision)), key=lambda t: t.median_ms
    )
    floor = report.fp32_floor_ms if precision == "fp32" else report.int8_floor_ms
    return timing, timing.median_ms / floor


def section(report: BenchReport) -> list[str]:
    mib = 2**20
    lines = [
        f"### batch {report.batch}",
        "",
        f"{report.macs:,} mult-adds per image. Matmul 2048x2048 in this run: fp32 "
        f"{report.matmul_gflops:.0f} GFLOP/s, int8 {report.int8_matmul_gops:.0f} GOP/s, so the "
        f"floors per batch are {report.fp32_floor_ms:.2f} ms (fp32) and "
        f"{report.int8_floor_ms:.2f} ms (int8).",
        "",
        "| engine | median ms | p90 ms | x floor | images/s | memory MiB | model MiB | x model "
        "| runtime start-up MiB | planned MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in report.timings:
        floor = report.int8_floor_ms if t.engine.endswith("int8") else report.fp32_floor_ms
        memory = "" if t.memory_bytes is None else f"{t.memory_bytes / mib:.1f}"
        planned = "" if t.planned_bytes is None else f"{t.planned_bytes / mib:.2f}"
        model = "" if t.model_memory_bytes is None else f"{t.model_memory_bytes / mib:.1f}"
        ratio = (
            f"{t.memory_bytes / t.model_memory_bytes:.2f}x"
            if t.memory_bytes is not None and t.model_memory_bytes
            else ""
        )
        startup = "" if t.startup_bytes is None else f"{t.startup_bytes / mib:.1f}"
        lines.append(
            f"| {t.engine} | {t.median_ms:.2f} | {t.p90_ms:.2f} | {t.median_ms / floor:.2f}x | "
            f"{t.images_per_s:.1f} | {memory} | {model} | {ratio} | {startup} | {planned} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--tag", help="write deploy_runtimes_TAG.md, a rerun beside the others")
    args = parser.parse_args()
    name = "deploy_runtimes" + (f"_{args.tag}" if args.tag else "")
    load_before = os.getloadavg()[0]
    reports = [
        benchmark(
            "mobilenet_v2",
            resolution=224,
            batch=int(b),
            threads=args.threads,
            iterations=args.iterations,
            rounds=10,
        )
        for b in args.batches.split(",")
    ]
    first = reports[0]
    load_after = os.getloadavg()[0]
    lines = [
        "# MobileNetV2 1.0 at 224 in every runtime, fp32 and int8",
        "",
        f"`flock /tmp/mobilenets-cpu.lock python benchmarks/deploy_runtimes.py "
        f"--iterations {args.iterations} --batches {args.batches}"
        f"{f' --tag {args.tag}' if args.tag else ''}` on {platform.machine()}, "
        f"{args.threads} threads, {args.iterations} timed calls per engine in 10 interleaved "
        f"rounds; load average {load_before:.1f} before and "
        f"{load_after:.1f} after (cores: {os.cpu_count()}); compare engines within one table, "
        "not across runs.",
        "int8 programs are calibrated on random inputs (ranges do not change speed; quality is "
        "in deploy_int8_quality.md). Memory: each program in a fresh process "
        "(`mobilenets.deploy.memory_probe`), after the runtime was started on a one-layer "
        "program: the resident set's peak growth while the program is loaded and run twice "
        "(weights, packed weight copies, activations and workspaces); runtime start-up: what "
        "that one-layer program added (the runtime's code pages, thread pools, caches: paid "
        "once per process, whatever the model); model MiB: the cost model's peak activations "
        "at that precision plus the weights; planned: the buffers ExecuTorch's memory planner "
        "laid out (only the delegate's input and output: XNNPACK plans its activations "
        "itself).",
        "",
    ]
    for report in reports:
        lines += section(report)
    fp32, fp32_ratio = best(first, "fp32")
    int8, int8_ratio = best(first, "int8")
    speedup = first.timing(ONNX_FP32).median_ms / int8.median_ms
    measured = [t for t in first.timings if t.memory_bytes is not None and t.model_memory_bytes]
    within = [t.engine for t in measured if t.memory_bytes <= 2 * t.model_memory_bytes]
    lines += [
        "### targets (batch 1)",
        "",
        f"- best fp32: {fp32.engine}, {fp32.median_ms:.2f} ms = {fp32_ratio:.2f}x the fp32 floor "
        f"(target <= 1.3x: {'met' if fp32_ratio <= 1.3 else 'MISSED'})",
        f"- best int8: {int8.engine}, {int8.median_ms:.2f} ms = {speedup:.2f}x faster than "
        f"onnxruntime fp32 (target >= 2.5x: {'met' if speedup >= 2.5 else 'MISSED'}); "
        f"{int8_ratio:.2f}x the int8 matmul floor",
        f"- memory within 2x of the cost model's activations + weights: "
        f"{', '.join(within) or 'none'} ({len(within)} of {len(measured)} programs)",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / f"{name}.md", "\n".join(lines))
    atomic_write_json(RESULTS / f"{name}.json", [r.to_dict() for r in reports])
    print("\n".join(lines))


if __name__ == "__main__":
    main()

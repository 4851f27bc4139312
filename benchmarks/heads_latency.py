"""Latency of the heads at their papers' sizes in every runtime, fp32 and int8, against the
matmul floors and the latency model (issue 33).

SSDLite on MobileNetV3-Large at 320x320 (91 classes, torchvision's
``ssdlite320_mobilenet_v3_large``) and LR-ASPP on MobileNetV3-Large at 520x520 (21 classes),
batch 1, 2 threads, in one run: each model through ``mobilenets.deploy.bench.benchmark``
(PyTorch eager, onnxruntime, OpenVINO, ExecuTorch, LiteRT; fp32 and int8, interleaved rounds;
a detector's program holds its raw outputs, decoding untimed), the fp32 and int8 matmul
rates measured in the same run, and the latency model's prediction for onnxruntime fp32
(``mobilenets cost MODEL --latency``: the machine's cached calibration, made first if
there is none). Target: the prediction within 15% of the measured onnxruntime fp32 median.
Run it with nothing else on the machine::

    .venv/bin/python benchmarks/heads_latency.py

Writes benchmarks/results/heads_latency.md and .json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from mobilenets.analysis.cost import profile_model
from mobilenets.deploy.bench import BenchReport, benchmark
from mobilenets.io import atomic_write_json
from mobilenets.latency.calibration import load_calibration
from mobilenets.latency.model import predict_latency
from mobilenets.models import create_model

from stamp import write_results

RESULTS = Path(__file__).parent / "results"
HEADS = (("ssdlite_mobilenet_v3_large", 320), ("lraspp_mobilenet_v3_large", 520))
RUNTIME = "onnxruntime"  # the runtime the latency model is calibrated for
PREDICTED_ENGINE = "onnxruntime fp32"
TARGET = 0.15  # the prediction within this fraction of the measured median


def section(report: BenchReport, predicted_ms: float) -> list[str]:
    measured = report.timing(PREDICTED_ENGINE).median_ms
    error = predicted_ms / measured - 1
    lines = [
        f"## {report.model} at {report.resolution}x{report.resolution}",
        "",
        f"{report.macs:,} mult-adds. Matmul 2048x2048 in this run: fp32 "
        f"{report.matmul_gflops:.0f} GFLOP/s, int8 {report.int8_matmul_gops:.0f} GOP/s: floors "
        f"{report.fp32_floor_ms:.2f} ms (fp32) and {report.int8_floor_ms:.2f} ms (int8).",
        "",
        "| engine | median ms | p90 ms | x its floor | images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    # without VNNI (AVX2 only) PyTorch's int8 matmul is slower than its fp32 one: no floor
    int8_floor = report.int8_floor_ms
    if not report.int8_matmul_gops or report.int8_matmul_gops < report.matmul_gflops:
        int8_floor = report.fp32_floor_ms
        lines[2] += " This CPU's int8 matmul is slower than its fp32 one (no VNNI): int8 rows "
        lines[2] += "are compared with the fp32 floor."
    for t in report.timings:
        floor = int8_floor if t.engine.endswith("int8") else report.fp32_floor_ms
        lines.append(
            f"| {t.engine} | {t.median_ms:.2f} | {t.p90_ms:.2f} | {t.median_ms / floor:.2f}x | "
            f"{t.images_per_s:.1f} |"
        )
    lines += [
        "",
        f"Latency model ({RUNTIME} fp32, {report.threads} threads): **{predicted_ms:.2f} ms** "
        f"predicted, {measured:.2f} ms measured (median): {error:+.1%} (target within "
        f"{TARGET:.0%}: {'met' if abs(error) <= TARGET else 'MISSED'}).",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    calibration = load_calibration(RUNTIME, args.threads, say=print)
    results = []
    for name, resolution in HEADS:
        model = create_model(name)
        predicted_ms = 1e3 * predict_latency(profile_model(model, resolution), calibration).seconds
        report = benchmark(
            name,
            resolution=resolution,
            threads=args.threads,
            iterations=args.iterations,
            rounds=args.rounds,
            memory=False,
        )
        results.append((report, predicted_ms))
        print(f"{name} {resolution}: done", flush=True)
    lines = [
        "# Heads in every runtime: SSDLite-V3L at 320, LR-ASPP-V3L at 520",
        "",
        f"Batch 1, {args.threads} threads, {args.iterations} timed calls per engine in "
        f"{args.rounds} interleaved rounds; load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after (cores: {os.cpu_count()}); wall time "
        f"{(time.perf_counter() - start) / 60:.1f} min. int8 programs are calibrated on random "
        "inputs (ranges do not change speed; accuracy is in int8_labels.md). The latency "
        f"model's calibration was made {calibration.created} for {RUNTIME}.",
        "",
    ]
    for report, predicted_ms in results:
        lines += section(report, predicted_ms)
    write_results(RESULTS / "heads_latency.md", "\n".join(lines))
    atomic_write_json(
        RESULTS / "heads_latency.json",
        [{**r.to_dict(), "predicted_ms": p} for r, p in results],
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

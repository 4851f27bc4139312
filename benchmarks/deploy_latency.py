"""Deployment latency and int8 accuracy: MobileNetV2 and V1 at 224x224, batch 1, 2 threads.

Run under the shared CPU lock, so no other job skews the timings::

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/deploy_latency.py

It measures, in one run:

1. latency of PyTorch eager (NCHW, channels_last), BN folded, onnxruntime fp32 and int8 for
   V2 1.0 and V1 1.0 at 224, batch 1, 2 threads, beside the fp32 matmul rate of this machine;
2. the int8 encodings onnxruntime can run (QDQ or QOperator, weights per channel or per tensor,
   depthwise kept in fp32), timed side by side on V2 1.0 at 224;
3. what each does to top-1 on the digits' held-out split, for V2 and V1 trained on the digits
   (runs given with --runs, or trained here with the default recipe), and the int8 rounding
   error of depthwise and pointwise weights per tensor and per channel: why per channel.

Writes benchmarks/results/deploy_latency.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mobilenets.analysis.cost import layer_kind
from mobilenets.deploy import create_session, export_model, fold_batchnorm, quantize_onnx
from mobilenets.deploy.bench import (
    BenchReport,
    benchmark,
    matmul_gflops,
    measure,
    summarize,
    torch_threads,
)
from mobilenets.deploy.quantize import quantize_model
from mobilenets.deploy.runtime import (
    DEFAULT_PROVIDER,
    batches,
    run_session,
    short_provider_name,
)
from mobilenets.models import create_model
from mobilenets.runs import RunInfo, load_run, load_run_data
from mobilenets.train.loop import train
from mobilenets.train.recipe import TrainConfig

from stamp import write_results

RESULTS = Path(__file__).parent / "results" / "deploy_latency.md"
ISSUE_MATMUL_GFLOPS = 107.0  # the figure the issue quotes for "this 2-core AVX2 machine"
THREADS = 2
RESOLUTION = 224
# onnxruntime's CPU kernels. (OpenVINO used to be timed here as onnxruntime's plugin provider;
# it is now a target of its own, timed by benchmarks/deploy_runtimes.py.)
PROVIDERS = [DEFAULT_PROVIDER]


def engine_name(precision: str, provider: str = DEFAULT_PROVIDER) -> str:
    """The bench's name for onnxruntime at ``precision``."""
    return " ".join(filter(None, ("onnxruntime", precision)))


# (label, format, per_channel, fp32_depthwise)
VARIANTS = [
    ("QDQ, per channel", "qdq", True, False),
    ("QDQ, per tensor", "qdq", False, False),
    ("QDQ, per tensor, depthwise fp32", "qdq", False, True),
    ("QOperator, per channel", "qoperator", True, False),
    ("QOperator, per tensor", "qoperator", False, False),
]


def latency_section(iterations: int) -> tuple[list[str], list[BenchReport]]:
    lines, reports = [], []
    for name in ("mobilenet_v2", "mobilenet_v1"):
        print(f"timing {name} ...", file=sys.stderr)
        report = benchmark(
            name,
            resolution=RESOLUTION,
            batch=1,
            threads=THREADS,
            iterations=iterations,
            rounds=10,
            formats=["onnx"],
        )
        reports.append(report)
        eager = report.timing("PyTorch eager NCHW").median_ms
        issue_floor = 2 * report.macs / (ISSUE_MATMUL_GFLOPS * 1e9) * 1e3
        lines += [
            f"### {name} 1.0, {RESOLUTION}x{RESOLUTION}, batch 1, {THREADS} threads",
            "",
            f"{report.macs:,} mult-adds. fp32 matmul (2048x2048, {THREADS} threads, this run): "
            f"**{report.matmul_gflops:.0f} GFLOP/s**, so the fp32 floor is "
            f"{report.fp32_floor_ms:.2f} ms (at the issue's {ISSUE_MATMUL_GFLOPS:.0f} GFLOP/s: "
            f"{issue_floor:.2f} ms).",
            "",
            "| engine | median ms | p90 ms | images/s | GMAC/s | vs eager NCHW |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {t.engine} | {t.median_ms:.2f} | {t.p90_ms:.2f} | {t.images_per_s:.1f} | "
            f"{t.gmacs_per_s:.1f} | {eager / t.median_ms:.2f}x |"
            for t in report.timings
        ]
        lines.append("")
        for provider in PROVIDERS:
            fp32 = report.timing(engine_name("fp32", provider)).median_ms
            int8 = report.timing(engine_name("int8", provider)).median_ms
            label = engine_name("", provider)
            lines += [
                f"- {label}: fp32 **{eager / fp32:.2f}x** faster than PyTorch eager NCHW "
                f"(target >= 3x: {'met' if eager / fp32 >= 3 else 'MISSED'}); "
                f"**{fp32 / report.fp32_floor_ms:.2f}x** the fp32 floor measured here (target "
                f"<= 1.6x: {'met' if fp32 / report.fp32_floor_ms <= 1.6 else 'MISSED'}; "
                f"{fp32 / issue_floor:.2f}x the issue's); int8 **{fp32 / int8:.2f}x** faster "
                f"than its fp32 (target >= 2x: {'met' if fp32 / int8 >= 2 else 'MISSED'})",
            ]
        lines.append("")
    return lines, reports


def encoding_section(iterations: int) -> list[str]:
    """The int8 encodings side by side on V2 1.0 at 224 (random calibration: speed only),
    on every provider."""
    print("timing int8 encodings ...", file=sys.stderr)
    model = create_model("mobilenet_v2").eval()
    info = RunInfo("mobilenet_v2", {}, [str(i) for i in range(1000)])
    x = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    calibration = torch.utils.data.TensorDataset(torch.randn(8, 3, RESOLUTION, RESOLUTION))
    engines, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_model(model, info, fp32, [x])
        paths = {"fp32": fp32}
        for label, fmt, per_channel, fp32_dw in VARIANTS:
            paths[label] = Path(tmp) / f"{fmt}-{per_channel}-{fp32_dw}.onnx"
            quantize_model(fp32, paths[label], calibration, per_channel, fmt, fp32_dw)
        feed = {"input": x.numpy()}
        for label, path in paths.items():
            sizes[label] = path.stat().st_size
            for provider in PROVIDERS:
                session = create_session(path, THREADS, provider)
                engines[label, provider] = lambda s=session: s.run(None, feed)
        with torch_threads(THREADS):
            times = measure(engines, warmup=10, iterations=iterations, rounds=10)
    medians = {key: summarize("", t, 1, None).median_ms for key, t in times.items()}
    names = [short_provider_name(p) for p in PROVIDERS]
    lines = [
        "### int8 encodings, MobileNetV2 1.0 at 224, batch 1, 2 threads",
        "",
        "All U8S8 (uint8 activations, int8 weights), MinMax calibration. Timed side by side; "
        "median ms, and the speed-up over the same provider's fp32.",
        "",
        "| encoding | " + " | ".join(f"{n} ms | {n} vs fp32" for n in names) + " | file size |",
        "|---|" + "---:|---:|" * len(names) + "---:|",
    ]
    for label in paths:
        cells = [
            f"{medians[label, p]:.2f} | {medians['fp32', p] / medians[label, p]:.2f}x"
            for p in PROVIDERS
        ]
        lines.append(f"| {label} | {' | '.join(cells)} | {sizes[label] / 2**20:.2f} MiB |")
    return [*lines, ""]


def op_breakdown(path: Path, x: torch.Tensor, runs: int = 50) -> dict[str, float]:
    """Milliseconds per run that onnxruntime spends in depthwise convolutions, in the other
    convolutions (pointwise and the stem) and in everything else, from its own profiler.

    Kernels are classified by their node in onnxruntime's optimized graph (saved beside the
    profile): a convolution with more than one group is depthwise here.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.enable_profiling = True
    options.log_severity_level = 3  # not the warning that the saved graph is CPU-specific
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        groups = {
            node.name: next((a.i for a in node.attribute if a.name == "group"), 1)
            for node in onnx.load(options.optimized_model_filepath).graph.node
            if "Conv" in node.op_type
        }
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals = {"depthwise": 0.0, "pointwise + stem": 0.0, "other": 0.0}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"].removesuffix("_kernel_time")
        if node not in groups:
            kind = "other"
        else:
            kind = "depthwise" if groups[node] > 1 else "pointwise + stem"
        totals[kind] += event["dur"] / 1e3 / runs
    return totals


def profile_section() -> list[str]:
    print("profiling onnxruntime ...", file=sys.stderr)
    lines = [
        "### Where onnxruntime spends its time (its profiler, 50 runs, batch 1, 2 threads)",
        "",
        "| model | engine | depthwise ms | pointwise + stem ms | other ms |",
        "|---|---|---:|---:|---:|",
    ]
    for name in ("mobilenet_v2", "mobilenet_v1"):
        model = create_model(name).eval()
        info = RunInfo(name, {}, [str(i) for i in range(1000)])
        x = torch.randn(1, 3, RESOLUTION, RESOLUTION)
        calibration = torch.utils.data.TensorDataset(torch.randn(8, 3, RESOLUTION, RESOLUTION))
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            export_model(model, info, fp32, [x])
            quantize_model(fp32, int8, calibration)
            for engine, path in (("fp32", fp32), ("int8 QDQ per channel", int8)):
                t = op_breakdown(path, x)
                lines.append(
                    f"| {name} | {engine} | {t['depthwise']:.2f} | {t['pointwise + stem']:.2f} "
                    f"| {t['other']:.2f} |"
                )
    return [*lines, ""]


def weight_error(model: torch.nn.Module) -> dict[tuple[str, str], float]:
    """Mean signal-to-quantization-noise ratio (dB) of the folded conv weights, int8 symmetric,
    per tensor and per output channel, for depthwise and pointwise layers."""
    folded = fold_batchnorm(model)
    sqnr: dict[tuple[str, str], list[float]] = {}
    for module in folded.modules():
        kind = layer_kind(module)
        if kind not in ("depthwise", "pointwise"):
            continue
        w = module.weight.detach().double().flatten(1)
        for scheme, amax in (
            ("per tensor", w.abs().max().expand(len(w), 1)),
            ("per channel", w.abs().amax(dim=1, keepdim=True)),
        ):
            scale = amax.clamp_min(1e-12) / 127
            noise = w - (w / scale).round().clamp(-127, 127) * scale
            ratio = 10 * torch.log10(w.pow(2).sum() / noise.pow(2).sum().clamp_min(1e-30))
            sqnr.setdefault((kind, scheme), []).append(float(ratio))
    return {key: float(np.mean(values)) for key, values in sqnr.items()}


def logit_sqnr(fp32: Path, int8: Path, dataset, provider: str = DEFAULT_PROVIDER) -> float:
    reference, quantized = create_session(fp32), create_session(int8, provider=provider)
    signal = noise = 0.0
    for images, _ in batches(dataset):
        expected = run_session(reference, images).astype(np.float64)
        signal += float((expected**2).sum())
        noise += float(((run_session(quantized, images) - expected) ** 2).sum())
    return 10 * np.log10(signal / max(noise, 1e-30))


def accuracy_section(runs: list[Path], calibration: int) -> list[str]:
    lines = [
        f"### int8 top-1 on the digits' held-out split ({calibration} calibration images)",
        "",
        "Logit SQNR: the fp32 logits' energy over that of their int8 error, over the whole "
        "held-out split (dB; more sensitive than top-1, which saturates on the digits).",
        "",
        "| run | encoding | fp32 top-1 | int8 top-1 | drop (points) | logit SQNR dB | "
        "fp32 size | int8 size |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    errors = []
    for run in runs:
        model, info = load_run(run)
        label = f"{info.model} {info.model_kwargs.get('width_mult', 1.0):g} ({run.name})"
        test = load_run_data(info).test
        print(f"quantizing {label} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            variants = [(*v, DEFAULT_PROVIDER) for v in VARIANTS]
            for encoding, fmt, per_channel, fp32_dw, provider in variants:
                r = quantize_onnx(
                    run,
                    calibration=calibration,
                    out=Path(tmp) / "int8.onnx",
                    per_channel=per_channel,
                    quant_format=fmt,
                    fp32_depthwise=fp32_dw,
                    provider=provider,
                )
                sqnr = logit_sqnr(r.fp32_path, r.path, test, provider)
                lines.append(
                    f"| {label} | {encoding} | {r.fp32_top1:.2%} | {r.int8_top1:.2%} | "
                    f"{r.top1_drop:+.2f} | {sqnr:.1f} | {r.fp32_bytes / 1024:.0f} KiB | "
                    f"{r.int8_bytes / 1024:.0f} KiB ({r.size_ratio:.2f}x) |"
                )
        errors.append((label, weight_error(model)))
    lines += [
        "",
        "Weight rounding error of the BN-folded convolutions, int8 symmetric (mean SQNR over "
        "layers, dB; higher is better, every 6 dB is one bit):",
        "",
        "| run | depthwise per tensor | depthwise per channel | pointwise per tensor | "
        "pointwise per channel |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, e in errors:
        lines.append(
            f"| {label} | {e['depthwise', 'per tensor']:.1f} | {e['depthwise', 'per channel']:.1f}"
            f" | {e['pointwise', 'per tensor']:.1f} | {e['pointwise', 'per channel']:.1f} |"
        )
    return [*lines, ""]


def trained_runs(runs: list[str] | None, workdir: Path) -> list[Path]:
    if runs:
        return [Path(r) for r in runs]
    print("training V2 and V1 on the digits (default recipe) ...", file=sys.stderr)
    return [
        train(TrainConfig(model=name, out=str(workdir / name), quiet=True))
        for name in ("mobilenet_v2", "mobilenet_v1")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", help="digits run directories (default: train two)")
    parser.add_argument("--iterations", type=int, default=300, help="timed calls per engine")
    parser.add_argument("--calibration", type=int, default=256, help="calibration images")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        runs = trained_runs(args.runs, Path(workdir))
        latency, _ = latency_section(args.iterations)
        encodings = encoding_section(args.iterations)
        profile = profile_section()
        accuracy = accuracy_section(runs, args.calibration)
    header = [
        "# Deployment: latency and int8 accuracy",
        "",
        f"`flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/deploy_latency.py "
        f"--iterations {args.iterations} --calibration {args.calibration}`; "
        f"{platform.processor() or platform.machine()}, {THREADS} threads, torch "
        f"{torch.__version__}, onnxruntime {ort.__version__}. Latencies are per batch, medians "
        f"over {args.iterations} timed calls per engine in 10 interleaved rounds after warm-up.",
        f"Re-measured fp32 matmul at the end: {matmul_gflops(THREADS):.0f} GFLOP/s.",
        "",
    ]
    text = "\n".join([*header, *latency, *profile, *encodings, *accuracy])
    write_results(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()

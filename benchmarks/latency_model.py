"""The latency model against onnxruntime: whole models and layer by layer.

For every registered model over widths and resolutions (default: the papers' dials, 0.35-1.4
and 96-224), exports the model with deploy's exporter (BatchNorm folded, fp32), times it in
onnxruntime, and compares with the latency model's prediction from the cached calibration
(made first when there is none). Every model is timed once per round and the rounds go over
the whole grid, so a busy period of the shared machine is spread over all models; a model's
latency is its fastest call over all rounds. Per layer, onnxruntime's profiler gives each
node's kernel time, matched in execution order to the priced layers.

Reports the median and worst whole-model error, the median per-layer error (per kind too)
and Spearman's rank correlation; writes benchmarks/results/latency_model.md.

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/latency_model.py
"""

import argparse
import math
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort
import torch
from scipy.stats import spearmanr

from mobilenets.analysis.cost import profile_model
from mobilenets.cli._output import fmt_percent
from mobilenets.deploy.targets.onnx import write_onnx
from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.latency.calibration import load_calibration
from mobilenets.latency.machine import DEFAULT_RUNTIME, RUNTIMES, cache_path
from mobilenets.latency.model import LatencyPrediction, predict_latency
from mobilenets.latency.profiling import profile_onnx
from mobilenets.latency.samples import takes_width
from mobilenets.models import create_model, list_models

from stamp import write_results

RESULTS = Path(__file__).resolve().parent / "results"
WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.4)
RESOLUTIONS = (96, 128, 160, 192, 224)
# The profile's op types each priced kind's kernel shows up as (a convolution's by default).
KERNEL_OPS = {
    "fc": ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul"),
    "se": ("ReduceMean",),  # its pooling; its scale and conversions are added (match_nodes)
    "global pool": ("ReduceMean", "GlobalAveragePool"),
    "max pool": ("MaxPool",),
    "silu": ("QuickGelu",),
}
CONV_OPS = ("Conv", "FusedConv")
# Nodes no priced layer is matched to: layout conversions, reshapes, an SE gate's scale (added
# to the gate), the SiLU inside EfficientNet's gate (on a 1x1 map), a residual sum left unfused.
UNPRICED_OPS = ("ReorderInput", "ReorderOutput", "Reshape", "Flatten", "Mul", "QuickGelu", "Add")


@dataclass
class Case:
    model: str
    width: float
    resolution: int
    macs: int
    prediction: LatencyPrediction
    path: Path
    wall_s: float = float("inf")
    nodes: dict[int, float] = field(default_factory=dict)  # priced layer index -> fastest s
    matched: bool = False

    @property
    def label(self) -> str:
        return f"{self.model} {self.width:g} @{self.resolution}"

    @property
    def error(self) -> float:
        return self.prediction.seconds / self.wall_s - 1


def match_nodes(case: Case, nodes: list[tuple[str, str, float]]) -> dict[int, float] | None:
    """Each priced kernel's profiled time, by walking the nodes in execution order and taking
    the next one of the kernel's op type; None if a node that is not :data:`UNPRICED_OPS` is
    left over or skipped, or a kernel finds no node.

    A squeeze-and-excitation gate was calibrated in place with its scale and the two layout
    conversions around them (out of the blocked layout before its pooling, back into it after
    its scale), so its profiled time is those four nodes.
    """
    ops = [op for _, op, _ in nodes]
    matched: dict[int, float] = {}
    at = 0
    for i, (layer, _) in enumerate(case.prediction.kernels()):
        wanted = KERNEL_OPS.get(layer.kind, CONV_OPS)
        while at < len(nodes) and ops[at] not in wanted:
            if ops[at] not in UNPRICED_OPS:
                return None
            at += 1
        if at == len(nodes):
            return None
        matched[i] = nodes[at][2]
        if layer.kind == "se":
            matched[i] += _gate_rest_s(nodes, ops, at)
        at += 1
    if any(op not in UNPRICED_OPS for op in ops[at:]):
        return None
    return matched


def _gate_rest_s(nodes: list[tuple[str, str, float]], ops: list[str], pool: int) -> float:
    """The seconds of an SE gate's scale and of the conversions around the gate, its pooling
    at ``nodes[pool]`` (``ops``: the nodes' op types)."""
    seconds = nodes[pool - 1][2] if pool and ops[pool - 1] == "ReorderOutput" else 0.0
    scale = next((k for k in range(pool + 1, len(nodes)) if ops[k] == "Mul"), None)
    if scale is not None:
        seconds += nodes[scale][2]
        if scale + 1 < len(nodes) and ops[scale + 1] == "ReorderInput":
            seconds += nodes[scale + 1][2]
    return seconds


def build(name: str, width: float) -> torch.nn.Module:
    """``name`` at ``width``; families without a width multiplier at their table's widths."""
    kwargs = {"width_mult": width} if takes_width(name) else {}
    return create_model(name, **kwargs).eval()


def export(name: str, width: float, resolution: int, path: Path) -> Path:
    """deploy's export of one model (run in a worker process: exports are the slow part)."""
    model = build(name, width)
    write_onnx(fold_batchnorm(model), path, (3, resolution, resolution), {})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--widths", type=float, nargs="+", default=list(WIDTHS))
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    parser.add_argument("--rounds", type=int, default=3, help="passes over the grid (3)")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per model per round")
    parser.add_argument("--threads", type=int, default=0, help="0: onnxruntime's default")
    parser.add_argument("--recalibrate", action="store_true", help="calibrate afresh first")
    parser.add_argument("--jobs", type=int, default=1, help="export processes (1)")
    parser.add_argument("--out", default=str(RESULTS / "latency_model.md"))
    parser.add_argument(
        "--note",
        default="Other agents' processes were running on this 2-core machine during the run.",
        help="what else ran on the machine, for the report",
    )
    args = parser.parse_args()

    start = time.perf_counter()
    calibration = load_calibration(
        DEFAULT_RUNTIME, args.threads, recalibrate=args.recalibrate, say=print
    )
    calibrate_s = time.perf_counter() - start
    print(f"calibration: {cache_path(DEFAULT_RUNTIME, args.threads)} ({calibrate_s:.0f} s)")

    cases: list[Case] = []
    # Spawned, not forked: a child forked from a process whose thread pools (OpenMP,
    # onnxruntime) are running can deadlock on a lock one of those threads held.
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.jobs, spawn) as pool:
        exports = []
        for name in args.models or list_models():
            for width in args.widths if takes_width(name) else [1.0]:
                for resolution in args.resolutions:
                    try:
                        model = build(name, width)
                        report = profile_model(model, resolution)
                    except MobileNetError:
                        continue
                    path = Path(tmp) / f"{name}-{width:g}-{resolution}.onnx"
                    prediction = predict_latency(report, calibration)
                    cases.append(Case(name, width, resolution, report.total_macs, prediction, path))
                    exports.append(pool.submit(export, name, width, resolution, path))
        for i, done in enumerate(exports):
            done.result()
            print(f"exported {i + 1}/{len(exports)}", flush=True)
        pool.shutdown()
        for r in range(args.rounds):
            for case in cases:
                profile = profile_onnx(
                    case.path, RUNTIMES[DEFAULT_RUNTIME], args.threads, args.budget
                )
                case.wall_s = min(case.wall_s, profile.wall_s)
                matched = match_nodes(case, profile.nodes)
                if matched is not None:
                    case.matched = True
                    for i, s in matched.items():
                        case.nodes[i] = min(case.nodes.get(i, float("inf")), s)
            print(f"round {r + 1}/{args.rounds} done", flush=True)

    text = report_markdown(cases, calibration, args, calibrate_s)
    write_results(args.out, text)
    print(text)


def report_markdown(cases: list[Case], calibration, args, calibrate_s: float) -> str:
    errors = [abs(c.error) for c in cases]
    rho = spearmanr([c.prediction.seconds for c in cases], [c.wall_s for c in cases]).statistic
    by_kind: dict[str, list[float]] = {}
    layer_errors = []
    for case in cases:
        kernels = case.prediction.kernels()
        for i, measured in case.nodes.items():
            layer, seconds = kernels[i]
            e = abs(seconds / measured - 1)
            layer_errors.append(e)
            by_kind.setdefault(layer.kind, []).append(e)
    worst = max(cases, key=lambda c: abs(c.error))
    lines = [
        "# Latency model against onnxruntime",
        "",
        f"onnxruntime {ort.__version__} CPU, fp32, batch 1, threads "
        f"{args.threads or 'default'}; torch {torch.__version__}; {platform.machine()}, "
        f"{calibration.machine}. {args.note} Each model's latency is its fastest call over "
        f"{args.rounds} rounds that pass over the whole grid in turn (interleaved), and each "
        "layer's its fastest kernel time under onnxruntime's profiler. Calibration "
        f"({calibration.created}, {calibrate_s:.0f} s when made in this run, "
        f"{calibration.passes} passes over the samples) is the cached one.",
        "",
        f"Command: `python benchmarks/latency_model.py {' '.join(sys.argv[1:])}`",
        "",
        "## Summary",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| models | {len(cases)} | all registered, widths {min(args.widths)}-{max(args.widths)}, "
        f"resolutions {min(args.resolutions)}-{max(args.resolutions)} |",
        f"| whole-model error, median | {statistics.median(errors):.1%} | <= 15% |",
        f"| whole-model error, worst | {max(errors):.1%} ({worst.label}) | <= 25% |",
        f"| per-layer error, median | {statistics.median(layer_errors):.1%} "
        f"({len(layer_errors)} layers in {sum(c.matched for c in cases)} models) | <= 30% |"
        if layer_errors
        else "| per-layer error | no profile matched | <= 30% |",
        f"| Spearman rank correlation | {rho:.3f} | >= 0.95 |",
        "",
        "## Per-layer error by latency kind",
        "",
        "| kind | layers | median error | 90th percentile |",
        "|---|---|---|---|",
    ]
    for kind, errs in sorted(by_kind.items()):
        errs = sorted(errs)
        p90 = errs[min(len(errs) - 1, int(0.9 * len(errs)))]
        lines.append(f"| {kind} | {len(errs)} | {statistics.median(errs):.1%} | {p90:.1%} |")
    lines += [
        "",
        "## Calibration fit (one-layer graphs)",
        "",
        "| kind | GMAC/s | GB/s | overhead us | samples | median error | worst |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, roof in calibration.rooflines.items():
        fit = calibration.fit.get(kind, {})
        gmacs = "-" if roof.macs_per_s == float("inf") else f"{roof.macs_per_s / 1e9:.1f}"
        lines.append(
            f"| {kind} | {gmacs} | {roof.bytes_per_s / 1e9:.1f} | {roof.overhead_s * 1e6:.1f} "
            f"| {fit.get('samples', 0)} | {fmt_percent(fit.get('median_error', 0))} "
            f"| {fmt_percent(fit.get('max_error', 0))} |"
        )
    lines += [
        "",
        f"Runtime overhead: {calibration.node_overhead_s * 1e6:.2f} us per node, "
        f"{calibration.run_overhead_s * 1e6:.1f} us per call.",
        "",
        f"Weights between calls: all cached up to {calibration.weight_cache_bytes / 2**20:.1f} "
        f"MiB passed per call, none from {calibration.weight_cold_bytes / 2**20:.1f} MiB; "
        f"uncached ones stream at {calibration.weight_stream_bytes_per_s / 1e9:.1f} GB/s, "
        f"overlapped with each layer's work as a p-norm with p = "
        f"{calibration.stream_overlap or math.inf:.2f}.",
        "",
        "## Every model",
        "",
        "| model | width | resolution | MMACs | predicted ms | measured ms | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c.model} | {c.width:g} | {c.resolution} | {c.macs / 1e6:.1f} "
            f"| {c.prediction.ms:.3f} | {1e3 * c.wall_s:.3f} | {c.error:+.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

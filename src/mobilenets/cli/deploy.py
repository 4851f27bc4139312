"""``mobilenets export``, ``quantize`` and ``bench``: from a run directory to a program checked
and timed in the runtime that ships it (onnxruntime, OpenVINO, ExecuTorch, LiteRT).
``quantize`` is ``export --format onnx --int8`` under its old name, with the same flags.

The library modules are imported inside each command: the runtimes are heavy to import and
most commands need none of them."""

from __future__ import annotations

import argparse

from mobilenets.cli._args import add_int8_steps, add_moved_data, add_run_dir
from mobilenets.cli._output import console, print_json, table
from mobilenets.int8 import DEFAULT_CALIBRATION

FORMATS = "onnx, executorch, litert or openvino"


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_export(subparsers)
    _add_quantize(subparsers)
    _add_bench(subparsers)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a run (BN folded) to ONNX, ExecuTorch, LiteRT or OpenVINO, fp32 or int8, "
        "checked in that runtime against PyTorch (classifiers, detectors, segmenters)",
    )
    add_run_dir(p)
    p.add_argument("--format", default="onnx", help=f"{FORMATS} (default onnx)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="post-training int8, calibrated on the run's training images",
    )
    _add_export_flags(p, "with --int8: ")
    p.set_defaults(func=run_export)


def _add_quantize(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="the same as `export --format onnx --int8` (onnxruntime's int8 choices exposed)",
    )
    p.add_argument("source", help="a run directory or an fp32 ONNX file written by `export`")
    _add_export_flags(p, "")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)  # no bar to hide
    p.set_defaults(func=run_quantize, format="onnx", int8=True)


def _add_export_flags(p: argparse.ArgumentParser, lead: str) -> None:
    """What ``export`` and its alias ``quantize`` both take."""
    p.add_argument(
        "--calibration",
        type=int,
        metavar="N",
        help=f"training images to calibrate int8 on ({DEFAULT_CALIBRATION})",
    )
    p.add_argument(
        "--verify-images", type=int, metavar="N", help="held-out images to check on (256)"
    )
    add_int8_steps(p, lead)
    p.add_argument(
        "--wide-residuals",
        action="store_true",
        help=f"{lead}keep the residual additions wider than int8 (uint16 in onnxruntime, "
        "float in ExecuTorch and OpenVINO); not LiteRT",
    )
    onnx = p.add_argument_group("ONNX only")
    onnx.add_argument("--opset", type=int, help="ONNX opset, 18 or newer (default 18)")
    onnx.add_argument(
        "--provider", help="onnxruntime execution provider the check runs on (default cpu)"
    )
    onnx.add_argument(
        "--per-tensor",
        dest="per_channel",
        action="store_const",
        const=False,
        help=f"{lead}one weight scale per tensor instead of per output channel",
    )
    onnx.add_argument(
        "--fp32-depthwise",
        action="store_const",
        const=True,
        help=f"{lead}leave depthwise convolutions in fp32",
    )
    onnx.add_argument("--quant-format", help=f"{lead}encoding: qdq (default) or qoperator")
    onnx.add_argument(
        "--calibrate-method",
        help=f"{lead}range estimate: minmax (default: the extremes over all calibration "
        "images), mean_minmax (the mean of each 8-image batch's extremes), entropy or "
        "percentile",
    )
    p.add_argument(
        "--out",
        help="output file (default RUN_DIR/model.<suffix>, int8: model.int8[-steps].<suffix>, "
        "e.g. model.int8-unequalized-wide.onnx)",
    )
    add_moved_data(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a line")


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="latency and memory of PyTorch and every installed runtime, fp32 and int8",
    )
    p.add_argument("source", help="a model name, a run directory or an ONNX file")
    p.add_argument("--resolution", type=int, help="input size (default: the run's, or 224)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    p.add_argument("--width-mult", type=float, default=1.0, help="for a model name")
    p.add_argument("--iterations", type=int, default=100, help="timed calls per engine")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per engine first")
    p.add_argument(
        "--format",
        action="append",
        dest="formats",
        help=f"runtime to time ({FORMATS}), repeatable (default: every installed one)",
    )
    p.add_argument(
        "--no-memory",
        dest="memory",
        action="store_false",
        help="skip the memory measurement (a fresh process per program, a few seconds each)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_bench)


# export's keywords for the ONNX options (None: not given)
ONNX_OPTIONS = (
    "opset",
    "provider",
    "per_channel",
    "fp32_depthwise",
    "quant_format",
    "calibrate_method",
)


def run_export(args: argparse.Namespace) -> int:
    from mobilenets.deploy.export import export
    from mobilenets.runs import read_run_info

    counts = {"calibration": args.calibration, "verify_images": args.verify_images}
    quantized = None
    if args.int8 and args.format == "executorch":
        recorded = (read_run_info(args.run_dir).train_config or {}).get("qat") or {}
        if recorded.get("scheme") == "xnnpack":
            # an XNNPACK-scheme QAT run ships the ranges it was fine-tuned with, not new ones
            from mobilenets.quant.qat import SHIPPED_QUANTIZATION, int8_graph

            quantized = (int8_graph(args.run_dir), SHIPPED_QUANTIZATION)
    options = {key: getattr(args, key) for key in ONNX_OPTIONS}
    report = export(
        args.run_dir,
        args.format,
        int8=args.int8,
        out=args.out,
        data=args.data,
        quantized=quantized,
        equalize=args.equalize,
        bias_correct=args.bias_correct,
        adaround=args.adaround,
        wide_residuals=args.wide_residuals,
        **options,
        **{k: v for k, v in counts.items() if v is not None},
    )
    if args.json:
        print_json(report.to_dict())
        return 0
    console().print(export_line(report))
    return 0


def export_line(report) -> str:
    """The line an export prints: what it wrote and how its runtime compared with PyTorch."""
    c = report.check
    if report.precision == "fp32":
        verdict = f"matches PyTorch to {c.max_rel_error:.1e} (relative)"
    else:
        how = (
            f"calibrated on {report.calibration_images} {report.calibrated_on}"
            if report.calibrated_on
            else report.quantization
        )
        for step in (report.equalization, report.rounding, report.bias_correction):
            if step:
                how += f"; {step}"
        if report.wide_residuals:
            how += "; residual additions wider than int8"
        verdict = f"agrees with PyTorch fp32 on {c.top1_agreement:.1%} of {c.measure}"
        if c.box_iou is not None:
            verdict += f" (matched boxes: IoU {c.box_iou:.3f}, score {c.score_difference:.3f} off)"
        verdict += f", SQNR {c.sqnr_db:.1f} dB ({how})"
    replaced = ", replacing the file that was there" if report.replaced else ""
    return (
        f"wrote {report.path} ({report.size_bytes / 2**20:.2f} MiB, {report.precision}, BN "
        f"folded{replaced}); {report.runtime} {verdict} on {c.images} {report.checked_on}"
    )


def run_quantize(args: argparse.Namespace) -> int:
    """``quantize SOURCE``: ``export --format onnx --int8`` of the run (or of the run an fp32
    ONNX file was exported from, the int8 file beside it)."""
    from mobilenets.deploy.compat import quantize_source

    args.run_dir, default = quantize_source(args.source)
    if args.out is None and default is not None:
        args.out = str(default)
    return run_export(args)


def run_bench(args: argparse.Namespace) -> int:
    from mobilenets.deploy.bench import benchmark

    report = benchmark(
        args.source,
        resolution=args.resolution,
        batch=args.batch,
        threads=args.threads,
        width_mult=args.width_mult,
        warmup=args.warmup,
        iterations=args.iterations,
        formats=args.formats,
        memory=args.memory,
    )
    if args.json:
        print_json(report.to_dict())
        return 0
    out = console()
    out.print(bench_table(report))
    out.print(bench_summary(report))
    return 0


def _mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:.1f}"


def bench_table(report):
    first = report.timings[0].median_ms
    return table(
        f"{report.model} at {report.resolution}x{report.resolution}, batch {report.batch}, "
        f"{report.threads} thread(s)",
        [
            "engine",
            "median ms",
            "p90 ms",
            "images/s",
            "GMAC/s",
            "speed-up",
            "MiB",
            "model MiB",
            "start-up MiB",
        ],
        [
            [
                t.engine,
                f"{t.median_ms:.2f}",
                f"{t.p90_ms:.2f}",
                f"{t.images_per_s:.1f}",
                "" if t.gmacs_per_s is None else f"{t.gmacs_per_s:.1f}",
                f"{first / t.median_ms:.2f}x",
                _mib(t.memory_bytes),
                _mib(t.model_memory_bytes),
                _mib(t.startup_bytes),
            ]
            for t in report.timings
        ],
        right=5,
    )


def bench_summary(report) -> str:
    line = f"fp32 matmul {report.matmul_gflops:.0f} GFLOP/s"
    if report.int8_matmul_gops:
        line += f", int8 matmul {report.int8_matmul_gops:.0f} GOP/s"
    if report.macs is not None:
        line = f"{report.macs:,} mult-adds per image; {line}, so no fp32 engine can take less "
        line += f"than {report.fp32_floor_ms:.2f} ms per batch here"
        if report.int8_floor_ms is not None:
            line += f" and no int8 one less than {report.int8_floor_ms:.2f} ms"
    return line + (
        ". MiB: the peak resident-set growth of loading and running the program in a fresh "
        "process whose runtime is already started; model MiB: the cost model's peak "
        "activations plus the weights; start-up MiB: starting the runtime (once per process)."
    )

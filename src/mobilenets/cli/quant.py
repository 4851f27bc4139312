"""``mobilenets sensitivity``, ``quantize-mixed`` and ``qat``: int8 that keeps its accuracy."""

from __future__ import annotations

import argparse
import logging
from contextlib import nullcontext
from pathlib import Path

from mobilenets.cli._args import add_int8_steps, add_moved_data, add_run_dir
from mobilenets.cli._output import console, print_json, table
from mobilenets.int8 import DEFAULT_CALIBRATION

SENSITIVITY_FIGURE = "int8_sensitivity.png"


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_sensitivity(subparsers)
    _add_quantize_mixed(subparsers)
    _add_qat(subparsers)


def _add_sensitivity(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sensitivity",
        help="int8 sensitivity per layer: SQNR with it alone quantized and with all but it",
    )
    add_run_dir(p)
    p.add_argument("--images", type=int, default=32, help="held-out images (default 32)")
    p.add_argument(
        "--calibration",
        type=int,
        default=DEFAULT_CALIBRATION,
        metavar="N",
        help=f"calibration images ({DEFAULT_CALIBRATION})",
    )
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    p.add_argument("--symmetric-activations", action="store_true", help="int8 around 0, not uint8")
    p.add_argument("--threads", type=int, help="PyTorch threads (default: all cores)")
    p.add_argument("--top", type=int, default=15, help="rows of the table (default 15)")
    p.add_argument("--plot", help=f"figure path (default RUN_DIR/{SENSITIVITY_FIGURE})")
    add_moved_data(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_sensitivity)


def _add_quantize_mixed(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize-mixed",
        help="int8 with the most sensitive layers in float, by count, by name or to a target",
    )
    add_run_dir(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep", type=int, metavar="N", help="the N most sensitive layers in float")
    how.add_argument(
        "--fp32",
        nargs="+",
        metavar="LAYER",
        help="these layers in float (features.1.depthwise.conv)",
    )
    how.add_argument(
        "--target-agreement",
        type=float,
        metavar="P",
        help="fewest float layers giving top-1 agreement >= P (0.99) with the float model",
    )
    how.add_argument(
        "--below-sqnr",
        type=float,
        metavar="DB",
        help="every layer whose logit SQNR with only it int8 is under DB in float",
    )
    how.add_argument(
        "--frontier",
        type=int,
        nargs="+",
        metavar="N",
        help="measure each count of most sensitive layers in float (0 6 12 24); write the "
        "most agreeing within --max-latency-cost",
    )
    p.add_argument("--format", default="onnx", help="deployment format (default onnx)")
    p.add_argument(
        "--max-latency-cost", type=float, default=0.15, help="vs all-int8 (default 0.15)"
    )
    p.add_argument("--max-float", type=int, default=8, help="most float layers tried (default 8)")
    p.add_argument("--images", type=int, default=300, help="held-out images (default 300)")
    p.add_argument(
        "--calibration",
        type=int,
        default=DEFAULT_CALIBRATION,
        help=f"calibration images ({DEFAULT_CALIBRATION})",
    )
    p.add_argument("--out", help="output file (default RUN_DIR/model.mixed.onnx)")
    add_int8_steps(p)
    p.add_argument(
        "--wide-residuals",
        action="store_true",
        help="residual sums wider than int8 in every int8 file (not LiteRT)",
    )
    add_moved_data(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_mixed)


def _add_qat(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "qat",
        help="quantization-aware training (pt2e): fine-tune a float run with int8 simulated",
    )
    p.add_argument("run_dir", help="the float run to start from")
    p.add_argument("--out", help="the QAT run directory (default RUN_DIR-qat)")
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (default 4)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument(
        "--freeze-bn-after",
        type=int,
        default=0,
        metavar="E",
        help="epochs of moving BatchNorm statistics (default 0: frozen from the start)",
    )
    p.add_argument(
        "--freeze-observers-after",
        type=int,
        default=2,
        metavar="E",
        help="epochs of moving quantization ranges (default 2)",
    )
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    p.add_argument(
        "--distill",
        action="store_true",
        help="match the float run's logits instead of the labels (no labels needed; a run "
        "without data trains on fresh crops of the bundled photos)",
    )
    p.add_argument(
        "--photo-crops", type=int, default=512, help="photo crops per epoch with --distill (512)"
    )
    p.add_argument(
        "--optimizer",
        default="adam",
        help="adam (default) or sgd (with momentum, torchvision's QAT recipe)",
    )
    p.add_argument(
        "--scheme",
        default="x86",
        help="x86 (default: onnxruntime's U8S8, BN simulated) or xnnpack (the BN-folded "
        "XNNPACK program; `export --format executorch --int8` ships its trained ranges)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op CPU threads (default: one per core other processes leave idle)",
    )
    p.add_argument("--resume", action="store_true", help="continue --out where it stopped")
    p.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)
    add_moved_data(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(func=run_qat)


def run_sensitivity(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from mobilenets.int8.fake_quant import Int8Scheme
    from mobilenets.plots import save_figure
    from mobilenets.quant.sensitivity import count_layers, sensitivity_figure, sensitivity_report

    quiet = args.quiet or args.json
    bar = (
        nullcontext(None)
        if quiet
        else Progress(
            TextColumn("layers"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            transient=True,
        )
    )
    with bar as progress:
        task = None if progress is None else progress.add_task("", total=count_layers(args.run_dir))
        report = sensitivity_report(
            args.run_dir,
            images=args.images,
            calibration=args.calibration,
            scheme=Int8Scheme(not args.per_tensor, args.symmetric_activations),
            data=args.data,
            threads=args.threads,
            on_step=None if progress is None else lambda: progress.advance(task),
        )
    plot = Path(args.plot) if args.plot else Path(args.run_dir) / SENSITIVITY_FIGURE
    save_figure(sensitivity_figure(report), plot)
    if args.json:
        print_json({**report.to_dict(), "figure": str(plot)})
        return 0
    out = console()
    out.print(
        table(
            f"{report.model}, {report.scheme}: logit SQNR with every layer int8 "
            f"{report.all_sqnr_db:.1f} dB, top-1 agreement {report.all_agreement:.1%} on "
            f"{report.images} {report.images_from}; calibrated on {report.calibration}",
            [
                "rank",
                "layer",
                "kind",
                "output dB",
                "alone dB",
                "alone agree",
                "all-but dB",
                "all-but agree",
            ],
            [
                [
                    str(i),
                    s.name,
                    s.kind,
                    f"{s.output_sqnr_db:.1f}",
                    f"{s.alone_sqnr_db:.1f}",
                    f"{s.alone_agreement:.1%}",
                    f"{s.all_but_sqnr_db:.1f}",
                    f"{s.all_but_agreement:.1%}",
                ]
                for i, s in enumerate(report.ranked()[: args.top], start=1)
            ],
            right=5,
        )
    )
    out.print(f"figure: {plot}; {report.seconds:.0f} s")
    return 0


def run_mixed(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mobilenets.quant.mixed import quantize_mixed

    quiet = args.quiet or args.json
    err = Console(stderr=True)
    result = quantize_mixed(
        args.run_dir,
        fmt=args.format,
        fp32_modules=args.fp32,
        keep=args.keep,
        target_agreement=args.target_agreement,
        frontier=args.frontier,
        below_sqnr=args.below_sqnr,
        max_latency_cost=args.max_latency_cost,
        max_float=args.max_float,
        images=args.images,
        calibration=args.calibration,
        out=args.out,
        data=args.data,
        on_message=None if quiet else err.print,
        equalize=args.equalize,
        bias_correct=args.bias_correct,
        adaround=args.adaround,
        wide_residuals=args.wide_residuals,
    )
    if args.json:
        print_json(result.to_dict())
        return 0
    rows = [["fp32", "-", "100.0%", "inf", f"{result.fp32_ms:.2f}", ""]]
    shown = [("int8", result.int8)]
    shown += [("mixed" if c is result.mixed else "tried", c) for c in result.tried]
    for label, c in shown:
        rows.append(
            [
                label,
                str(len(c.fp32_modules)),
                f"{c.top1_agreement:.1%}",
                f"{c.sqnr_db:.1f}",
                f"{c.latency_ms:.2f}",
                f"{c.latency_cost:+.0%}",
            ]
        )
    out = console()
    out.print(
        table(
            f"{result.runtime}: agreement with float on {result.images} {result.images_from}; "
            f"float layers: {result.chosen_by}",
            ["model", "float layers", "top-1 agreement", "SQNR dB", "ms", "vs int8"],
            rows,
            right=5,
        )
    )
    out.print(f"wrote {result.path}; in float: {', '.join(result.mixed.fp32_modules) or 'none'}")
    return 0


def run_qat(args: argparse.Namespace) -> int:
    # torchao logs a warning per optional GPU kernel library it cannot load on a CPU build, and
    # torch one about an enum torchao registers: noise on the user's terminal, not problems.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from mobilenets.quant.qat import QATConfig, qat

    config = QATConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        freeze_bn_after=args.freeze_bn_after,
        freeze_observers_after=args.freeze_observers_after,
        per_channel=not args.per_tensor,
        seed=args.seed,
        distill=args.distill,
        photo_crops=args.photo_crops,
        optimizer=args.optimizer,
        scheme=args.scheme,
    )
    result = qat(
        args.run_dir,
        out=args.out,
        config=config,
        resume=args.resume,
        data=args.data,
        stop_after_epoch=args.stop_after_epoch,
        threads=args.threads,
        progress=not args.json,
    )
    if args.json:
        print_json(result.to_dict())
        return 0
    started = "" if result.source_score is None else f" (the float run: {result.source_score:.2%})"
    if args.scheme == "xnnpack":  # its trained ranges ship only in a lowered PT2E program
        ship = f"mobilenets export {result.run_dir} --format executorch --int8"
    else:
        ship = f"mobilenets quantize {result.run_dir}" + " --per-tensor" * args.per_tensor
    console().print(f"wrote {result.run_dir}: a run like any other{started}; ship it with `{ship}`")
    return 0

"""``mobilenets speedup``: the separable speed-up, analytic against measured on this machine."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from mobilenets.cli._output import show, table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "speedup",
        help="time standard vs depthwise separable convolutions on MobileNet's shapes",
        description=(
            "Time a standard 3x3 convolution against our depthwise + pointwise pair and the "
            "plain PyTorch pair on MobileNetV1's five stride-1 shapes, and compare the "
            "measured speed-up with the analytic 1 / (1/n_c' + 1/9)."
        ),
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="N")
    p.add_argument(
        "--formats", nargs="+", help="memory formats: nchw, channels_last (default: both)"
    )
    p.add_argument("--modes", nargs="+", help="forward, forward+backward (default: both)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per combination (1.0)")
    p.add_argument(
        "--no-predict",
        action="store_true",
        help="leave out the latency model's predicted speed-up (it calibrates on first use)",
    )
    p.add_argument("--plot", metavar="FILE.png", help="also draw the ratios to this PNG")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_speedup)


def run_speedup(args: argparse.Namespace) -> int:
    from mobilenets.latency.speedup import measure_separable_speedup, speedup_summary
    from mobilenets.plots import save_figure, separable_speedup_figure

    chosen = {"memory_formats": args.formats, "modes": args.modes}
    calibration = None
    if not args.no_predict:
        from mobilenets.cli._output import console
        from mobilenets.latency.calibration import load_calibration

        calibration = load_calibration(say=None if args.json else console().print)
    rows = measure_separable_speedup(
        batch_sizes=args.batch_sizes,
        budget_s=args.budget,
        calibration=calibration,
        **{k: v for k, v in chosen.items() if v is not None},
    )
    if args.plot:
        save_figure(separable_speedup_figure(rows), args.plot)

    summary = speedup_summary(rows)
    data = {"rows": [r.to_dict() for r in rows], "summary": summary}
    return show(args.json, data, speedup_views(rows, summary, args.plot))


def speedup_views(
    rows: list[Any], summary: list[dict[str, Any]], plot: str | None
) -> Iterator[Any]:
    """The measured rows and their geometric means, as tables."""
    yield (
        table(
            "Standard 3x3 convolution against depthwise + pointwise (best of the timed calls; "
            "speed-up: standard time / separable time; predicted: the latency model, "
            "onnxruntime rates)",
            [
                "shape",
                "batch",
                "format",
                "pass",
                "standard ms",
                "separable ms",
                "plain sep. ms",
                "analytic speed-up",
                "predicted speed-up",
                "measured speed-up",
                "measured / analytic",
                "plain / analytic",
            ],
            [
                [
                    str(r.shape),
                    str(r.batch_size),
                    r.memory_format,
                    r.mode,
                    f"{r.standard_ms:.3f}",
                    f"{r.separable_ms:.3f}",
                    f"{r.plain_separable_ms:.3f}",
                    f"{r.analytic:.2f}x",
                    "-" if r.predicted is None else f"{r.predicted:.2f}x",
                    f"{r.measured:.2f}x",
                    f"{r.ratio:.2f}",
                    f"{r.plain_ratio:.2f}",
                ]
                for r in rows
            ],
            right=8,
            key=4,
        )
    )
    yield (
        table(
            "Geometric mean of measured / analytic speed-up over the shapes",
            ["batch", "format", "pass", "ours (ratio)", "plain PyTorch (ratio)"],
            [
                [
                    str(s["batch_size"]),
                    s["memory_format"],
                    s["mode"],
                    f"{s['ours']:.2f}",
                    f"{s['plain']:.2f}",
                ]
                for s in summary
            ],
            right=2,
        )
    )
    if plot:
        yield f"written: {plot}"

"""``mobilenets compare-conversion``: train a VGG-style CNN and its depthwise separable
conversion alike, and compare accuracy and cost."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mobilenets.cli._output import fmt_int, show, table
from mobilenets.io import atomic_write_text

if TYPE_CHECKING:
    from mobilenets.analysis.compare_conversion import ConversionComparison


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare-conversion",
        help="make vgg_small's convolutions depthwise separable; train both and compare",
        description=(
            "Train vgg_small and vgg_small_separable (every standard 3x3 convolution replaced "
            "by depthwise 3x3 -> BN -> ReLU -> pointwise 1x1) with the same recipe and budget, "
            "then report accuracy, parameters and mult-adds of both."
        ),
    )
    p.add_argument("--out", default="runs/convert", help="directory for the two runs")
    p.add_argument("--epochs", type=int, default=15, help="epochs for each network (15)")
    p.add_argument("--width-mult", type=float, default=1.0, help="width multiplier of both")
    p.add_argument("--data", default=None, help="dataset (default: the embedded digits)")
    p.add_argument("--seed", type=int, default=0, help="seed for both runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from mobilenets.analysis.compare_conversion import compare_conversion

    # With --json, stdout carries the JSON alone; the training log goes to stderr.
    log_to = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with log_to:
        result = compare_conversion(
            out=args.out,
            epochs=args.epochs,
            width_mult=args.width_mult,
            seed=args.seed,
            data=args.data,
            quiet=args.quiet or args.json,
        )
    atomic_write_text(f"{args.out}/comparison.json", json.dumps(result.to_dict(), indent=2))

    def views() -> Iterator[Any]:
        yield (_replaced_table(result))
        yield (_comparison_table(result))
        yield f"written: {args.out}/comparison.json"

    return show(args.json, result.to_dict(), views())


def _replaced_table(result: ConversionComparison):
    return table(
        "Replaced convolutions (mult-adds per output position)",
        ["layer", "kernel", "n_c->n_c'", "params before", "after", "mult-adds before", "after"],
        [
            [
                r.name,
                "x".join(map(str, r.kernel_size)),
                f"{r.in_channels}->{r.out_channels}",
                fmt_int(r.params_before),
                fmt_int(r.params_after),
                fmt_int(r.macs_per_position_before),
                fmt_int(r.macs_per_position_after),
            ]
            for r in result.replaced
        ],
        right=4,
    )


def _comparison_table(result: ConversionComparison):
    rows = [
        [
            trained.model,
            f"{100 * trained.top1:.2f}%",
            fmt_int(trained.params),
            fmt_int(trained.macs),
            trained.run_dir,
        ]
        for trained in (result.original, result.converted)
    ]
    rows.append(
        [
            "converted vs original",
            f"{-result.accuracy_drop_points:+.2f} points",
            f"{result.params_reduction:.1f}x fewer",
            f"{result.macs_reduction:.1f}x fewer",
            "",
        ]
    )
    return table(
        f"Same recipe, {result.epochs} epochs each, {result.resolution}x{result.resolution} inputs",
        ["model", "test top-1", "params", "mult-adds", "run"],
        rows,
        right=3,
    )

"""``mobilenets models`` and ``mobilenets cost``: what each model is and what it costs."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mobilenets.cli._output import fmt_int, fmt_shape, show, table

if TYPE_CHECKING:
    from mobilenets.analysis.cost import CostReport


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the models with parameters and mult-adds")
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument(
        "--task",
        choices=["classification", "detection", "segmentation", "all"],
        default="classification",
        help="which models to list (default: the classifiers)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_models)

    p = subparsers.add_parser("cost", help="per-layer mult-adds, parameters and activations")
    p.add_argument("model", help="a registered model name (see `mobilenets models`)")
    p.add_argument(
        "--width-mult", type=float, help="width multiplier alpha (families that have one)"
    )
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument(
        "--num-classes",
        type=int,
        help="classes (default: the model's own, 1000 for classifiers, 91 for SSDLite, 21 for "
        "segmentation)",
    )
    p.add_argument("--small-input", action="store_true", help="total stride 8 (32px inputs)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--all-layers", action="store_true", help="also list BN, activation, pool")
    p.add_argument(
        "--compare-standard",
        action="store_true",
        help="price each depthwise separable pair against a standard convolution",
    )
    p.add_argument(
        "--compare",
        metavar="MODEL",
        help="a second registered model: totals and mult-adds per layer kind side by side",
    )
    p.add_argument(
        "--latency",
        action="store_true",
        help="add each layer's predicted onnxruntime ms and whether it is compute- or "
        "memory-bound (calibrates this machine on first use)",
    )
    p.add_argument("--threads", type=int, default=0, help="with --latency: intra-op threads")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw per-layer mult-adds, parameters and activation memory to this PNG",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_cost)


def run_models(args: argparse.Namespace) -> int:
    import torch

    from mobilenets.analysis.cost import profile_model
    from mobilenets.models import create_model, list_models

    rows = []
    for name in list_models(None if args.task == "all" else args.task):
        # on the meta device: shapes only, no weight initialisation (the counts are the same,
        # and most of the command's time went into initialising weights it never read)
        with torch.device("meta"):
            model = create_model(name)
        report = profile_model(model, args.resolution)
        classes = getattr(model, "num_classes", None)
        rows.append(
            {
                "model": name,
                "classes": classes,
                "params": report.total_params,
                "macs": report.total_macs,
            }
        )

    def views() -> Iterator[Any]:
        yield (
            table(
                # Each family's defaults: width 1.0 and its own class count (a column).
                f"Models at {args.resolution}x{args.resolution}, width 1.0",
                ["model", "classes", "params", "mult-adds"],
                [
                    [r["model"], str(r["classes"] or "?"), fmt_int(r["params"]), fmt_int(r["macs"])]
                    for r in rows
                ],
                right=3,
            )
        )

    return show(args.json, {"resolution": args.resolution, "models": rows}, views())


def _profile(name: str, args: argparse.Namespace) -> CostReport:
    from mobilenets.analysis.cost import profile_model
    from mobilenets.models import create_model

    # small_input and width_mult only when asked for: not every family takes them.
    extra: dict[str, object] = {"small_input": True} if args.small_input else {}
    if args.width_mult is not None:
        extra["width_mult"] = args.width_mult
    if args.num_classes is not None:
        extra["num_classes"] = args.num_classes
    model = create_model(name, **extra)
    return profile_model(model, args.resolution, batch_size=args.batch_size)


def run_cost(args: argparse.Namespace) -> int:
    from mobilenets.plots import layer_cost_figure, save_figure

    report = _profile(args.model, args)
    other = _profile(args.compare, args) if args.compare else None
    latency = None
    if args.latency:
        from mobilenets.cli._output import console
        from mobilenets.latency.calibration import predict_cached

        latency = predict_cached(
            report, threads=args.threads, say=None if args.json else console().print
        )
    if args.plot:
        title = (
            f"{args.model} width {args.width_mult or 1:g} at {args.resolution}x{args.resolution}, "
            f"batch {args.batch_size}: {report.total_macs / 1e6:,.1f}M mult-adds, "
            f"{report.total_params / 1e6:.2f}M parameters"
        )
        save_figure(layer_cost_figure(report, title), args.plot)
    data = report.to_dict()
    data.update(model=args.model, width_mult=args.width_mult, resolution=args.resolution)
    if other is not None:
        data["compare"] = {"model": args.compare, **_summary(other)}
    if latency is not None:
        data["latency"] = latency.to_dict()

    def views() -> Iterator[Any]:
        from mobilenets.analysis.cost import BYTES_PER_ELEMENT

        yield _layer_table(report, args, latency)
        yield (
            f"total: {fmt_int(report.total_macs)} mult-adds, {fmt_int(report.total_params)} "
            f"parameters, {fmt_int(report.total_activations)} activation values"
        )
        yield (
            "peak activation memory in inference: "
            + ", ".join(
                f"{report.peak_activation_bytes(dtype) / 2**20:,.2f} MiB {dtype}"
                for dtype in BYTES_PER_ELEMENT
            )
            + f" ({fmt_int(report.peak_activations)} values alive at once)"
        )
        if latency is not None:
            memory_ms = sum(layer.ms for layer in latency.layers if layer.bound == "memory")
            kernels_ms = sum(layer.ms for layer in latency.layers)
            yield (
                f"predicted latency in onnxruntime: {latency.ms:.3f} ms; memory-bound layers "
                f"take {memory_ms / kernels_ms:.0%} of the kernel time"
            )
        if args.plot:
            yield f"written: {args.plot}"
        if args.compare_standard:
            yield _pair_table(report)
        if other is not None:
            yield _compare_table(args.model, report, args.compare, other)

    return show(args.json, data, views())


def _summary(report: CostReport) -> dict[str, object]:
    """The totals two models are compared on."""
    return {
        "total_macs": report.total_macs,
        "total_params": report.total_params,
        "peak_activation_bytes": report.peak_activation_bytes("fp32"),
        "macs_by_kind": report.macs_by_kind(),
    }


def _compare_table(name: str, report: CostReport, other_name: str, other: CostReport):
    """Totals and mult-adds per layer kind of two models, with their ratio."""
    from mobilenets.analysis.cost import KINDS

    a, b = _summary(report), _summary(other)
    rows = [
        ("mult-adds", a["total_macs"], b["total_macs"]),
        ("parameters", a["total_params"], b["total_params"]),
        ("peak activations (fp32 bytes)", a["peak_activation_bytes"], b["peak_activation_bytes"]),
    ]
    kinds_a, kinds_b = a["macs_by_kind"], b["macs_by_kind"]
    for kind in [k for k in KINDS if k in kinds_a or k in kinds_b]:
        rows.append((f"  {kind} mult-adds", kinds_a.get(kind, 0), kinds_b.get(kind, 0)))
    return table(
        f"{name} against {other_name}",
        ["", name, other_name, "ratio"],
        [[label, fmt_int(x), fmt_int(y), f"{x / y:.3f}" if y else "-"] for label, x, y in rows],
        right=3,
    )


def _layer_table(report: CostReport, args: argparse.Namespace, latency=None):
    layers = [
        layer
        for layer in report.layers
        if args.all_layers or layer.macs or layer.params
        if args.all_layers or layer.kind != "batchnorm"
    ]
    title = (
        f"{args.model} width {args.width_mult or 1:g} at {args.resolution}x{args.resolution}, "
        f"batch {args.batch_size}"
    )
    columns = ["mult-adds", "params", "activations", "alive at once"]
    priced = {} if latency is None else latency.by_name()
    if latency is not None:
        columns += ["pred. ms", "bound"]

    def predicted(name: str) -> list[str]:
        if latency is None:
            return []
        row = priced.get(name)
        return ["", ""] if row is None else [f"{row.ms:.4f}", row.bound]

    return table(
        title,
        ["layer", "kind", "input", "output", *columns],
        [
            [
                layer.name,
                layer.kind,
                fmt_shape(layer.input_shape),
                fmt_shape(layer.output_shape),
                fmt_int(layer.macs),
                fmt_int(layer.params),
                fmt_int(layer.activations),
                fmt_int(layer.live_activations),
                *predicted(layer.name),
            ]
            for layer in layers
        ],
        right=len(columns) - (1 if latency is not None else 0),
    )


def _pair_table(report: CostReport):
    rows = [
        [
            pair.depthwise.rsplit(".", 2)[0],
            f"{pair.kernel_size}x{pair.kernel_size}",
            f"{pair.in_channels}->{pair.out_channels}",
            fmt_shape(pair.output_hw),
            fmt_int(pair.depthwise_macs),
            fmt_int(pair.pointwise_macs),
            fmt_int(pair.separable_macs),
            fmt_int(pair.standard_macs),
            f"{pair.ratio:.4f}",
            f"{pair.closed_form_ratio:.4f}",
        ]
        for pair in report.pairs
    ]
    sep = sum(p.separable_macs for p in report.pairs)
    std = sum(p.standard_macs for p in report.pairs)
    if report.pairs:
        rows.append(
            ["all pairs", "", "", "", "", "", fmt_int(sep), fmt_int(std), f"{sep / std:.4f}", ""]
        )
    return table(
        "Depthwise separable pairs against the standard convolution they replace",
        [
            "block",
            "f",
            "n_c->n_c'",
            "out",
            "depthwise",
            "pointwise",
            "separable",
            "standard",
            "ratio",
            "1/n_c'+1/f^2",
        ],
        rows,
        right=6,
    )

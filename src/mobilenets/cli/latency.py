"""``mobilenets calibrate`` and ``mobilenets choose``: the latency model's rates on this
machine, and the network that fits a budget."""

from __future__ import annotations

import argparse
import re

from mobilenets.errors import MobileNetError

WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.4)
RESOLUTIONS = (96, 128, 160, 192, 224)
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def count(text: str) -> float:
    """A count with an optional k/M/G suffix: ``300M`` -> 3e8."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a number like 300M or 4.2e6, got {text!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure this machine's rates for the latency model (cached)",
        description=(
            "Time single layers of every latency kind (standard, depthwise, pointwise by K, "
            "SE, FC, pooling) on shapes the registered models run, fit one roofline per kind, "
            "and cache the result for this machine and runtime version."
        ),
    )
    p.add_argument("--runtime", default="onnxruntime", help="runtime to calibrate (onnxruntime)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: its default)")
    p.add_argument("--per-kind", type=int, default=14, help="layers timed per kind (14)")
    p.add_argument(
        "--budget", type=float, default=0.1, help="seconds of timing per layer or cache graph"
    )
    p.add_argument("--show", action="store_true", help="print the cached calibration, if fresh")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_calibrate)

    p = subparsers.add_parser(
        "choose",
        help="pick the network for a budget: prune by the models, measure, short-train",
        description=(
            "Enumerate the registered families over widths and resolutions, drop what the "
            "cost and latency models say cannot fit the budget, measure the candidates near "
            "the frontier in the runtime, optionally short-train them on the data, and write "
            "the Pareto table and figure to OUT. Rerun the same command to resume."
        ),
    )
    p.add_argument("--latency-ms", type=float, help="measured latency budget, batch 1")
    p.add_argument("--macs", type=count, help="mult-adds budget per image, e.g. 300M")
    p.add_argument("--params", type=count, help="parameter budget, e.g. 3.4M")
    p.add_argument("--memory-mib", type=float, help="peak fp32 activation memory budget")
    p.add_argument("--data", help="'digits' (default), a CIFAR directory or an image folder")
    p.add_argument("--models", nargs="+", help="families to consider (default: all registered)")
    p.add_argument("--widths", type=float, nargs="+", default=list(WIDTHS))
    p.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    p.add_argument("--runtime", default="onnxruntime", help="where latency is measured")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: its default)")
    p.add_argument("--measure", type=int, default=8, help="most measured per round (8)")
    p.add_argument("--epochs", type=int, default=0, help="short training per candidate (0: none)")
    p.add_argument("--train", type=int, default=3, help="most candidates to train (3)")
    p.add_argument("--time-budget", type=float, default=10.0, help="minutes in all (10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default runs/choose/<data>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_choose)


def _progress(quiet: bool):
    """A rich progress display and a ``(label, i, n)`` callback that advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bars = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), disable=quiet
    )
    tasks: dict[str, int] = {}

    def advance(label: str, i: int, n: int) -> None:
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=n)
        bars.update(tasks[label], completed=i, total=n)  # passes may be added

    return bars, advance


def run_calibrate(args: argparse.Namespace) -> int:
    from mobilenets.cli._output import console, print_json
    from mobilenets.io import atomic_write_json
    from mobilenets.latency.calibration import calibrate
    from mobilenets.latency.machine import cache_path, read_calibration, stale_reason

    path = cache_path(args.runtime, args.threads)
    if args.show:
        if not path.is_file():
            raise MobileNetError(f"no calibration for {args.runtime} yet: run mobilenets calibrate")
        calibration = read_calibration(path)
        reason = stale_reason(calibration)
        if reason is not None:
            raise MobileNetError(f"{path} is stale: {reason}; run mobilenets calibrate")
    else:
        if path.is_file():
            try:
                reason = stale_reason(read_calibration(path))
            except MobileNetError as e:
                reason = str(e)
            if reason is not None:
                console().print(f"replacing the stale calibration {path}: {reason}")
        bars, advance = _progress(args.quiet or args.json)
        with bars:
            calibration = calibrate(
                args.runtime,
                args.threads,
                per_kind=args.per_kind,
                budget_s=args.budget,
                progress=lambda i, n: advance("timing layers", i, n),
            )
        atomic_write_json(path, calibration.to_json())
    if args.json:
        print_json({"path": str(path), **calibration.to_json()})
        return 0
    out = console()
    out.print(calibration_table(calibration))
    out.print(
        f"time outside the kernels: {calibration.run_overhead_s * 1e6:.1f} us per call, "
        f"{calibration.node_overhead_s * 1e6:+.2f} us per node{_node_note(calibration)}; "
        "weights all cached between "
        f"calls up to {calibration.weight_cache_bytes / 2**20:.1f} MiB passed, none from "
        f"{calibration.weight_cold_bytes / 2**20:.1f} MiB; layers timed in "
        f"{calibration.passes} passes; channels padded to blocks "
        f"of {calibration.channel_block}; runtime nodes of the in-place kinds: "
        + ", ".join(f"{kind} {n}" for kind, n in calibration.kind_nodes.items())
    )
    out.print(f"written: {path}" if not args.show else f"cached: {path}")
    return 0


def calibration_table(calibration):
    from mobilenets.cli._output import fmt_percent, table

    rows = []
    for kind, roof in calibration.rooflines.items():
        fit = calibration.fit.get(kind, {})
        gmacs = "-" if roof.macs_per_s == float("inf") else f"{roof.macs_per_s / 1e9:.1f}"
        rows.append(
            [
                kind,
                gmacs,
                f"{roof.bytes_per_s / 1e9:.1f}",
                f"{roof.overhead_s * 1e6:.1f}",
                str(fit.get("samples", 0)),
                fmt_percent(fit.get("median_error", 0)),
            ]
        )
    return table(
        f"Latency calibration: {calibration.runtime} {calibration.runtime_version}, "
        f"threads {calibration.threads or 'default'}, {calibration.machine}",
        ["kind", "GMAC/s", "GB/s", "overhead us", "layers", "median error"],
        rows,
        right=5,
    )


def run_choose(args: argparse.Namespace) -> int:
    from mobilenets.cli._output import console, print_json
    from mobilenets.io import atomic_write_text
    from mobilenets.latency.choose import Budget, ChooseConfig, choice_markdown, choose, default_out
    from mobilenets.plots import pareto_figure, save_figure

    budget = Budget(args.latency_ms, args.macs, args.params, args.memory_mib)
    config = ChooseConfig(
        data=args.data,
        out=args.out or default_out(args.data),
        families=args.models,
        widths=args.widths,
        resolutions=args.resolutions,
        runtime=args.runtime,
        threads=args.threads,
        max_measure=args.measure,
        epochs=args.epochs,
        max_train=args.train,
        time_budget_s=60 * args.time_budget,
        seed=args.seed,
        quiet=args.quiet or args.json,
    )
    out = console()
    say = (lambda line: None) if args.json else out.print
    bars, advance = _progress(config.quiet)
    with bars:
        choice = choose(budget, config, say=say, progress=advance)
    trained = config.epochs > 0
    points = [
        (c.label, c.measured_ms, 100 * c.accuracy if trained else c.macs / 1e6, c in choice.front)
        for c in choice.measured
        if c.measured_ms is not None and (c.accuracy is not None or not trained)
    ]
    figure = choice.out / "pareto.png"
    save_figure(
        pareto_figure(
            points,
            "held-out top-1 (%)" if trained else "mult-adds (M)",
            f"latency in {config.runtime} (ms, batch 1)",
            budget.latency_ms,
        ),
        figure,
    )
    table_path = choice.out / "pareto.md"
    atomic_write_text(table_path, choice_markdown(choice, config))
    if args.json:
        print_json({**choice.to_dict(), "figure": str(figure), "table": str(table_path)})
        return 0
    out.print(choice_markdown(choice, config), markup=False)
    for note in choice.notes:
        out.print(note)
    out.print(f"written: {table_path}, {figure}")
    return 0


def _node_note(calibration) -> str:
    """Why a per-node term can be negative: it is a fitted correction, not a cost."""
    if calibration.node_overhead_s >= 0:
        return ""
    return " (below zero: with threads, the kernel times the profiler adds up overlap)"

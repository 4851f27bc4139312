"""``mobilenets train``, ``evaluate`` and ``predict``: each parses its flags and calls one
library function (:func:`mobilenets.train.loop.train`,
:func:`mobilenets.evaluation.evaluate.evaluate`,
:func:`mobilenets.evaluation.predict.predict`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Iterator
from typing import Any

from mobilenets.cli._output import show, table
from mobilenets.errors import MobileNetError
from mobilenets.train.recipe import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (default: MobileNetV2 on the embedded digits)",
        description="Train a model; under torchrun, one DistributedDataParallel replica per "
        "process. Every flag defaults to the recipe shown.",
    )
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "evaluate",
        help="top-1, per-class accuracy (a detector's mAP, a segmenter's mIoU) of a run or "
        "an exported program",
        description="Score a run directory, or an exported program (.onnx, .pte, .tflite, "
        ".xml) in its own runtime beside the run's fp32 weights, on the held-out split of "
        "the run's data: a classifier's top-1, top-5 and per-class accuracy, a detector's "
        "COCO mAP, a segmenter's mIoU and pixel accuracy.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR|PROGRAM")
    p.add_argument("--data", help="evaluate on this dataset's held-out split instead")
    p.add_argument(
        "--batch-size",
        type=int,
        help="images per batch (default: 256, a detector's or segmenter's 32)",
    )
    p.add_argument(
        "--plot",
        help="confusion matrix PNG (default RUN_DIR/confusion_matrix.png; a program's only "
        "when given)",
    )
    add_tta(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "predict",
        help="the most probable classes of images, folders or globs (or their boxes / masks)",
        description="One row per image: its most probable classes, or why it could not be "
        "read; a detector's or segmenter's images are drawn into --out with its boxes or "
        "class mask, and their rows written there as JSON. Folders are searched recursively "
        "for image files; other files are listed as "
        "skipped. Exit status 0, or 1 when some image could not be read.",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR|PROGRAM", help="a run directory or an exported program"
    )
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, folders or globs")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (5)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="detectors and segmenters (required for them): where each image is drawn as a PNG "
        "(boxes, or the class mask) beside detections.json or segmentation.json",
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="detectors: the lowest score of a detection kept (0.5)",
    )
    add_tta(p)
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON instead of a table")
    form.add_argument("--csv", action="store_true", help="print CSV, one row per image")
    p.set_defaults(func=run_predict)


def add_tta(p: argparse.ArgumentParser) -> None:
    """``--tta``, as evaluate and predict take it (the views are
    :data:`mobilenets.evaluation.tta.TTA_VIEWS`, named here: that module loads torch)."""
    p.add_argument(
        "--tta",
        choices=("flips", "dihedral"),
        help="a classifier's mean answer over test-time views: flips (4 passes) or dihedral "
        "(and their transposes: 8); only views the run trained on, e.g. elpv's",
    )


def add_config_flags(p: argparse.ArgumentParser, config: type) -> None:
    """One flag per field of the dataclass ``config``: ``--field-name``, typed by the field's
    annotation (``X | None`` as ``X``; a bool as ``--x/--no-x``), its help and default from the
    field. Every flag defaults to None, so only what the user typed reaches the config and the
    dataclass stays the one place defaults live. Metadata ``flag`` renames a flag (None: no
    flag); other metadata (``choices``, ``metavar``) goes to argparse as is."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        if flag is None:
            continue
        help_text = meta.pop("help", "")
        kind = _flag_type(hints[f.name])
        if f.default is not None:
            help_text += f" (default {f.default})"
        extra = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
        p.add_argument(flag, dest=f.name, default=None, help=help_text, **extra, **meta)


def _flag_type(annotation: Any) -> type:
    """``int | None`` -> ``int``: the one non-None type of a field."""
    kinds = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
        raise TypeError(f"no command-line flag for a field of type {annotation}")
    return kinds[0]


def run_train(args: argparse.Namespace) -> int:
    from mobilenets.train.loop import train

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    train(TrainConfig(**given), epochs_given="epochs" in given)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from mobilenets.evaluation.predict_dense import source_task
    from mobilenets.runs import names_a_file

    task = source_task(args.run_dir)
    if task != "classification":
        return run_evaluate_dense(args)
    args.batch_size = 256 if args.batch_size is None else args.batch_size
    if names_a_file(args.run_dir):
        return run_evaluate_program(args)
    from mobilenets.evaluation.evaluate import evaluate

    result = evaluate(
        args.run_dir, data=args.data, batch_size=args.batch_size, plot=args.plot, tta=args.tta
    )

    def views() -> Iterator[Any]:
        top5 = "" if result.top5 is None else f", top-5 {result.top5:.2%}"
        views_note = "" if args.tta is None else f" (mean over the {args.tta} test-time views)"
        yield (
            f"{result.num_images} images: top-1 {result.top1:.2%}{top5}, loss "
            f"{result.loss:.4f}{views_note}"
        )
        rows = [
            [name, str(sum(row)), f"{acc:.2%}"]
            for (name, acc), row in zip(result.per_class.items(), result.confusion, strict=True)
        ]
        yield (table("Per-class accuracy", ["class", "images", "top-1"], rows, right=2))
        yield f"confusion matrix written to {result.figure}"

    return show(args.json, {**result.to_dict(), "tta": args.tta}, views())


def run_evaluate_program(args: argparse.Namespace) -> int:
    from mobilenets.evaluation.evaluate import evaluate_program

    report = evaluate_program(args.run_dir, args.data, args.batch_size, args.plot, tta=args.tta)
    result, fp32 = report.result, report.fp32

    def score(r: Any) -> list[str]:
        top5 = "" if r.top5 is None else f"{r.top5:.2%}"
        return [f"{r.top1:.2%}", top5, f"{r.loss:.4f}"]

    def views() -> Iterator[Any]:
        views_note = "" if args.tta is None else f", mean over the {args.tta} test-time views"
        yield (
            f"{report.program}: {report.precision} in {report.runtime}, on {report.data}"
            f"{views_note}"
        )
        rows = [[f"{report.format} {report.precision}, {report.runtime}", *score(result)]]
        if fp32 is not None:
            rows.append(["run fp32, PyTorch", *score(fp32)])
        yield table(None, ["model", "top-1", "top-5", "loss"], rows, right=3)
        if fp32 is not None:
            yield (
                f"top-1 {report.precision} - fp32: {100 * report.top1_change:+.2f} points "
                f"(run {report.run_dir})"
            )
        else:
            yield f"no fp32 score: {report.fp32_note}"
        names = result.class_names
        per_class = [
            [name, str(sum(row)), f"{result.per_class[name]:.2%}"]
            + ([] if fp32 is None else [f"{fp32.per_class[name]:.2%}"])
            for name, row in zip(names, result.confusion, strict=True)
        ]
        columns = ["class", "images", report.precision] + ([] if fp32 is None else ["fp32"])
        yield table("Per-class accuracy", columns, per_class, right=len(columns) - 1)
        if result.figure:
            yield f"confusion matrix written to {result.figure}"

    return show(args.json, {**report.to_dict(), "tta": args.tta}, views())


def run_evaluate_dense(args: argparse.Namespace) -> int:
    from mobilenets.evaluation.evaluate import DENSE_SCORES, evaluate_dense

    for flag, value in (("--plot", args.plot), ("--tta", args.tta)):
        if value is not None:
            raise MobileNetError(f"{flag} is for a classifier; {args.run_dir} is not one")
    batch_size = 32 if args.batch_size is None else args.batch_size
    report = evaluate_dense(args.run_dir, args.data, batch_size)
    shown = DENSE_SCORES[report.task]

    def views() -> Iterator[Any]:
        yield f"{report.source}: {report.task}, {report.precision}, on {report.data}"
        rows = [[report.engine, *(f"{report.scores[k]:.4f}" for k, _ in shown)]]
        if report.fp32 is not None:
            rows.append(["run fp32, PyTorch", *(f"{report.fp32[k]:.4f}" for k, _ in shown)])
        yield table(None, ["model", *(name for _, name in shown)], rows, right=len(shown))
        if report.changes is not None:
            changes = ", ".join(f"{name} {report.changes[k]:+.2f}" for k, name in shown)
            yield f"{report.precision} - fp32, points: {changes} (run {report.run_dir})"
        elif report.fp32_note is not None:
            yield f"no fp32 score: {report.fp32_note}"

    return show(args.json, report.to_dict(), views())


def run_predict(args: argparse.Namespace) -> int:
    from mobilenets.evaluation.predict import predict
    from mobilenets.evaluation.predict_dense import source_task

    task = source_task(args.run_dir)
    if task != "classification":
        return run_predict_dense(args, task)
    if args.out is not None or args.score_threshold is not None:
        flag = "--out" if args.out is not None else "--score-threshold"
        raise MobileNetError(f"{flag} is for detectors and segmenters; {args.run_dir} classifies")
    report = predict(args.run_dir, args.images, top_k=args.top_k, tta=args.tta)
    status = 1 if report.errors else 0
    skipped = (
        f"skipped {len(report.skipped)} file(s) that are not images: " + ", ".join(report.skipped)
        if report.skipped
        else None
    )
    if args.csv:
        write_predictions_csv(report)
        if skipped:  # stdout is the CSV; the note goes beside it
            print(skipped, file=sys.stderr)
        return status

    def views() -> Iterator[Any]:
        rows = [
            [p.image, *_top(p)] if p.error is None else [p.image, "", "", f"error: {p.error}"]
            for p in report.predictions
        ]
        yield table(None, ["image", "class", "probability", "next"], rows)
        if report.tta is not None:
            yield f"probabilities: the mean over the {report.tta} test-time views"
        if skipped:
            yield skipped
        if report.errors:
            yield f"{report.errors} of {len(report.predictions)} image(s) could not be read"

    show(args.json, report.to_dict(), views())
    return status


def run_predict_dense(args: argparse.Namespace, task: str) -> int:
    from mobilenets.evaluation.predict_dense import DEFAULT_SCORE_THRESHOLD, predict_dense

    if args.tta is not None:
        raise MobileNetError(f"--tta is for a classifier; {args.run_dir} is not one")
    if args.out is None:
        raise MobileNetError(f"{args.run_dir} is a {task} model: give --out DIR for its images")
    if args.csv:
        raise MobileNetError("--csv is for classifiers; a detector's or segmenter's rows are JSON")
    threshold = DEFAULT_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    if task == "segmentation" and args.score_threshold is not None:
        raise MobileNetError("--score-threshold is for detectors; this is a segmentation model")
    report = predict_dense(args.run_dir, args.images, args.out, score_threshold=threshold)

    def views() -> Iterator[Any]:
        rows = []
        for r in report.rows:
            if r.error is not None:
                rows.append([r.image, "", f"error: {r.error}"])
            elif r.detections is not None:
                found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r.detections[:5])
                rows.append([r.image, r.png, f"{len(r.detections)}: {found}".rstrip(": ")])
            else:
                share = sorted((r.pixel_share or {}).items(), key=lambda kv: -kv[1])[:5]
                rows.append([r.image, r.png, ", ".join(f"{c} {s:.1%}" for c, s in share)])
        what = "detections" if task == "detection" else "pixel share"
        yield table(None, ["image", "drawn", what], rows)
        if report.skipped:
            yield f"skipped {len(report.skipped)} file(s) that are not images: " + ", ".join(
                report.skipped
            )
        if report.errors:
            yield f"{report.errors} of {len(report.rows)} image(s) could not be read"
        yield f"wrote {report.json_path}"

    show(args.json, report.to_dict(), views())
    return 1 if report.errors else 0


def _top(p: Any) -> list[str]:
    """The most probable class, its probability, and the runners-up in one cell."""
    rest = zip(p.classes[1:], p.probabilities[1:], strict=True)
    return [p.classes[0], f"{p.probabilities[0]:.2%}", ", ".join(f"{c} {q:.1%}" for c, q in rest)]


def write_predictions_csv(report: Any) -> None:
    """One CSV row per image: image, class_1, probability_1, ... class_k, probability_k,
    error."""
    import csv
    import sys

    k = max([len(p.classes) for p in report.predictions] + [1])
    writer = csv.writer(sys.stdout, lineterminator="\n")
    ranks = [[f"class_{i}", f"probability_{i}"] for i in range(1, k + 1)]
    writer.writerow(["image", *[c for pair in ranks for c in pair], "error"])
    for p in report.predictions:
        cells = [
            v for c, q in zip(p.classes, p.probabilities, strict=True) for v in (c, f"{q:.6f}")
        ]
        cells += [""] * (2 * k - len(cells))
        writer.writerow([p.image, *cells, p.error or ""])

"""int8 on real labels: each runtime's default ``export --int8`` scored on the labelled
held-out split, beside its fp32 program and the run's PyTorch weights (issue 32).

For a run directory that records its data (a digits run, ``--data elpv``, an image folder),
every installed format is exported in fp32 and in default int8 (calibrated on
``--calibration`` training images) into a temporary folder (the run directory is left as it
was), and each program is scored by ``mobilenets evaluate PROGRAM`` in its own runtime on the
run's whole held-out split. Target: int8 top-1 within 0.5 points of fp32. A detector's or a
segmenter's run (``train_dense_digits.py --keep DIR``) is scored by its held-out COCO mAP or
mIoU instead, target within 1 point. Several runs make one section each, in the order given
(the real task first)::

    .venv/bin/python benchmarks/finetune_elpv.py --out /tmp/elpv/v2   # fine-tuned on elpv
    mobilenets train --out /tmp/x/digits --epochs 3 --quiet
    .venv/bin/python benchmarks/int8_labels.py /tmp/elpv/v2 /tmp/x/digits

Writes benchmarks/results/<results>.md: per run, top-1, top-5 and the change from PyTorch
fp32 per runtime and precision, the lowest per-class accuracy, and per-class accuracy side
by side. ``--variant onnx:equalize+calibration=1024`` (or ONNX's own options:
``onnx:fp32_depthwise+calibrate_method=entropy``) adds an int8 export with other
settings (the levers for a runtime that misses the target). ``--int8-only`` skips the fp32
programs (half the exports) and compares int8 with the run's fp32 weights in PyTorch, which
each runtime's fp32 program matched in top-1 in every run measured so far. The elpv cells
are CC BY-NC-SA 4.0 (the optional extra ``elpv``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilenets.deploy.export import FORMATS, VERIFY_IMAGES, default_path, export
from mobilenets.evaluation.evaluate import (
    DENSE_SCORES,
    evaluate_dense,
    evaluate_model,
    evaluate_program,
)
from mobilenets.int8 import DEFAULT_CALIBRATION
from mobilenets.models import model_task
from mobilenets.runs import load_run, load_run_data, read_run_info
from mobilenets.train.metrics import Evaluation

from stamp import write_results

RESULTS = Path(__file__).parent / "results"
TARGET_POINTS = 0.5  # int8 top-1 at most this many points below fp32
# a detector's mAP@.5, a segmenter's mIoU: int8 within this many points of fp32 (issue 33)
DENSE_TARGET = {"detection": ("map_50", 1.0), "segmentation": ("miou", 1.0)}


def points(a: float, b: float) -> str:
    return f"{100 * (a - b):+.2f}"


# the float steps and residual sums (`export --int8 --equalize ...`): lever -> keyword, value
LEVERS = {
    "equalize": ("equalize", True),
    "no_equalize": ("equalize", False),
    "bias_correct": ("bias_correct", True),
    "wide_residuals": ("wide_residuals", True),
}
# the format's own int8 options (`export --format onnx --int8 ...`): flags and name=value
FORMAT_FLAGS = {"fp32_depthwise": ("fp32_depthwise", True), "per_tensor": ("per_channel", False)}
FORMAT_VALUES = ("calibrate_method", "quant_format")
FLAGS = {**LEVERS, **FORMAT_FLAGS}


def lever_options(levers: str, calibration: int) -> dict[str, object]:
    """``export`` keywords of a variant's levers, e.g. ``equalize+calibration=1024`` or
    ``fp32_depthwise+calibrate_method=entropy``."""
    options: dict[str, object] = {"calibration": calibration}
    for lever in filter(None, levers.split("+")):
        name, _, value = lever.partition("=")
        if name == "calibration":
            options["calibration"] = int(value)
        elif name in FLAGS and not value:
            key, setting = FLAGS[name]
            options[key] = setting
        elif name in FORMAT_VALUES and value:
            options[name] = value
        else:
            known = [*LEVERS, *FORMAT_FLAGS, *(f"{v}=X" for v in FORMAT_VALUES), "calibration=N"]
            raise SystemExit(f"unknown lever {lever!r}: {', '.join(known)}")
    return options


def export_jobs(formats: list[str], args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    """(format, int8, levers) of every program a run's section exports."""
    precisions = (True,) if args.int8_only else (False, True)
    jobs = [(fmt, int8, "") for fmt in formats for int8 in precisions]
    for variant in args.variant:
        fmt, _, levers = variant.partition(":")
        jobs.append((fmt, True, levers))
    return jobs


def export_into(
    run_dir: Path, tmp: str, n: int, job: tuple[str, bool, str], args: argparse.Namespace
) -> Path:
    """The ``n``-th program of a section, exported into ``tmp`` (the run left as it was)."""
    fmt, int8, levers = job
    options = lever_options(levers, args.calibration)
    out = Path(tmp) / str(n) / default_path(tmp, FORMATS[fmt], int8).name
    out.parent.mkdir()
    export(
        run_dir,
        fmt,
        int8=int8,
        out=out,
        verify_images=args.verify_images,
        record=False,
        **options,
    )
    return out


def score_programs(
    run_dir: Path,
    formats: list[str],
    args: argparse.Namespace,
    score: Callable[[Path], tuple[str, Any, str]],
) -> list[tuple[str, str, Any, float, float]]:
    """Every program of a section exported and scored by ``score(path)`` (its precision, its
    result, a line to print): rows of format, precision (+ levers), result, export seconds and
    evaluate seconds."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-labels-") as tmp:
        for n, (fmt, int8, levers) in enumerate(export_jobs(formats, args)):
            began = time.perf_counter()
            out = export_into(run_dir, tmp, n, (fmt, int8, levers), args)
            exported = time.perf_counter() - began
            precision, result, shown = score(out)
            seconds = time.perf_counter() - began - exported
            precision += f" + {levers}" if levers else ""
            rows.append((fmt, precision, result, exported, seconds))
            print(f"{fmt} {precision}: {shown}", flush=True)
    return rows


def target_line(
    what: str, met: list[str], count: int, args: argparse.Namespace, wall: float
) -> str:
    """``Target: int8 <what> of <fp32>. Met by ...``: which int8 programs met the target."""
    return (
        f"Target: int8 {what} of "
        + ("PyTorch fp32" if args.int8_only else "the fp32 program of the same runtime")
        + f". Met by {len(met)} of {count}{': ' + ', '.join(met) if met else ''}. "
        f"Wall time {wall / 60:.1f} min."
    )


def measure_dense(run_dir: Path, formats: list[str], args: argparse.Namespace) -> list[str]:
    """The section of a detector's or segmenter's run: every format exported and its program
    scored on the held-out split (COCO mAP, or mIoU and pixel accuracy) in its runtime."""
    start = time.perf_counter()
    pytorch = evaluate_dense(run_dir)
    task, info = pytorch.task, read_run_info(run_dir)
    shown = DENSE_SCORES[task]
    key, allowed = DENSE_TARGET[task]

    def score(path: Path) -> tuple[str, dict[str, float], str]:
        report = evaluate_dense(path, fp32=False)
        return report.precision, report.scores, str(report.scores)

    rows = score_programs(run_dir, formats, args, score)
    wall = time.perf_counter() - start
    fp32_of = {fmt: pytorch.scores for fmt in formats}
    fp32_of.update({fmt: s for fmt, precision, s, _, _ in rows if precision == "fp32"})
    int8 = [(fmt, s) for fmt, precision, s, _, _ in rows if precision == "int8"]
    met = [fmt for fmt, s in int8 if 100 * (fp32_of[fmt][key] - s[key]) <= allowed]
    name = dict(shown)[key]
    return [
        f"## {pytorch.data.split(' of ')[-1]}: {info.describe()}",
        "",
        f"Run: {info.describe()}, {task}; scored on {pytorch.data} (the run's own split, none "
        f"of them among the {args.calibration} training images int8 was calibrated on). Each "
        "program is scored in its own runtime (`mobilenets evaluate PROGRAM`: a detector's "
        "outputs decoded and NMS'd outside the runtime as in PyTorch); changes in points from "
        "the run's fp32 weights in PyTorch.",
        "",
        "| runtime | precision | "
        + " | ".join(n for _, n in shown)
        + f" | {name} change (points) | export (s) | evaluate (s) |",
        "|---|---|" + "---:|" * (len(shown) + 3),
        "| PyTorch | fp32 | "
        + " | ".join(f"{pytorch.scores[k]:.4f}" for k, _ in shown)
        + " | | | |",
        *(
            f"| {FORMATS[fmt].runtime} | {precision} | "
            + " | ".join(f"{s[k]:.4f}" for k, _ in shown)
            + f" | {points(s[key], pytorch.scores[key])} | {exported:.0f} | {seconds:.0f} |"
            for fmt, precision, s, exported, seconds in rows
        ),
        "",
        target_line(f"{name} within {allowed:g} point", met, len(int8), args, wall),
        "",
    ]


def measure(run_dir: Path, formats: list[str], args: argparse.Namespace) -> list[str]:
    """The section of one run: every format exported in fp32 and int8 and scored."""
    if model_task(read_run_info(run_dir).model) != "classification":
        return measure_dense(run_dir, formats, args)
    model, info = load_run(run_dir)
    bundle = load_run_data(info)
    start = time.perf_counter()
    pytorch = evaluate_model(model, bundle.test, info.class_names)

    def score(path: Path) -> tuple[str, Evaluation, str]:
        report = evaluate_program(path, fp32=False)
        return report.precision, report.result, f"top-1 {report.result.top1:.2%}"

    rows = score_programs(run_dir, formats, args, score)
    wall = time.perf_counter() - start

    def top5(e: Evaluation) -> str:
        return "" if e.top5 is None else f"{e.top5:.2%}"

    def lowest(e: Evaluation) -> str:
        name = min(e.per_class, key=lambda c: e.per_class[c])
        return f"{e.per_class[name]:.2%} ({name})"

    # without fp32 programs (--int8-only), int8 is compared with the run's fp32 in PyTorch
    fp32_of = {fmt: pytorch for fmt in formats}
    fp32_of.update({fmt: e for fmt, precision, e, _, _ in rows if precision == "fp32"})
    met = [
        fmt
        for fmt, precision, e, _, _ in rows
        if precision == "int8" and 100 * (fp32_of[fmt].top1 - e.top1) <= TARGET_POINTS
    ]
    int8_formats = [fmt for fmt, precision, *_ in rows if precision == "int8"]
    licence = " (CC BY-NC-SA 4.0 images)" if bundle.name.startswith("elpv") else ""
    return [
        f"## {bundle.name}: {info.describe()}",
        "",
        f"Run: {info.describe()}, trained on {bundle.name}{licence}; scored on all "
        f"{pytorch.num_images} held-out images of the run's own split (none of them among the "
        f"{args.calibration} training images int8 was calibrated on). Each program is "
        "scored in its own runtime (`mobilenets evaluate PROGRAM`); the change is from the "
        "run's fp32 weights in PyTorch.",
        "",
        "| runtime | precision | top-1 | top-5 | top-1 change (points) | lowest class | "
        "export (s) | evaluate (s) |",
        "|---|---|---:|---:|---:|---|---:|---:|",
        f"| PyTorch | fp32 | {pytorch.top1:.2%} | {top5(pytorch)} | | {lowest(pytorch)} | | |",
        *(
            f"| {FORMATS[fmt].runtime} | {precision} | {e.top1:.2%} | {top5(e)} | "
            f"{points(e.top1, pytorch.top1)} | {lowest(e)} | {exported:.0f} | {seconds:.0f} |"
            for fmt, precision, e, exported, seconds in rows
        ),
        "",
        target_line(f"top-1 within {TARGET_POINTS} points", met, len(int8_formats), args, wall),
        "",
        "Per-class top-1 (int8 per runtime):",
        "",
        "| class | images | PyTorch fp32 | " + " | ".join(int8_formats) + " |",
        "|---|---:|---:|" + "---:|" * len(int8_formats),
        *(
            f"| {name} | {sum(row)} | {pytorch.per_class[name]:.2%} | "
            + " | ".join(
                f"{e.per_class[name]:.2%}" for _, precision, e, _, _ in rows if precision == "int8"
            )
            + " |"
            for name, row in zip(pytorch.class_names, pytorch.confusion, strict=True)
        ),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN")
    parser.add_argument(
        "--formats", nargs="+", choices=list(FORMATS), help="default: every installed one"
    )
    parser.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION)
    parser.add_argument("--verify-images", type=int, default=VERIFY_IMAGES)
    parser.add_argument("--results", default="int8_labels")
    parser.add_argument("--note", type=Path, help="a Markdown file appended to the results")
    parser.add_argument(
        "--int8-only",
        action="store_true",
        help="no fp32 programs: int8 against the run's fp32 weights in PyTorch (half the time)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="FORMAT:LEVERS",
        help="another int8 export to score, e.g. onnx:equalize+calibration=1024 (levers: "
        f"{', '.join(LEVERS)}, calibration=N; ONNX's {', '.join(FORMAT_FLAGS)}, "
        f"{'=X, '.join(FORMAT_VALUES)}=X; joined by +)",
    )
    args = parser.parse_args()
    formats = args.formats or [f for f, t in FORMATS.items() if t.installed()]
    lines = [
        "# int8 on real labels: each runtime's default `export --int8` on the held-out split",
        "",
    ]
    path = RESULTS / f"{args.results}.md"
    note = [args.note.read_text().rstrip(), ""] if args.note else []
    for n, run_dir in enumerate(args.run_dirs, start=1):
        lines += measure(run_dir, formats, args)
        # written after every run, so a stopped benchmark keeps the sections it finished
        left = [f"(Stopped here: {len(args.run_dirs) - n} run(s) not measured.)", ""]
        write_results(path, "\n".join(lines + (left if n < len(args.run_dirs) else []) + note))
    print("\n".join(lines))
    print(f"written to {path}")


if __name__ == "__main__":
    main()

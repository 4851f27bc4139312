"""int8 quality of torchvision's MobileNetV2 ImageNet weights in every runtime, lever by lever.

Reference: the BN-folded fp32 model in PyTorch. Each runtime's int8 program is made with the
quantizer that runtime ships, calibrated on random crops of the bundled photos (seed 0), and
run in that runtime on other crops (seed 1); we report top-1 agreement with the fp32 model and
the logits' SQNR. Every PTQ choice the runtime offers that we tried is one row, so the effect
of each lever is measured, not assumed.

    python scripts/fetch_imagenet_weights.py --run-dir /tmp/v2-imagenet
    python benchmarks/deploy_int8_quality.py /tmp/v2-imagenet [--runtimes onnx,openvino,...]

Writes benchmarks/results/deploy_int8_quality.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from mobilenets.deploy.photos import CALIBRATION_SEED, EVALUATION_SEED, photo_crops, photo_paths
from mobilenets.deploy.quantize import quantize_model
from mobilenets.deploy.runtime import onnx_metadata
from mobilenets.deploy.target import agreement, run_batches
from mobilenets.deploy.targets import executorch, litert, openvino
from mobilenets.deploy.targets import onnx as onnx_target
from mobilenets.deploy.targets.onnx import write_onnx
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.int8.prepare import prepare_for_int8
from mobilenets.io import atomic_write_json
from mobilenets.runs import load_run

from stamp import write_results

RESULTS = Path(__file__).parent / "results"

WIDE = {"wide_residuals": True}  # residual additions wider than int8 (export --wide-residuals)

# Per runtime: (what was tried, the options its writer takes for it). A row whose name does
# not say "equalized" is the runtime's quantizer alone (`export --int8 --no-equalize`); its
# "default" is the runtime's own calibration default.
LEVERS = {
    "onnx": [
        ("MinMax calibration (default)", {"calibrate_method": "minmax"}),
        # Entropy and percentile calibration are levers too, but onnxruntime's histogram
        # calibrators keep every activation of every image: at 224 px the entropy run had
        # grown to 12 GB after 19 minutes on 200 images, half this machine, and was stopped.
        ("MinMax, depthwise left in fp32", {"calibrate_method": "minmax", "fp32_depthwise": True}),
        ("MinMax, channels equalized first", {"calibrate_method": "minmax", "equalize": True}),
        (
            "MinMax, residual stream uint16 (wide residuals)",
            {"calibrate_method": "minmax", **WIDE},
        ),
        (
            "MinMax, channels equalized first, residual stream uint16 (wide residuals)",
            {"calibrate_method": "minmax", "equalize": True, **WIDE},
        ),
        ("MinMax, biases corrected first", {"calibrate_method": "minmax", "bias_correct": True}),
        (
            "MinMax, channels equalized and biases corrected first",
            {"calibrate_method": "minmax", "equalize": True, "bias_correct": True},
        ),
        (
            "MinMax, channels equalized and weights adaptively rounded first",
            {"calibrate_method": "minmax", "equalize": True, "adaround": True},
        ),
        (
            "MinMax, channels equalized, weights adaptively rounded, biases corrected first",
            {
                "calibrate_method": "minmax",
                "equalize": True,
                "adaround": True,
                "bias_correct": True,
            },
        ),
        (
            "MinMax, channels equalized and weights adaptively rounded first, residual stream "
            "uint16 (wide residuals)",
            {"calibrate_method": "minmax", "equalize": True, "adaround": True, **WIDE},
        ),
        (
            "MinMax, channels equalized and weights adaptively rounded (1000 steps) first",
            {"calibrate_method": "minmax", "equalize": True, "adaround": 1000},
        ),
        (
            "MinMax, channels equalized and weights adaptively rounded (1000 steps) first, "
            "residual stream uint16 (wide residuals)",
            {"calibrate_method": "minmax", "equalize": True, "adaround": 1000, **WIDE},
        ),
    ],
    "openvino": [
        ("MIXED, full bias correction (our default)", {}),
        (
            "MIXED, full bias correction, residual additions in float (wide residuals)",
            {**WIDE},
        ),
        (
            "MIXED, full bias correction, channels equalized first",
            {"equalize": True},
        ),
        (
            "MIXED, full bias correction, channels equalized first, residual additions in float "
            "(wide residuals)",
            {"equalize": True, **WIDE},
        ),
        (
            "MIXED, full bias correction, channels equalized and biases corrected first",
            {"equalize": True, "bias_correct": True},
        ),
        (
            "MIXED, full bias correction, channels equalized and weights adaptively rounded first",
            {"equalize": True, "adaround": True},
        ),
        (
            "MIXED, full bias correction, channels equalized and weights adaptively rounded "
            "first, residual additions in float (wide residuals)",
            {"equalize": True, "adaround": True, **WIDE},
        ),
        (
            "MIXED, full bias correction, channels equalized and weights adaptively rounded "
            "(1000 steps) first",
            {"equalize": True, "adaround": 1000},
        ),
        (
            "MIXED, full bias correction, channels equalized and weights adaptively rounded "
            "(1000 steps) first, residual additions in float (wide residuals)",
            {"equalize": True, "adaround": 1000, **WIDE},
        ),
    ],
    # float layers (mixed precision, pt2e.FloatModules) are quantize-mixed's to measure
    "executorch": [
        ("per channel, histogram observer (default: ReLU6 fused into its convolution)", {}),
        ("per channel, histogram observer, channels equalized first", {"equalize": True}),
        (
            "per channel, histogram observer, residual additions in float (wide residuals)",
            WIDE,
        ),
        (
            "per channel, histogram observer, channels equalized first, residual additions in "
            "float (wide residuals)",
            {"equalize": True, **WIDE},
        ),
        (
            "per channel, histogram observer, channels equalized and biases corrected first",
            {"equalize": True, "bias_correct": True},
        ),
        (
            "per channel, histogram observer, channels equalized and weights adaptively rounded "
            "first",
            {"equalize": True, "adaround": True},
        ),
        (
            "per channel, min-max observer, channels equalized and weights adaptively rounded "
            "first (what export does with AdaRound)",
            {"equalize": True, "adaround": True, "observer": "minmax"},
        ),
        (
            "per channel, min-max observer, channels equalized and weights adaptively rounded "
            "first, residual additions in float (wide residuals)",
            {"equalize": True, "adaround": True, "observer": "minmax", **WIDE},
        ),
        (
            "per channel, min-max observer, channels equalized and weights adaptively rounded "
            "(1000 steps) first",
            {"equalize": True, "adaround": 1000, "observer": "minmax"},
        ),
        (
            "per channel, min-max observer, channels equalized and weights adaptively rounded "
            "(1000 steps) first, residual additions in float (wide residuals)",
            {"equalize": True, "adaround": 1000, "observer": "minmax", **WIDE},
        ),
    ],
    "litert": [
        ("per channel, histogram observer (default: ReLU6 fused into its convolution)", {}),
        ("per channel, histogram observer, channels equalized first", {"equalize": True}),
        (
            "per channel, histogram observer, channels equalized and biases corrected first",
            {"equalize": True, "bias_correct": True},
        ),
        (
            "per channel, histogram observer, channels equalized and weights adaptively rounded "
            "first",
            {"equalize": True, "adaround": True},
        ),
        (
            "per channel, min-max observer, channels equalized and weights adaptively rounded "
            "first (what export does with AdaRound)",
            {"equalize": True, "adaround": True, "observer": "minmax"},
        ),
        # no wide residuals: the converter quantizes an addition left in float again
        (
            "per channel, min-max observer, channels equalized and weights adaptively rounded "
            "(1000 steps) first",
            {"equalize": True, "adaround": 1000, "observer": "minmax"},
        ),
    ],
}


STEPS = ("equalize", "adaround", "bias_correct")  # in the order prepare_for_int8 takes them
# the float model after each prefix of (step, value)s
PREPARED: dict[tuple[tuple[str, object], ...], torch.nn.Module] = {}


def build(runtime: str, options: dict, model, info, tmp: Path, example, calibration):
    """Write the int8 program for one lever and load it in its runtime."""
    options = dict(options)
    # (step, value): adaround is True (its default steps) or a number of steps
    steps = [(k, options.pop(k)) for k in STEPS if options.get(k, False)]
    done: tuple[tuple[str, object], ...] = ()
    for step in steps:  # float steps first (mobilenets.int8.prepare), each prefix made once
        if (*done, step) not in PREPARED:
            before = PREPARED.get(done, model)
            PREPARED[(*done, step)] = prepare_for_int8(
                before, calibration, **{step[0]: step[1]}, on_message=print
            )[0]
        done += (step,)
    model = PREPARED.get(done, model)
    if runtime == "onnx":
        fp32, out = tmp / "model.onnx", tmp / "model.int8.onnx"
        write_onnx(model, fp32, tuple(info.input_size), onnx_metadata(info, "fp32"))
        quantize_model(fp32, out, TensorDataset(torch.cat(calibration)), **options)
        return onnx_target.load(out, None), None
    if runtime == "openvino":
        out = tmp / "model.int8.xml"
        openvino.write(model, out, example, calibration, {}, **options)
        return openvino.load(out, None), None
    if runtime == "executorch":
        out = tmp / "model.int8.pte"
        executorch.write(model, out, example, calibration, {}, **options)
        return executorch.load(out, None), 1
    out = tmp / "model.int8.tflite"
    litert.write(model, out, example, calibration, {}, **options)
    return litert.load(out, None), 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the imported torchvision V2 run")
    parser.add_argument("--runtimes", default=",".join(LEVERS))
    parser.add_argument(
        "--levers",
        default="",
        help="only the levers whose name holds one of these (a,b,... or, for terms that hold "
        "commas, a;b;...)",
    )
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--evaluation", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--note", default="", help="how the machine was (printed in the page)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, info = load_run(args.run_dir)
    folded = fold_batchnorm(model)
    size = info.input_size[1]
    calibration = list(
        photo_crops(args.calibration, size, info.mean, info.std, seed=CALIBRATION_SEED).split(32)
    )
    evaluation = list(
        photo_crops(args.evaluation, size, info.mean, info.std, seed=EVALUATION_SEED).split(50)
    )
    with torch.no_grad():
        expected = torch.cat([folded(x) for x in evaluation]).numpy()
    rows = []
    terms = args.levers.split(";" if ";" in args.levers else ",")
    for runtime in args.runtimes.split(","):
        for lever, options in LEVERS[runtime]:
            if args.levers and not any(k in lever for k in terms):
                continue
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                runner, batch = build(
                    runtime, options, folded, info, Path(tmp), evaluation[0][:1], calibration
                )
                got = run_batches(runner, evaluation, batch)
            result = agreement(expected, got)
            row = {
                "runtime": runtime,
                "lever": lever,
                "top1_agreement": result.top1_agreement,
                "sqnr_db": result.sqnr_db,
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_report(rows, args)  # after every row: a long run keeps what it measured


def write_report(rows: list[dict], args: argparse.Namespace) -> None:
    tag = f"_{args.tag}" if args.tag else ""
    lines = [
        "# int8 quality per runtime and PTQ lever: torchvision MobileNetV2 ImageNet weights",
        "",
        f"`python benchmarks/deploy_int8_quality.py RUN --calibration {args.calibration} "
        f"--evaluation {args.evaluation}"
        + (f" --runtimes {args.runtimes}" if args.runtimes != ",".join(LEVERS) else "")
        + (f" --levers '{args.levers}'" if args.levers else "")
        + (f" --tag {args.tag}" if args.tag else "")
        + f"` on {platform.machine()}, {args.threads} threads. {args.note}",
        f"Calibration: {args.calibration} random crops of {len(photo_paths())} bundled photos "
        f"(seed {CALIBRATION_SEED}); evaluation: {args.evaluation} other crops (seed "
        f"{EVALUATION_SEED}); reference: the BN-folded fp32 model in PyTorch.",
        "Target: >= 90% top-1 agreement and >= 20 dB logit SQNR in every runtime.",
        "",
        "| runtime | lever | top-1 agreement | SQNR dB | seconds to make + check |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['runtime']} | {r['lever']} | {r['top1_agreement']:.1%} | "
            f"{r['sqnr_db']:.2f} | {r['seconds']:.0f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / f"deploy_int8_quality{tag}.md", "\n".join(lines) + "\n")
    atomic_write_json(RESULTS / f"deploy_int8_quality{tag}.json", {"rows": rows})


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

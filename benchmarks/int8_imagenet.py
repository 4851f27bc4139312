"""int8 of torchvision's ImageNet MobileNetV2: sensitivity, calibration, mixed precision.

Needs the imported run of torchvision's weights (``scripts/fetch_imagenet_weights.py
--run-dir RUN``) and the bundled photos (scikit-image installed)::

    .venv/bin/python benchmarks/int8_imagenet.py --run RUN

It measures, on random crops of the bundled photos (calibration and evaluation crops drawn
with different seeds; agreement is with PyTorch's fp32 logits):

1. the sensitivity report (``mobilenets sensitivity``): the ranked layers, its wall time;
2. calibration choices in onnxruntime: min-max, percentile, entropy; weights per channel or per
   tensor; activations asymmetric or symmetric; 32 to 512 calibration images;
3. mixed precision to 99% agreement within 15% of the all-int8 latency (``quantize-mixed
   --target-agreement 0.99``), every setting tried with its latency;
4. with ``--distilled RUN2 [RUN3 ...]`` (made by ``mobilenets qat RUN --distill``): the float
   run and each distilled QAT run, quantized by onnxruntime and ExecuTorch, against the
   original float model; a run of the ``xnnpack`` scheme also as the ExecuTorch program of
   its own trained ranges (what ``export --format executorch --int8`` ships for it).

Writes benchmarks/results/int8_imagenet.md, .json and the sensitivity figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from mobilenets.deploy.export import target_of
from mobilenets.deploy.images import calibration_inputs, held_out_inputs
from mobilenets.deploy.quantize import quantize_model
from mobilenets.deploy.runtime import create_session, onnx_metadata, run_session
from mobilenets.deploy.target import agreement, pytorch_logits, run_batches
from mobilenets.deploy.targets.onnx import write_onnx
from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.plots import save_figure
from mobilenets.quant.mixed import quantize_mixed
from mobilenets.quant.qat import int8_graph
from mobilenets.quant.sensitivity import sensitivity_figure, sensitivity_report
from mobilenets.runs import load_run

from stamp import stamp_fields

RESULTS = Path(__file__).resolve().parent / "results"
# (label, calibration images, method, per channel, symmetric activations)
# Percentile and entropy keep every activation value of every calibration image in memory
# (6 GB at 256 images of V2 at 224: the first run was killed for it), so they are compared
# with min-max at 64 images.
SETTINGS = [
    ("min-max, per channel, asymmetric (default)", 256, "minmax", True, False),
    ("weights per tensor", 256, "minmax", False, False),
    ("symmetric activations", 256, "minmax", True, True),
    ("min-max, 64 images", 64, "minmax", True, False),
    ("percentile, 64 images", 64, "percentile", True, False),
    ("entropy, 64 images", 64, "entropy", True, False),
    ("min-max, 16 images", 16, "minmax", True, False),
    ("min-max, 512 images", 512, "minmax", True, False),
]


def calibration_choices(run: Path, images: int) -> list[dict[str, object]]:
    model, info = load_run(run)
    folded = fold_batchnorm(model)
    inputs, _ = held_out_inputs(info, None, images)
    reference = pytorch_logits(folded, inputs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        write_onnx(folded, fp32, tuple(info.input_size), onnx_metadata(info, "fp32"))
        for label, n, method, per_channel, symmetric in SETTINGS:
            cal, _ = calibration_inputs(info, None, n)
            out = Path(tmp) / "int8.onnx"
            start = time.perf_counter()
            quantize_model(
                fp32,
                out,
                TensorDataset(torch.cat(cal)),
                per_channel=per_channel,
                calibrate_method=method,
                symmetric_activations=symmetric,
            )
            seconds = time.perf_counter() - start
            session = create_session(out)
            got = torch.cat([torch.from_numpy(run_session(session, x)) for x in inputs]).numpy()
            check = agreement(reference, got)
            rows.append(
                {
                    "setting": label,
                    "calibration_images": n,
                    "method": method,
                    "per_channel": per_channel,
                    "symmetric_activations": symmetric,
                    "top1_agreement": check.top1_agreement,
                    "sqnr_db": check.sqnr_db,
                    "quantize_seconds": seconds,
                }
            )
            print(rows[-1], flush=True)
    return rows


def distilled_comparison(run: Path, distilled: list[Path], images: int) -> list[dict[str, object]]:
    """The float run and its distilled QAT runs (``mobilenets qat RUN --distill``), each
    quantized after training as every runtime does it (onnxruntime min-max and percentile,
    ExecuTorch's XNNPACK flow) and, for the ``xnnpack`` scheme, shipped with its trained
    ranges; all measured against the *original* float model's logits."""
    original, info = load_run(run)
    inputs, _ = held_out_inputs(info, None, images)
    reference = pytorch_logits(fold_batchnorm(original), inputs)
    cal, _ = calibration_inputs(info, None, 64)
    executorch = target_of("executorch")
    rows = []
    for label, source in [
        ("PTQ of the float run", run),
        *((f"distilled QAT run {d.name}", d) for d in distilled),
    ]:
        tuned, tuned_info = load_run(source)
        scheme = ((tuned_info.train_config or {}).get("qat") or {}).get("scheme", "x86")
        folded = fold_batchnorm(tuned)
        own = pytorch_logits(folded, inputs)
        row: dict[str, object] = {"model": label, "float": agreement(reference, own).to_dict()}
        with tempfile.TemporaryDirectory(prefix="int8-distilled-") as tmp:
            fp32 = Path(tmp) / "model.onnx"
            write_onnx(folded, fp32, tuple(info.input_size), onnx_metadata(info, "fp32"))
            for method in ("minmax", "percentile"):
                out = Path(tmp) / f"{method}.onnx"
                quantize_model(fp32, out, TensorDataset(torch.cat(cal)), calibrate_method=method)
                session = create_session(out)
                got = np.concatenate([run_session(session, x) for x in inputs])
                row[f"onnxruntime {method}"] = agreement(reference, got).to_dict()
            pte = Path(tmp) / "model.pte"
            executorch.write(folded, pte, inputs[0][:1], cal, {})
            got = run_batches(executorch.load(pte), inputs, 1)
            row["ExecuTorch XNNPACK"] = agreement(reference, got).to_dict()
            if source != run and scheme == "xnnpack":
                executorch.write(int8_graph(source), pte, inputs[0][:1], None, {})
                got = run_batches(executorch.load(pte), inputs, 1)
                row["ExecuTorch XNNPACK, trained ranges"] = agreement(reference, got).to_dict()
        rows.append(row)
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="imported torchvision MobileNetV2 run")
    parser.add_argument("--images", type=int, default=300, help="evaluation crops (300)")
    parser.add_argument("--report-images", type=int, default=32, help="for the report (32)")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: report calib mixed")
    parser.add_argument(
        "--equalize",
        action="store_true",
        help="mixed precision on the equalized model (deploy.equalize), kept as mixed_equalized",
    )
    parser.add_argument(
        "--distilled", nargs="+", help="`mobilenets qat RUN --distill` runs to compare"
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    out_json = RESULTS / "int8_imagenet.json"
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results["machine"] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }
    results["stamp"] = stamp_fields()  # the .md written from this JSON carries it too
    if "report" not in args.skip:
        report = sensitivity_report(args.run, images=args.report_images)
        save_figure(sensitivity_figure(report), RESULTS / "int8_sensitivity.png")
        results["report"] = report.to_dict()
        print(f"report: {report.seconds:.0f} s", flush=True)
        out_json.write_text(json.dumps(results, indent=2))
    if "mixed" not in args.skip:
        key = "mixed_equalized" if args.equalize else "mixed"
        messages: list[str] = []

        def say(message: str) -> None:
            messages.append(message)
            print(message, flush=True)

        try:
            mixed = quantize_mixed(
                args.run,
                target_agreement=0.99,
                max_float=12,
                images=args.images,
                out=Path(tempfile.mkdtemp(prefix="int8-mixed-")) / "model.mixed.onnx",
                on_message=say,
                equalize=args.equalize,
            )
            results[key] = {**mixed.to_dict(), "messages": messages}
        except MobileNetError as e:
            results[key] = {"error": str(e), "messages": messages}
        out_json.write_text(json.dumps(results, indent=2))
    if "calib" not in args.skip:
        results["calibration"] = calibration_choices(Path(args.run), args.images)
        out_json.write_text(json.dumps(results, indent=2))
    if args.distilled:
        results["distilled"] = distilled_comparison(
            Path(args.run), [Path(d) for d in args.distilled], args.images
        )
        out_json.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "report"}, indent=2))


if __name__ == "__main__":
    main()

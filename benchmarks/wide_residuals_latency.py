"""What wide residuals cost in latency: MobileNetV2 1.0 at 224, int8 with and without them.

`export --int8 --wide-residuals` keeps the residual stream wider than int8: uint16 sums in
onnxruntime (converted to uint8 for each convolution), float additions in OpenVINO and
ExecuTorch. Their quality is in deploy_int8_quality_wide.md; this times each runtime's two
int8 programs of the same float model, interleaved in one process, batch 1, and reports the
ratio (ranges do not change speed, so the programs are calibrated on random inputs).

    python benchmarks/wide_residuals_latency.py [--threads 2] [--rounds 20]

Writes benchmarks/results/wide_residuals_latency.md and .json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from mobilenets import create_model
from mobilenets.analysis.timing import time_interleaved
from mobilenets.deploy.targets import executorch, openvino
from mobilenets.deploy.targets import onnx as onnx_target
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.io import atomic_write_json

from stamp import write_results

RESULTS = Path(__file__).parent / "results"
TARGETS = {"onnxruntime": onnx_target, "OpenVINO": openvino, "ExecuTorch": executorch}
PER_ROUND = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = fold_batchnorm(create_model("mobilenet_v2").eval())
    calibration = [torch.rand(8, 3, 224, 224) * 4 - 2 for _ in range(4)]
    image = np.ascontiguousarray(calibration[0][:1].numpy())
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, target in TARGETS.items():
            runners = {}
            for wide in (False, True):
                path = Path(tmp) / f"{name}-{wide}{target.TARGET.suffix}"
                target.write(model, path, calibration[0][:1], calibration, {}, wide_residuals=wide)
                runner = target.load(path, args.threads)
                runner(image)
                runners[wide] = runner
            calls = {str(wide): (lambda r=runner: r(image)) for wide, runner in runners.items()}
            times = time_interleaved(calls, args.rounds, PER_ROUND, settle=1)
            int8, wide = (1000 * statistics.median(times[k]) for k in ("False", "True"))
            rows.append({"runtime": name, "int8_ms": int8, "wide_ms": wide, "ratio": wide / int8})
            print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        "# Latency of wide residuals: MobileNetV2 1.0 at 224, batch 1",
        "",
        f"`python benchmarks/wide_residuals_latency.py --threads {args.threads} --rounds "
        f"{args.rounds}` on {platform.machine()}: {args.rounds} interleaved rounds of "
        f"{PER_ROUND} calls per program; load average {load_before:.1f} before and "
        f"{load_after:.1f} after. Compare within a row, not across runs.",
        "",
        "| runtime | int8 ms | int8, wide residuals ms | ratio |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['runtime']} | {r['int8_ms']:.2f} | {r['wide_ms']:.2f} | {r['ratio']:.3f} |"
            for r in rows
        ),
    ]
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "wide_residuals_latency.md", "\n".join(lines) + "\n")
    atomic_write_json(RESULTS / "wide_residuals_latency.json", {"rows": rows})


if __name__ == "__main__":
    main()

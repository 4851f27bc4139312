"""Where a network's measured onnxruntime time goes, against the latency model, by kernel group.

The per-layer comparison in ``latency_model.py`` matches kernels to priced layers one to one,
which fails for networks whose runtime graph has kernels the model does not price one by one
(a squeeze-and-excitation gate runs as ReduceMean, two 1x1 Conv and Mul, with NCHWc reorders
around it). This sums both sides by group instead: convolutions (the SE's 1x1 layers
included, as onnxruntime runs them), fully connected, SiLU, SE (ReduceMean + Mul), reorders,
and the rest of the wall time (the runtime between kernels, which the model's per-node and
per-call overheads stand for)::

    .venv/bin/python benchmarks/latency_in_network.py efficientnet_b0:1.0:96 mobilenet_v2:0.75:160

Prints a table per model (fastest of ``--rounds`` profiled calls); run it on an idle machine.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

from mobilenets.analysis.cost import profile_model
from mobilenets.deploy.targets.onnx import write_onnx
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.latency.calibration import load_calibration
from mobilenets.latency.machine import DEFAULT_RUNTIME, RUNTIMES
from mobilenets.latency.model import CONVOLUTION_KINDS, predict_latency
from mobilenets.latency.profiling import profile_onnx
from mobilenets.latency.samples import takes_width
from mobilenets.models import create_model

# onnxruntime op -> group; a Conv on the SE's pooled vector counts as a convolution, because
# onnxruntime runs it as one, while the model prices it as a fully connected layer
MEASURED_GROUPS = {
    "Conv": "convolution",
    "Gemm": "fc",
    "QuickGelu": "silu",
    "ReduceMean": "pool / SE",
    "Mul": "pool / SE",
    "ReorderInput": "reorder",
    "ReorderOutput": "reorder",
}
PREDICTED_GROUPS = {
    **dict.fromkeys(CONVOLUTION_KINDS, "convolution"),
    "relu6": "convolution",  # fused into its convolution's kernel
    "fc": "fc",
    "fc warm": "fc",
    "silu": "silu",
    "se": "pool / SE",
    "global pool": "pool / SE",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME:WIDTH:RESOLUTION")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    calibration = load_calibration(DEFAULT_RUNTIME, args.threads, say=print)
    for spec in args.models:
        name, width, resolution = spec.split(":")
        kwargs = {"width_mult": float(width)} if takes_width(name) else {}
        model = create_model(name, **kwargs).eval()
        size = int(resolution)
        prediction = predict_latency(profile_model(model, size), calibration)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            write_onnx(fold_batchnorm(model), path, (3, size, size), {})
            profiles = [
                profile_onnx(path, RUNTIMES[DEFAULT_RUNTIME], args.threads, 0.3)
                for _ in range(args.rounds)
            ]
        best = min(profiles, key=lambda p: p.wall_s)
        measured: collections.Counter[str] = collections.Counter()
        for _, op, seconds in best.nodes:
            measured[MEASURED_GROUPS.get(op, "other")] += seconds
        measured["between kernels"] = best.wall_s - sum(s for _, _, s in best.nodes)
        predicted: collections.Counter[str] = collections.Counter()
        for layer in prediction.layers:
            predicted[PREDICTED_GROUPS.get(layer.kind, "other")] += layer.seconds
        predicted["between kernels"] = (
            prediction.node_overhead_s * prediction.runtime_nodes + prediction.run_overhead_s
        )
        print(f"\n{spec}: measured {best.wall_s * 1e3:.3f} ms, predicted {prediction.ms:.3f} ms")
        print(f"  {'group':16s} {'measured ms':>12s} {'predicted ms':>13s}")
        for group in sorted(set(measured) | set(predicted), key=lambda g: -measured[g]):
            print(f"  {group:16s} {measured[group] * 1e3:12.3f} {predicted[group] * 1e3:13.3f}")


if __name__ == "__main__":
    main()

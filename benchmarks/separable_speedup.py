"""Separable speed-up, analytic against measured, on MobileNetV1's feature-map shapes.

Times a standard 3x3 convolution against our depthwise + pointwise pair and against the plain
PyTorch pair (two ``nn.Conv2d``), for the five stride-1 shapes of MobileNetV1 at 224, batch 1
and 32, NCHW and channels_last inputs, forward and forward+backward, all in one run. Prints
per shape the analytic speed-up, the measured ones and their ratios, and the geometric means;
writes benchmarks/results/separable_speedup.md and .png.

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/separable_speedup.py
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from mobilenets.latency.calibration import load_calibration
from mobilenets.latency.speedup import measure_separable_speedup, speedup_markdown, speedup_summary
from mobilenets.plots import save_figure, separable_speedup_figure

from stamp import write_results

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per combination")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()

    def show(row) -> None:
        print(
            f"{row.shape!s:>16} b{row.batch_size:<3} {row.memory_format:>13} {row.mode:>16}: "
            f"standard {row.standard_ms:8.3f} ms, ours {row.separable_ms:7.3f} ms "
            f"({row.measured:5.2f}x, {row.ratio:.2f} of {row.analytic:.2f}x), "
            f"plain {row.plain_separable_ms:7.3f} ms ({row.plain_ratio:.2f})",
            flush=True,
        )

    calibration = load_calibration(say=print)  # the predicted column: the latency model
    rows = measure_separable_speedup(
        batch_sizes=args.batch_sizes, budget_s=args.budget, progress=show, calibration=calibration
    )
    header = (
        f"# Separable speed-up, analytic against measured\n\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; best of 5-60 interleaved rounds per "
        f"cell. *ours*: `DepthwiseConv` + `PointwiseConv` (channels_last depthwise, GEMM "
        f"pointwise); *plain*: two `nn.Conv2d` with PyTorch's defaults; the standard conv runs "
        f"in the input's format. Ratio = measured / analytic speed-up. *predicted*: the "
        f"latency model's speed-up (per-layer roofline, onnxruntime rates of this machine), "
        f"with the bound it finds for the depthwise layer.\n\n"
        f"Command: `flock /tmp/mobilenets-cpu.lock .venv/bin/python "
        f"benchmarks/separable_speedup.py`\n\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results(RESULTS / "separable_speedup.md", header + speedup_markdown(rows))
    save_figure(separable_speedup_figure(rows), RESULTS / "separable_speedup.png")
    print()
    for s in speedup_summary(rows):
        print(
            f"batch {s['batch_size']:>2} {s['memory_format']:>13} {s['mode']:>16}: "
            f"geometric mean of measured/analytic: ours {s['ours']:.2f}, plain {s['plain']:.2f}"
        )
    print(f"wrote {RESULTS / 'separable_speedup.md'} and .png")


if __name__ == "__main__":
    main()

"""Could better overhead terms fix the latency model's worst case? Refit them on wall times.

Reads the per-model table of a ``latency_model.py`` report (measured whole-model latencies),
prices every model again with the cached calibration, and refits the overhead terms on the
wall times by least squares on the relative error:

1. one overhead per node plus one per call;
2. one overhead per latency kind plus one per call, fitted on all models (in-sample), on a
   random half judged on the other half, and with each family left out in turn.

It prints the median and worst whole-model error of each fit. ``--report`` takes one run's
report, as ``latency_model.py --out FILE`` writes it::

    python benchmarks/latency_model.py --threads 1 --out /tmp/latency_1thread.md
    python benchmarks/latency_overhead_refit.py --report /tmp/latency_1thread.md
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from mobilenets.analysis.cost import profile_model
from mobilenets.errors import MobileNetError
from mobilenets.latency.calibration import load_calibration
from mobilenets.latency.model import LATENCY_KINDS, predict_latency
from mobilenets.models import create_model

ROW = re.compile(r"\| (\w+) \| ([\d.]+) \| (\d+) \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|")


def measured_cases(report: Path) -> list[tuple[str, float, int, float]]:
    """(model, width, resolution, measured ms) from the report's per-model table."""
    rows = [ROW.match(line) for line in report.read_text().splitlines()]
    return [(m[1], float(m[2]), int(m[3]), float(m[4])) for m in rows if m]


def priced(name: str, width: float, resolution: int, calibration) -> tuple[float, np.ndarray]:
    """Kernel ms without any overhead term, and the count of priced layers of each kind."""
    try:
        model = create_model(name, width_mult=width)
    except (MobileNetError, TypeError):  # families without a width multiplier
        model = create_model(name)
    counts = np.zeros(len(LATENCY_KINDS))
    compute_ms = 0.0
    for layer in predict_latency(profile_model(model, resolution), calibration).layers:
        compute_ms += 1e3 * (layer.seconds - calibration.roofline(layer.kind).overhead_s)
        counts[LATENCY_KINDS.index(layer.kind)] += 1
    return compute_ms, counts


def fit(design: np.ndarray, compute: np.ndarray, wall: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Overheads (ms) minimising the relative error of compute + design @ overheads."""
    a = design[mask] / wall[mask, None]
    y = (wall[mask] - compute[mask]) / wall[mask]
    return least_squares(lambda t: a @ t - y, np.zeros(a.shape[1]), bounds=(-0.05, 0.2)).x


def errors(design, compute, wall, theta, mask) -> tuple[float, float]:
    e = np.abs((compute + design @ theta) / wall - 1)[mask]
    return float(np.median(e)), float(e.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="a latency_model.py report (.md)")
    parser.add_argument("--threads", type=int, default=1, help="of the cached calibration (1)")
    args = parser.parse_args()
    calibration = load_calibration("onnxruntime", args.threads)
    cases = measured_cases(Path(args.report))
    wall = np.array([c[3] for c in cases])
    priced_cases = [priced(n, w, r, calibration) for n, w, r, _ in cases]
    compute = np.array([p[0] for p in priced_cases])
    counts = np.array([p[1] for p in priced_cases])
    ones = np.ones((len(cases), 1))
    families = np.array([c[0] for c in cases])
    everything = np.ones(len(cases), dtype=bool)

    per_node = np.hstack([counts.sum(1, keepdims=True), ones])
    theta = fit(per_node, compute, wall, everything)
    median, worst = errors(per_node, compute, wall, theta, everything)
    print(f"per node + per call, in-sample: median {median:.1%}, worst {worst:.1%}")

    per_kind = np.hstack([counts, ones])
    theta = fit(per_kind, compute, wall, everything)
    median, worst = errors(per_kind, compute, wall, theta, everything)
    print(f"per kind + per call, in-sample: median {median:.1%}, worst {worst:.1%}")
    rng = np.random.default_rng(0)
    for draw in range(3):
        half = rng.random(len(cases)) < 0.5
        theta = fit(per_kind, compute, wall, half)
        median, worst = errors(per_kind, compute, wall, theta, ~half)
        print(f"per kind, held-out half {draw + 1}: median {median:.1%}, worst {worst:.1%}")
    for family in sorted(set(families)):
        left_out = families == family
        theta = fit(per_kind, compute, wall, ~left_out)
        median, worst = errors(per_kind, compute, wall, theta, left_out)
        print(f"per kind, {family} left out: median {median:.1%}, worst {worst:.1%}")


if __name__ == "__main__":
    main()

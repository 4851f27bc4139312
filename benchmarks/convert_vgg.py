"""A VGG-style CNN against its depthwise separable conversion, trained alike on the digits.

Runs ``mobilenets.analysis.compare_conversion.compare_conversion`` (the library function behind
``mobilenets compare-conversion``) for several seeds: ``vgg_small`` and
``vgg_small_separable`` trained with the same recipe and epochs; prints and writes accuracy,
parameters and mult-adds of both to benchmarks/results/convert_vgg.md. The runs land in
temporary directories.

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/convert_vgg.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mobilenets.analysis.compare_conversion import compare_conversion

from stamp import write_results

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    start = time.perf_counter()
    results = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as out:
            results.append(compare_conversion(out, epochs=args.epochs, seed=seed, quiet=True))
    minutes = (time.perf_counter() - start) / 60
    first = results[0]
    lines = [
        "# vgg_small against to_separable(vgg_small), same recipe and budget",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; embedded digits, "
        f"{first.resolution}x{first.resolution}, {args.epochs} epochs each, "
        f"{minutes:.1f} min in all. Accuracy: held-out top-1 after the last epoch "
        f"({len(args.seeds)} seeds; the held-out split is the same for every seed).",
        "",
        f"Command: `flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/convert_vgg.py "
        f"--epochs {args.epochs} --seeds {' '.join(map(str, args.seeds))}`",
        "",
        f"| model | params | mult-adds | {' | '.join(f'top-1 seed {s}' for s in args.seeds)} "
        "| mean top-1 |",
        "|---|---|---|" + "---|" * (len(args.seeds) + 1),
    ]
    for role in ("original", "converted"):
        trained = [getattr(r, role) for r in results]
        accs = [100 * t.top1 for t in trained]
        lines.append(
            f"| {trained[0].model} | {trained[0].params:,} | {trained[0].macs:,} | "
            + " | ".join(f"{a:.2f}%" for a in accs)
            + f" | {statistics.mean(accs):.2f}% |"
        )
    drop = statistics.mean(r.accuracy_drop_points for r in results)
    lines += [
        "",
        f"Converted: {first.macs_reduction:.2f}x fewer mult-adds, "
        f"{first.params_reduction:.2f}x fewer parameters, {-drop:+.2f} points of top-1 on "
        f"average (per seed: {', '.join(f'{-r.accuracy_drop_points:+.2f}' for r in results)}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results(RESULTS / "convert_vgg.md", text)


if __name__ == "__main__":
    main()

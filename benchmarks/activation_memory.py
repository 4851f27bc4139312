"""Activation memory: the cost model against a measured peak, split bottlenecks, V1 vs V2.

1. Predicted peak activation memory (``profile_model``) against the peak measured by watching
   every tensor storage of a real forward pass (``measure_peak_activation_bytes``), for
   MobileNetV1 and V2 at 224, batch 1 and 8.
2. MobileNetV2 with memory-efficient bottleneck inference (``split=k``, paper section 6):
   measured peak and inference time for k = 1, 2, 4, 8, and the largest output difference.
3. V1 beside V2 at 224: peak activation memory (fp32 / fp16 / int8) and mult-adds.

Writes benchmarks/results/activation_memory.md.

    flock /tmp/mobilenets-cpu.lock .venv/bin/python benchmarks/activation_memory.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobilenets import create_model
from mobilenets.analysis.cost import BYTES_PER_ELEMENT, profile_model
from mobilenets.analysis.memory import measure_peak_activation_bytes
from mobilenets.analysis.timing import time_interleaved
from mobilenets.layers import set_bottleneck_split

from stamp import write_results

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mobilenet_v1", "mobilenet_v2")
MIB = 2**20


def best_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int = 15) -> float:
    """Fastest of ``repeats`` inference passes, after two warm-up passes."""
    with torch.no_grad():
        model(x)
        model(x)
        times = time_interleaved({"model": lambda: model(x)}, rounds=repeats)["model"]
    return 1e3 * min(times)


def model_against_measured() -> list[str]:
    lines = [
        "## Predicted against measured peak (fp32, 224x224)",
        "",
        "| model | batch | predicted MiB | measured MiB | predicted / measured |",
        "|---|---|---|---|---|",
    ]
    for name in MODELS:
        model = create_model(name).eval()
        for batch in (1, 8):
            predicted = profile_model(model, 224, batch_size=batch).peak_activation_bytes()
            measured = measure_peak_activation_bytes(model, torch.randn(batch, 3, 224, 224))
            lines.append(
                f"| {name} | {batch} | {predicted / MIB:.2f} | {measured / MIB:.2f} "
                f"| {predicted / measured:.4f} |"
            )
            print(lines[-1], flush=True)
    return lines


def with_running_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics, so that the features are not those of an identity BN."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def split_inference() -> list[str]:
    torch.manual_seed(0)
    model = with_running_statistics(create_model("mobilenet_v2"))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reference = model.features(x)
    lines = [
        "## MobileNetV2 bottlenecks computed in k channel groups (batch 1, 224x224, fp32)",
        "",
        f"Features (1280x7x7) of the whole network: max |value| {reference.abs().max():.2f}; "
        "*max abs diff* is against k=1.",
        "",
        "| k | measured peak MiB | peak vs k=1 | best ms | time vs k=1 | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    base_peak = base_ms = 0.0
    for k in (1, 2, 4, 8):
        set_bottleneck_split(model, k)
        peak = measure_peak_activation_bytes(model, x)
        ms = best_ms(model, x)
        with torch.no_grad():
            diff = (model.features(x) - reference).abs().max().item()
        base_peak, base_ms = (peak, ms) if k == 1 else (base_peak, base_ms)
        lines.append(
            f"| {k} | {peak / MIB:.2f} | {peak / base_peak:.2f} | {ms:.1f} | {ms / base_ms:.2f} "
            f"| {diff:.1e} |"
        )
        print(lines[-1], flush=True)
    return lines


def v1_against_v2() -> list[str]:
    lines = [
        "## V1 against V2 at 224x224, batch 1",
        "",
        "| model | mult-adds | params | peak fp32 MiB | peak fp16 MiB | peak int8 MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        report = profile_model(create_model(name), 224)
        peaks = " | ".join(
            f"{report.peak_activation_bytes(d) / MIB:.2f}" for d in BYTES_PER_ELEMENT
        )
        lines.append(f"| {name} | {report.total_macs:,} | {report.total_params:,} | {peaks} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    sections = [model_against_measured(), split_inference(), v1_against_v2()]
    text = "\n\n".join("\n".join(s) for s in sections)
    header = (
        f"# Activation memory\n\ntorch {torch.__version__}, {torch.get_num_threads()} threads. "
        "Measured = the most bytes of tensor storage alive at once in a real forward pass "
        "(every ATen op's outputs, freed when their last reference goes; parameters and "
        "buffers excluded; the input counted).\n\nCommand: `flock /tmp/mobilenets-cpu.lock "
        ".venv/bin/python benchmarks/activation_memory.py`\n\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results(RESULTS / "activation_memory.md", header + text + "\n")
    print(f"wrote {RESULTS / 'activation_memory.md'}")


if __name__ == "__main__":
    main()

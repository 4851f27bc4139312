"""Which layers of torchvision's MobileNetV2 lose most to int8: per-layer SQNR of the weights and
of the activations, in PyTorch, with the arithmetic every runtime here uses.

For each convolution and the classifier of the BN-folded model: the weights' SQNR under
symmetric per-output-channel int8 (one scale per filter, as all four runtimes quantize them),
and the layer's output activations' SQNR under per-tensor asymmetric 8-bit with its range
(min, max) observed on calibration crops and applied to evaluation crops. Each layer is
quantized alone, so the numbers say where the noise enters, not how it accumulates.

    python benchmarks/deploy_int8_layers.py RUN_DIR

Writes benchmarks/results/deploy_int8_layers.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from mobilenets.deploy.photos import CALIBRATION_SEED, EVALUATION_SEED, photo_crops
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.runs import load_run

from stamp import write_results

RESULTS = Path(__file__).parent / "results" / "deploy_int8_layers.md"


def sqnr_db(x: torch.Tensor, q: torch.Tensor) -> float:
    noise = (x - q).double().pow(2).sum()
    return float(10 * torch.log10(x.double().pow(2).sum() / noise.clamp_min(1e-30)))


def weight_sqnr(weight: torch.Tensor) -> float:
    """Symmetric int8, one scale per output channel."""
    flat = weight.flatten(1)
    scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    return sqnr_db(flat, (flat / scale).round().clamp(-127, 127) * scale)


def activation_sqnr(x: torch.Tensor, lo: float, hi: float) -> float:
    """Asymmetric 8-bit over [min(lo, 0), max(hi, 0)], values outside clipped."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255
    zero = round(-lo / scale)
    q = ((x / scale).round() + zero).clamp(0, 255)
    return sqnr_db(x, (q - zero) * scale)


def outputs(model: nn.Module, names: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each named layer's output, with its activation applied when the layer is followed by
    one in the same block (what the runtime quantizes is the activation's output)."""
    modules = dict(model.named_modules())
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: captured[n].append(o.detach()))
        for n in names
    ]
    with torch.no_grad():
        for batch in images.split(50):
            model(batch)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in captured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--evaluation", type=int, default=100)
    args = parser.parse_args()
    model, info = load_run(args.run_dir)
    folded = fold_batchnorm(model)
    size = info.input_size[1]
    cal = photo_crops(args.calibration, size, info.mean, info.std, seed=CALIBRATION_SEED)
    ev = photo_crops(args.evaluation, size, info.mean, info.std, seed=EVALUATION_SEED)
    layers = [n for n, m in folded.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    modules = dict(folded.named_modules())
    # A layer's activation is the next child of its ConvBNAct: hook that when there is one.
    taps = {}
    for name in layers:
        parent, _, leaf = name.rpartition(".")
        act = modules.get(f"{parent}.act") if parent else None
        taps[name] = f"{parent}.act" if isinstance(act, nn.Module) and leaf == "conv" else name
    tapped = sorted(set(taps.values()))
    ranges = {n: (float(t.min()), float(t.max())) for n, t in outputs(folded, tapped, cal).items()}
    evaluated = outputs(folded, tapped, ev)
    rows = []
    for name in layers:
        tap = taps[name]
        weight = modules[name].weight
        kind = "other"
        if getattr(modules[name], "groups", 1) > 1:
            kind = "depthwise"
        elif weight.dim() == 4 and weight.shape[-1] == 1:
            kind = "pointwise"
        rows.append(
            (
                name,
                kind,
                weight_sqnr(weight.detach()),
                activation_sqnr(evaluated[tap], *ranges[tap]),
            )
        )
    lines = [
        "# Per-layer int8 SQNR, torchvision MobileNetV2 ImageNet weights (BN folded)",
        "",
        f"`python benchmarks/deploy_int8_layers.py RUN` ({args.calibration} calibration and "
        f"{args.evaluation} evaluation crops of the bundled photos). Weights: symmetric int8 per "
        "output channel. Activations: per-tensor asymmetric 8-bit, MinMax range from the "
        "calibration crops. Each layer alone; the ten worst of each, then the medians by kind.",
        "",
        "| worst weights | kind | weight SQNR dB | | worst activations | kind "
        "| activation SQNR dB |",
        "|---|---|---:|---|---|---|---:|",
    ]
    by_weight = sorted(rows, key=lambda r: r[2])[:10]
    by_act = sorted(rows, key=lambda r: r[3])[:10]
    for (wn, wk, ws, _), (an, ak, _, as_) in zip(by_weight, by_act, strict=True):
        lines.append(f"| {wn} | {wk} | {ws:.1f} | | {an} | {ak} | {as_:.1f} |")
    lines += ["", "| kind | layers | median weight SQNR dB | median activation SQNR dB |"]
    lines.append("|---|---:|---:|---:|")
    for kind in ("depthwise", "pointwise", "other"):
        chosen = [r for r in rows if r[1] == kind]
        if chosen:
            w = torch.tensor([r[2] for r in chosen]).median().item()
            a = torch.tensor([r[3] for r in chosen]).median().item()
            lines.append(f"| {kind} | {len(chosen)} | {w:.1f} | {a:.1f} |")
    write_results(RESULTS, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

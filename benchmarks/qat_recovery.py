"""QAT recovery: a model whose int8 post-training quantization loses >= 1 point of top-1, and
how much quantization-aware training gets back (target: within 0.3 points of fp32).

The digits lose nothing under any int8 scheme tried (V2 0.35 and V3-Small, weights per
channel or per tensor), so this uses a labelled task made from real photographs: which of
the bundled photos (:mod:`mobilenets.deploy.photos`) a small patch comes from. Patches cover
0.5% to 3% of a photo's area, resized to 48 px and flipped half of the time; train and
validation patches are drawn with different seeds (200 and 100 per photo). A MobileNetV3-Small
trained from scratch on them loses 0.1 points per channel and 0.2 per tensor; torchvision's
ImageNet V2 fine-tuned on them keeps ImageNet's weight ranges (folded depthwise filters whose
channels differ by orders of magnitude), and one scale per weight tensor costs it points::

    .venv/bin/python benchmarks/qat_recovery.py --init IMAGENET_RUN [--work DIR]

``IMAGENET_RUN`` is the imported run of torchvision's weights
(``scripts/fetch_imagenet_weights.py --run-dir``). Every step is the command a user types, in a
fresh process:

1. ``mobilenets train --model mobilenet_v2 --init IMAGENET_RUN --width-mult 1.0 --data
   PATCHES --resolution 48 --no-small-input --epochs 8 --lr 0.005``;
2. ``mobilenets quantize RUN --per-tensor --json``: fp32 and int8 top-1 on the validation
   patches, in onnxruntime (``--per-channel`` for weights per channel instead);
3. ``mobilenets qat RUN --per-tensor --epochs 4`` with each recipe in ``QAT_RECIPES``;
4. ``mobilenets quantize QAT_RUN --per-tensor --json``: each QAT run shipped the same way.

Writes benchmarks/results/qat_recovery.md and .json. Steps whose output exists in ``--work``
are not repeated, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from mobilenets.data import RandomResizedCropFlip, load_image
from mobilenets.deploy.photos import photo_paths
from mobilenets.io import atomic_write_text

from stamp import stamp_fields

RESULTS = Path(__file__).parent / "results"
# QAT recipes compared: torchvision's (SGD, BN statistics moving for two epochs) and Adam with
# BatchNorm frozen from the start (the ImageNet weights' recipe for distillation)
QAT_RECIPES: dict[str, list[str]] = {
    "sgd": [],
    "adam": ["--optimizer", "adam", "--lr", "1e-4", "--freeze-bn-after", "0"],
}
QAT_COMMON = ["--epochs", "4", "--freeze-observers-after", "2"]
PATCH_SIZE = 48
PATCH_SCALE = (0.005, 0.03)  # of the photo's area
SPLITS = (("train", 200, 10), ("val", 100, 11))  # (folder, patches per photo, seed)


def make_patches(root: Path) -> int:
    """The image folder ``root/{train,val}/<photo>/NNNN.png``; returns the number of files."""
    crop = RandomResizedCropFlip(PATCH_SIZE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), scale=PATCH_SCALE)
    count = 0
    for split, n, seed in SPLITS:
        generator = torch.Generator().manual_seed(seed)
        for path in photo_paths():
            image = load_image(path)
            folder = root / split / path.stem
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = crop(image, generator).clamp(0, 1).mul(255).round().byte()
                Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
                count += 1
    return count


def mobilenets(*args: str) -> tuple[float, str]:
    """Run one ``mobilenets`` command; its wall time and standard output."""
    command = [sys.executable, "-m", "mobilenets", *args]
    print("$", " ".join(["mobilenets", *args]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def quantized(run: Path, out: Path, per_tensor: bool) -> dict:
    """``mobilenets quantize RUN --json``'s record (fp32 and int8 top-1)."""
    flags = ["--per-tensor"] if per_tensor else []
    seconds, stdout = mobilenets("quantize", str(run), "--out", str(out), *flags, "--json")
    return {**json.loads(stdout), "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="the imported ImageNet V2 run")
    parser.add_argument("--work", default="/tmp/qat-recovery", help="working directory")
    parser.add_argument("--per-channel", action="store_true", help="weights per channel")
    parser.add_argument("--results", default="qat_recovery", help="results file stem")
    args = parser.parse_args()
    per_tensor = not args.per_channel
    work = Path(args.work)
    patches, run = work / "patches", work / "float"
    results: dict = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "stamp": stamp_fields(),  # the .md written from this JSON carries it too
        "weights": "per tensor" if per_tensor else "per channel",
    }
    if not (patches / "val").is_dir():
        results["patches"] = make_patches(patches)
    if not (run / "model.json").is_file():
        train = ["train", "--model", "mobilenet_v2", "--init", args.init, "--width-mult", "1.0"]
        train += ["--data", str(patches), "--resolution", str(PATCH_SIZE), "--no-small-input"]
        results["train_seconds"], _ = mobilenets(
            *train, "--epochs", "8", "--lr", "0.005", "--out", str(run), "--quiet"
        )
    flags = ["--per-tensor"] if per_tensor else []
    results["ptq"] = quantized(run, work / "float.int8.onnx", per_tensor)
    for name, recipe in QAT_RECIPES.items():
        qat_run = work / f"qat-{name}"
        if not (qat_run / "model.json").is_file():
            seconds, stdout = mobilenets(
                "qat", str(run), "--out", str(qat_run), *QAT_COMMON, *recipe, *flags, "--json"
            )
            results[f"qat {name}"] = {"seconds": seconds, "history": json.loads(stdout)["history"]}
        shipped = quantized(qat_run, work / f"qat-{name}.int8.onnx", per_tensor)
        results.setdefault(f"qat {name}", {})["shipped"] = shipped
        results[f"qat {name}"]["command"] = " ".join(["qat", *QAT_COMMON, *recipe, *flags])
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{args.results}.json", json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

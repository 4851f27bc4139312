"""``predict`` for detectors and segmenters: images with their boxes or class mask drawn, and
one JSON of what was found in each.

The images are preprocessed as the run's dense tasks train and score them
(:mod:`mobilenets.data.dense_transforms`): the whole image resized to the model's square
input, nothing cropped, normalised with the run's mean and std. What the model finds is then
mapped back to the image as given:

* a detector's boxes are decoded by :func:`mobilenets.deploy.heads.decode`, the one decoder
  of both a run (through :func:`~mobilenets.deploy.heads.graph_of`, the module a program
  holds) and an exported program, above ``score_threshold``, then scaled from the input's
  pixels to the original image's (x1, y1, x2, y2);
* a segmenter's class of every pixel (the argmax of its logits) is resized to the original
  image by nearest neighbour, and counted: each class's share of the image's pixels.

Each image is drawn into ``out`` as a PNG (boxes with class name and score; or the mask
over the image, background left clear, in :data:`PALETTE` at :data:`ALPHA`), and the rows
into ``out/detections.json`` or ``out/segmentation.json``: whole files, written atomically.
A bad image is a row with its ``error``, as in classification.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mobilenets.data.dense_transforms import resize_boxes, resize_image, resize_mask
from mobilenets.data.transforms import load_image, normalize, pil_to_tensor, to_mode
from mobilenets.deploy.heads import decode, graph_of
from mobilenets.errors import MobileNetError
from mobilenets.evaluation.predict import find_images
from mobilenets.io import atomic_path, atomic_write_json
from mobilenets.models import model_task
from mobilenets.runs import RunInfo, load_run, names_a_file, read_run_info

DEFAULT_SCORE_THRESHOLD = 0.5
ALPHA = 0.5  # the mask's weight where a pixel is not background
JSON_FILES = {"detection": "detections.json", "segmentation": "segmentation.json"}
# One colour per class id, cycled past the end; id 0 (background) is never drawn.
PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (0, 0, 128),
    (128, 128, 128),
    (255, 215, 180),
]


def colour(label: int) -> tuple[int, int, int]:
    return PALETTE[label] if label < len(PALETTE) else PALETTE[1 + (label - 1) % (len(PALETTE) - 1)]


@dataclass
class DenseRow:
    """One image: its size (width, height), the drawn PNG, and its ``detections`` (boxes in
    the image's pixels, class, score) or ``pixel_share`` (class -> share of its pixels); or,
    for an image that could not be read, the ``error``."""

    image: str
    size: tuple[int, int] | None = None
    png: str | None = None
    detections: list[dict[str, Any]] | None = None
    pixel_share: dict[str, float] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"image": self.image}
        if self.size is not None:
            row["width"], row["height"] = self.size
        row["png"] = self.png
        if self.detections is not None:
            row["detections"] = self.detections
        if self.pixel_share is not None:
            row["pixel_share"] = self.pixel_share
        row["error"] = self.error
        return row


@dataclass
class DenseReport:
    """The rows in the order the images were given, the files of folders that were not
    images, and where the JSON was written."""

    task: str
    rows: list[DenseRow]
    json_path: str
    score_threshold: float | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(r.error is not None for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task}
        if self.score_threshold is not None:
            out["score_threshold"] = self.score_threshold
        out["images"] = [r.to_dict() for r in self.rows]
        out["skipped"] = self.skipped
        return out


def source_info(source: str | os.PathLike[str]) -> RunInfo:
    """The run record of a run directory or an exported program, nothing loaded."""
    if not names_a_file(source):
        return read_run_info(source)
    from mobilenets.deploy.program import read_program_info

    return read_program_info(source).run


def source_task(source: str | os.PathLike[str]) -> str:
    """What the run or program at ``source`` predicts: classification, detection or
    segmentation."""
    return model_task(source_info(source).model)


def load_dense(source: str | os.PathLike[str]) -> tuple[Any, RunInfo, torch.Tensor | None]:
    """The module to call (a run's :func:`graph_of`, on the CPU, or a program in its
    runtime), the run record, and a detector's default boxes at the input size."""
    if names_a_file(source):
        from mobilenets.deploy.program import load_program

        program, program_info = load_program(source)
        info, model = program_info.run, program
        reference = info.build_model() if model_task(info.model) == "detection" else None
    else:
        model, info = load_run(source)
        reference = model if model_task(info.model) == "detection" else None
        model = graph_of(model)
    size = int(info.input_size[1])
    defaults = None if reference is None else reference.default_boxes(size)
    return model, info, defaults


def preprocess(image: Image.Image, info: RunInfo) -> torch.Tensor:
    """The whole image resized to the run's square input and normalised, as its dense
    tasks were tested."""
    channels, size = int(info.input_size[0]), int(info.input_size[1])
    return normalize(resize_image(pil_to_tensor(image, channels), size), info.mean, info.std)


def detection_rows(
    detections: Any, info: RunInfo, size_wh: tuple[int, int]
) -> list[dict[str, Any]]:
    """One image's detections in its own pixels."""
    n = int(info.input_size[1])
    width, height = size_wh
    boxes = resize_boxes(detections.boxes, (n, n), (height, width))
    names = info.class_names
    return [
        {
            "box": [round(v, 2) for v in box],
            "class": names[label] if label < len(names) else str(label),
            "label": label,
            "score": round(score, 5),
        }
        for box, label, score in zip(
            boxes.tolist(), detections.labels.tolist(), detections.scores.tolist(), strict=True
        )
    ]


def draw_detections(image: Image.Image, rows: list[dict[str, Any]]) -> Image.Image:
    """The image with each box outlined in its class's colour, class name and score above."""
    canvas = to_mode(image, "RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 150))
    for row in rows:
        x1, y1, x2, y2 = row["box"]
        rgb = colour(row["label"])
        draw.rectangle((x1, y1, x2, y2), outline=rgb, width=width)
        text = f"{row['class']} {row['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text)
        ty = y1 - (bottom - top) - 2 if y1 >= bottom - top + 2 else y1
        draw.rectangle((x1, ty, x1 + right - left + 2, ty + bottom - top + 2), fill=rgb)
        draw.text((x1 + 1 - left, ty + 1 - top), text, fill=(255, 255, 255))
    return canvas


def class_mask(logits: torch.Tensor, size_wh: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) logits -> the (H, W) class of every pixel of the original image."""
    return resize_mask(logits.argmax(0), (size_wh[1], size_wh[0]))


def pixel_share(mask: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """Each class present: its share of the pixels."""
    counts = torch.bincount(mask.flatten(), minlength=len(class_names)).tolist()
    total = max(mask.numel(), 1)
    names = list(class_names) + [str(i) for i in range(len(class_names), len(counts))]
    return {names[i]: round(c / total, 6) for i, c in enumerate(counts) if c}


def draw_mask(image: Image.Image, mask: torch.Tensor) -> Image.Image:
    """The image with every non-background pixel blended with its class's colour."""
    pixels = np.asarray(to_mode(image, "RGB"), dtype=np.float32)
    ids = mask.numpy()
    palette = np.array([colour(i) for i in range(int(ids.max()) + 1)], dtype=np.float32)
    blended = (1 - ALPHA) * pixels + ALPHA * palette[ids]
    out = np.where((ids > 0)[..., None], blended, pixels)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def png_name(path: str, taken: set[str]) -> str:
    """``<stem>.png``, or ``<stem>-2.png``... when two images share a stem."""
    stem = Path(path).stem or "image"
    name, k = f"{stem}.png", 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name)
    return name


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        image.save(f, format="PNG")


@torch.no_grad()
def predict_dense(
    source: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    batch_size: int = 16,
) -> DenseReport:
    """Detect or segment the images ``images`` names (files, folders, globs) with a run or
    an exported program; write one PNG per image and the JSON into ``out``.

    Raises :class:`MobileNetError` for a classifier, a bad run, a threshold outside [0, 1],
    or when nothing was named.
    """
    if not images:
        raise MobileNetError("no images given to predict")
    if not 0.0 <= score_threshold <= 1.0:
        raise MobileNetError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    if batch_size < 1:
        raise MobileNetError(f"batch size must be at least 1, got {batch_size}")
    task = source_task(source)
    if task not in JSON_FILES:
        raise MobileNetError(f"{source} is a {task} model: predict draws detectors and segmenters")
    found = find_images(images)
    if not found.images and not found.missing:
        raise MobileNetError(
            f"no image files in {', '.join(map(str, images))} "
            f"({len(found.skipped)} other file(s) skipped)"
        )
    model, info, defaults = load_dense(source)
    out = Path(out)
    rows = [DenseRow(given, error=why) for given, why in found.missing]
    taken: set[str] = set()
    for start in range(0, len(found.images), batch_size):
        loaded = []
        for path in found.images[start : start + batch_size]:
            try:
                image = load_image(path)
                loaded.append((path, image, preprocess(image, info)))
            except MobileNetError as e:
                rows.append(DenseRow(path, error=str(e)))
        if not loaded:
            continue
        outputs = model(torch.stack([x for _, _, x in loaded]))
        outputs = torch.as_tensor(np.asarray(outputs, dtype=np.float32))
        if task == "detection":
            size = int(info.input_size[1])
            per_image = decode(outputs, defaults, (size, size), score_threshold=score_threshold)
        else:
            per_image = list(outputs)
        for (path, image, _), result in zip(loaded, per_image, strict=True):
            row = DenseRow(path, size=image.size, png=str(out / png_name(path, taken)))
            if task == "detection":
                row.detections = detection_rows(result, info, image.size)
                drawn = draw_detections(image, row.detections)
            else:
                mask = class_mask(result, image.size)
                row.pixel_share = pixel_share(mask, info.class_names)
                drawn = draw_mask(image, mask)
            save_png(drawn, Path(row.png))
            rows.append(row)
    order = {path: i for i, path in enumerate([g for g, _ in found.missing] + found.images)}
    rows.sort(key=lambda row: order[row.image])
    threshold = score_threshold if task == "detection" else None
    report = DenseReport(task, rows, str(out / JSON_FILES[task]), threshold, found.skipped)
    atomic_write_json(report.json_path, report.to_dict())
    return report

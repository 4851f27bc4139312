"""Detection annotations in COCO's JSON format (``instances.json`` beside an images folder),
read with the json module and checked entry by entry.

COCO numbers categories with gaps (1..90 for its 80 classes); the model numbers its classes
1..K with 0 the background, so categories are renumbered in the order of their ids and
``category_ids`` maps a label back (predictions are written with COCO's ids). Boxes are
COCO's ``[x, y, width, height]``, turned into (x1, y1, x2, y2). Crowd annotations
(``iscrowd: 1``) are left out, as torchvision's reference training leaves them out.

Every wrong entry is one :class:`~mobilenets.errors.MobileNetError` line naming it and what
was expected. With ``strict=False`` (a training run), an annotation with a bad box and an
image whose file is missing or unreadable are skipped and listed in ``skipped`` instead; a
file that is not COCO JSON at all, or an annotation naming an unknown image or category,
still stops the read (the file is wrong, not one entry).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mobilenets.errors import MobileNetError

# A box may overshoot the image by this much (COCO's own files have float rounding at the
# border); it is then clipped. More is an error.
BORDER_TOLERANCE = 1.0


@dataclass
class CocoDetections:
    """What :func:`read_coco` found: per image its path, id, size and annotations."""

    paths: list[str]
    image_ids: list[int]
    sizes: list[tuple[int, int]]  # (H, W)
    boxes: list[torch.Tensor]  # (K, 4) float32 xyxy in the image's pixels
    labels: list[torch.Tensor]  # (K,) int64 in 1..len(category_ids)
    category_ids: list[int]  # label k is COCO category category_ids[k - 1]
    class_names: list[str]  # "background" first
    skipped: list[str] = field(default_factory=list)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MobileNetError(f"COCO annotations not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MobileNetError(f"cannot read COCO annotations {path}: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise MobileNetError(
            f"{path} is not COCO detection JSON: expected an object with the lists "
            "'images', 'annotations' and 'categories'"
        )
    return data


def _categories(path: Path, entries: list[Any]) -> tuple[list[int], list[str]]:
    ids, names = [], []
    for i, cat in enumerate(entries):
        if not (
            isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), str)
        ):
            raise MobileNetError(f"{path}: categories[{i}] needs an integer 'id' and a 'name'")
        if cat["id"] in ids:
            raise MobileNetError(f"{path}: category id {cat['id']} appears twice")
        ids.append(cat["id"])
        names.append(cat["name"])
    if not ids:
        raise MobileNetError(f"{path}: 'categories' is empty; a detector needs at least one")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return [ids[i] for i in order], [names[i] for i in order]


def _box(ann: dict[str, Any], size: tuple[int, int]) -> list[float] | str:
    """The annotation's box as xyxy, or why it is wrong."""
    bbox = ann.get("bbox")
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        and all(math.isfinite(v) for v in bbox)
    ):
        return f"bbox must be 4 finite numbers [x, y, width, height], found {bbox!r}"
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has zero area"
    height, width = size
    t = BORDER_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return f"bbox {bbox} lies outside the {width}x{height} image"
    return [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]


def read_coco(
    annotations: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    strict: bool = True,
) -> CocoDetections:
    """The detections of a COCO JSON file whose ``file_name``s are relative to ``images_dir``."""
    path, root = Path(annotations), Path(images_dir)
    data = _read_json(path)
    category_ids, names = _categories(path, data["categories"])
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
    skipped: list[str] = []
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if not (
            isinstance(img, dict)
            and _is_int(img.get("id"))
            and isinstance(img.get("file_name"), str)
            and _is_int(img.get("width"))
            and _is_int(img.get("height"))
            and img["width"] > 0
            and img["height"] > 0
        ):
            raise MobileNetError(
                f"{path}: images[{i}] needs an integer 'id', a 'file_name' and positive "
                "integer 'width' and 'height'"
            )
        if img["id"] in images:
            raise MobileNetError(f"{path}: image id {img['id']} appears twice")
        problem = _image_problem(root / img["file_name"], img["width"], img["height"])
        if problem:
            if strict:
                raise MobileNetError(f"{path}: image id {img['id']}: {problem}")
            skipped.append(f"image id {img['id']}: {problem}")
            images[img["id"]] = {}  # known, but left out
            continue
        images[img["id"]] = {"img": img, "boxes": [], "labels": []}
    for i, ann in enumerate(data["annotations"]):
        if not (isinstance(ann, dict) and _is_int(ann.get("image_id"))):
            raise MobileNetError(f"{path}: annotations[{i}] needs an integer 'image_id'")
        if ann["image_id"] not in images:
            raise MobileNetError(
                f"{path}: annotations[{i}] names image id {ann['image_id']}, which 'images' lacks"
            )
        if ann.get("category_id") not in label_of:
            raise MobileNetError(
                f"{path}: annotations[{i}] has category id {ann.get('category_id')!r}, not one "
                f"of the categories {category_ids}"
            )
        entry = images[ann["image_id"]]
        if not entry or ann.get("iscrowd", 0):
            continue
        box = _box(ann, (entry["img"]["height"], entry["img"]["width"]))
        if isinstance(box, str):
            if strict:
                raise MobileNetError(f"{path}: annotations[{i}]: {box}")
            skipped.append(f"annotations[{i}]: {box}")
            continue
        entry["boxes"].append(box)
        entry["labels"].append(label_of[ann["category_id"]])
    kept = [entry for entry in images.values() if entry]
    if images and not kept:  # every image skipped: the folder is wrong, not some files
        raise MobileNetError(f"{path}: none of its {len(images)} images is usable: {skipped[0]}")
    return CocoDetections(
        paths=[str(root / e["img"]["file_name"]) for e in kept],
        image_ids=[e["img"]["id"] for e in kept],
        sizes=[(e["img"]["height"], e["img"]["width"]) for e in kept],
        boxes=[torch.tensor(e["boxes"], dtype=torch.float32).reshape(-1, 4) for e in kept],
        labels=[torch.tensor(e["labels"], dtype=torch.int64) for e in kept],
        category_ids=category_ids,
        class_names=["background", *names],
        skipped=skipped,
    )


def _image_problem(file: Path, width: int, height: int) -> str | None:
    """Why an image file cannot be used with its annotations (its header only is read)."""
    try:
        with Image.open(file) as img:
            size = img.size
    except FileNotFoundError:
        return f"image file {file} not found"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"cannot read image {file}: {e}"
    if size != (width, height):
        return f"{file} is {size[0]}x{size[1]}, the annotations say {width}x{height}"
    return None

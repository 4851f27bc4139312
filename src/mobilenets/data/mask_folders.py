"""Segmentation data as two folders: ``images/`` and ``masks/``, a mask PNG per image with the
same stem (``images/a.jpg`` and ``masks/a.png``), as Pascal VOC ships ``SegmentationClass``.

A mask holds class ids, one per pixel: the indices of a palette PNG (VOC's) or the values of a
grey PNG; 255 marks pixels to ignore. Every mask is decoded once when the folder is read, so a
value that is not a class id, a mask of another size than its image or a missing mask is found
before training starts: one :class:`~mobilenets.errors.MobileNetError` line naming the file,
or with ``strict=False`` the pair is skipped and listed.

The classes are ``classes.txt`` in the folder above ``images/`` when there is one (a name per
line, the background first), otherwise 0..max id found, named by their ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mobilenets.data.dense_datasets import read_mask
from mobilenets.data.sources import IMAGE_EXTENSIONS
from mobilenets.errors import MobileNetError

IGNORE_ID = 255


@dataclass
class MaskFolder:
    """The image/mask pairs of a folder and its classes."""

    images: list[str]
    masks: list[str]
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)


def _class_names(file: Path) -> list[str] | None:
    if not file.is_file():
        return None
    names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not 2 <= len(names) < IGNORE_ID:
        raise MobileNetError(
            f"{file} must name 2 to {IGNORE_ID - 1} classes, the background first; "
            f"found {len(names)}"
        )
    return names


def read_mask_folder(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    strict: bool = True,
) -> MaskFolder:
    """The pairs of ``images_dir`` and ``masks_dir``, every mask checked."""
    images_root, masks_root = Path(images_dir), Path(masks_dir)
    for folder in (images_root, masks_root):
        if not folder.is_dir():
            raise MobileNetError(f"segmentation data needs the folder {folder}; it is missing")
    names = _class_names(images_root.parent / "classes.txt")
    files = sorted(
        p for p in images_root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise MobileNetError(f"no images in {images_root}")
    images, masks, skipped, top = [], [], [], 0
    for file in files:
        mask_file = masks_root / f"{file.stem}.png"
        try:
            top = max(top, _check_pair(file, mask_file, names))
        except MobileNetError as e:
            if strict:
                raise
            skipped.append(str(e))
            continue
        images.append(str(file))
        masks.append(str(mask_file))
    if not images:
        raise MobileNetError(f"no usable image/mask pair in {images_root} and {masks_root}")
    return MaskFolder(images, masks, names or [str(i) for i in range(max(top, 1) + 1)], skipped)


def _check_pair(image: Path, mask_file: Path, names: list[str] | None) -> int:
    """The largest class id of a pair's mask, after checking it against its image."""
    if not mask_file.is_file():
        raise MobileNetError(f"image {image} has no mask {mask_file}")
    mask = read_mask(mask_file)
    try:
        with Image.open(image) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MobileNetError(f"cannot read image {image}: {e}") from None
    if tuple(mask.shape) != (height, width):
        raise MobileNetError(
            f"mask {mask_file} is {mask.shape[1]}x{mask.shape[0]}, its image {width}x{height}"
        )
    ids = mask[mask != IGNORE_ID]
    top = int(ids.max()) if ids.numel() else 0
    limit = len(names) if names else IGNORE_ID
    if top >= limit:
        raise MobileNetError(
            f"mask {mask_file} holds the value {top}, not a class id below {limit} nor "
            f"{IGNORE_ID} (ignore)"
        )
    return top

"""The embedded detection and segmentation data: the embedded 8x8 digits placed on larger
canvases, so a detector or a segmenter trains and is tested with nothing downloaded.

Each canvas is black, ``CANVAS_SIZE`` pixels square, with one to four digits, each resized
to a random square size and pasted at a random position where it overlaps no other. Because
the canvas is drawn, the annotations are exact, not drawn by hand: a digit's *mask* is its
pixels brighter than :data:`INK_THRESHOLD` (of the stored uint8 canvas, so the mask is a
function of the pixels the model sees), and its *box* is the tight box of that mask. Labels
count the background as 0: digit d is class d + 1.

The digits are split as ``--data digits`` splits them (seeded, stratified, 80/20), and the
held-out canvases are made of held-out digits only: a test canvas shows handwriting the
model never saw. Everything is a function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mobilenets.data.datasets import _unpack_key
from mobilenets.data.splits import VAL_FRACTION, stratified_split

# 160 px: SSDLite's default boxes at this input have a box overlapping 87% of the digits by
# IoU >= 0.5 (68% at 128, 91% at 192), for 1.6x the cost of 128.
CANVAS_SIZE = 160
# The input each task's model sees by default: the canvases resized. A digit's mask is its
# strokes, a few pixels wide, and LR-ASPP scores pixels at stride 8: at 320 px the head sees
# each stroke at stride 4 of the canvas: 8 epochs there scored a higher mIoU than 20 at 160 px
# in the same 15-minute budget (0.78 against 0.64: benchmarks/results/train_dense_digits.md
# and its git history).
CANVAS_INPUT = {"detection": CANVAS_SIZE, "segmentation": 2 * CANVAS_SIZE}
# Where LR-ASPP reads its detail map on the canvases: a digit's mask is its strokes, a few
# pixels wide, which a stride of 8 blurs (benchmarks/results/segment_ceiling.md: at 320 px exact
# masks averaged over 8x8 cells score mIoU 0.94, over 4x4 cells 0.98).
CANVAS_LOW_STRIDE = 4
# The input at which a head's trunk first learns to classify the digits (mobilenets.train.trunk):
# a digit fills it at about the size digits take on the segmenter's 320 px input (60-160 px).
TRUNK_RESOLUTION = 128
DIGIT_SIZES = (30, 80)  # side of a placed digit in pixels, both ends included
DIGITS_PER_CANVAS = (1, 4)
INK_THRESHOLD = 127  # uint8: a pixel more than half bright is ink
# The canvas class names: the background, then the ten digits.
CANVAS_CLASSES = ["background", *(str(d) for d in range(10))]
PLACEMENT_TRIES = 50
TRAIN_REPEATS = 2  # each training digit is on this many canvases
# A training canvas holds more digits than a held-out one: three to six carry half as many ink
# pixels again as one to four (0.118 of a canvas against 0.078 at seed 0), about 7% of them
# left out for want of a free place, and an epoch (each digit TRAIN_REPEATS times) takes 56%
# of the canvases. A model learns from every digit on an image for the cost of the image, so
# in the same time the segmenter's held-out mIoU rose (14 epochs of these against 8 of one to
# four: benchmarks/results/train_dense_digits.md). The held-out canvases, and those that
# calibration reads, keep DIGITS_PER_CANVAS.
TRAIN_PER_CANVAS = (3, 6)


@dataclass
class Canvases:
    """Canvases and their exact annotations."""

    images: torch.Tensor  # (N, 1, S, S) uint8
    masks: torch.Tensor  # (N, S, S) int64: 0 background, d + 1 for digit d
    boxes: list[torch.Tensor]  # per canvas (K, 4) float32 (x1, y1, x2, y2), x2/y2 exclusive
    labels: list[torch.Tensor]  # per canvas (K,) int64 in 1..10

    def __len__(self) -> int:
        return len(self.images)


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in placed)


def draw_canvases(
    digits: np.ndarray,
    labels: np.ndarray,
    seed: int,
    repeats: int = 1,
    size: int = CANVAS_SIZE,
    digit_sizes: tuple[int, int] = DIGIT_SIZES,
    per_canvas: tuple[int, int] = DIGITS_PER_CANVAS,
) -> Canvases:
    """Canvases of ``size`` px using each of ``digits`` (M, 8, 8), values 0..16, ``repeats``
    times in a seeded order. Each try at placing a digit draws a new size and position; a
    digit that finds no free place in :data:`PLACEMENT_TRIES` tries is left out of its
    canvas."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(digits)) for _ in range(repeats)])
    plans: list[list[tuple[int, int, int, int]]] = []  # per canvas: (digit, x, y, side)
    start = 0
    while start < len(order):
        count = int(rng.integers(per_canvas[0], per_canvas[1] + 1))
        chosen, start = order[start : start + count], start + count
        placed: list[tuple[int, int, int, int]] = []
        plan = []
        for index in chosen:
            for _ in range(PLACEMENT_TRIES):
                side = int(rng.integers(digit_sizes[0], min(digit_sizes[1], size) + 1))
                x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
                if not _overlaps((x, y, x + side, y + side), placed):
                    placed.append((x, y, x + side, y + side))
                    plan.append((int(index), x, y, side))
                    break
        plans.append(plan)
    resized = _resize_digits(digits, plans)
    images = np.zeros((len(plans), 1, size, size), dtype=np.uint8)
    masks = np.zeros((len(plans), size, size), dtype=np.int64)
    all_boxes, all_labels = [], []
    for n, plan in enumerate(plans):
        boxes, classes = [], []
        for index, x, y, side in plan:
            digit = resized[(index, side)]
            ink = digit > INK_THRESHOLD
            if not ink.any():
                continue
            label = int(labels[index]) + 1
            images[n, 0, y : y + side, x : x + side] = digit
            masks[n, y : y + side, x : x + side][ink] = label
            rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
            boxes.append([x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1])
            classes.append(label)
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(classes, dtype=torch.int64))
    return Canvases(torch.from_numpy(images), torch.from_numpy(masks), all_boxes, all_labels)


def _resize_digits(
    digits: np.ndarray, plans: list[list[tuple[int, int, int, int]]]
) -> dict[tuple[int, int], np.ndarray]:
    """Every (digit, side) the plans use, bilinearly resized to uint8: one interpolation per
    side, over all the digits placed at it."""
    by_side: dict[int, list[int]] = {}
    for plan in plans:
        for index, _, _, side in plan:
            by_side.setdefault(side, []).append(index)
    pixels = torch.from_numpy(np.asarray(digits, dtype=np.float32) / 16.0)[:, None]
    resized = {}
    for side, indices in by_side.items():
        batch = F.interpolate(
            pixels[indices], size=(side, side), mode="bilinear", align_corners=False
        )
        batch = (batch.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
        resized.update({(index, side): digit for index, digit in zip(indices, batch, strict=True)})
    return resized


def canvas_groups(
    count: int, seed: int, repeats: int = 1, per_canvas: tuple[int, int] = DIGITS_PER_CANVAS
) -> list[np.ndarray]:
    """``count`` digits, each ``repeats`` times in a seeded order, cut into canvases of
    ``per_canvas`` digits: which digits share a canvas, before any is placed."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(count) for _ in range(repeats)])
    groups, start = [], 0
    while start < len(order):
        size = int(rng.integers(per_canvas[0], per_canvas[1] + 1))
        groups.append(order[start : start + size])
        start += size
    return groups


class RedrawnCanvases:
    """Training canvases drawn anew at every visit: canvas ``i`` keeps its digits
    (:func:`canvas_groups`), and each time it is read they get new sizes and positions from
    the item's seed, so every epoch shows each digit at a new scale and place (the canvases
    themselves are the augmentation; the digits are never flipped).

    ``groups`` come from :func:`canvas_groups` (the canvas data puts
    :data:`TRAIN_PER_CANVAS` digits on each). Keys are ``index`` or ``(index, seed)`` as for
    every dataset here (the trainer's sampler seeds each epoch), and an item is what a fixed
    canvas of ``task`` gives through ``transform``: (image, mask) for segmentation, (image,
    {"boxes", "labels"}) for detection.
    """

    def __init__(
        self,
        digits: np.ndarray,
        labels: np.ndarray,
        groups: list[np.ndarray],
        task: str,
        transform,
        size: int = CANVAS_SIZE,
    ) -> None:
        self.digits, self.labels, self.groups = digits, labels, groups
        self.task, self.transform, self.size = task, transform, size
        if task == "detection":
            from mobilenets.data.dense_transforms import collate_detection

            self.collate_fn = collate_detection
        self.in_memory = True

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, key: int | tuple[int, int]):
        index, generator = _unpack_key(key)
        layout_seed = int(torch.randint(2**31, (1,), generator=generator))
        group = self.groups[index]
        count = (len(group), len(group))
        canvas = draw_canvases(
            self.digits[group], self.labels[group], layout_seed, size=self.size, per_canvas=count
        )
        if self.task == "detection":
            return self.transform(canvas.images[0], canvas.boxes[0], canvas.labels[0], generator)
        return self.transform(canvas.images[0], canvas.masks[0], generator)


Digits = tuple[np.ndarray, np.ndarray]  # (M, 8, 8) images, values 0..16, and their labels


def split_digits(seed: int, val_fraction: float = VAL_FRACTION) -> tuple[Digits, Digits]:
    """The embedded digits split as ``--data digits`` splits them: (train, held-out)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, val_fraction, seed)
    return (digits.images[train_idx], labels[train_idx]), (
        digits.images[test_idx],
        labels[test_idx],
    )


def digit_canvases(
    seed: int,
    val_fraction: float = VAL_FRACTION,
    size: int = CANVAS_SIZE,
    train_repeats: int = TRAIN_REPEATS,
) -> tuple[Canvases, Canvases]:
    """(train, held-out) canvases of the embedded digits: the digits split as ``--data
    digits`` splits them, each training digit used ``train_repeats`` times (about 1,150
    training canvases at the defaults), each held-out digit once (about 145)."""
    (train_digits, train_labels), (test_digits, test_labels) = split_digits(seed, val_fraction)
    train = draw_canvases(train_digits, train_labels, seed, train_repeats, size=size)
    test = draw_canvases(test_digits, test_labels, seed + 1, 1, size=size)
    return train, test

"""Detection and segmentation data: the digit canvases' exact annotations, COCO JSON and mask
folders with every bad input one line, the transforms that move boxes and masks with the
image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import raises_one_line
from PIL import Image

from mobilenets.data.canvases import CANVAS_CLASSES, CANVAS_SIZE, INK_THRESHOLD, draw_canvases
from mobilenets.data.coco import read_coco
from mobilenets.data.dense_datasets import DetectionDataset, read_mask
from mobilenets.data.dense_sources import canvas_datasets, load_dense_data
from mobilenets.data.dense_transforms import (
    DetectionTransform,
    SegmentationTransform,
    hflip_boxes,
    resize_boxes,
)
from mobilenets.data.loader import make_loader
from mobilenets.data.mask_folders import read_mask_folder


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[:40], d.target[:40]


# --------------------------------------------------------------------------- canvases


def test_a_digit_at_its_own_size_is_pasted_pixel_for_pixel(digits) -> None:
    images, labels = digits
    c = draw_canvases(
        images[:1], labels[:1], seed=3, size=20, digit_sizes=(8, 8), per_canvas=(1, 1)
    )
    expected = np.round(images[0] * 255 / 16).astype(np.uint8)  # bilinear 8 -> 8 is identity
    canvas = c.images[0, 0].numpy()
    ys, xs = np.nonzero(canvas)
    y0, x0 = ys.min() - np.nonzero(expected)[0].min(), xs.min() - np.nonzero(expected)[1].min()
    assert (canvas[y0 : y0 + 8, x0 : x0 + 8] == expected).all()
    ink = expected > INK_THRESHOLD
    rows, cols = np.nonzero(ink)
    box = [x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1]
    assert c.boxes[0].tolist() == [box]
    assert c.labels[0].tolist() == [labels[0] + 1]
    mask = np.zeros((20, 20), np.int64)
    mask[y0 : y0 + 8, x0 : x0 + 8][ink] = labels[0] + 1
    assert (c.masks[0].numpy() == mask).all()


def test_canvases_boxes_are_the_tight_boxes_of_their_masks(digits) -> None:
    images, labels = digits
    c = draw_canvases(images, labels, seed=0, repeats=2)
    assert len(c) > 10 and sum(len(b) for b in c.boxes) >= 76  # 80 placed, a few may not fit
    ink = c.images[:, 0] > INK_THRESHOLD
    assert ((c.masks > 0) == ink).all()  # the mask is the ink, nothing else
    for mask, boxes, classes in zip(c.masks, c.boxes, c.labels, strict=True):
        covered = torch.zeros_like(mask, dtype=torch.bool)
        for (x1, y1, x2, y2), label in zip(boxes.long().tolist(), classes.tolist(), strict=True):
            inside = mask[y1:y2, x1:x2]
            assert set(inside.unique().tolist()) <= {0, label} and 1 <= label <= 10
            # tight: ink on each of the box's four edges
            assert (inside[0] > 0).any() and (inside[-1] > 0).any()
            assert (inside[:, 0] > 0).any() and (inside[:, -1] > 0).any()
            covered[y1:y2, x1:x2] = True
        assert not (mask[~covered] > 0).any()  # no ink outside every box


def test_canvases_are_a_function_of_the_seed(digits) -> None:
    images, labels = digits
    a, b = (draw_canvases(images, labels, seed=1) for _ in range(2))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert not torch.equal(a.images, draw_canvases(images, labels, seed=2).images[: len(a)])


def test_canvas_datasets_give_model_inputs_and_targets(digits) -> None:
    c = draw_canvases(*digits, seed=0)
    detection = canvas_datasets("detection", c, 80, (0.1,) * 3, (0.2,) * 3)
    x, target = detection[(0, 7)]
    assert x.shape == (3, 80, 80)
    assert torch.allclose(target["boxes"], c.boxes[0] / 2)  # 160 -> 80
    images, targets = detection.collate_fn([detection[i] for i in range(3)])
    assert images.shape == (3, 3, 80, 80) and len(targets) == 3
    x, mask = canvas_datasets("segmentation", c, 160, (0.1,) * 3, (0.2,) * 3)[0]
    assert mask.dtype == torch.int64 and torch.equal(mask, c.masks[0])


def test_make_loader_batches_detection_items_with_their_collate(digits) -> None:
    dataset = canvas_datasets("detection", draw_canvases(*digits, seed=0), 32, (0.1,), (0.2,))
    first, again = (next(iter(make_loader(dataset, 3, shuffle=True, seed=5))) for _ in range(2))
    images, targets = first
    assert images.shape == (3, 1, 32, 32) and len(targets) == 3
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, again[1], strict=True))


@pytest.mark.slow
def test_digit_canvases_bundle_holds_out_unseen_handwriting() -> None:
    """Segmentation's default input is the canvases twice as large (the masks resized with
    them), detection's the canvases as drawn."""
    bundle = load_dense_data("segmentation", "digits", seed=0)
    assert bundle.class_names == CANVAS_CLASSES and bundle.input_size == (3, 320, 320)
    # each training digit twice, three to six a canvas; each held-out digit once, one to four
    assert 600 < len(bundle.train) < 700 and 130 < len(bundle.test) < 160
    assert all(3 <= len(group) <= 6 for group in bundle.train.groups)
    x, mask = bundle.test[0]
    assert x.shape == (3, 320, 320) and mask.shape == (320, 320)
    assert set(mask.unique().tolist()) <= set(range(len(CANVAS_CLASSES)))  # ids, not blends
    assert load_dense_data("detection", "digits", seed=0).input_size == (3, 160, 160)


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_training_canvases_are_redrawn_at_every_visit(task: str) -> None:
    """A training canvas keeps its digits but gets a new layout per seed (the sampler's seed
    changes every epoch): the same key gives the same item, another seed another layout of
    the same digits; the held-out and calibration canvases are drawn once."""
    bundle = load_dense_data(task, "digits", seed=0, resolution=CANVAS_SIZE)
    again = load_dense_data(task, "digits", seed=0, resolution=CANVAS_SIZE)
    for i in range(8):
        (x, target), (y, same) = bundle.train[(i, 7)], again.train[(i, 7)]
        other_x, other = bundle.train[(i, 8)]
        assert torch.equal(x, y) and not torch.equal(x, other_x)
        if task == "detection":
            assert torch.equal(target["boxes"], same["boxes"])
            # the canvas's own digits in both layouts, less any left out for want of a place
            group = bundle.train.groups[i]
            digits = {int(d) + 1 for d in bundle.train.labels[group]}
            assert set(target["labels"].tolist()) | set(other["labels"].tolist()) <= digits
            assert len(group) - 2 <= len(target["labels"]) <= len(group)
        else:
            assert torch.equal(target, same)
            ink = x[0] > ((INK_THRESHOLD + 0.5) / 255 - bundle.mean[0]) / bundle.std[0]
            assert torch.equal(ink, target > 0)  # the mask is the ink, as drawn
    assert torch.equal(bundle.test[0][0], again.test[0][0])
    loader = make_loader(bundle.train, 4, shuffle=True, seed=0)
    images, _ = next(iter(loader))
    assert images.shape == (4, 3, CANVAS_SIZE, CANVAS_SIZE)


# --------------------------------------------------------------------------- transforms


def test_boxes_follow_resize_and_flip() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert resize_boxes(boxes, (100, 200), (50, 50)).tolist() == [[2.5, 10.0, 7.5, 30.0]]
    assert hflip_boxes(boxes, 100).tolist() == [[70.0, 20.0, 90.0, 60.0]]


@pytest.mark.parametrize("seed", range(4))  # both flip outcomes
def test_transforms_keep_image_boxes_and_mask_together(seed: int) -> None:
    image = torch.zeros(3, 40, 80)
    image[:, 8:24, 4:20] = 1.0
    boxes, labels = torch.tensor([[4.0, 8.0, 20.0, 24.0]]), torch.tensor([1])
    mask = (image[0] > 0).long() * 3
    generator = torch.Generator().manual_seed(seed)
    x, target = DetectionTransform(20, (0.0,) * 3, (1.0,) * 3, hflip=True)(
        image, boxes, labels, generator
    )
    ys, xs = torch.nonzero(x[0] > 0.5, as_tuple=True)
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
    generator = torch.Generator().manual_seed(seed)
    x, out = SegmentationTransform(20, (0.0,) * 3, (1.0,) * 3, hflip=True)(image, mask, generator)
    assert torch.equal((x[0] > 0.5).long() * 3, out)


# --------------------------------------------------------------------------- COCO


def _png(path: Path, width: int, height: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (width, height)).save(path)


def _coco(root: Path, **changes: object) -> Path:
    _png(root / "images" / "a.png", 40, 30)
    _png(root / "images" / "b.png", 20, 20)
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 30]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 2, 2], "iscrowd": 1},
        ],
    }
    data.update(changes)
    (root / "instances.json").write_text(json.dumps(data))
    return root / "instances.json"


def test_coco_is_read_renumbered_and_converted(tmp_path: Path) -> None:
    coco = read_coco(_coco(tmp_path), tmp_path / "images")
    assert coco.class_names == ["background", "dog", "cat"] and coco.category_ids == [3, 7]
    assert coco.image_ids == [1, 2] and coco.sizes == [(30, 40), (20, 20)]
    assert coco.boxes[0].tolist() == [[1, 2, 11, 7], [0, 0, 40, 30]]
    assert coco.labels[0].tolist() == [2, 1]
    assert coco.boxes[1].shape == (0, 4)  # the crowd box is left out
    dataset = DetectionDataset(
        coco.paths, coco.boxes, coco.labels, DetectionTransform(20, (0.5,) * 3, (0.5,) * 3)
    )
    x, target = dataset[0]
    assert x.shape == (3, 20, 20)
    assert torch.allclose(target["boxes"][0], torch.tensor([0.5, 2 * 2 / 3, 5.5, 7 * 2 / 3]))


def _ann(**box: object) -> list[dict]:
    return [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5], **box}]


def _image(name: str, width: int) -> dict:
    return {"id": 1, "file_name": name, "width": width, "height": 30}


BAD_COCO = [
    ({"annotations": _ann(image_id=9)}, "names image id 9, which 'images' lacks"),
    ({"annotations": _ann(category_id=5)}, r"category id 5, not one of the categories \[3, 7\]"),
    ({"annotations": _ann(bbox=[1, 2, 3])}, "bbox must be 4 finite numbers"),
    ({"annotations": _ann(bbox=[1, 2, 0, 5])}, "has zero area"),
    ({"annotations": _ann(bbox=[35, 2, 10, 5])}, "lies outside the 40x30 image"),
    ({"annotations": _ann(bbox=[1, "2", 3, 4])}, "bbox must be 4 finite numbers"),
    ({"categories": []}, "'categories' is empty"),
    ({"categories": [{"id": 3, "name": "a"}, {"id": 3, "name": "b"}]}, "id 3 appears twice"),
    ({"images": [_image("gone.png", 40)]}, "gone.png not found"),
    ({"images": [_image("a.png", 41)]}, "a.png is 40x30, the annotations say 41x30"),
    ({"images": [{"id": 1, "file_name": "a.png"}]}, r"images\[0\] needs an integer 'id'"),
    ({"annotations": {}}, "is not COCO detection JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "message"), BAD_COCO)
def test_bad_coco_is_one_line(tmp_path: Path, changes: dict, message: str) -> None:
    path = _coco(tmp_path, **changes)
    with raises_one_line(message):
        read_coco(path, tmp_path / "images")


def test_unreadable_or_missing_coco_file_is_one_line(tmp_path: Path) -> None:
    with raises_one_line("COCO annotations not found"):
        read_coco(tmp_path / "instances.json", tmp_path)
    (tmp_path / "instances.json").write_text("{not json")
    with raises_one_line("cannot read COCO annotations"):
        read_coco(tmp_path / "instances.json", tmp_path)


def test_training_skips_and_counts_bad_boxes_and_images(tmp_path: Path) -> None:
    annotations = [*_ann(bbox=[1, 2, 0, 5]), *_ann(bbox=[2, 2, 5, 5])]
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "gone.png", "width": 20, "height": 20},
    ]
    coco = read_coco(
        _coco(tmp_path, annotations=annotations, images=images), tmp_path / "images", strict=False
    )
    assert coco.image_ids == [1] and coco.boxes[0].tolist() == [[2, 2, 7, 7]]
    assert len(coco.skipped) == 2 and "zero area" in coco.skipped[1]


def test_a_wrong_images_folder_is_one_line_even_when_skipping(tmp_path: Path) -> None:
    with raises_one_line("none of its 2 images is usable: image id 1: image file .* not found"):
        read_coco(_coco(tmp_path), tmp_path / "elsewhere", strict=False)


def test_coco_folder_splits_into_a_bundle(tmp_path: Path) -> None:
    _coco(tmp_path)
    bundle = load_dense_data("detection", tmp_path, resolution=32, seed=0)
    assert bundle.class_names == ["background", "dog", "cat"]
    assert len(bundle.train) + len(bundle.test) == 2 and bundle.input_size == (3, 32, 32)


# --------------------------------------------------------------------------- mask folders


def _mask(path: Path, values: np.ndarray, mode: str) -> None:
    """``values`` as a grey (L) or palette (P) PNG: a palette PNG's pixels are indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, (values.shape[1], values.shape[0]))
    if mode == "P":
        img.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    img.putdata(values.astype(np.uint8).reshape(-1).tolist())
    img.save(path)


def _mask_folder(root: Path) -> Path:
    values = np.zeros((6, 8), np.uint8)
    values[1:3, 2:5] = 2
    values[5] = 255
    _png(root / "images" / "a.jpg", 8, 6)
    _mask(root / "masks" / "a.png", values, "P")
    _png(root / "images" / "b.png", 8, 6)
    _mask(root / "masks" / "b.png", np.ones((6, 8)), "L")
    return root


def test_mask_folder_reads_palette_and_grey_masks(tmp_path: Path) -> None:
    folder = read_mask_folder(_mask_folder(tmp_path) / "images", tmp_path / "masks")
    assert [Path(p).name for p in folder.images] == ["a.jpg", "b.png"]
    assert folder.class_names == ["0", "1", "2"]
    mask = read_mask(folder.masks[0])
    assert mask.dtype == torch.int64 and mask[1, 2] == 2 and mask[5, 0] == 255 and mask[0, 0] == 0
    bundle = load_dense_data("segmentation", tmp_path, resolution=16, seed=0)
    x, mask = bundle.train[0]
    assert x.shape == (3, 16, 16) and mask.shape == (16, 16)


def test_classes_txt_names_the_classes_and_bounds_the_ids(tmp_path: Path) -> None:
    _mask_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    with raises_one_line(r"holds the value 2, not a class id below 2 nor 255"):
        read_mask_folder(tmp_path / "images", tmp_path / "masks")


def test_bad_mask_folders_are_one_line(tmp_path: Path) -> None:
    _mask_folder(tmp_path)
    _png(tmp_path / "images" / "c.png", 8, 6)
    with raises_one_line("has no mask"):
        read_mask_folder(tmp_path / "images", tmp_path / "masks")
    _png(tmp_path / "masks" / "c.png", 8, 6)  # a colour PNG
    with raises_one_line("must be a palette .P. or grey .L. PNG of class ids, found mode RGB"):
        read_mask_folder(tmp_path / "images", tmp_path / "masks")
    _mask(tmp_path / "masks" / "c.png", np.zeros((5, 8)), "L")
    with raises_one_line("is 8x5, its image 8x6"):
        read_mask_folder(tmp_path / "images", tmp_path / "masks")
    folder = read_mask_folder(tmp_path / "images", tmp_path / "masks", strict=False)
    assert len(folder.images) == 2 and len(folder.skipped) == 1
    with raises_one_line("needs the folder"):
        read_mask_folder(tmp_path / "images", tmp_path / "nothing")

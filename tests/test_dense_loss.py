"""SSD's box coding, matching, multibox loss and NMS, and the segmentation loss: against hand
computations and brute-force references; a few optimiser steps on one canvas batch."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobilenets.data.canvases import draw_canvases
from mobilenets.data.dense_sources import canvas_datasets
from mobilenets.models import create_model
from mobilenets.models.boxes import (
    BOX_LOG_CLIP,
    batched_nms,
    box_iou,
    decode_boxes,
    encode_boxes,
    nms,
)
from mobilenets.models.multibox import (
    MultiboxLoss,
    match_default_boxes,
    postprocess_detections,
)
from mobilenets.models.segmentation_loss import segmentation_loss


def _random_boxes(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3 + 1
    return torch.cat((xy, xy + wh), 1)


# --------------------------------------------------------------------------- boxes


def test_iou_by_hand() -> None:
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10], [3, 3, 3, 8]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0, 0.0]]))


def test_encode_decode_round_trip_and_ssd_scaling() -> None:
    boxes, defaults = _random_boxes(50, 0), _random_boxes(50, 1)
    offsets = encode_boxes(boxes, defaults)
    assert torch.allclose(decode_boxes(offsets, defaults), boxes, atol=1e-4)
    assert torch.equal(encode_boxes(defaults, defaults), torch.zeros(50, 4))
    # a box twice as wide, shifted by half a default box: (10 * 0.5, 0, 5 * log 2, 0)
    d = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 20, 10]])
    assert torch.allclose(encode_boxes(b, d), torch.tensor([[5.0, 0, 5 * math.log(2), 0]]))
    huge = decode_boxes(torch.tensor([[0.0, 0, 1e4, 1e4]]), d)  # clipped, not infinite
    assert torch.allclose(huge[0, 2] - huge[0, 0], torch.tensor(10 * math.exp(BOX_LOG_CLIP)))


def test_matching_takes_iou_half_and_forces_each_objects_best_box() -> None:
    defaults = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 6], [50, 50, 60, 60], [52, 52, 72, 72]])
    gt = torch.tensor([[0.0, 0, 10, 8], [50, 50, 90, 90]])
    # IoUs: gt0 with d0 0.8, d1 0.75; gt1 with d2 100/1600, d3 400/1600: below 0.5 but its best
    assert match_default_boxes(gt, defaults).tolist() == [0, 0, -1, 1]
    assert match_default_boxes(gt[:0], defaults).tolist() == [-1] * 4


def _brute_force_nms(boxes, scores, labels, threshold):
    """Greedy NMS as its definition reads, in plain Python."""

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union

    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(labels[i] != labels[k] or iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(5))
def test_nms_equals_brute_force(seed: int) -> None:
    boxes = _random_boxes(120, seed, size=60)
    scores = torch.rand(120, generator=torch.Generator().manual_seed(seed + 10))
    labels = torch.randint(1, 4, (120,), generator=torch.Generator().manual_seed(seed + 20))
    b, s, lab = boxes.tolist(), scores.tolist(), labels.tolist()
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == _brute_force_nms(b, s, lab, 0.5)
    assert nms(boxes, scores, 0.3).tolist() == _brute_force_nms(b, s, [0] * 120, 0.3)
    assert batched_nms(boxes[:0], scores[:0], labels[:0], 0.5).numel() == 0


# --------------------------------------------------------------------------- loss


def test_hard_negatives_are_three_per_positive_and_the_hardest() -> None:
    defaults = torch.cat([torch.tensor([[0.0, 0, 10, 10]]), _random_boxes(8, 3) + 200])
    loss = MultiboxLoss(defaults)
    logits = torch.zeros(1, len(defaults), 3)
    logits[0, 1:, 2] = torch.arange(len(defaults) - 1).float()  # later boxes: worse negatives
    target = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    background = torch.zeros(len(defaults), dtype=torch.long)
    per_box = F.cross_entropy(logits[0], background, reduction="none")
    foreground = torch.zeros(1, len(defaults), dtype=torch.bool)
    foreground[0, 0] = True
    chosen = loss.hard_negatives(per_box[None], foreground)
    assert chosen[0].nonzero().squeeze(1).tolist() == [6, 7, 8]
    out = loss(logits, torch.zeros(1, len(defaults), 4), target)
    ce_positive = F.cross_entropy(logits[0, :1], torch.tensor([1]))
    assert torch.allclose(out.classification, ce_positive + per_box[chosen[0]].sum())
    assert out.bbox_regression == 0  # the matched box is its default box: offsets 0


SIZE = 64  # small inputs: a few steps must take seconds; the masks stay at 160 (upsampled to)


@pytest.fixture(scope="module")
def canvas_batch() -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    canvases = draw_canvases(d.images[:12], d.target[:12], seed=0)
    detection = canvas_datasets("detection", canvases, SIZE, (0.1,) * 3, (0.2,) * 3)
    images, targets = detection.collate_fn([detection[i] for i in range(4)])
    return images, targets, canvases.masks[:4]


def _steps(
    model: torch.nn.Module, loss_of: Callable[[], torch.Tensor], steps: int = 8
) -> list[float]:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow  # a few seconds on an idle core
def test_multibox_loss_falls_on_one_canvas_batch(canvas_batch) -> None:
    images, targets, _ = canvas_batch
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilenet_v3_small", num_classes=11)
    criterion = MultiboxLoss(model.default_boxes(SIZE))
    losses = _steps(model, lambda: criterion(*model(images), targets).total)
    assert losses[-1] < 0.7 * losses[0], losses
    model.eval()
    with torch.no_grad():
        detections = postprocess_detections(*model(images), criterion.defaults, (SIZE, SIZE))
    assert len(detections) == 4
    for d in detections:
        assert d.boxes.shape[1] == 4 and (d.labels >= 1).all() and (d.labels <= 10).all()
        assert (d.boxes >= 0).all() and (d.boxes <= SIZE).all()
        assert (d.scores[:-1] >= d.scores[1:]).all()


@pytest.mark.slow
def test_segmentation_loss_falls_on_one_canvas_batch(canvas_batch) -> None:
    images, _, masks = canvas_batch
    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_small", num_classes=11)
    losses = _steps(model, lambda: segmentation_loss(model(images), masks))
    assert losses[-1] < 0.7 * losses[0], losses


def test_postprocess_decodes_thresholds_and_suppresses() -> None:
    defaults = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 50, 50], [-5, -5, 5, 5]])
    logits = torch.full((1, 4, 3), -10.0)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, 2], logits[0, 3, 0] = 5.0, 4.0, 3.0, 9.0
    offsets = torch.zeros(1, 4, 4)
    (d,) = postprocess_detections(logits, offsets, defaults, (40, 40), score_threshold=0.5)
    # box 1 overlaps box 0 (IoU 0.82) in the same class; box 2 is clipped to the image
    assert d.labels.tolist() == [1, 2]
    assert d.boxes.tolist() == [[0, 0, 10, 10], [30, 30, 40, 40]]


def test_segmentation_loss_ignores_255_and_upsamples() -> None:
    masks = torch.tensor([[[0, 1], [255, 1]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 1, 1, 1] = 20.0
    logits[0, 1, 1, 0] = 20.0  # wrong, but ignored
    assert segmentation_loss(logits, masks) < 1e-6
    small = torch.zeros(1, 2, 1, 1)  # uniform: log 2 on every pixel, whatever the size
    big = torch.zeros(1, 4, 4, dtype=torch.long)
    assert torch.isclose(
        segmentation_loss(small, big), torch.tensor(np.log(2), dtype=torch.float32)
    )
    aux = segmentation_loss(small, big, aux_logits=small)
    assert torch.isclose(aux, torch.tensor(1.5 * np.log(2), dtype=torch.float32))

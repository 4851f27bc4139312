"""COCO mAP through pycocotools and mIoU / pixel accuracy from a confusion matrix, on cases
computed by hand."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from conftest import raises_one_line
from torch import nn

from mobilenets.train.detection_metrics import DetectionMeter, coco_map, evaluate_detector
from mobilenets.train.segmentation_metrics import (
    ConfusionMatrix,
    evaluate_segmenter,
    segmentation_metrics,
)


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels)}


def _prediction(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {**_target(boxes, labels), "scores": torch.tensor(scores)}


def test_perfect_detections_score_one() -> None:
    targets = [
        _target([[10, 10, 50, 60], [60, 5, 90, 40]], [1, 3]),
        _target([[0, 0, 20, 20]], [2]),
    ]
    predictions = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    result = coco_map(predictions, targets)
    assert result == pytest.approx({"map": 1.0, "map_50": 1.0, "map_75": 1.0})


def test_map_by_hand_a_miss_and_a_false_positive() -> None:
    """Two objects, one found; a false positive scored below the hit. Recall reaches 0.5 at
    precision 1, so COCO's 101-point interpolated precision is 1 at recalls 0, 0.01, ...,
    0.50 (51 points) and 0 above: AP = 51 / 101 at every IoU threshold."""
    target = _target([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1])
    prediction = _prediction([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 1])
    result = coco_map([prediction], [target])
    assert result["map"] == pytest.approx(51 / 101) and result["map_50"] == pytest.approx(51 / 101)


def test_map_by_hand_an_iou_of_0_62() -> None:
    """IoU 0.62 counts as a hit at the thresholds 0.50, 0.55, 0.60 of COCO's ten: mAP 0.3."""
    target = _target([[0, 0, 10, 10]], [1])
    prediction = _prediction([[0, 0, 10, 6.2]], [0.9], [1])
    result = coco_map([prediction], [target])
    assert result["map"] == pytest.approx(0.3) and result["map_50"] == pytest.approx(1.0)
    assert result["map_75"] == 0.0


def test_map_of_nothing_detected_and_of_no_objects() -> None:
    meter = DetectionMeter()
    meter.update(_prediction([], [], []), _target([[0, 0, 5, 5]], [1]))
    assert meter.compute()["map"] == 0.0
    with raises_one_line("mAP needs at least one ground-truth box"):
        coco_map([_prediction([], [], [])], [_target([], [])])


def test_miou_and_pixel_accuracy_by_hand() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255], [2, 2, 2, 2]]])
    predicted = torch.tensor([[[0, 0, 1, 0], [0, 1, 1, 2], [2, 2, 1, 2]]])
    # 11 pixels counted; right: 0 0 1 / 0 1 / 2 2 2 = 8
    # class 0: tp 3, fp 1 (a 1 read as 0), fn 1 (a 0 read as 1) -> 3 / 5
    # class 1: tp 2, fp 2 (a 0 and a 2 read as 1), fn 1 -> 2 / 5
    # class 2: tp 3, fp 0 (the 2 under 255 is not counted), fn 1 -> 3 / 4
    result = segmentation_metrics(predicted, target, num_classes=3)
    assert result["pixel_accuracy"] == pytest.approx(8 / 11)
    assert result["miou"] == pytest.approx((3 / 5 + 2 / 5 + 3 / 4) / 3)


def test_confusion_matrix_accumulates_logits_and_skips_absent_classes() -> None:
    matrix = ConfusionMatrix(4)
    logits = torch.zeros(1, 4, 1, 2)
    logits[0, 1, 0, 0] = logits[0, 2, 0, 1] = 1.0
    matrix.update(logits, torch.tensor([[[1, 2]]]))
    matrix.update(torch.tensor([[[1]]]), torch.tensor([[[1]]]))
    assert matrix.matrix[1, 1] == 2 and matrix.matrix[2, 2] == 1
    assert math.isnan(matrix.iou()[3])  # class 3: neither true nor predicted
    assert matrix.compute() == {"miou": 1.0, "pixel_accuracy": 1.0}
    with raises_one_line("a mask holds class 7; there are 4 classes"):
        matrix.update(torch.tensor([[[1]]]), torch.tensor([[[7]]]))
    with raises_one_line("do not match masks"):
        matrix.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3, 3))


def test_map_without_pycocotools_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    target = _target([[0, 0, 10, 10]], [1])
    with raises_one_line(r"pip install 'mobilenets\[detection\]'"):
        coco_map([_prediction([[0, 0, 10, 10]], [0.9], [1])], [target])


class _Oracle(nn.Module):
    """A detector whose first default box is the object, scored as class 2, the second
    background: what a perfect SSDLite outputs."""

    def default_boxes(self, size: tuple[int, int]) -> torch.Tensor:
        return torch.tensor([[2.0, 3.0, 12.0, 9.0], [0.0, 0.0, 16.0, 16.0]])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.full((len(x), 2, 3), -10.0)
        logits[:, 0, 2] = logits[:, 1, 0] = 10.0
        return logits, torch.zeros(len(x), 2, 4)


def test_evaluate_runs_a_model_over_a_loader() -> None:
    targets = [_target([[2, 3, 12, 9]], [2])] * 2
    assert evaluate_detector(_Oracle(), [(torch.zeros(2, 3, 16, 16), targets)]) == pytest.approx(
        {"map": 1.0, "map_50": 1.0, "map_75": 1.0}
    )
    masks = torch.tensor([[[0, 1], [1, 255]]])
    images = masks[:, None].float().clamp(max=1)
    segmenter = nn.Conv2d(1, 2, 1)  # class 1 where the pixel is 1: logits (-x, x) + bias
    with torch.no_grad():
        segmenter.weight.copy_(torch.tensor([[[[-10.0]]], [[[10.0]]]]))
        segmenter.bias.copy_(torch.tensor([5.0, -5.0]))
    result = evaluate_segmenter(segmenter, [(images, masks)], num_classes=2)
    assert result == {"miou": 1.0, "pixel_accuracy": 1.0}

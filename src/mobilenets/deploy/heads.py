"""Detectors and segmenters through the export pipeline: what the program holds and how its
outputs are compared with PyTorch's.

A program holds the network only. A segmenter's output is already one tensor, its logits
(N, classes, H, W) at the input's size; the class of each pixel is their argmax, taken
outside. A detector (:class:`~mobilenets.models.ssdlite.SSDLite`) is written through
:class:`DetectionGraph`: its two raw outputs, the class logits of every default box and
their box offsets, side by side in one tensor (N, boxes, classes + 4), so every runtime's
single-output runner reads it. LiteRT's int8 program quantizes its outputs too, so there the
two stay two outputs, each with its own int8 range (:func:`separate_outputs`), and its runner
joins them. Box decoding, the score threshold and non-maximum suppression
stay outside the graph (:func:`decode`, which is
:func:`~mobilenets.models.multibox.postprocess_detections` on the split tensor): not every
runtime has an NMS operator (XNNPACK has none), the default boxes are a constant of the input
size, and the same Python code then decodes every runtime's output.

The check compares what a user gets: for a segmenter the share of pixels given the same class
(``measure`` "pixels"); for a detector PyTorch's decoded detections matched one to one with
the runtime's (same class, IoU >= :data:`MATCH_IOU`, greedy by score), the share matched,
the matched boxes' mean IoU and their mean score difference (``measure`` "detections").
fp32 is still held to the raw outputs' relative difference, as a classifier's logits are.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mobilenets.deploy.target import Agreement, Compare, agreement
from mobilenets.models import model_task
from mobilenets.models.boxes import box_iou
from mobilenets.models.multibox import Detections, postprocess_detections
from mobilenets.models.ssdlite import SSDLite
from mobilenets.runs import RunInfo

MATCH_IOU = 0.5
CHECK_SCORE = 0.5  # the detections a user keeps: PyTorch's above this score are checked
CHECKED_PER_IMAGE = 5  # where PyTorch has none above it (an untrained model), its best five
# The check decodes fewer candidates than predict (its threshold 0.001, 300 per class): the
# matches it looks for score far above these, and NMS over every class's 300 boxes of 256
# images took minutes
DECODE = {"score_threshold": 0.01, "topk_candidates": 50, "detections_per_img": 100}


class DetectionGraph(nn.Module):
    """An SSDLite whose output is one tensor: class logits, then the four box offsets, of
    every default box (N, boxes, classes + 4). Its modules keep their names under
    ``detector.``. With ``joined=False`` it returns the two as they are
    (:func:`separate_outputs`)."""

    def __init__(self, detector: SSDLite, joined: bool = True) -> None:
        super().__init__()
        self.detector = detector
        self.joined = joined

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        cls_logits, bbox_regression = self.detector(x)
        if not self.joined:
            return cls_logits, bbox_regression
        return torch.cat((cls_logits, bbox_regression), -1)


def graph_of(model: nn.Module) -> nn.Module:
    """The module a program of ``model`` holds: a detector's outputs in one tensor."""
    return DetectionGraph(model) if isinstance(model, SSDLite) else model


def separate_outputs(graph: nn.Module) -> nn.Module:
    """A detector's program with two outputs, class logits (N, boxes, classes) and box offsets
    (N, boxes, 4), for a runtime whose int8 program quantizes its outputs too (LiteRT): each
    then gets its own int8 range instead of one range for logits and offsets together. Its
    runner returns them joined on the last axis (:func:`join_outputs`), the layout
    :func:`decode` reads. Any other graph is returned as it is."""
    if isinstance(graph, DetectionGraph) and graph.joined:
        return DetectionGraph(graph.detector, joined=False)
    return graph


def join_outputs(outputs: list[np.ndarray]) -> np.ndarray:
    """A program's outputs as the one array its runner returns: a detector's two (class
    logits, box offsets) side by side on the last axis, a single output as it is."""
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)


def decode(
    outputs: np.ndarray | torch.Tensor,
    defaults: torch.Tensor,
    image_size: tuple[int, int],
    **thresholds: float,
) -> list[Detections]:
    """Detections per image from a detector program's output (N, boxes, classes + 4): boxes
    decoded against ``defaults`` and clipped to ``image_size`` (H, W), softmax scores,
    per-class NMS (:func:`~mobilenets.models.multibox.postprocess_detections`, whose
    ``thresholds`` these are)."""
    outputs = torch.as_tensor(np.asarray(outputs, dtype=np.float32))
    cls_logits, bbox_regression = outputs[..., :-4], outputs[..., -4:]
    return postprocess_detections(cls_logits, bbox_regression, defaults, image_size, **thresholds)


def checked(detections: Detections) -> Detections:
    """The detections of one image the check looks for in the runtime's."""
    keep = detections.scores >= CHECK_SCORE
    if not bool(keep.any()):
        keep = torch.arange(len(detections.scores)) < CHECKED_PER_IMAGE  # sorted by score
    return Detections(detections.boxes[keep], detections.scores[keep], detections.labels[keep])


def match(expected: Detections, got: Detections) -> tuple[list[float], list[float]]:
    """Greedy one-to-one matching, PyTorch's best first: the IoU and the score difference of
    every matched pair."""
    if len(expected.boxes) == 0 or len(got.boxes) == 0:
        return [], []
    iou = box_iou(expected.boxes, got.boxes)
    iou[expected.labels[:, None] != got.labels[None, :]] = 0
    taken = torch.zeros(len(got.boxes), dtype=torch.bool)
    ious, scores = [], []
    for i in torch.argsort(expected.scores, descending=True).tolist():
        candidates = iou[i].masked_fill(taken, 0)
        j = int(candidates.argmax())
        if candidates[j] >= MATCH_IOU:
            taken[j] = True
            ious.append(float(candidates[j]))
            scores.append(abs(float(expected.scores[i] - got.scores[j])))
    return ious, scores


def detection_agreement(
    defaults: torch.Tensor, image_size: tuple[int, int]
) -> Callable[[np.ndarray, np.ndarray], Agreement]:
    """Compares two detector outputs (N, boxes, classes + 4) as decoded detections."""

    def compare(expected: np.ndarray, got: np.ndarray) -> Agreement:
        raw = agreement(expected.reshape(len(expected), -1), got.reshape(len(got), -1))
        ious, scores, total = [], [], 0
        reference_all = decode(expected, defaults, image_size, **DECODE)
        pairs = zip(reference_all, decode(got, defaults, image_size, **DECODE), strict=True)
        for reference, runtime in pairs:
            wanted = checked(reference)
            total += len(wanted.boxes)
            i, s = match(wanted, runtime)
            ious += i
            scores += s
        return Agreement(
            images=raw.images,
            max_rel_error=raw.max_rel_error,
            top1_agreement=len(ious) / max(total, 1),
            sqnr_db=raw.sqnr_db,
            measure="detections",
            box_iou=float(np.mean(ious)) if ious else 0.0,
            score_difference=float(np.mean(scores)) if scores else 0.0,
        )

    return compare


def segmentation_agreement(expected: np.ndarray, got: np.ndarray) -> Agreement:
    """Compares two segmenter outputs (N, classes, H, W): the share of pixels of one class."""
    result = agreement(expected, got)  # argmax over axis 1: the class of every pixel
    result.measure = "pixels"
    return result


def comparison(model: nn.Module, info: RunInfo) -> Compare:
    """How a program of ``model`` (a run's, BatchNorm folded) is compared with PyTorch."""
    task = model_task(info.model)
    size = (int(info.input_size[1]), int(info.input_size[2]))
    if task == "detection" and isinstance(model, SSDLite):
        return detection_agreement(model.default_boxes(size), size)
    if task == "segmentation":
        return segmentation_agreement
    return agreement

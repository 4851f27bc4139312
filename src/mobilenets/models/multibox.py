"""SSD's training objective and its post-processing (Liu et al. 2016, sections 2.2 and 3),
as torchvision's ``SSD`` computes them, on :class:`~mobilenets.models.ssdlite.SSDLite`'s raw
outputs.

* :func:`match_default_boxes`: each default box takes the ground-truth box it overlaps most
  when that IoU is at least 0.5, and each ground-truth box also takes its best default box
  whatever the IoU, so no object is left without a prediction to train.
* :class:`MultiboxLoss`: smooth-L1 on the coded offsets of matched boxes, plus cross-entropy
  on the matched boxes and on the hardest negatives, three negatives per positive (hard
  negative mining: the thousands of easy background boxes would otherwise drown the few
  objects); both divided by the number of matched boxes.
* :func:`postprocess_detections`: softmax scores, a score threshold and the best
  ``topk_candidates`` per class, decoded and clipped boxes, per-class NMS, the best
  ``detections_per_img``.

Targets follow torchvision's detection convention: one dict per image with ``boxes`` (K, 4)
float (x1, y1, x2, y2) in pixels of the model's input and ``labels`` (K,) int64 in
1..num_classes - 1 (0 is the background).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.models.boxes import (
    SSD_BOX_WEIGHTS,
    batched_nms,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)

MATCH_IOU = 0.5
NEGATIVES_PER_POSITIVE = 3


class Detections(NamedTuple):
    """One image's detections: boxes (K, 4) xyxy in input pixels, scores (K,), labels (K,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


class MultiboxLosses(NamedTuple):
    """The two terms, each already divided by the number of matched default boxes."""

    bbox_regression: torch.Tensor
    classification: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.bbox_regression + self.classification


def match_default_boxes(
    gt_boxes: torch.Tensor, defaults: torch.Tensor, iou_threshold: float = MATCH_IOU
) -> torch.Tensor:
    """For each default box, the index of its ground-truth box, or -1 (background).

    A default box matches the ground truth it overlaps most if that IoU is >= ``iou_threshold``;
    then every ground-truth box claims its own best default box (torchvision's ``SSDMatcher``),
    so a small object that no default box covers by half still gets one. Where two ground
    truths share a best box, the later one keeps it, as in torchvision.
    """
    matches = torch.full((len(defaults),), -1, dtype=torch.long)
    if len(gt_boxes) == 0:
        return matches
    iou = box_iou(gt_boxes, defaults)  # (G, A)
    best_iou, best_gt = iou.max(0)
    matches = torch.where(best_iou >= iou_threshold, best_gt, matches)
    matches[iou.argmax(1)] = torch.arange(len(gt_boxes))
    return matches


class MultiboxLoss(nn.Module):
    """SSD's multibox loss for ``SSDLite``'s ``(cls_logits, bbox_regression)``.

    ``defaults`` are the model's default boxes for the input size
    (``model.default_boxes(size)``), as corner boxes in input pixels.
    """

    def __init__(
        self,
        defaults: torch.Tensor,
        iou_threshold: float = MATCH_IOU,
        neg_to_pos_ratio: int = NEGATIVES_PER_POSITIVE,
        weights: tuple[float, float, float, float] = SSD_BOX_WEIGHTS,
    ) -> None:
        super().__init__()
        self.register_buffer("defaults", defaults, persistent=False)
        self.iou_threshold, self.neg_to_pos_ratio, self.weights = (
            iou_threshold,
            neg_to_pos_ratio,
            weights,
        )

    def forward(
        self,
        cls_logits: torch.Tensor,
        bbox_regression: torch.Tensor,
        targets: Sequence[dict[str, torch.Tensor]],
    ) -> MultiboxLosses:
        defaults = self.defaults
        cls_targets, box_losses, positives = [], [], 0
        for offsets, target in zip(bbox_regression, targets, strict=True):
            gt_boxes = target["boxes"].to(defaults)
            matches = match_default_boxes(gt_boxes, defaults, self.iou_threshold)
            foreground = matches >= 0
            labels = torch.zeros(len(defaults), dtype=torch.long, device=defaults.device)
            labels[foreground] = target["labels"].to(defaults.device)[matches[foreground]]
            cls_targets.append(labels)
            wanted = encode_boxes(gt_boxes[matches[foreground]], defaults[foreground], self.weights)
            box_losses.append(F.smooth_l1_loss(offsets[foreground], wanted, reduction="sum"))
            positives += int(foreground.sum())
        labels = torch.stack(cls_targets)  # (N, A)
        per_box = F.cross_entropy(
            cls_logits.reshape(-1, cls_logits.shape[-1]), labels.reshape(-1), reduction="none"
        ).view_as(labels)
        hard_negatives = self.hard_negatives(per_box, labels > 0)
        normaliser = max(1, positives)
        classification = (per_box[labels > 0].sum() + per_box[hard_negatives].sum()) / normaliser
        return MultiboxLosses(torch.stack(box_losses).sum() / normaliser, classification)

    def hard_negatives(self, per_box: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        """The background boxes with the highest loss, ``neg_to_pos_ratio`` per matched box of
        the same image (an image without objects contributes none, as in torchvision)."""
        wanted = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)
        loss = per_box.detach().masked_fill(foreground, -float("inf"))
        rank = loss.argsort(1, descending=True).argsort(1)
        return rank < wanted


def postprocess_detections(
    cls_logits: torch.Tensor,
    bbox_regression: torch.Tensor,
    defaults: torch.Tensor,
    image_size: tuple[int, int],
    score_threshold: float = 0.001,
    nms_threshold: float = 0.55,
    topk_candidates: int = 300,
    detections_per_img: int = 300,
    weights: tuple[float, float, float, float] = SSD_BOX_WEIGHTS,
) -> list[Detections]:
    """Detections per image from SSDLite's outputs (torchvision's ``ssdlite320`` defaults).

    Per class (background excluded): boxes scoring above ``score_threshold``, the best
    ``topk_candidates`` of them; then NMS within each class at ``nms_threshold`` and the best
    ``detections_per_img`` overall. Boxes are decoded and clipped to ``image_size`` (H, W).
    """
    height, width = image_size
    results = []
    scores_all = F.softmax(cls_logits.float(), -1)
    for scores, offsets in zip(scores_all, bbox_regression.float(), strict=True):
        boxes = clip_boxes(decode_boxes(offsets, defaults.to(offsets), weights), height, width)
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in range(1, scores.shape[-1]):
            score = scores[:, label]
            candidates = torch.nonzero(score > score_threshold).squeeze(1)
            score = score[candidates]
            top = score.topk(min(topk_candidates, len(score))).indices
            kept_boxes.append(boxes[candidates[top]])
            kept_scores.append(score[top])
            kept_labels.append(torch.full_like(top, label))
        b, s, lab = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
        keep = batched_nms(b, s, lab, nms_threshold)[:detections_per_img]
        results.append(Detections(b[keep], s[keep], lab[keep]))
    return results

"""Box geometry for the detectors: areas, IoU, SSD's box coding and non-maximum suppression.

Boxes are (x1, y1, x2, y2) in pixels of the model's input unless a name says otherwise. The
coding is SSD's (Liu et al. 2016, equation 2) with the "variances" of the original Caffe model,
written as torchvision's ``BoxCoder`` weights (10, 10, 5, 5): the centre offset is divided by
the default box's size and scaled by 10, the log size ratio by 5, so both regress at a similar
scale. NMS is plain torch (greedy, as torchvision's ``batched_nms``): the exported graph holds
the network only, and predict runs this after it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# torchvision's SSD BoxCoder weights: 1 / SSD's variances (0.1, 0.1, 0.2, 0.2).
SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# The largest log size ratio decoded (torchvision's bbox_xform_clip): exp() of more overflows
# into boxes a thousand times larger than a 16-pixel default box, which no image holds.
BOX_LOG_CLIP = math.log(1000.0 / 16)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of (..., 4) boxes; an inverted box has area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4):
    an (N, M) matrix; two empty boxes have IoU 0."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(
    boxes: torch.Tensor,
    defaults: torch.Tensor,
    weights: tuple[float, float, float, float] = SSD_BOX_WEIGHTS,
) -> torch.Tensor:
    """The regression targets (dx, dy, dw, dh) that move each default box onto its box, both
    (..., 4) corner boxes: ``wx * (cx - cx_d) / w_d``, ..., ``ww * log(w / w_d)``."""
    cx, cy, w, h = _centre_size(boxes)
    dcx, dcy, dw, dh = _centre_size(defaults)
    wx, wy, ww, wh = weights
    return torch.stack(
        (
            wx * (cx - dcx) / dw,
            wy * (cy - dcy) / dh,
            ww * torch.log(w / dw),
            wh * torch.log(h / dh),
        ),
        -1,
    )


def decode_boxes(
    offsets: torch.Tensor,
    defaults: torch.Tensor,
    weights: tuple[float, float, float, float] = SSD_BOX_WEIGHTS,
) -> torch.Tensor:
    """The inverse of :func:`encode_boxes`: corner boxes from predicted offsets (..., 4) and
    their default boxes. The size ratios are clipped at :data:`BOX_LOG_CLIP`, so an untrained
    network's offsets give large boxes, not infinities."""
    dcx, dcy, dw, dh = _centre_size(defaults)
    wx, wy, ww, wh = weights
    cx = offsets[..., 0] / wx * dw + dcx
    cy = offsets[..., 1] / wy * dh + dcy
    w = torch.exp((offsets[..., 2] / ww).clamp(max=BOX_LOG_CLIP)) * dw
    h = torch.exp((offsets[..., 3] / wh).clamp(max=BOX_LOG_CLIP)) * dh
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1)


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes limited to the image ``height`` x ``width``."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), -1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: the indices of the boxes kept, highest score first.

    A box is dropped when its IoU with a kept, higher-scoring box is above ``iou_threshold``
    (torchvision's rule). The IoU matrix is computed once; the greedy pass is sequential by
    nature and walks it row by row.
    """
    order = scores.detach().cpu().argsort(descending=True, stable=True)
    sorted_boxes = boxes.detach().cpu()[order]
    overlaps = (box_iou(sorted_boxes, sorted_boxes) > iou_threshold).numpy()
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):  # numpy: a step costs a microsecond, a torch op several
        if keep[i]:
            keep[i + 1 :] &= ~overlaps[i, i + 1 :]
    return order[torch.from_numpy(keep)].to(boxes.device)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each label: boxes of different labels never suppress each other; the
    indices kept, highest score first.

    One :func:`nms` per label: k labels of n boxes cost k IoU matrices of n x n, where
    torchvision's trick (shifting each label's boxes apart, one NMS) costs one of kn x kn, k
    times more (an untrained 10-class detector spent 0.45 s an image in it).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    kept = torch.zeros(len(boxes), dtype=torch.bool)
    labels = labels.detach().cpu()
    for label in labels.unique():
        members = torch.nonzero(labels == label).squeeze(1)
        kept[members[nms(boxes[members], scores[members], iou_threshold).cpu()]] = True
    order = scores.detach().cpu().argsort(descending=True, stable=True)
    return order[kept[order]].to(boxes.device)

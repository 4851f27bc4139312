"""COCO's detection metrics, mAP@[.5:.95] and mAP@.5, computed by pycocotools.

pycocotools is COCO's own evaluation code, the one every published COCO number comes from
(torchvision's references and torchmetrics' ``MeanAveragePrecision`` call it too); computing
the metric with it rather than re-implementing it means the numbers compare with the papers'.
It is the optional extra ``detection`` and is imported only when a metric is computed.

:class:`DetectionMeter` gathers one image at a time, as an evaluation loop sees them:
ground truth ``{"boxes", "labels"}`` and predictions with ``scores`` too, boxes xyxy in the
same pixels; the metrics come from :meth:`DetectionMeter.compute`. Labels are the model's
(1..K); COCO's own category ids do not matter to the metric.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.models.multibox import Detections, postprocess_detections


def _pycocotools() -> tuple[type, type]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MobileNetError(
            "detection metrics need pycocotools: pip install 'mobilenets[detection]'"
        ) from None
    return COCO, COCOeval


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().float().cpu().reshape(-1, 4)
    return torch.cat((b[:, :2], b[:, 2:] - b[:, :2]), 1).tolist()


class DetectionMeter:
    """Ground truth and detections of many images, scored at the end by COCO's evaluation."""

    def __init__(self) -> None:
        self.images: list[dict] = []
        self.ground_truth: list[dict] = []
        self.detections: list[dict] = []
        self.labels: set[int] = set()

    def update(
        self,
        predictions: Mapping[str, torch.Tensor] | Detections,
        target: Mapping[str, torch.Tensor],
    ) -> None:
        """Add one image: ``predictions`` with ``boxes``, ``scores``, ``labels`` (a dict or
        the :class:`~mobilenets.models.multibox.Detections` of post-processing); ``target``
        with ``boxes`` and ``labels``."""
        if isinstance(predictions, Detections):
            predictions = predictions._asdict()
        image_id = len(self.images) + 1
        self.images.append({"id": image_id})
        labels = target["labels"].tolist()
        for box, label in zip(_xywh(target["boxes"]), labels, strict=True):
            self.ground_truth.append(
                {
                    "id": len(self.ground_truth) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
        self.labels.update(int(label) for label in labels)
        scores, pred_labels = predictions["scores"].tolist(), predictions["labels"].tolist()
        for box, score, label in zip(_xywh(predictions["boxes"]), scores, pred_labels, strict=True):
            self.detections.append(
                {"image_id": image_id, "category_id": int(label), "bbox": box, "score": score}
            )
            self.labels.add(int(label))

    def compute(self) -> dict[str, float]:
        """``{"map": mAP@[.5:.95], "map_50": mAP@.5, "map_75": mAP@.75}``, each averaged over
        the classes that have ground truth (COCO's rule: at most 100 detections per image)."""
        if not self.ground_truth:
            raise MobileNetError("mAP needs at least one ground-truth box; the images have none")
        if not self.detections:
            return {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
        COCO, COCOeval = _pycocotools()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            gt = COCO()
            gt.dataset = {
                "images": self.images,
                "annotations": self.ground_truth,
                "categories": [{"id": label} for label in sorted(self.labels)],
            }
            gt.createIndex()
            evaluation = COCOeval(gt, gt.loadRes(self.detections), iouType="bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = evaluation.stats
        return {"map": float(stats[0]), "map_50": float(stats[1]), "map_75": float(stats[2])}


def coco_map(
    predictions: list[Mapping[str, torch.Tensor] | Detections],
    targets: list[Mapping[str, torch.Tensor]],
) -> dict[str, float]:
    """COCO mAP of per-image ``predictions`` against ``targets`` (see :class:`DetectionMeter`)."""
    meter = DetectionMeter()
    for prediction, target in zip(predictions, targets, strict=True):
        meter.update(prediction, target)
    return meter.compute()


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]],
    device: torch.device | str = "cpu",
    **postprocess: float,
) -> dict[str, float]:
    """COCO mAP of an SSDLite (anything with ``default_boxes(size)`` and SSDLite's outputs)
    on a detection loader, in eval mode; ``postprocess`` overrides
    :func:`~mobilenets.models.multibox.postprocess_detections`' thresholds."""
    model.eval()
    meter, defaults = DetectionMeter(), None
    for images, targets in loader:
        images = images.to(device)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if defaults is None:
            defaults = model.default_boxes(size).to(device)
        outputs = model(images)
        for detections, target in zip(
            postprocess_detections(*outputs, defaults, size, **postprocess), targets, strict=True
        ):
            meter.update(detections, target)
    return meter.compute()

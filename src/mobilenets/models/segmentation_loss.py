"""The segmentation loss: per-pixel cross-entropy, pixels labelled 255 ignored (Pascal VOC's
object borders and whatever an annotator left open), logits upsampled to the mask's size.

LR-ASPP and DeepLabV3 already return logits at the input's size; a mask kept at another size
(the original image's, for evaluation) gets the logits bilinearly resized to it, so the loss
is always taken on the annotation's own pixels, never on a resampled mask. DeepLabV3's
auxiliary head adds its loss with weight 0.5, as torchvision's reference training does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
AUX_WEIGHT = 0.5


def upsample_logits(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """(N, C, h, w) logits bilinearly resized to ``size`` (H, W); unchanged if already there."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def segmentation_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    aux_logits: torch.Tensor | None = None,
    aux_weight: float = AUX_WEIGHT,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of (N, C, h, w) ``logits`` against (N, H, W) int64 ``masks`` over
    the pixels not marked ``ignore_index``, plus ``aux_weight`` times the auxiliary head's."""
    size = masks.shape[-2:]
    loss = F.cross_entropy(upsample_logits(logits, size), masks, ignore_index=ignore_index)
    if aux_logits is not None:
        aux = F.cross_entropy(upsample_logits(aux_logits, size), masks, ignore_index=ignore_index)
        loss = loss + aux_weight * aux
    return loss

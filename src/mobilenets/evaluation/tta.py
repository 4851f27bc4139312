"""Test-time augmentation: a classifier's answer averaged over mirrored and turned views.

A network trained on flips and quarter turns of its images (elpv's cells: ``random_flips_tilt``)
sees each of those views as an image of the same class, and its errors on them are partly
independent: the mean of its softmax over the views is a steadier answer than any one view.
The cost is one forward pass per view, so the views are a choice: ``flips`` (the image, its
mirror images left-right and top-bottom, and both: a half turn), four passes; ``dihedral``
(those and their transposes: every quarter turn and mirror of a square), eight. Use views the
run was trained on: a mirrored digit is not the same digit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mobilenets.errors import MobileNetError

View = Callable[[torch.Tensor], torch.Tensor]


FLIPS: list[View] = [
    lambda x: x,
    lambda x: x.flip(-1),
    lambda x: x.flip(-2),
    lambda x: x.flip(-2, -1),
]
TTA_VIEWS: dict[str, list[View]] = {
    "flips": FLIPS,
    "dihedral": FLIPS + [lambda x, f=f: f(x).transpose(-2, -1) for f in FLIPS],
}


class TestTimeAugmentation(nn.Module):
    """``model`` answering with the log of its mean softmax over the views named ``views``
    (:data:`TTA_VIEWS`): log-probabilities, so argmax and top-k read it as they read logits."""

    __test__ = False  # a class named Test* that pytest must not collect

    def __init__(self, model: nn.Module | Callable[[torch.Tensor], torch.Tensor], views: str):
        super().__init__()
        if views not in TTA_VIEWS:
            raise MobileNetError(
                f"unknown test-time views {views!r}; choose from {', '.join(TTA_VIEWS)}"
            )
        self.model, self.views, self.name = model, TTA_VIEWS[views], views

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.name == "dihedral" and images.shape[-1] != images.shape[-2]:
            raise MobileNetError(
                f"dihedral test-time views turn the image: it must be square, got "
                f"{images.shape[-2]}x{images.shape[-1]}"
            )
        probabilities = sum(self.model(view(images)).softmax(-1) for view in self.views)
        return (probabilities / len(self.views)).log()

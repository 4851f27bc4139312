"""The 1000 ImageNet-1k class names, in the order of every ImageNet classifier's outputs.

A model imported from torchvision or timm predicts indices; a user wants ``espresso``, not
``class_967``. The names are the short WordNet lemmas that PyTorch Hub and torchvision print
(``imagenet_classes.txt``, one per line; index 967 is ``espresso``, 285 ``Egyptian cat``). Two
names occur twice because ImageNet has two synsets of each: ``crane`` (the bird, 134, and the
machine, 517) and ``maillot`` (638, 639).
"""

from __future__ import annotations

import functools
from importlib.resources import files

IMAGENET_NUM_CLASSES = 1000


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The class names, index ``i`` naming output ``i``."""
    text = files("mobilenets.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def default_class_names(num_classes: int) -> list[str]:
    """Names for a classifier that came without any: ImageNet's for 1000 outputs (what every
    public 1000-class checkpoint predicts), else ``class_0``, ``class_1``, ..."""
    if num_classes == IMAGENET_NUM_CLASSES:
        return list(imagenet_class_names())
    return [f"class_{i}" for i in range(num_classes)]

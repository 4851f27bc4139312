"""Training: the loop (:mod:`~mobilenets.train.loop`), its recipe
(:mod:`~mobilenets.train.recipe`, torch-free: the command line is generated from it), the
optimizer and schedule (:mod:`~mobilenets.train.optim`), processes under ``torchrun``
(:mod:`~mobilenets.train.distributed`), devices and threads (:mod:`~mobilenets.train.devices`),
accuracy tallies (:mod:`~mobilenets.train.metrics`) and the console
(:mod:`~mobilenets.train.progress`).

``mobilenets.train.train`` and the loop's other names are read from
:mod:`~mobilenets.train.loop` on first use (PEP 562): building the command line imports
:mod:`~mobilenets.train.recipe` through this package, and must not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("mobilenets.train.loop"), name)

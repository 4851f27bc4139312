"""ImageNet weights from torchvision and timm checkpoint files, and our weights back to them.

- :mod:`~mobilenets.interop.checkpoint`: reading another library's file safely;
- :mod:`~mobilenets.interop.names`: our tensor names against torchvision's and timm's, as
  tables per block kind and family layout;
- :mod:`~mobilenets.interop.weights`: importing a checkpoint into a run, loading one into a
  model, exporting our weights in a source's names.

``mobilenets.interop.import_checkpoint`` and the other names of these modules are read from
them on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

_PARTS = ("weights", "names", "checkpoint")


def __getattr__(name: str) -> Any:
    if not name.startswith("__"):
        for part in _PARTS:
            module = importlib.import_module(f"{__name__}.{part}")
            if hasattr(module, name):
                return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

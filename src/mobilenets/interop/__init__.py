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

from mobilenets import names_from

__getattr__ = names_from(
    __name__, tuple(f"{__name__}.{part}" for part in ("weights", "names", "checkpoint"))
)

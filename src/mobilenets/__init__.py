"""mobilenets: MobileNets (V1-V4), EfficientNet and their dense heads on PyTorch, built on the
depthwise separable convolution: exact costs, training, int8 and deployment to four runtimes.

The public names below are imported on first use (PEP 562), not with the package: the
``mobilenets`` command imports this package too, and ``mobilenets --version`` must not wait
for torch.

Modules that moved into the packages by job (``mobilenets.cost`` is now
``mobilenets.analysis.cost``) still import from their old paths for one release: the first
import of an old path warns (``DeprecationWarning``) and gives a module whose names are those
of the new one.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from typing import TYPE_CHECKING, Any

from mobilenets.errors import MobileNetError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "ConvBNAct": "mobilenets.layers",
    "DepthwiseConv": "mobilenets.layers",
    "DepthwiseSeparableConv": "mobilenets.layers",
    "InvertedResidual": "mobilenets.layers",
    "PointwiseConv": "mobilenets.layers",
    "make_divisible": "mobilenets.layers",
    "MobileNetV1": "mobilenets.models",
    "MobileNetV2": "mobilenets.models",
    "create_model": "mobilenets.models",
    "list_models": "mobilenets.models",
}

if TYPE_CHECKING:
    from mobilenets.layers import (
        ConvBNAct,
        DepthwiseConv,
        DepthwiseSeparableConv,
        InvertedResidual,
        PointwiseConv,
        make_divisible,
    )
    from mobilenets.models import MobileNetV1, MobileNetV2, create_model, list_models


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def names_from(owner: str, homes: tuple[str, ...], dunders: bool = False) -> Callable[[str], Any]:
    """A PEP 562 ``__getattr__`` for ``owner`` that reads a name from the first of ``homes``
    (module paths, imported on first use) that has it. Without ``dunders``, names such as
    ``__wrapped__`` that tools probe for are refused without importing anything."""

    def getattr_(name: str) -> Any:
        if dunders or not name.startswith("__"):
            for home in homes:
                module = importlib.import_module(home)
                if hasattr(module, name):
                    return getattr(module, name)
        raise AttributeError(f"module {owner!r} has no attribute {name!r}")

    return getattr_


# old module path -> the modules that hold its names now (the first that has a name gives it)
MOVED: dict[str, tuple[str, ...]] = {
    "mobilenets.calibrate": tuple(
        f"mobilenets.latency.{m}"
        for m in ("calibration", "machine", "samples", "graphs", "profiling", "model")
    ),
    "mobilenets.choose": ("mobilenets.latency.choose",),
    "mobilenets.compare_conversion": ("mobilenets.analysis.compare_conversion",),
    "mobilenets.convert": ("mobilenets.analysis.convert",),
    "mobilenets.cost": ("mobilenets.analysis.cost",),
    "mobilenets.devices": ("mobilenets.train.devices",),
    "mobilenets.distributed": ("mobilenets.train.distributed",),
    "mobilenets.evaluate": ("mobilenets.evaluation.evaluate",),
    # the dense metrics moved below the trainer, which reports them every epoch
    "mobilenets.evaluation.detection_metrics": ("mobilenets.train.detection_metrics",),
    "mobilenets.evaluation.segmentation_metrics": ("mobilenets.train.segmentation_metrics",),
    "mobilenets.features": ("mobilenets.models.features",),
    "mobilenets.imagenet": ("mobilenets.data.imagenet",),
    "mobilenets.measure": (
        "mobilenets.analysis.timing",
        "mobilenets.analysis.memory",
        "mobilenets.latency.speedup",
    ),
    "mobilenets.measure.memory": ("mobilenets.analysis.memory",),
    "mobilenets.measure.speedup": ("mobilenets.latency.speedup",),
    "mobilenets.measure.timing": ("mobilenets.analysis.timing",),
    "mobilenets.metrics": ("mobilenets.train.metrics",),
    "mobilenets.optim": ("mobilenets.train.optim",),
    "mobilenets.predict": ("mobilenets.evaluation.predict",),
    "mobilenets.progress": ("mobilenets.train.progress",),
    "mobilenets.recipe": ("mobilenets.train.recipe",),
    **{
        f"mobilenets.deploy.{m}": (f"mobilenets.int8.{m}",)
        for m in (
            "adaround",
            "bias_correction",
            "equalize",
            "fake_quant",
            "fold",
            "layerwise",
            "prepare",
            "pt2e",
        )
    },
    "mobilenets.deploy.onnx_target": ("mobilenets.deploy.targets.onnx",),
    "mobilenets.deploy.onnx_export": ("mobilenets.deploy.targets.onnx", "mobilenets.deploy.compat"),
    **{
        f"mobilenets.deploy.{m}": (f"mobilenets.deploy.targets.{m}",)
        for m in ("executorch", "litert", "openvino")
    },
}


class _OldPaths:
    """Imports a moved module by its old path: one ``DeprecationWarning`` (the module is then
    cached in ``sys.modules``), and a module that reads each name from the new homes."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        return ModuleSpec(name, self, is_package=True) if name in MOVED else None

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        homes = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} is now {' and '.join(homes)}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = types.ModuleType(spec.name, f"Moved to {', '.join(homes)}.")
        # dunders too: ``from old.path import *`` reads the new home's ``__all__``
        module.__getattr__ = names_from(spec.name, homes, dunders=True)  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


sys.meta_path.insert(0, _OldPaths())


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ConvBNAct",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "MobileNetError",
    "MobileNetV1",
    "MobileNetV2",
    "PointwiseConv",
    "__version__",
    "create_model",
    "list_models",
    "make_divisible",
]

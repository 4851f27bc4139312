"""Deployment: fold BatchNorm, export to ONNX, ExecuTorch, LiteRT or OpenVINO, each checked in
the runtime that ships it, in fp32 or int8; time them all side by side.

The path from a run directory to a file a device runs::

    fold_batchnorm(model)               the same function with one layer fewer per ConvBNAct
    export.export(run_dir, "executorch", int8=True)
                                        RUN_DIR/model.int8.pte, checked in ExecuTorch; the
                                        check's numbers recorded in RUN_DIR/model.json
    export.export(run_dir, opset=20)    RUN_DIR/model.onnx in opset 20 (export_onnx: the same)
    export.export(run_dir, int8=True, per_channel=False)
                                        RUN_DIR/model.int8-pertensor.onnx (quantize_onnx)

One module per target format in ``targets`` (``onnx``, ``executorch``, ``litert``,
``openvino``), each a :class:`~mobilenets.deploy.target.Target` with its own runtime check;
Detectors and segmenters go the same way, their outputs compared as detections and masks
(``heads``). ``photos`` gives real images for models that record no data;
``mobilenets.deploy.bench`` times every runtime. The int8 algorithms an export applies are
:mod:`mobilenets.int8`.
The runtimes' packages are optional extras, imported only when their format is used.
"""

from mobilenets.deploy.compat import (
    ExportResult,
    QuantizeResult,
    export_model,
    export_onnx,
    quantize_onnx,
)
from mobilenets.deploy.quantize import quantize_model
from mobilenets.deploy.runtime import create_session, load_onnx, run_info_of
from mobilenets.int8.fold import count_batchnorms, fold_batchnorm, fold_conv_bn, unfold_into

__all__ = [
    "ExportResult",
    "QuantizeResult",
    "count_batchnorms",
    "create_session",
    "export_model",
    "export_onnx",
    "fold_batchnorm",
    "fold_conv_bn",
    "load_onnx",
    "quantize_model",
    "quantize_onnx",
    "run_info_of",
    "unfold_into",
]

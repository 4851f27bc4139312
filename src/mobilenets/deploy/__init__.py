"""Deployment: fold BatchNorm, export to ONNX (checked in onnxruntime), quantize to int8.

The path from a run directory to a file a server runs::

    fold_batchnorm(model)          the same function with one layer fewer per ConvBNAct
    export_onnx(run_dir)           RUN_DIR/model.onnx, fp32, BN folded, metadata inside
    quantize_onnx(run_dir, 256)    RUN_DIR/model.int8.onnx, static int8, top-1 before/after

``mobilenets.deploy.bench`` times all of them side by side.
"""

from mobilenets.deploy.fold import count_batchnorms, fold_batchnorm, fold_conv_bn
from mobilenets.deploy.onnx_export import ExportResult, export_model, export_onnx
from mobilenets.deploy.quantize import QuantizeResult, quantize_model, quantize_onnx
from mobilenets.deploy.runtime import create_session, load_onnx, run_info_of

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
]

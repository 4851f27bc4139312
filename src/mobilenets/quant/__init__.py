"""int8 that keeps its accuracy: per-layer sensitivity, mixed precision, quantization-aware
training.

    sensitivity_report(run_dir)     which layers lose accuracy (SQNR per layer, ranked)
"""

from mobilenets.int8.fake_quant import FakeQuantModel, Int8Scheme
from mobilenets.quant.sensitivity import SensitivityReport, sensitivity_report

__all__ = ["FakeQuantModel", "Int8Scheme", "SensitivityReport", "sensitivity_report"]

"""The latency model and what it is for.

- :mod:`~mobilenets.latency.model`: a per-layer roofline that predicts a network's latency
  from its cost report and a calibration;
- calibration, measured on this machine and runtime and cached:
  :mod:`~mobilenets.latency.machine` (where a calibration belongs, its cache),
  :mod:`~mobilenets.latency.samples` (the layers timed), :mod:`~mobilenets.latency.graphs`
  (one-layer ONNX graphs), :mod:`~mobilenets.latency.profiling` (timing them) and
  :mod:`~mobilenets.latency.calibration` (fitting the rooflines);
- :mod:`~mobilenets.latency.choose`: the most accurate width and resolution within a latency
  budget;
- :mod:`~mobilenets.latency.speedup`: standard against separable convolutions, measured
  speed-up against the predicted one.

``mobilenets.latency.predict_latency`` and the model's other names are read from
:mod:`~mobilenets.latency.model` on first use (PEP 562).
"""

from __future__ import annotations

from mobilenets import names_from

__getattr__ = names_from(__name__, ("mobilenets.latency.model",))

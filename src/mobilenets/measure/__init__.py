"""Measurements on this machine, to hold against the cost model's predictions.

- :mod:`~mobilenets.measure.timing`: one interleaved timing loop for everything timed
  (``mobilenets bench``, ``mobilenets speedup``, the benchmarks);
- :mod:`~mobilenets.measure.speedup`: standard against depthwise separable convolutions,
  measured speed-up against the analytic ratio;
- :mod:`~mobilenets.measure.memory`: the activation memory a real forward pass holds at its
  peak, against :func:`mobilenets.cost.profile_model`'s prediction.

Latency across deployment runtimes lives with the runtimes, in :mod:`mobilenets.deploy`.
"""

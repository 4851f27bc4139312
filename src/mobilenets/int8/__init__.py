"""The int8 algorithms: what turns a float network into one that keeps its accuracy in int8.

- :mod:`~mobilenets.int8.fold`: BatchNorm folded into the convolution before it (every export
  does it; int8 starts from it);
- :mod:`~mobilenets.int8.fake_quant`: the int8 simulator (per-tensor or per-channel weights,
  activation ranges from calibration images);
- :mod:`~mobilenets.int8.equalize`, :mod:`~mobilenets.int8.adaround`,
  :mod:`~mobilenets.int8.bias_correction`, composed by :mod:`~mobilenets.int8.prepare`: the
  float steps an int8 export takes before a runtime quantizes;
- :mod:`~mobilenets.int8.layerwise`: one layer at a time against its float output;
- :mod:`~mobilenets.int8.pt2e`: the PT2E quantizers the ExecuTorch and LiteRT targets share.

The workflows that use them (sensitivity, mixed precision, QAT) are :mod:`mobilenets.quant`.
"""

# Training images that int8 activation ranges are measured on, for every format and workflow
# (export --int8, quantize, sensitivity, quantize-mixed). This package's own module, free of
# torch, so that the command line reads it when it builds its help.
DEFAULT_CALIBRATION = 256

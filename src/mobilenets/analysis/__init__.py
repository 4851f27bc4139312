"""What a model costs and what the separable convolution saves, counted and measured.

- :mod:`~mobilenets.analysis.cost`: parameters, multiply-adds and activation memory per layer,
  counted from shapes;
- :mod:`~mobilenets.analysis.convert`: any network's standard convolutions replaced by
  depthwise separable ones (``to_separable``);
- :mod:`~mobilenets.analysis.compare_conversion`: a network and its separable conversion
  trained on the same data, side by side;
- :mod:`~mobilenets.analysis.timing`: one interleaved timing loop for everything timed;
- :mod:`~mobilenets.analysis.memory`: the activation memory a real forward pass holds at its
  peak, against the cost model's prediction.
"""

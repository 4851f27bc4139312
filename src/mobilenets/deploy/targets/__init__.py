"""One module per format, each a :class:`~mobilenets.deploy.target.Target` with its own
runtime check: :mod:`~mobilenets.deploy.targets.onnx` (onnxruntime),
:mod:`~mobilenets.deploy.targets.executorch`, :mod:`~mobilenets.deploy.targets.litert` and
:mod:`~mobilenets.deploy.targets.openvino`. A runtime's package is an optional extra, imported
only inside the target's writer and runner: every target module imports on a base install."""

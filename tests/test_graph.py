"""One graph everywhere: what torch.export, FX and the ONNX exporter capture is the model's own
graph of standard convolutions (issue: pointwise layers captured as movedim + linear)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import mobilenets


def _small(name: str) -> nn.Module:
    kwargs: dict[str, object] = {"num_classes": 10}
    if "small_input" in inspect.signature(mobilenets.models.get_model_factory(name)).parameters:
        kwargs["small_input"] = True
    return mobilenets.create_model(name, **kwargs).eval()


# EfficientNet-B1..B3 are B0's table scaled in depth and width: the same kinds of layer
SCALED = {"efficientnet_b1", "efficientnet_b2", "efficientnet_b3"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in mobilenets.list_models() if n not in SCALED])
def test_torch_export_captures_every_layer_as_a_convolution(name: str) -> None:
    model = _small(name)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    program = torch.export.export(model, (torch.randn(1, 3, 32, 32),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert sum("conv2d" in t for t in targets) == convs
    assert not any("movedim" in t for t in targets)
    assert sum("linear" in t for t in targets) == 1  # the classifier's fc, nothing else


def test_fx_symbolic_trace_sees_only_convolutions() -> None:
    model = _small("mobilenet_v3_small")
    graph = torch.fx.symbolic_trace(model)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    nodes = list(graph.graph.nodes)
    traced_convs = sum(
        (n.op == "call_function" and "conv2d" in str(n.target))
        or (n.op == "call_module" and isinstance(graph.get_submodule(n.target), nn.Conv2d))
        for n in nodes
    )
    assert traced_convs == convs
    assert not any("movedim" in str(n.target) for n in nodes)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(graph(x), model(x))

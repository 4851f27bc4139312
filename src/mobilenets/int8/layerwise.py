"""Walk a simulated int8 network one stage at a time, for corrections made layer by layer.

Bias correction and AdaRound change one layer at a time. Each change is measured with the
layers before it already quantized and already changed, and against the float network
unchanged. So both walks keep two copies of the network: the simulated one
(:class:`~mobilenets.int8.fake_quant.FakeQuantModel`), which the caller changes, and a float
reference. They also keep both inputs of the current stage, cached once for the calibration
images. A layer then costs a pass over its own stage, not over the whole network.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.int8.fake_quant import FakeQuantModel, Switchable


@dataclass
class Stage:
    """One stage of the walk: its simulated and float modules, and both of their inputs."""

    index: int
    module: nn.Module  # the simulated stage: the caller's changes apply here
    reference: nn.Module  # the same stage in float, as it was before the walk
    layers: list[Switchable]  # the simulated stage's layers, in forward order
    float_inputs: list[torch.Tensor]  # this stage's input in the float network
    quantized_inputs: list[torch.Tensor]  # ... in the simulated network, everything before on
    _model: FakeQuantModel
    _enabled: set[str] = field(default_factory=set)

    def quantize(self, layer: Switchable) -> None:
        """Turn ``layer`` on in the simulation (it stays on for the rest of the walk)."""
        self._enabled.add(layer.name)
        self._model.set(enabled=self._enabled)

    def float_layer(self, layer: Switchable) -> Switchable:
        """``layer``'s twin in the float reference."""
        return self.reference.get_submodule(_within(self, layer.name))


def _within(stage: Stage, name: str) -> str:
    """A layer's name inside its stage module (``features.3.expand.conv`` -> ``expand.conv``)."""
    prefix = "classifier." if name.startswith("classifier.") else f"features.{stage.index}."
    return name.removeprefix(prefix)


def _capture(module: nn.Module, layer: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """What ``layer`` (inside ``module``) reads when ``module`` runs on ``inputs``."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        for x in inputs:
            module(x)
    finally:
        handle.remove()
    return torch.cat(seen)


@torch.no_grad()
def layer_inputs(stage: Stage, layer: Switchable) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s input on every calibration image in the float network, and in the
    simulated one rounded to the activation's levels, as the int8 layer reads it."""
    x_f = _capture(stage.reference, stage.float_layer(layer), stage.float_inputs)
    x_q = _capture(stage.module, layer, stage.quantized_inputs)
    return x_f, layer.round(x_q)


@torch.no_grad()
def walk_stages(model: FakeQuantModel, batches: Sequence[torch.Tensor]) -> Iterator[Stage]:
    """Yield the stages of a calibrated ``model`` in order, with their inputs on ``batches``.

    While the caller holds a stage, the layers of earlier stages are quantized, and the
    layers of this stage are quantized only once the caller calls ``stage.quantize``. When
    the caller moves on, every layer of the stage is quantized, and the stage's new
    simulated output becomes the next stage's quantized input. A network the simulator runs
    whole (a detector, a segmenter) has no stages to walk: one line.
    """
    if not model.chained:
        raise MobileNetError(
            f"{type(model.model).__name__} has no .features blocks and .classifier to "
            "walk block by block (AdaRound and bias correction need them)"
        )
    model.eval()
    reference = copy.deepcopy(model)
    reference.set(enabled=())
    enabled: set[str] = set()
    model.set(enabled=enabled)
    float_inputs, quantized_inputs = list(batches), list(batches)
    for index, (module, float_module) in enumerate(
        zip(model.stages, reference.stages, strict=True)
    ):
        layers = [layer for layer in model if model.stage_of[layer.name] == index]
        stage = Stage(
            index, module, float_module, layers, float_inputs, quantized_inputs, model, enabled
        )
        yield stage
        enabled.update(layer.name for layer in layers)
        model.set(enabled=enabled)
        quantized_inputs = [module(x) for x in quantized_inputs]
        float_inputs = [float_module(x) for x in float_inputs]


@dataclass(frozen=True)
class Moments:
    """Per output channel: the mean and the standard deviation over images and positions."""

    mean: torch.Tensor
    std: torch.Tensor


@torch.no_grad()
def channel_means(
    module: nn.Module, inputs: Sequence[torch.Tensor], layers: Sequence[nn.Module]
) -> dict[str, Moments]:
    """The per-channel output moments of each of ``layers`` (Switchables inside ``module``)
    when ``module`` runs on ``inputs``, keyed by layer name; sums in float64."""
    sums: dict[str, list] = {}

    def tap(name: str):
        def hook(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
            dims = (0, 2, 3) if out.ndim == 4 else (0,)
            y = out.double()
            acc = sums.setdefault(name, [0.0, 0.0, 0])
            acc[0] = acc[0] + y.sum(dims)
            acc[1] = acc[1] + y.square().sum(dims)
            acc[2] += out.numel() // out.shape[1]

        return hook

    handles = [layer.register_forward_hook(tap(layer.name)) for layer in layers]
    try:
        for x in inputs:
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    moments = {}
    for name, (total, squares, count) in sums.items():
        mean = total / count
        var = (squares / count - mean.square()).clamp_min(0)
        moments[name] = Moments(mean.float(), var.sqrt().float())
    return moments

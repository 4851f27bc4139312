"""int8 simulated in float, one switch per layer: the instrument behind the sensitivity report.

A sensitivity report quantizes one layer at a time (and every layer but one), 2L + 1
configurations of the same network. The pt2e flow (``prepare_pt2e``/``convert_pt2e``) fixes
the quantized set when the graph is prepared, so each configuration would cost an export, a
prepare and a calibration; here each convolution and linear layer of the BN-folded model is
wrapped once, calibrated once, and turned on or off by a flag, so a configuration costs one
forward pass (and less: see :mod:`mobilenets.quant.sensitivity`).

"Quantizing a layer" means what an int8 runtime does to it: its weights are rounded to int8
(symmetric, per output channel or per tensor, as onnxruntime's and XNNPACK's quantizers do)
and the activation it reads is rounded to 256 levels between the calibrated minimum and
maximum (asymmetric uint8, as onnxruntime's U8S8; or symmetric int8). BatchNorm is folded
first, because the runtimes quantize the folded weights (Krishnamoorthi 2018, section 3.2).

A residual block adds two int8 tensors and rounds the sum, which both the next layer and the
next block's skip path then read; onnxruntime and XNNPACK round the projection's output
before the addition too. Those two roundings belong to no layer's input, so each residual
block carries a :class:`Rounding` for each, switched with its projection: a simulation
without them was 1.2 dB kinder to the logits than the runtimes (20.3 against 19.1 dB for
torchvision's V2, equalized and AdaRounded; the runtimes measured 18.7 to 19.4).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import fold_batchnorm
from mobilenets.layers import is_depthwise
from mobilenets.models.dense import TappedTrunk

# The kinds a figure colours: the roles of a layer in a MobileNet block.
KINDS = ("conv", "depthwise", "expand", "project", "pointwise", "se", "linear")
_TINY = 1e-12


@dataclass(frozen=True)
class Int8Scheme:
    """How weights and activations are rounded: the choices the calibration benchmark measures."""

    per_channel: bool = True  # one weight scale per output channel (else one per tensor)
    symmetric_activations: bool = False  # int8 around 0 (else uint8 between min and max)

    def describe(self) -> str:
        weights = "per channel" if self.per_channel else "per tensor"
        acts = "symmetric int8" if self.symmetric_activations else "asymmetric uint8"
        return f"weights int8 symmetric {weights}, activations {acts} (min-max)"


PER_CHANNEL = Int8Scheme()


def layer_kind(name: str, module: nn.Module) -> str:
    """The role of a quantizable layer, read from its class and its paper name."""
    if isinstance(module, nn.Linear):
        return "linear"
    parts = name.split(".")
    if is_depthwise(module):
        return "depthwise"
    for kind in ("expand", "project", "se"):
        if kind in parts:
            return kind
    if module.kernel_size == (1, 1):
        return "pointwise"
    return "conv"


def weight_scale(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The int8 step of ``weight``: its largest magnitude over 127, per output channel (shaped
    to broadcast against ``weight``) or for the whole tensor, as the runtimes compute it."""
    if per_channel:
        amax = weight.abs().amax(dim=tuple(range(1, weight.ndim)), keepdim=True)
    else:
        amax = weight.abs().max().reshape([1] * weight.ndim)
    return amax.clamp_min(_TINY) / 127


def fake_quant_weight(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``weight`` rounded to symmetric int8 ([-127, 127], zero at 0), one scale per output
    channel or one for the tensor."""
    scale = weight_scale(weight, per_channel)
    return (weight / scale).round().clamp(-127, 127) * scale


def activation_qparams(low: float, high: float, symmetric: bool) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) covering [low, high]; the range always holds 0, so zero
    padding and ReLU's zeros stay exact."""
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        return max(-low, high, _TINY) / 127, 0, -128, 127
    scale = max(high - low, _TINY) / 255
    return scale, round(-low / scale), 0, 255


class Observed(nn.Module):
    """An activation's calibrated range and its rounding to 8 bits within it."""

    def __init__(self, name: str, scheme: Int8Scheme) -> None:
        super().__init__()
        self.name = name
        self.scheme = scheme
        self.low, self.high = float("inf"), float("-inf")
        self.observing = self.enabled = False

    def observe(self, x: torch.Tensor) -> None:
        self.low = min(self.low, float(x.min()))
        self.high = max(self.high, float(x.max()))

    def round(self, x: torch.Tensor) -> torch.Tensor:
        if self.low > self.high:
            raise MobileNetError(f"{self.name} was never calibrated")
        scale, zero, qmin, qmax = activation_qparams(
            self.low, self.high, self.scheme.symmetric_activations
        )
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)


class Rounding(Observed):
    """A module's output rounded to 8 bits: a residual block's sum, or its projection's output
    before the sum. Attached as a forward hook; ``owner`` is the layer whose switch it follows."""

    def __init__(self, name: str, owner: str, scheme: Int8Scheme) -> None:
        super().__init__(name, scheme)
        self.owner = owner

    def hook(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(output)
        return self.round(output) if self.enabled else output


class Switchable(Observed):
    """A convolution or linear layer whose weights and input can be fake-quantized on demand.

    ``observing`` records the input's range (calibration); ``enabled`` quantizes; ``measuring``
    also runs the float layer on the same input and accumulates the output's signal and
    quantization-noise energy, the layer's own SQNR.
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, name: str, scheme: Int8Scheme) -> None:
        super().__init__(name, scheme)
        self.layer = layer
        self.kind = layer_kind(name, layer)
        self.register_buffer(
            "qweight", fake_quant_weight(layer.weight.detach(), scheme.per_channel)
        )
        self.measuring = False
        self.signal = self.noise = 0.0

    def _apply(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
        if not self.enabled:
            return self._apply(x, self.layer.weight)
        y = self._apply(self.round(x), self.qweight)
        if self.measuring:
            exact = self._apply(x, self.layer.weight)
            self.signal += float(exact.double().square().sum())
            self.noise += float((y - exact).double().square().sum())
        return y


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


class FakeQuantModel(nn.Module):
    """A BN-folded copy of ``model`` with every Conv2d and Linear made :class:`Switchable`,
    and the sums of its residual blocks (and their projections' outputs) :class:`Rounding`.

    ``stages`` are ``model.features``' blocks and then ``model.classifier``: a configuration
    that changes nothing before stage ``s`` can start there from a cached input. A network
    that is no such chain (a detector's or a segmenter's graph: maps tapped from the trunk,
    SSDLite's extra blocks and heads, LR-ASPP's two branches) is one stage, run whole for
    every configuration; its output must be one tensor (a detector through
    :class:`~mobilenets.deploy.heads.DetectionGraph`, as its program holds it).
    """

    def __init__(self, model: nn.Module, scheme: Int8Scheme | None = None) -> None:
        super().__init__()
        layers = [
            m for n, m in model.named_modules() if n and isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        if not layers:  # nothing to wrap inside it (a bare layer, a layer-free module)
            raise MobileNetError(
                f"{type(model).__name__} has no .features blocks, nor any convolution or linear "
                "layer inside it, to quantize"
            )
        self.model = fold_batchnorm(model)
        self.scheme = scheme = scheme or Int8Scheme()
        names = [n for n, m in self.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for name in names:
            parent, leaf = _parent(self.model, name)
            setattr(parent, leaf, Switchable(getattr(parent, leaf), name, scheme))
        self.layers: list[Switchable] = [self.model.get_submodule(n) for n in names]
        self.roundings = nn.ModuleList(_residual_roundings(self.model, scheme))
        self.stages, stage_names = _stages(self.model)
        self.chained = len(stage_names) > 1  # a classifier's blocks; else run whole
        self.stage_of = {
            layer.name: next(i for i, s in enumerate(stage_names) if layer.name.startswith(s))
            for layer in self.layers
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_from(0, x)

    def run_from(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        for module in self.stages[stage:]:
            x = module(x)
        return x

    def stage_inputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The input of every stage for ``x`` under the current switches, and the logits."""
        inputs = []
        for module in self.stages:
            inputs.append(x)
            x = module(x)
        return inputs, x

    @torch.inference_mode()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> int:
        """Record every layer's input range in float over ``batches``; returns the image count."""
        self.eval()
        self.set(enabled=())
        count = 0
        observed = [*self.layers, *self.roundings]
        for each in observed:
            each.observing = True
        try:
            for images in batches:
                self(images)
                count += len(images)
        finally:
            for each in observed:
                each.observing = False
        if count == 0:
            raise MobileNetError("no calibration images")
        return count

    def set(self, enabled: Iterable[str], measuring: Iterable[str] = ()) -> None:
        """Quantize exactly the layers named in ``enabled``; measure those in ``measuring``."""
        enabled, measuring = set(enabled), set(measuring)
        unknown = (enabled | measuring) - {layer.name for layer in self.layers}
        if unknown:
            raise MobileNetError(f"no quantizable layer named {', '.join(sorted(unknown))}")
        for layer in self.layers:
            layer.enabled = layer.name in enabled
            layer.measuring = layer.name in measuring
            layer.signal = layer.noise = 0.0
        for rounding in self.roundings:
            rounding.enabled = rounding.owner in enabled

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __iter__(self) -> Iterator[Switchable]:
        return iter(self.layers)


def _stages(model: nn.Module) -> tuple[list[nn.Module], list[str]]:
    """The modules ``model`` runs in sequence and the name prefix of each one's layers: a
    classifier's ``features`` blocks then its ``classifier``, any other network whole (a
    segmenter has both attributes, but its head reads maps tapped inside ``features``)."""
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    chain = isinstance(features, nn.Sequential) and isinstance(classifier, nn.Module)
    if chain and not isinstance(model, TappedTrunk):
        names = [f"features.{i}." for i in range(len(features))] + ["classifier."]
        return [*features, classifier], names
    return [model], [""]


def _residual_roundings(model: nn.Module, scheme: Int8Scheme) -> list[Rounding]:
    """A :class:`Rounding` hooked on the sum of every residual block of ``model`` (its
    ``Switchable`` layers already in place) and on its projection, both owned by the
    projection's layer (or the block's last layer, for a block without one)."""
    roundings = []
    for name, block in model.named_modules():
        if not getattr(block, "use_residual", False):
            continue
        inside = [n for n, m in block.named_modules() if isinstance(m, Switchable)]
        if not inside:
            continue
        project = getattr(block, "project", None)
        owner = f"{name}.{'project.conv' if 'project.conv' in inside else inside[-1]}"
        if project is not None:
            roundings.append(Rounding(f"{name}.project", owner, scheme))
            project.register_forward_hook(roundings[-1].hook)
        roundings.append(Rounding(f"{name}.sum", owner, scheme))
        block.register_forward_hook(roundings[-1].hook)
    return roundings


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``; infinite when nothing was lost."""
    if noise <= 0:
        return float("inf")
    return float(10 * torch.log10(torch.tensor(signal / noise, dtype=torch.float64)))

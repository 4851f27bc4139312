"""AdaRound: round each weight up or down as the layer's output needs, not to the nearest.

Rounding every weight to its nearest int8 level minimises each weight's own error. It does
not minimise the error of the layer's output, which is what the network passes on. A
depthwise filter has 9 weights per channel, so it has few weights to average the rounding
errors out. Nagel et al. 2020 ("Up or Down? Adaptive Rounding for Post-Training
Quantization") learn the choice per weight. Each weight gets a soft rounding variable ``h``
in [0, 1] (a rectified sigmoid). The variables are trained so that the layer's int8 output
``W_soft q(x_q)`` matches its float output ``W x``. A regulariser pushes each ``h`` to 0 or
1, more strongly as training goes on. ``x_q`` is the layer's input in the simulated int8
network, with the layers before it already rounded, so each layer also makes up for the
error that reaches it.

The result is a float model whose weights already lie on the int8 grid: each channel keeps
its largest weight, so the step ``max|w| / 127`` stays the one that every runtime's
per-channel (or per-tensor) symmetric quantizer computes, and the runtime rounds each weight
back to exactly the level chosen here. So onnxruntime, ExecuTorch, LiteRT and OpenVINO all
receive the learned rounding, none of them having such a step.

A layer keeps nearest rounding when the learned rounding reconstructs its calibration
outputs worse. The work is a few hundred small optimisation steps per layer. Each step uses
about the same number of output positions (``PIXELS_PER_STEP``), so a 112 x 112 layer
takes one image per step and a 7 x 7 layer takes many.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.int8.fake_quant import FakeQuantModel, Int8Scheme, Switchable, weight_scale
from mobilenets.int8.fold import count_batchnorms
from mobilenets.int8.layerwise import layer_inputs, walk_stages

DEFAULT_ITERATIONS = 500
PIXELS_PER_STEP = 8 * 28 * 28
REGULARIZATION = 0.01  # the rounding regulariser's weight (the paper's lambda)
LEARNING_RATE = 1e-2
WARMUP = 0.2  # share of the steps before the regulariser starts
BETA = (20.0, 2.0)  # the regulariser's exponent, annealed from sharp to flat
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch


@dataclass
class Rounding:
    """What AdaRound changed: layers, the share of weights rounded away from the nearest
    level, and the calibration reconstruction error against nearest rounding."""

    layers: int = 0  # layers given the learned rounding
    kept_nearest: int = 0  # layers where nearest rounding reconstructed better
    weights: int = 0
    flipped: int = 0  # weights rounded the other way than nearest
    error_nearest: float = 0.0  # summed squared output error over every layer
    error_learned: float = 0.0

    def describe(self) -> str:
        share = self.flipped / max(self.weights, 1)
        ratio = self.error_learned / max(self.error_nearest, 1e-30)
        return (
            f"adaptively rounded {self.layers} layers ({share:.1%} of weights away from "
            f"nearest, output error x{ratio:.2f}; {self.kept_nearest} kept nearest)"
        )


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)


def _initial(rest: torch.Tensor) -> torch.Tensor:
    """The variable whose rectified sigmoid is ``rest`` (the fraction above the floor)."""
    rest = rest.clamp(1e-4, 1 - 1e-4)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)


def _run(layer: nn.Conv2d | nn.Linear, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)


def _squared_error(
    layer: nn.Conv2d | nn.Linear,
    x_q: torch.Tensor,
    x_f: torch.Tensor,
    weight: torch.Tensor,
    step: int,
) -> float:
    """The summed squared difference between ``layer`` with ``weight`` on ``x_q`` and the
    float layer on ``x_f``: what the learned rounding must beat nearest rounding at."""
    total = 0.0
    for i in range(0, len(x_f), step):
        target = _run(layer, x_f[i : i + step], layer.weight)
        total += float((_run(layer, x_q[i : i + step], weight) - target).double().square().sum())
    return total


def _round_layer(
    layer: Switchable,
    x_f: torch.Tensor,
    x_q: torch.Tensor,
    iterations: int,
    generator: torch.Generator,
    done: Rounding,
) -> None:
    """Learn ``layer``'s rounding from its float input ``x_f`` and simulated input ``x_q``
    (already rounded to the activation's levels) and put it in ``layer.qweight``."""
    conv = layer.layer
    w = conv.weight.detach()
    scale = weight_scale(w, layer.scheme.per_channel)
    levels = w / scale
    nearest = levels.round().clamp(-127, 127)
    fixed = nearest.abs() == 127  # the largest weight of each scale keeps its level
    floor = levels.floor()
    v = _initial(levels - floor).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
    positions = x_f[0, 0].numel() if x_f.ndim == 4 else 1
    per_step = int(min(len(x_f), max(1, PIXELS_PER_STEP // positions)))
    warmup = int(WARMUP * iterations)
    for step in range(iterations):
        pick = torch.randint(0, len(x_f), (per_step,), generator=generator)
        with torch.no_grad():
            target = _run(conv, x_f[pick], w)
        h = _rectified_sigmoid(v)
        soft = torch.where(fixed, nearest, (floor + h).clamp(-127, 127)) * scale
        loss = (_run(conv, x_q[pick], soft) - target).square().sum(1).mean()
        if step >= warmup:
            beta = BETA[0] + (BETA[1] - BETA[0]) * (step - warmup) / max(iterations - warmup, 1)
            loss = loss + REGULARIZATION * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = torch.where(fixed, nearest, (floor + (v >= 0).float()).clamp(-127, 127))
        # h >= 0.5 exactly where the sigmoid's argument is >= 0 (the stretch is symmetric)
        errors = [_squared_error(conv, x_q, x_f, q * scale, per_step) for q in (nearest, learned)]
        better = errors[1] < errors[0]
        layer.qweight.copy_((learned if better else nearest) * scale)
        done.weights += w.numel()
        done.error_nearest += errors[0]
        done.error_learned += min(errors)
        if better:
            done.layers += 1
            done.flipped += int((learned != nearest).sum())
        else:
            done.kept_nearest += 1


def adaround(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    iterations: int = DEFAULT_ITERATIONS,
    scheme: Int8Scheme | None = None,
    seed: int = 0,
) -> tuple[nn.Module, Rounding]:
    """A copy of the BN-folded ``model`` with every convolution's and linear layer's weights
    on the int8 grid, rounded to reconstruct each layer's output on ``batches`` (the
    calibration images), and what changed. Biases are those of ``model``."""
    if count_batchnorms(model):
        raise MobileNetError("fold BatchNorm before rounding adaptively (fold_batchnorm)")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise MobileNetError(f"AdaRound needs a positive number of steps, got {iterations!r}")
    batches = list(batches)
    fq = FakeQuantModel(model, scheme)
    fq.calibrate(batches)
    generator = torch.Generator().manual_seed(seed)
    done = Rounding()
    for stage in walk_stages(fq, batches):
        for layer in stage.layers:
            x_f, x_q = layer_inputs(stage, layer)
            _round_layer(layer, x_f, x_q, iterations, generator, done)
            stage.quantize(layer)
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for layer in fq:
            out.get_submodule(layer.name).weight.copy_(layer.qweight)
    return out, done

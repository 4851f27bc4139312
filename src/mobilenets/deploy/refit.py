"""Refit each layer to the int8 input it will really read: least squares, layer by layer.

An int8 runtime feeds each layer an input rounded to 256 levels, after every layer before it
has rounded too. The float weights were trained for the exact input, so the layer passes the
rounding error on, and the error grows along the network. Given both inputs on the
calibration images, the float one ``x_f`` and the simulated int8 one ``x_q``, a linear layer
can instead be refitted so that ``W' x_q + b'`` reproduces ``W x_f + b`` as closely as a
linear map can: ordinary least squares over every output position, one small problem per
group (a depthwise filter has 9 taps and a bias). It is the layer-wise calibration of
Hubara et al. 2021 ("Accurate Post Training Quantization With Small Calibration Sets", their
AdaQuant), solved in closed form because each problem is linear. Bias correction is the
special case that refits the bias alone.

A ridge term pulls the weights back towards the trained ones, in proportion to the input's
energy. The calibration crops come from few photos, and a free fit of a 960-input layer on
them would learn those photos.

The refitted model is a float model. Equalization comes before it and AdaRound after it
(:mod:`mobilenets.deploy.prepare`), and every runtime's own quantizer then rounds it. A layer
keeps its weights when the refit, rounded to int8, reproduces the calibration outputs worse.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.deploy.fake_quant import FakeQuantModel, Int8Scheme, Switchable, fake_quant_weight
from mobilenets.deploy.fold import count_batchnorms
from mobilenets.deploy.layerwise import layer_inputs, walk_stages
from mobilenets.errors import MobileNetError

DEFAULT_RIDGE = 0.01  # the pull towards the trained weights, relative to the input's energy
ROWS_PER_CHUNK = 65536  # output positions per accumulation step (bounds the patches' memory)


@dataclass
class Refit:
    """Layers refitted, and the summed squared calibration output error of the int8 layers on
    their int8 inputs, before and after."""

    layers: int = 0
    kept: int = 0  # layers whose refit reproduced their outputs worse, left as they were
    error_before: float = 0.0
    error_after: float = 0.0

    def describe(self) -> str:
        ratio = self.error_after / max(self.error_before, 1e-30)
        return (
            f"refitted {self.layers} layers to their int8 inputs (output error x{ratio:.2f}; "
            f"{self.kept} kept)"
        )


def _patches(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """What each output position of ``layer`` reads: ``[positions, groups, inputs + 1]``,
    the last input a constant 1 for the bias."""
    if isinstance(layer, nn.Linear):
        rows = x.reshape(len(x), 1, -1)
    else:
        cols = F.unfold(
            x,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,
            stride=layer.stride,
        )
        n, width, positions = cols.shape
        rows = cols.transpose(1, 2).reshape(n * positions, layer.groups, width // layer.groups)
    return torch.cat([rows, rows.new_ones(len(rows), rows.shape[1], 1)], 2).double()


def _grouped(weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """``weight`` and ``bias`` as ``[groups, inputs + 1, outputs per group]``."""
    w = torch.cat([weight.reshape(len(weight), -1), bias[:, None]], 1).double()
    return w.reshape(groups, len(weight) // groups, -1).transpose(1, 2)


@dataclass
class _Normal:
    """The normal equations of one layer's fit: ``X'X``, ``X'Y`` and ``Y'Y`` per group."""

    xx: torch.Tensor
    xy: torch.Tensor
    yy: torch.Tensor

    def error(self, w: torch.Tensor) -> float:
        """``sum ||X w - Y||^2`` for grouped weights ``w``."""
        quad = (w * (self.xx @ w)).sum()
        return float(quad - 2 * (w * self.xy).sum() + self.yy.sum())


def _accumulate(layer: nn.Conv2d | nn.Linear, x_q: torch.Tensor, x_f: torch.Tensor) -> _Normal:
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    target = _grouped(layer.weight.detach(), layer.bias.detach(), groups)
    xx = xy = yy = None
    images = max(1, ROWS_PER_CHUNK // max(1, _positions(layer, x_f)))
    for i in range(0, len(x_f), images):
        pq, pf = _patches(layer, x_q[i : i + images]), _patches(layer, x_f[i : i + images])
        pq, pf = pq.transpose(0, 1), pf.transpose(0, 1)  # [groups, rows, inputs + 1]
        y = pf @ target  # the float layer's output on the float input
        terms = (pq.transpose(1, 2) @ pq, pq.transpose(1, 2) @ y, y.square().sum(1))
        xx, xy, yy = terms if xx is None else (xx + terms[0], xy + terms[1], yy + terms[2])
    return _Normal(xx, xy, yy)


def _positions(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> int:
    if isinstance(layer, nn.Linear):
        return 1
    return layer(x[:1]).shape[-2:].numel()


def check_ridge(ridge: object) -> None:
    """Refuse a ridge that is not a positive number, in one line."""
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge > 0:
        raise MobileNetError(f"the refit needs a positive ridge, got {ridge!r}")


@dataclass
class Fit:
    """A layer's refitted weights and bias, and the normal equations they solve."""

    weight: torch.Tensor
    bias: torch.Tensor
    normal: _Normal


@torch.no_grad()
def fit(layer: nn.Conv2d | nn.Linear, x_q: torch.Tensor, x_f: torch.Tensor, ridge: float) -> Fit:
    """The weights and bias with which ``layer`` on ``x_q`` comes closest to ``layer`` on
    ``x_f``, pulled towards its own by ``ridge`` times the input's energy."""
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    normal = _accumulate(layer, x_q, x_f)
    trained = _grouped(layer.weight.detach(), layer.bias.detach(), groups)
    energy = normal.xx.diagonal(dim1=1, dim2=2).mean(1)[:, None, None]
    eye = torch.eye(normal.xx.shape[1], dtype=torch.float64)
    pull = ridge * energy
    fitted = torch.linalg.solve(normal.xx + pull * eye, normal.xy + pull * trained)
    shape = layer.weight.shape
    weight = fitted.transpose(1, 2).reshape(shape[0], -1)
    return Fit(weight[:, :-1].reshape(shape).float(), weight[:, -1].float(), normal)


def _refit_layer(
    layer: Switchable, x_q: torch.Tensor, x_f: torch.Tensor, ridge: float, done: Refit
) -> None:
    """Refit ``layer``'s float weights and bias in place, and its int8 weights with them."""
    conv = layer.layer
    groups = conv.groups if isinstance(conv, nn.Conv2d) else 1
    refitted = fit(conv, x_q, x_f, ridge)
    per_channel = layer.scheme.per_channel

    def rounded(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _grouped(fake_quant_weight(w, per_channel), b, groups)

    before = refitted.normal.error(rounded(conv.weight.detach(), conv.bias.detach()))
    after = refitted.normal.error(rounded(refitted.weight, refitted.bias))
    done.error_before += before
    if after >= before:
        done.kept += 1
        done.error_after += before
        return
    done.layers += 1
    done.error_after += after
    conv.weight.copy_(refitted.weight)
    conv.bias.copy_(refitted.bias)
    layer.qweight.copy_(fake_quant_weight(refitted.weight, per_channel))


@torch.no_grad()
def refit(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    ridge: float = DEFAULT_RIDGE,
    scheme: Int8Scheme | None = None,
) -> tuple[nn.Module, Refit]:
    """A copy of the BN-folded ``model`` with each convolution and linear layer refitted, in
    network order, to reproduce its float output from its simulated int8 input on
    ``batches`` (the calibration images), and what changed."""
    if count_batchnorms(model):
        raise MobileNetError("fold BatchNorm before refitting (fold_batchnorm)")
    check_ridge(ridge)
    batches = list(batches)
    fq = FakeQuantModel(model, scheme)
    fq.calibrate(batches)
    done = Refit()
    for stage in walk_stages(fq, batches):
        for layer in stage.layers:
            x_f, x_q = layer_inputs(stage, layer)
            _refit_layer(layer, x_q, x_f, float(ridge), done)
            stage.quantize(layer)
    out = copy.deepcopy(model).eval()
    for layer in fq:
        target = out.get_submodule(layer.name)
        target.weight.copy_(layer.layer.weight)
        target.bias.copy_(layer.layer.bias)
    return out, done

"""Bias correction: give each layer's int8 output the mean of its float output.

Rounding a layer's weights to int8 moves the mean of its output: the error ``(W_q - W) x``
does not average out when ``x`` has a non-zero mean, and after ReLU or ReLU6 every input has
one. MobileNets suffer most, because a depthwise filter has only 9 weights per channel to
average its rounding over. The shift passes to every layer after it, and so it grows along
the network. Nagel et al. 2019 ("Data-Free Quantization", section 4.2) correct it by
subtracting the expected shift from the layer's bias; OpenVINO's NNCF does it when it
quantizes. Here it is done to the float model, so that every runtime's quantizer receives
the corrected biases, including the quantizers that have no such step (onnxruntime, XNNPACK
for ExecuTorch and LiteRT).

The correction is empirical and sequential, as in NNCF's full bias correction: the network
is simulated in int8 (:mod:`mobilenets.int8.fake_quant`) one stage at a time, and each layer's
bias is corrected for the shift measured on the calibration images. When the shift is
measured, every layer before the layer is quantized and already corrected. So each
correction also removes the shift that the layers before it left uncorrected, such as the
shift that activation rounding causes. The weights do not change. A runtime rounds the new
biases to int32 (at the scale of input times weight), so the correction reaches it whole.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.int8.fake_quant import FakeQuantModel, Int8Scheme
from mobilenets.int8.fold import count_batchnorms
from mobilenets.int8.layerwise import channel_means, walk_stages


@dataclass
class BiasCorrection:
    """What was corrected: how many layers, and the largest shift relative to its output."""

    layers: int = 0
    largest_shift: float = 0.0  # max over layers of max |shift_c| / std of the layer's output

    def describe(self) -> str:
        return (
            f"bias-corrected {self.layers} layers (largest shift {self.largest_shift:.2f} "
            f"output standard deviations)"
        )


@torch.no_grad()
def bias_correct(
    model: nn.Module, batches: Iterable[torch.Tensor], scheme: Int8Scheme | None = None
) -> tuple[nn.Module, BiasCorrection]:
    """A copy of the BN-folded ``model`` whose biases cancel the int8 shift of each layer's
    output mean on ``batches`` (the calibration images), and what was corrected.

    The weights are those of ``model``; only biases change (a layer without one gets one).
    """
    if count_batchnorms(model):
        raise MobileNetError("fold BatchNorm before correcting biases (fold_batchnorm)")
    batches = list(batches)
    fq = FakeQuantModel(model, scheme)
    fq.calibrate(batches)
    for layer in fq:
        conv = layer.layer
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.weight.shape[0]))
    done = BiasCorrection()
    for stage in walk_stages(fq, batches):
        twins = [stage.float_layer(layer) for layer in stage.layers]
        want = channel_means(stage.reference, stage.float_inputs, twins)
        for layer in stage.layers:
            stage.quantize(layer)
            got = channel_means(stage.module, stage.quantized_inputs, [layer])[layer.name]
            shift = got.mean - want[layer.name].mean
            layer.layer.bias.sub_(shift.to(layer.layer.bias.dtype))
            done.layers += 1
            spread = want[layer.name].std.clamp_min(1e-12)
            done.largest_shift = max(done.largest_shift, float((shift.abs() / spread).max()))
    return _with_biases(model, fq), done


def _with_biases(model: nn.Module, fq: FakeQuantModel) -> nn.Module:
    """A copy of ``model`` carrying the biases of the simulated copy's layers."""
    out = copy.deepcopy(model).eval()
    for layer in fq:
        out.get_submodule(layer.name).bias = nn.Parameter(layer.layer.bias.detach().clone())
    return out

"""Scale channels before int8 so that each per-tensor activation range is shared fairly.

An int8 runtime gives every activation tensor one range (per-tensor, min-max calibrated),
while the weights get one per output channel. A channel whose values stay far below the
tensor's largest is left a few of the 256 levels: after a ReLU6 some of MobileNetV2's
expansion channels never pass 0.5 while others reach the clip at 6, and the residual
stream between linear bottlenecks carries a few channels ten times the size of the rest.
Both can be rescaled in float without changing what the network computes, in the spirit of
cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"), but driven by the
activations' calibrated ranges:

- **Into a depthwise layer.** A convolution followed by ReLU or ReLU6 and then a depthwise
  layer: multiply output channel ``c`` (its filter and bias) by ``s_c >= 1`` and divide the
  depthwise filter of channel ``c`` by ``s_c``. ReLU commutes with a positive scale; ReLU6
  does while ``s_c * max_c <= 6``, so ``s_c`` brings the channel's calibrated maximum only to
  ``6 / margin`` (a channel that reaches the clip keeps ``s_c = 1``), and no channel's
  range *before* the activation past the widest one's: XNNPACK's own quantizer marking
  (ExecuTorch, LiteRT) does not fuse ReLU6 and rounds the convolution's output too, and
  scaled past that its range grew and the logits lost 5 dB in both. Our PT2E flow now
  fuses it (:mod:`mobilenets.int8.pt2e`); lifting the bound then scaled 12 more channels
  and moved each runtime's logit SQNR by 0.2 dB at most. Both layers are quantized per
  output channel, so their weights lose nothing; the activation between them
  gains up to ``log2(s_c)`` bits in channel ``c``. Into a pointwise layer the division would
  cost that layer's per-channel weight scales the same bits (measured: worse), so those
  pairs are left alone.
- **Along a residual stream.** The projections of a stage's blocks are linear and their sum
  is read by 1x1 (or depthwise) layers only, so dividing stream channel ``c`` by ``s_c`` in
  every writer and multiplying it back in every reader is exact. ``s_c`` is chosen as
  SmoothQuant does (Xiao et al. 2023), ``max|x_c|^alpha / max|w_c|^(1 - alpha)``, trading
  the stream's range against the readers' weight ranges. ``alpha = 0.5``, SmoothQuant's
  own default: against 0.25, followed by AdaRound, it gained 0.5 to 0.9 dB of logit SQNR in
  each of the four runtimes on torchvision's V2 (benchmarks/results/
  deploy_int8_quality_alpha.md). AdaRound recovers much of what the readers' weights lose.

A detection or segmentation head reads some trunk maps itself (an expansion's output, a
stage's residual stream); no layer of the head divides a rescaled map back, so the pairs and
streams that write those maps are left as they are.

The model must be BN-folded first (:func:`~mobilenets.int8.fold.fold_batchnorm`): its
convolutions then carry the biases that are scaled. Outputs stay equal to float rounding
on the calibration images, and beyond them wherever no channel passes ``margin`` times its
calibrated maximum.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.int8.fold import count_batchnorms
from mobilenets.layers import ConvBNAct, DepthwiseSeparableConv, InvertedResidual, is_depthwise
from mobilenets.models.dense import TappedTrunk

DEFAULT_MARGIN = 2.0  # headroom left above a ReLU6 channel's calibrated maximum
DEFAULT_ALPHA = 0.5  # stream: how much of a channel's range moves into its readers' weights
MAX_SCALE = 100.0
_TINY = 1e-6


@dataclass
class Equalization:
    """What was rescaled: pairs into a depthwise layer, residual streams, and their channels."""

    pairs: int = 0
    streams: int = 0
    channels: int = 0
    largest_scale: float = 1.0

    def describe(self) -> str:
        return (
            f"equalized {self.channels} channels: {self.pairs} layer pairs into a depthwise "
            f"layer, {self.streams} residual streams (largest scale {self.largest_scale:.1f})"
        )


@dataclass
class _Pair:
    producer: ConvBNAct  # its convolution scales output channels up
    consumer: nn.Conv2d  # a depthwise convolution: divides the same channels back


@dataclass
class _Stream:
    writers: list[nn.Conv2d]  # linear projections whose outputs are summed into the stream
    readers: list[nn.Conv2d]  # every layer that reads it
    taps: list[nn.Module]  # modules whose outputs are the stream (or a writer's share of it)


def _clip(module: ConvBNAct) -> float | None:
    """The activation's upper clip if it commutes with a positive scale below it (ReLU: no
    clip, ``inf``; ReLU6: 6), else ``None``."""
    act = getattr(module, "act", None)
    if type(act) is nn.ReLU:
        return float("inf")
    if type(act) is nn.ReLU6:
        return 6.0
    return None


def _first_conv(block: nn.Module) -> nn.Conv2d | None:
    """The convolution that reads a block's input, where that is the only thing that does
    (with no residual around it); ``None`` for blocks this module does not know."""
    if isinstance(block, InvertedResidual) and not block.use_residual:
        return (block.expand or block.depthwise).conv
    if isinstance(block, DepthwiseSeparableConv):
        return block.depthwise.conv
    if isinstance(block, ConvBNAct) and isinstance(block.conv, nn.Conv2d):
        return block.conv
    return None


def _pairs(features: nn.Sequential) -> list[_Pair]:
    """Every convolution -> ReLU/ReLU6 -> depthwise convolution in ``features``."""
    pairs = []
    blocks = list(features)
    for i, block in enumerate(blocks):
        if isinstance(block, InvertedResidual) and block.expand is not None:
            pairs.append(_Pair(block.expand, block.depthwise.conv))
        last = block.pointwise if isinstance(block, DepthwiseSeparableConv) else block
        if isinstance(last, ConvBNAct) and i + 1 < len(blocks):
            reader = _first_conv(blocks[i + 1])
            if reader is not None and is_depthwise(reader):
                pairs.append(_Pair(last, reader))
    return [p for p in pairs if _clip(p.producer) is not None and p.producer.conv.bias is not None]


def _streams(features: nn.Sequential) -> list[_Stream]:
    """The residual streams of ``features``: a bottleneck that starts a stage, the residual
    bottlenecks after it, and the layer that reads the stage's output, when that layer is
    one this module knows (a block of another kind ends the stream unscaled)."""
    streams: list[_Stream] = []
    current: _Stream | None = None
    for block in features:
        if isinstance(block, InvertedResidual) and block.use_residual:
            if current is not None:
                current.readers.append((block.expand or block.depthwise).conv)
                current.writers.append(block.project.conv)
                current.taps += [block.project, block]  # its share, and the sum
            continue
        reader = _first_conv(block)
        if current is not None and reader is not None:
            current.readers.append(reader)
            streams.append(current)
        current = None
        if isinstance(block, InvertedResidual):  # not residual: a new stage starts here
            current = _Stream([block.project.conv], [], [block.project])
    return [s for s in streams if all(w.bias is not None for w in s.writers)]


def _tapped(model: nn.Module) -> set[int]:
    """The ids of the modules whose outputs a detection or segmentation head reads
    (:class:`~mobilenets.models.dense.TappedTrunk`): a rescaling is exact only where every
    reader of a map divides it back, and a head's layers are not among the readers this
    module knows, so no pair or stream that writes a tapped map is rescaled."""
    if not isinstance(model, TappedTrunk):
        return set()
    found = set()
    for tap in model.taps:
        block = model.features[int(tap.layer)]
        if tap.expansion:
            found.add(id(block.expand))
        else:  # the block's output: it, or the layer that writes its last activation
            for part in (block, getattr(block, "pointwise", None), getattr(block, "project", None)):
                if part is not None:
                    found.add(id(part))
    return found


@torch.no_grad()
def _channel_max(modules: list[nn.Module], model: nn.Module, batches: list[torch.Tensor]):
    """Each module's per-channel maximum of ``|output|`` over ``batches``."""
    found: dict[int, torch.Tensor] = {}

    def hook(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        amax = out.detach().abs().amax(dim=(0, 2, 3))
        key = id(module)
        found[key] = amax if key not in found else torch.maximum(found[key], amax)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        for images in batches:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return [found[id(m)] for m in modules]


def _reader_columns(readers: list[nn.Conv2d]) -> torch.Tensor:
    """Per input channel, the largest weight any reader gives it, relative to the scale of
    the output channel it belongs to (what per-channel quantization resolves it against)."""
    columns = []
    for conv in readers:
        w = conv.weight.detach().abs()
        if is_depthwise(conv):
            columns.append(torch.ones(w.shape[0]))  # per-channel scales absorb it exactly
        else:
            rows = w.flatten(1).amax(1).clamp_min(_TINY).view(-1, 1, 1, 1)
            columns.append((w / rows).amax(dim=(0, 2, 3)))
    return torch.stack(columns).amax(0)


def _scale_out(conv: nn.Conv2d, s: torch.Tensor) -> None:
    conv.weight.mul_(s.view(-1, 1, 1, 1))
    conv.bias.mul_(s)


def _scale_in(conv: nn.Conv2d, s: torch.Tensor) -> None:
    """Multiply what ``conv`` does with input channel ``c`` by ``s_c``."""
    if is_depthwise(conv):
        conv.weight.mul_(s.view(-1, 1, 1, 1))
    else:
        conv.weight.mul_(s.view(1, -1, 1, 1))


def can_equalize(model: nn.Module) -> bool:
    """Whether :func:`equalize` takes ``model``: BatchNorm folded, its blocks in ``.features``."""
    features = getattr(model, "features", None)
    return isinstance(features, nn.Sequential) and not count_batchnorms(model)


@torch.no_grad()
def equalize(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[nn.Module, Equalization]:
    """A rescaled copy of the BN-folded ``model`` (see the module docstring), with the ranges
    measured on ``batches`` (the int8 calibration images), and what was rescaled."""
    if not margin >= 1:
        raise MobileNetError(f"the equalization margin must be at least 1, got {margin}")
    if not 0 <= alpha <= 1:
        raise MobileNetError(f"the equalization alpha must be in [0, 1], got {alpha}")
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise MobileNetError(f"{type(model).__name__} has no .features blocks to equalize")
    if count_batchnorms(model):
        raise MobileNetError("fold BatchNorm before equalizing (fold_batchnorm)")
    model = copy.deepcopy(model).eval()
    features = model.features
    batches = list(batches)
    done = Equalization()
    tapped = _tapped(model)
    pairs = [p for p in _pairs(features) if id(p.producer) not in tapped]
    streams = [s for s in _streams(features) if not tapped & set(map(id, s.taps))]
    # one pass measures every range: each rescaling below is exact on these images, so it
    # leaves the ranges the others need as they were
    taps = [p.producer for p in pairs] + [p.producer.conv for p in pairs]
    taps += [t for s in streams for t in s.taps]
    maxima = dict(zip(map(id, taps), _channel_max(taps, model, batches), strict=True))
    for pair in pairs:
        top, before = maxima[id(pair.producer)], maxima[id(pair.producer.conv)]
        clip = _clip(pair.producer)
        ceiling = top.max() if clip == float("inf") else torch.tensor(clip / margin)
        # nor past the widest channel before the activation: a quantizer that rounds the
        # convolution's output there (XNNPACK's own marking, unfused) keeps its range
        s = torch.minimum(ceiling / top.clamp_min(_TINY), before.max() / before.clamp_min(_TINY))
        s = s.clamp(1.0, MAX_SCALE)
        _scale_out(pair.producer.conv, s)
        _scale_in(pair.consumer, 1 / s)
        done.pairs += 1
        done.channels += int((s > 1).sum())
        done.largest_scale = max(done.largest_scale, float(s.max()))
    for stream in streams:
        x = torch.stack([maxima[id(t)] for t in stream.taps]).amax(0).clamp_min(_TINY)
        w = _reader_columns(stream.readers).clamp_min(_TINY)
        s = x**alpha / w ** (1 - alpha)
        s = (s / s.log().mean().exp()).clamp(1 / MAX_SCALE, MAX_SCALE)  # only ratios matter
        for conv in stream.writers:
            _scale_out(conv, 1 / s)
        for conv in stream.readers:
            _scale_in(conv, s)
        done.streams += 1
        done.channels += len(s)
        done.largest_scale = max(done.largest_scale, float(s.max()), float(1 / s.min()))
    return model, done

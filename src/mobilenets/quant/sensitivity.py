"""Which layers lose accuracy in int8: per-layer SQNR, one layer quantized and all but one.

For every quantizable layer (each convolution and the classifier's linear layer) three numbers,
all signal-to-quantization-noise ratios ``10 log10(sum z^2 / sum (z - z_q)^2)`` in dB:

- **output**: the layer's own output when only it is quantized (its input is exact), the
  number NNCF and AI Edge Quantizer's debuggers show per layer;
- **alone**: the logits when only this layer is quantized: how much damage it does by itself;
- **all but**: the logits when every layer but this one is quantized: how much keeping this
  one layer in float buys back, the question mixed precision asks.

With top-1 agreement with the float model beside each. Layers are ranked by the "alone" logit
SQNR, lowest first, and :mod:`mobilenets.quant.mixed` keeps layers in float in that order:
quantization noise of separate layers roughly adds at the logits, so the layer that alone
adds the most noise is the one whose float copy removes the most. "All but" says the same
with less resolution: with every other layer quantized, one layer's share moves the logit
SQNR by tenths of a dB, within the spread of the images.

The work is 2L + 2 forward passes over the evaluation images; each pass starts at the block
that holds the switched layer, from that block's input cached once with nothing quantized
("alone") and once with everything quantized ("all but"), so a layer near the classifier
costs a fraction of a pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from mobilenets.deploy.heads import comparison, graph_of
from mobilenets.deploy.images import calibration_inputs, held_out_inputs
from mobilenets.deploy.target import Compare, agreement
from mobilenets.int8 import DEFAULT_CALIBRATION
from mobilenets.int8.fake_quant import KINDS, PER_CHANNEL, FakeQuantModel, Int8Scheme, sqnr_db
from mobilenets.plots import Figure
from mobilenets.runs import load_run

DEFAULT_IMAGES = 32
OnStep = Callable[[], object] | None


@dataclass
class LayerSensitivity:
    """One layer's three SQNRs (dB) and the top-1 agreement with float of both logit cases."""

    name: str
    kind: str
    position: int  # order along the network, from the input
    output_sqnr_db: float
    alone_sqnr_db: float
    alone_agreement: float
    all_but_sqnr_db: float
    all_but_agreement: float


@dataclass
class SensitivityReport:
    """The per-layer sensitivities of one model under one int8 scheme."""

    model: str
    scheme: str
    images: int
    images_from: str
    calibration: int
    calibration_from: str
    all_sqnr_db: float  # every layer quantized
    all_agreement: float
    seconds: float
    layers: list[LayerSensitivity] = field(default_factory=list)

    def ranked(self) -> list[LayerSensitivity]:
        """Most sensitive first: the lowest logit SQNR with only that layer quantized."""
        return sorted(self.layers, key=rank_key)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["layers"] = [asdict(s) for s in self.ranked()]
        return data


def _logits(model: FakeQuantModel, stage: int, inputs: Sequence[list[torch.Tensor]]) -> np.ndarray:
    return torch.cat([model.run_from(stage, cached[stage]) for cached in inputs]).numpy()


def rank_key(s: LayerSensitivity) -> tuple[float, float]:
    """Sort key, most sensitive first: lowest "alone" logit SQNR, then highest "all but"."""
    return s.alone_sqnr_db, -s.all_but_sqnr_db


@torch.inference_mode()
def measure_sensitivity(
    fq: FakeQuantModel,
    images: Sequence[torch.Tensor],
    on_step: OnStep = None,
    compare: Compare = agreement,
) -> tuple[list[LayerSensitivity], float, float]:
    """Each layer's sensitivity on ``images`` (batches) in a calibrated fake-quantized model;
    also the logit SQNR and agreement with every layer quantized. ``on_step()`` is called once
    per layer. ``compare`` gives the agreement: top-1, or for a head the export check's
    matched detections or pixels (:func:`mobilenets.deploy.heads.comparison`)."""
    names = fq.names()
    fq.set(enabled=())
    float_run = [fq.stage_inputs(x) for x in images]
    reference = torch.cat([logits for _, logits in float_run]).numpy()
    float_inputs = [inputs for inputs, _ in float_run]
    fq.set(enabled=names)
    quant_run = [fq.stage_inputs(x) for x in images]
    quant_inputs = [inputs for inputs, _ in quant_run]
    everything = compare(reference, torch.cat([logits for _, logits in quant_run]).numpy())

    layers = []
    for position, layer in enumerate(fq):
        stage = fq.stage_of[layer.name]
        fq.set(enabled=[layer.name], measuring=[layer.name])
        alone = compare(reference, _logits(fq, stage, float_inputs))
        output = sqnr_db(layer.signal, layer.noise)
        fq.set(enabled=[n for n in names if n != layer.name])
        all_but = compare(reference, _logits(fq, stage, quant_inputs))
        layers.append(
            LayerSensitivity(
                name=layer.name,
                kind=layer.kind,
                position=position,
                output_sqnr_db=output,
                alone_sqnr_db=alone.sqnr_db,
                alone_agreement=alone.top1_agreement,
                all_but_sqnr_db=all_but.sqnr_db,
                all_but_agreement=all_but.top1_agreement,
            )
        )
        if on_step is not None:
            on_step()
    return layers, everything.sqnr_db, everything.top1_agreement


def sensitivity_report(
    run_dir: str | os.PathLike[str],
    images: int = DEFAULT_IMAGES,
    calibration: int = DEFAULT_CALIBRATION,
    scheme: Int8Scheme = PER_CHANNEL,
    data: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    on_step: OnStep = None,
) -> SensitivityReport:
    """The report for a run directory: calibrated on ``calibration`` training images (random
    crops of the bundled photos for an imported ImageNet run), measured on ``images`` held-out
    images, as ``mobilenets export`` checks its int8 files."""
    start = time.perf_counter()
    model, info = load_run(run_dir)
    evaluation, images_from = held_out_inputs(info, data, images)
    batches, calibration_from = calibration_inputs(info, data, calibration)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        fq = FakeQuantModel(graph_of(model), scheme)  # a detector's outputs as one tensor
        fq.calibrate(batches)
        compare = comparison(model, info)
        layers, all_sqnr, all_agreement = measure_sensitivity(fq, evaluation, on_step, compare)
    finally:
        torch.set_num_threads(previous)
    return SensitivityReport(
        model=info.describe(),
        scheme=scheme.describe(),
        images=sum(len(b) for b in evaluation),
        images_from=images_from,
        calibration=sum(len(b) for b in batches),
        calibration_from=calibration_from,
        all_sqnr_db=all_sqnr,
        all_agreement=all_agreement,
        seconds=time.perf_counter() - start,
        layers=layers,
    )


def count_layers(run_dir: str | os.PathLike[str]) -> int:
    """How many quantizable layers a run's model has (the report's step count)."""
    model, _ = load_run(run_dir)
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def sensitivity_figure(report: SensitivityReport) -> Figure:
    """SQNR per layer along the network, each point coloured by the layer's kind: the layer's
    own output and the logits with only it quantized (top), the logits with all but it
    quantized against all quantized (bottom)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    colours = dict(zip(KINDS, plt.get_cmap("tab10").colors, strict=False))
    x = [s.position for s in report.layers]
    top.plot(x, [s.output_sqnr_db for s in report.layers], color="0.8", lw=1, zorder=0)
    top.plot(x, [s.alone_sqnr_db for s in report.layers], color="0.5", lw=1, ls=":", zorder=0)
    for kind in KINDS:
        chosen = [s for s in report.layers if s.kind == kind]
        if not chosen:
            continue
        xs = [s.position for s in chosen]
        top.scatter(xs, [s.output_sqnr_db for s in chosen], color=colours[kind], label=kind, s=22)
        top.scatter(xs, [s.alone_sqnr_db for s in chosen], color=colours[kind], marker="x", s=22)
        bottom.scatter(xs, [s.all_but_sqnr_db for s in chosen], color=colours[kind], s=22)
    bottom.axhline(report.all_sqnr_db, color="0.4", ls="--", lw=1, label="every layer int8")
    top.set_ylabel("SQNR, dB\n(o: layer output, x: logits)")
    top.set_title(
        f"{report.model}: int8 sensitivity per layer ({report.scheme}), {report.images} images",
        fontsize=9,
    )
    top.legend(fontsize=8, ncol=len(KINDS), loc="lower left")
    bottom.set_ylabel("logit SQNR, dB,\nall layers but this int8")
    bottom.set_xlabel("layer, from input to classifier")
    bottom.legend(fontsize=8, loc="lower left")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return fig

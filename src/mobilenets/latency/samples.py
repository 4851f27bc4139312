"""The layers a calibration times: shapes the registered models really run, and a few synthetic
ones the registry lacks, spread over each latency kind's range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mobilenets.analysis.cost import LayerCost, profile_model
from mobilenets.errors import MobileNetError
from mobilenets.latency.model import (
    FUSED_ACTIVATIONS,
    LATENCY_KINDS,
    bytes_moved,
    latency_kinds,
    macs_done,
)
from mobilenets.models import create_model, list_models, takes_width

# Where the registered models' layer shapes are sampled: the papers' width and resolution dials.
SAMPLE_WIDTHS = (0.35, 0.75, 1.4)
SAMPLE_RESOLUTIONS = (96, 224)
PER_KIND = 14
CHAIN_LENGTH = 24

# --------------------------------------------------------------------------- the samples


@dataclass(frozen=True)
class Sample:
    """One layer to time: its traced row and latency kind, and what it measured."""

    row: LayerCost
    kind: str
    seconds: float = math.nan
    block: int = 1  # the runtime's channel block: the work is priced padded to it
    nodes: int = 1  # the runtime's nodes it ran (an in-place gate's layout conversions too)
    scatter_s: float = 0.0  # the standard error of ``seconds`` where it is a median (0: unknown)

    @property
    def macs(self) -> float:
        return macs_done(self.row, self.kind, self.block)

    @property
    def bytes(self) -> float:
        return bytes_moved(self.row, self.kind, block=self.block)

    def key(self) -> tuple:
        return (self.kind, self.row.input_shape, self.row.output_shape, self.row.macs)


def registry_samples(
    models: Iterable[str] | None = None,
    widths: Sequence[float] = SAMPLE_WIDTHS,
    resolutions: Sequence[int] = SAMPLE_RESOLUTIONS,
) -> list[Sample]:
    """Every distinct pricable layer of the registered models at these widths and resolutions.

    A combination a family refuses (a resolution below its stride) is skipped.
    """
    seen: dict[tuple, Sample] = {}
    for name in list_models() if models is None else models:
        for width in widths if takes_width(name) else (None,):
            for resolution in resolutions:
                kwargs = {} if width is None else {"width_mult": width}
                try:
                    report = profile_model(create_model(name, **kwargs), resolution)
                except MobileNetError:
                    continue
                for row, kind in zip(report.layers, latency_kinds(report.layers), strict=True):
                    if kind is not None:
                        sample = Sample(row, kind)
                        seen.setdefault(sample.key(), sample)
    found = {s.kind for s in seen.values()}
    return list(seen.values()) + [s for s in synthetic_samples() if s.kind not in found]


def synthetic_samples() -> list[Sample]:
    """Squeeze-and-excitation gates, 5x5 depthwise convolutions and SiLU on MobileNetV3-like
    feature maps, VGG-like 3x3 convolutions and 2x2 max poolings, for the kinds that no model
    being sampled has, so that every kind is calibrated whatever models are sampled."""
    gates = [(16, 56), (72, 28), (96, 14), (120, 28), (240, 14), (576, 7), (960, 7)]
    pools = [(16, 112), (32, 96), (64, 56), (128, 28), (256, 14), (512, 8)]
    convs = [
        _map_sample(f"conv{c}x{h}", "standard", "standard K>=64", c, h, 9 * c, 9 * c * c)
        for c, h in pools
    ]
    depthwise = [
        _map_sample(f"dw5x5_{c}x{h}", "depthwise", "depthwise 5x5+", c, h, 25, 25 * c)
        for c, h in gates
    ]
    silu = [_map_sample(f"silu{c}x{h}", "activation", "silu", c, h, op="SiLU") for c, h in gates]
    fused = [
        replace(sample, row=replace(sample.row, op=op), kind=kind)
        for op, kind in FUSED_ACTIVATIONS.items()
        for sample in silu
    ]
    return (
        convs
        + depthwise
        + silu
        + fused
        + [
            Sample(LayerCost(f"se{c}x{h}", "pool", (1, c, h, h), (1, c, 1, 1), 0, 0, c), "se")
            for c, h in gates
        ]
        + [
            Sample(
                LayerCost(f"max{c}x{h}", "pool", (1, c, h, h), (1, c, h // 2, h // 2), 0, 0, c),
                "max pool",
            )
            for c, h in pools
        ]
    )


def _map_sample(
    name: str,
    row_kind: str,
    kind: str,
    channels: int,
    size: int,
    macs_per_value: int = 0,
    params: int = 0,
    op: str = "",
) -> Sample:
    """A synthetic layer that keeps its ``channels`` x ``size`` x ``size`` feature map."""
    shape = (1, channels, size, size)
    values = channels * size * size
    row = LayerCost(name, row_kind, shape, shape, macs_per_value * values, params, values, op=op)
    return Sample(row, kind)


def spread(samples: Sequence[Sample], per_kind: int) -> list[Sample]:
    """Up to ``per_kind`` samples of each kind, evenly spaced over its range of work."""
    chosen = []
    for kind in LATENCY_KINDS:
        of_kind = sorted(
            (s for s in samples if s.kind == kind), key=lambda s: (s.row.macs, s.bytes)
        )
        if len(of_kind) <= per_kind:
            chosen += of_kind
            continue
        picks = np.linspace(0, len(of_kind) - 1, per_kind).round().astype(int)
        chosen += [of_kind[i] for i in sorted(set(picks.tolist()))]
    return chosen

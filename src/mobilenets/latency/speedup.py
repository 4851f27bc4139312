"""The separable speed-up, analytic against measured.

Replacing a standard f x f convolution by a depthwise + pointwise pair divides its mult-adds by
``1 / (1/n_c' + 1/f^2)`` (about 8-9x for 3x3 kernels and MobileNet widths). Whether a machine
delivers that is another matter: the depthwise step does f*f multiply-adds per value it loads,
so it is bound by memory bandwidth, not arithmetic. This module times both on the feature-map
shapes MobileNetV1 actually runs, and reports the measured speed-up against the analytic one.

Three things are timed on the same input: a standard ``nn.Conv2d``; *our* pair
(:class:`~mobilenets.layers.DepthwiseConv` then :class:`~mobilenets.layers.PointwiseConv`, which
choose their memory format and kernels, see :mod:`mobilenets.layers`); and the *plain* pair, two
``nn.Conv2d`` as PyTorch runs them by default, the baseline our layers must beat. BatchNorm and
activations are left out on both sides, as they are in the mult-add count.

Given a latency calibration (:mod:`mobilenets.latency.model`), each row also carries the speed-up
the per-layer roofline predicts: the depthwise layer priced on its own (memory-bound) roof and the
pointwise one on its K's, so the gap between counted and real speed-up is explained layer by
layer. The calibration is onnxruntime's, the timings PyTorch's: the prediction says how far the
hardware lets the saving go, not what PyTorch's kernels make of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mobilenets.analysis.cost import profile_model, separable_cost_ratio
from mobilenets.analysis.timing import time_interleaved
from mobilenets.errors import MobileNetError
from mobilenets.latency.model import DEPTHWISE_KINDS, Calibration, predict_latency
from mobilenets.layers import DepthwiseConv, PointwiseConv


@dataclass(frozen=True)
class ConvShape:
    """A square feature map of ``size`` x ``size`` x ``in_channels`` -> ``out_channels``."""

    size: int
    in_channels: int
    out_channels: int
    kernel_size: int = 3

    def __str__(self) -> str:
        return f"{self.size}x{self.size}x{self.in_channels}->{self.out_channels}"

    @property
    def analytic_speedup(self) -> float:
        """Standard over separable mult-adds: 1 / (1/n_c' + 1/f^2)."""
        return 1 / separable_cost_ratio(self.kernel_size, self.out_channels)


# The stride-1 layers of MobileNetV1 at 224, one per resolution (Table 1).
MOBILENET_SHAPES: tuple[ConvShape, ...] = (
    ConvShape(112, 32, 64),
    ConvShape(56, 128, 128),
    ConvShape(28, 256, 256),
    ConvShape(14, 512, 512),
    ConvShape(7, 1024, 1024),
)
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
MODES = ("forward", "forward+backward")


@dataclass(frozen=True)
class SpeedupMeasurement:
    """Best times of one shape, batch size, input memory format and pass, in milliseconds."""

    shape: ConvShape
    batch_size: int
    memory_format: str
    mode: str
    threads: int
    standard_ms: float
    separable_ms: float  # our DepthwiseConv + PointwiseConv
    plain_separable_ms: float  # nn.Conv2d(groups=n_c) + nn.Conv2d(1x1), PyTorch's defaults
    predicted: float | None = None  # the latency model's standard / separable time
    depthwise_bound: str | None = None  # "memory" or "compute", by the latency model

    @property
    def analytic(self) -> float:
        return self.shape.analytic_speedup

    @property
    def measured(self) -> float:
        return self.standard_ms / self.separable_ms

    @property
    def ratio(self) -> float:
        """Fraction of the analytic speed-up our layers deliver."""
        return self.measured / self.analytic

    @property
    def plain_measured(self) -> float:
        return self.standard_ms / self.plain_separable_ms

    @property
    def plain_ratio(self) -> float:
        return self.plain_measured / self.analytic

    def to_dict(self) -> dict:
        """A JSON-ready row with the derived speed-ups spelled out."""
        return {
            "shape": str(self.shape),
            "batch_size": self.batch_size,
            "memory_format": self.memory_format,
            "mode": self.mode,
            "threads": self.threads,
            "standard_ms": self.standard_ms,
            "separable_ms": self.separable_ms,
            "plain_separable_ms": self.plain_separable_ms,
            "analytic": self.analytic,
            "measured": self.measured,
            "ratio": self.ratio,
            "plain_ratio": self.plain_ratio,
            "predicted": self.predicted,
            "depthwise_bound": self.depthwise_bound,
        }


def geometric_mean(values: Iterable[float]) -> float:
    """The mean of ratios (a speed-up of 2x and one of 0.5x average to 1x, not 1.25x)."""
    values = list(values)
    if not values or min(values) <= 0:
        raise MobileNetError("a geometric mean needs one or more positive values")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def predicted_speedup(
    shape: ConvShape, batch_size: int, calibration: Calibration
) -> tuple[float, str]:
    """The latency model's standard / separable time for ``shape``, and whether it prices the
    depthwise layer as memory- or compute-bound."""
    f, n_c, n_out = shape.kernel_size, shape.in_channels, shape.out_channels
    standard = nn.Conv2d(n_c, n_out, f, padding=f // 2, bias=False)
    separable = nn.Sequential(DepthwiseConv(n_c, f), PointwiseConv(n_c, n_out))
    priced = {
        name: predict_latency(profile_model(m, shape.size, batch_size, n_c), calibration)
        for name, m in (("standard", standard), ("separable", separable))
    }
    # Per call: the kernels and the runtime's cost between them, without the fixed cost of a
    # whole inference call (a layer inside a network does not pay it).
    seconds = {name: p.seconds - p.run_overhead_s for name, p in priced.items()}
    depthwise = next(layer for layer in priced["separable"].layers if layer.kind in DEPTHWISE_KINDS)
    return seconds["standard"] / seconds["separable"], depthwise.bound


def _layers(shape: ConvShape, fmt: torch.memory_format) -> dict[str, Callable]:
    f, n_c, n_out = shape.kernel_size, shape.in_channels, shape.out_channels
    standard = nn.Conv2d(n_c, n_out, f, padding=f // 2, bias=False)
    depthwise, pointwise = DepthwiseConv(n_c, f), PointwiseConv(n_c, n_out)
    plain_dw = nn.Conv2d(n_c, n_c, f, padding=f // 2, groups=n_c, bias=False)
    plain_pw = nn.Conv2d(n_c, n_out, 1, bias=False)
    for module in (standard, depthwise, pointwise, plain_dw, plain_pw):
        module.to(memory_format=fmt)
    return {
        "standard": standard,
        "separable": nn.Sequential(depthwise, pointwise),
        "plain": nn.Sequential(plain_dw, plain_pw),
    }


def _fastest_ms(
    layers: dict[str, Callable], x: torch.Tensor, backward: bool, budget_s: float
) -> dict[str, float]:
    """Fastest milliseconds per call of each layer, timed in alternation.

    The fastest round is the one least disturbed by other processes (the reason ``timeit``
    reports the minimum): what the layer costs, not what the machine was doing meanwhile.
    """
    grads: dict[str, torch.Tensor] = {}

    def call(name: str) -> None:
        if not backward:
            with torch.no_grad():
                layers[name](x)
            return
        xi = x.detach().requires_grad_(True)
        out = layers[name](xi)
        if name not in grads:  # a fixed gradient in the output's own layout
            grads[name] = torch.randn_like(out)
        out.backward(grads[name])

    start = time.perf_counter()
    for name in layers:  # warm-up: oneDNN builds its kernels on the first call
        call(name)
        call(name)
    round_s = max((time.perf_counter() - start) / 2, 1e-6)
    repeats = max(5, min(60, int(budget_s / round_s)))
    calls = {name: (lambda name=name: call(name)) for name in layers}
    times = time_interleaved(calls, repeats)
    return {name: 1e3 * min(ts) for name, ts in times.items()}


def measure_separable_speedup(
    shapes: Sequence[ConvShape] = MOBILENET_SHAPES,
    batch_sizes: Sequence[int] = (1, 32),
    memory_formats: Sequence[str] = tuple(MEMORY_FORMATS),
    modes: Sequence[str] = MODES,
    budget_s: float = 1.0,
    seed: int = 0,
    progress: Callable[[SpeedupMeasurement], None] | None = None,
    calibration: Calibration | None = None,
) -> list[SpeedupMeasurement]:
    """Time standard against separable convolutions for every combination asked for.

    ``budget_s`` is roughly the time spent per combination (5 to 60 timed rounds). With a
    ``calibration`` every row also gets the latency model's predicted speed-up.
    """
    for fmt in memory_formats:
        if fmt not in MEMORY_FORMATS:
            raise MobileNetError(f"unknown memory format {fmt!r}; known: nchw, channels_last")
    for mode in modes:
        if mode not in MODES:
            raise MobileNetError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise MobileNetError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for shape in shapes:
        for batch in batch_sizes:
            for fmt in memory_formats:
                torch.manual_seed(seed)
                layers = _layers(shape, MEMORY_FORMATS[fmt])
                x = torch.randn(
                    batch, shape.in_channels, shape.size, shape.size, generator=generator
                ).contiguous(memory_format=MEMORY_FORMATS[fmt])
                predicted, bound = (
                    (None, None)
                    if calibration is None
                    else predicted_speedup(shape, batch, calibration)
                )
                for mode in modes:
                    ms = _fastest_ms(layers, x, mode == "forward+backward", budget_s)
                    row = SpeedupMeasurement(
                        shape=shape,
                        batch_size=batch,
                        memory_format=fmt,
                        mode=mode,
                        threads=torch.get_num_threads(),
                        standard_ms=ms["standard"],
                        separable_ms=ms["separable"],
                        plain_separable_ms=ms["plain"],
                        predicted=predicted,
                        depthwise_bound=bound,
                    )
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    return rows


def speedup_summary(rows: Sequence[SpeedupMeasurement]) -> list[dict]:
    """Geometric means of measured/analytic over the shapes, per batch, format and pass."""
    groups: dict[tuple[int, str, str], list[SpeedupMeasurement]] = {}
    for row in rows:
        groups.setdefault((row.batch_size, row.memory_format, row.mode), []).append(row)
    return [
        {
            "batch_size": batch,
            "memory_format": fmt,
            "mode": mode,
            "shapes": len(group),
            "ours": geometric_mean(r.ratio for r in group),
            "plain": geometric_mean(r.plain_ratio for r in group),
        }
        for (batch, fmt, mode), group in groups.items()
    ]


def speedup_markdown(rows: Sequence[SpeedupMeasurement]) -> str:
    """The per-shape table and the summary, as markdown."""
    lines = [
        "| shape | batch | input format | pass | standard ms | ours ms | plain ms "
        "| analytic | predicted | depthwise bound | measured (ours) | ours/analytic "
        "| measured (plain) | plain/analytic |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        predicted = "-" if r.predicted is None else f"{r.predicted:.2f}"
        lines.append(
            f"| {r.shape} | {r.batch_size} | {r.memory_format} | {r.mode} "
            f"| {r.standard_ms:.3f} | {r.separable_ms:.3f} | {r.plain_separable_ms:.3f} "
            f"| {r.analytic:.2f} | {predicted} | {r.depthwise_bound or '-'} "
            f"| {r.measured:.2f} | {r.ratio:.2f} | {r.plain_measured:.2f} | {r.plain_ratio:.2f} |"
        )
    lines += [
        "",
        "Geometric mean of measured/analytic over the shapes:",
        "",
        "| batch | input format | pass | ours | plain PyTorch |",
        "|---|---|---|---|---|",
    ]
    for s in speedup_summary(rows):
        lines.append(
            f"| {s['batch_size']} | {s['memory_format']} | {s['mode']} "
            f"| {s['ours']:.2f} | {s['plain']:.2f} |"
        )
    return "\n".join(lines) + "\n"

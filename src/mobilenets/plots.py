"""Figures: training curves, confusion matrices, per-layer cost. PNG files, written atomically.

matplotlib runs on the non-interactive Agg backend, so figures are drawn on machines without a
screen and nothing here ever opens a window.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mobilenets.io import atomic_path

if TYPE_CHECKING:
    from mobilenets.analysis.cost import CostReport, LayerCost
    from mobilenets.latency.speedup import SpeedupMeasurement


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Save ``fig`` as PNG to ``path`` whole or not at all, then release its memory. A failed
    write (full disk, read-only or missing directory) is one line naming ``path``
    (:func:`mobilenets.io.atomic_path`)."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def training_curves_figure(history: Sequence[Mapping[str, float]]) -> Figure:
    """Loss and top-1 accuracy per epoch, train beside test.

    The training loss includes label smoothing and the training accuracy is measured on
    augmented images with dropout on, so both sit below what the test curves would show for
    the same weights; it is the trend and the gap that matter.
    """
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("train_loss", "train (smoothed labels)"), ("test_loss", "test")):
        loss_ax.plot(epochs, [h[key] for h in history], marker="o", markersize=3, label=label)
    for key, label in (("train_top1", "train (augmented)"), ("test_top1", "test")):
        acc_ax.plot(epochs, [100 * h[key] for h in history], marker="o", markersize=3, label=label)
    # Log scale: the first epochs' test loss (BatchNorm statistics still settling) can be
    # a hundred times the last ones'.
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    # The best epoch is a marker named in the legend, which matplotlib places where no line
    # runs: a label written beside the point lands on the train curve just below it.
    best = max(history, key=lambda h: h["test_top1"])
    acc_ax.plot(
        best["epoch"],
        100 * best["test_top1"],
        linestyle="none",
        marker="*",
        markersize=11,
        color="black",
        label=f"best test {100 * best['test_top1']:.2f}% (epoch {best['epoch']})",
    )
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix_figure(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str | None = None
) -> Figure:
    """Rows are the true classes, columns the predicted ones; each row is coloured by its
    share of that class, so rare classes are as visible as common ones. Counts are written in
    the cells while they stay legible (up to 30 classes)."""
    counts = [list(row) for row in confusion]
    n = len(class_names)
    shares = [[c / max(1, sum(row)) for c in row] for row in counts]
    size = min(12.0, 2.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = range(n)
    ax.set_xticks(ticks, class_names, rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title or "confusion matrix")
    if n <= 30:
        for i in ticks:
            for j in ticks:
                if counts[i][j]:
                    colour = "white" if shares[i][j] > 0.5 else "black"
                    ax.text(j, i, str(counts[i][j]), ha="center", va="center", color=colour)
    fig.tight_layout()
    return fig


KIND_COLOURS = {
    "standard": "#7f7f7f",
    "depthwise": "#1f77b4",
    "pointwise": "#ff7f0e",
    "grouped": "#9467bd",
    "linear": "#2ca02c",
}


def layer_cost_figure(report: CostReport, title: str, dtype: str = "fp32") -> Figure:
    """Per weighted layer: mult-adds and parameters as bars coloured by kind, and the
    activation memory alive while the layer's unit (conv, BN, activation) runs as a line.

    Depthwise bars are short in mult-adds and tiny in parameters next to their pointwise
    partners, which is the whole argument of the separable convolution, visible at a glance.
    """
    units: list[tuple[LayerCost, int]] = []  # each weighted layer and the live peak of its unit
    for layer in report.layers:
        if layer.macs:
            units.append((layer, layer.live_bytes(dtype)))
        elif units:
            units[-1] = (units[-1][0], max(units[-1][1], layer.live_bytes(dtype)))
    names = [layer.name.removeprefix("features.").removesuffix(".conv") for layer, _ in units]
    colours = [KIND_COLOURS.get(layer.kind, "#bcbd22") for layer, _ in units]
    x = range(len(units))
    fig, (macs_ax, params_ax, mem_ax) = plt.subplots(
        3, 1, figsize=(max(8.0, 0.2 * len(units) + 2), 8), sharex=True
    )
    macs_ax.bar(x, [layer.macs / 1e6 for layer, _ in units], color=colours)
    macs_ax.set(ylabel="mult-adds (M)", title=title)
    macs_ax.margins(y=0.2)  # headroom for the legend
    params_ax.bar(x, [layer.params / 1e3 for layer, _ in units], color=colours)
    params_ax.set(ylabel="parameters (K, log scale)", yscale="log")
    mem_ax.plot(x, [live / 2**20 for _, live in units], color="#d62728", marker=".")
    peak = report.peak_activation_bytes(dtype) / 2**20
    mem_ax.axhline(peak, color="#d62728", linestyle=":", linewidth=1)
    mem_ax.annotate(
        f"peak {peak:.2f} MiB",
        (len(units) - 1, peak),
        xytext=(0, -12),
        textcoords="offset points",
        ha="right",
    )
    mem_ax.set(ylabel=f"live activations ({dtype}, MiB)", ylim=(0, peak * 1.15))
    mem_ax.set_xticks(list(x), names, rotation=90, fontsize=7)
    kinds = sorted({layer.kind for layer, _ in units}, key=list(KIND_COLOURS).index)
    handles = [plt.Rectangle((0, 0), 1, 1, color=KIND_COLOURS[k]) for k in kinds]
    macs_ax.legend(handles, kinds, ncols=len(kinds), fontsize=8)
    for ax in (macs_ax, params_ax, mem_ax):
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.7, len(units) - 0.3)
    fig.tight_layout()
    return fig


def separable_speedup_figure(rows: Sequence[SpeedupMeasurement]) -> Figure:
    """Measured over analytic speed-up of separable against standard convolutions, per shape:
    one panel per pass and batch size, bars for our layers and plain PyTorch per input format.
    1.0 means the machine delivers every saved mult-add as saved time."""
    passes = list(dict.fromkeys(r.mode for r in rows))
    batches = list(dict.fromkeys(r.batch_size for r in rows))
    formats = list(dict.fromkeys(r.memory_format for r in rows))
    shapes = list(dict.fromkeys(r.shape for r in rows))
    series = [(fmt, who) for fmt in formats for who in ("ours", "plain")]
    fig, axes = plt.subplots(
        len(passes), len(batches), figsize=(6 * len(batches), 3.6 * len(passes)), squeeze=False
    )
    width = 0.8 / len(series)
    for i, mode in enumerate(passes):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            index = {
                (r.shape, r.memory_format): r
                for r in rows
                if r.mode == mode and r.batch_size == batch
            }
            for k, (fmt, who) in enumerate(series):
                values = [
                    getattr(index[shape, fmt], "ratio" if who == "ours" else "plain_ratio")
                    for shape in shapes
                ]
                offsets = [s + (k - (len(series) - 1) / 2) * width for s in range(len(shapes))]
                ax.bar(
                    offsets,
                    values,
                    width,
                    label=f"{who}, {fmt}",
                    hatch="" if who == "ours" else "//",
                    alpha=0.9 if who == "ours" else 0.5,
                    color=f"C{formats.index(fmt)}",
                )
            ax.axhline(1.0, color="black", linewidth=1, label="analytic")
            ax.axhline(0.8, color="black", linewidth=1, linestyle=":", label="0.8 of analytic")
            ax.set_xticks(range(len(shapes)), [str(s) for s in shapes], rotation=20, fontsize=8)
            ax.set(title=f"{mode}, batch {batch}", ylabel="measured / analytic speed-up")
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def pareto_figure(
    points: Sequence[tuple[str, float, float, bool]],
    ylabel: str,
    xlabel: str,
    latency_budget_ms: float | None = None,
) -> Figure:
    """Score against measured latency for ``(label, ms, score, on_front)`` points, each point
    labelled, the Pareto front joined, the latency budget drawn as a vertical line."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for label, ms, score, on_front in points:
        ax.scatter(ms, score, color="C0" if on_front else "C7", zorder=3)
        ax.annotate(label, (ms, score), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((ms, score) for _, ms, score, on_front in points if on_front)
    if front:
        ax.plot(*zip(*front, strict=True), color="C0", linewidth=1, label="Pareto front")
    slowest = max((ms for _, ms, _, _ in points), default=0.0)
    if latency_budget_ms is not None and latency_budget_ms <= 2 * slowest:  # else off the scale
        ax.axvline(latency_budget_ms, color="C3", linestyle="--", label="latency budget")
    ax.set(xlabel=xlabel, ylabel=ylabel, title="Candidates near the frontier, as measured")
    ax.grid(alpha=0.3)
    if front or latency_budget_ms is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

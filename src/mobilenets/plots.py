"""Figures: training curves, confusion matrices, per-layer cost. PNG files, written atomically.

matplotlib runs on the non-interactive Agg backend, so figures are drawn on machines without a
screen and nothing here ever opens a window.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from mobilenets.checkpoint import atomic_path


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Save ``fig`` as PNG to ``path`` whole or not at all, then release its memory."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)

"""What training prints: a banner, one line per epoch, and progress bars (epochs, batches).

Only the main process prints; ``quiet`` turns the bars off and keeps the lines. Kept apart
from the trainer so the loop says what happens and this says how it looks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from mobilenets.data import DataBundle
    from mobilenets.distributed import Processes
    from mobilenets.recipe import TrainConfig


class TrainingDisplay:
    """The console of one training run."""

    def __init__(self, quiet: bool, is_main: bool) -> None:
        self.quiet, self.is_main = quiet, is_main
        self.console = Console(highlight=False, soft_wrap=True, quiet=not is_main)

    def print(self, text: str) -> None:
        self.console.print(text)

    @staticmethod
    def banner(
        c: TrainConfig,
        b: DataBundle,
        procs: Processes,
        start_epoch: int,
        run_dir: Path,
    ) -> str:
        where = f"{procs.world_size} processes" if procs.distributed else "1 process"
        first = "resuming after epoch " + str(start_epoch) if start_epoch else "training"
        return (
            f"{first} {c.model} (width {c.width_mult}) on {b.name}: {len(b.train)} train / "
            f"{len(b.test)} test images at {b.input_size[1]}px, {c.epochs} epochs, "
            f"batch {c.batch_size}, {procs.device.type}, {where} -> {run_dir}"
        )

    @staticmethod
    def epoch_line(r: dict[str, Any], epochs: int) -> str:
        return (
            f"epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}  "
            f"train {r['train_top1']:.2%}  test {r['test_top1']:.2%}  "
            f"{r['images_per_s']:.0f} img/s  {r['epoch_time_s']:.1f} s"
        )

    def progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description:>7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=self.quiet or not self.is_main,
            transient=True,
        )

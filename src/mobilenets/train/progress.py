"""What training prints: a banner, one line per epoch, and progress bars (epochs, batches).

Only the main process prints; ``quiet`` turns the bars off and keeps the lines. Without a
terminal (output to a file or a pipe, a batch job) there are no bars to see, so a line per
:meth:`TrainingDisplay.batch_interval` batches says the run is alive within an epoch. Kept apart
from the trainer so the loop says what happens and this says how it looks.
"""

from __future__ import annotations

import math
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
    from mobilenets.train.distributed import Processes
    from mobilenets.train.recipe import TrainConfig


class TrainingDisplay:
    """The console of one training run."""

    def __init__(self, quiet: bool, is_main: bool, stderr: bool = False) -> None:
        """``is_main`` False prints nothing; ``stderr`` prints there (stdout kept for a
        command's ``--json``)."""
        self.quiet, self.is_main = quiet, is_main
        self.console = Console(highlight=False, soft_wrap=True, quiet=not is_main, stderr=stderr)

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
        width = "" if c.width_mult is None else f" (width {c.width_mult})"
        return (
            f"{first} {c.model}{width} on {b.name}: {len(b.train)} train / "
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

    @staticmethod
    def dense_epoch_line(r: dict[str, Any], epochs: int, shown: tuple[tuple[str, str], ...]):
        """A detection or segmentation epoch: the loss and the task's held-out numbers."""
        scores = "  ".join(f"{label} {r[key]:.2%}" for key, label in shown)
        return (
            f"epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}  {scores}  "
            f"{r['images_per_s']:.0f} img/s  {r['epoch_time_s']:.1f} s"
        )

    @property
    def batch_lines(self) -> bool:
        """Whether to print a line every few batches: no bars to see, and not quiet."""
        return self.is_main and not self.quiet and not self.console.is_terminal

    @staticmethod
    def batch_interval(steps: int) -> int:
        """Batches between two lines: about ten lines an epoch, at least one per 100 batches."""
        return max(1, min(100, math.ceil(steps / 10)))

    @staticmethod
    def batch_line(epoch: int, epochs: int, step: int, steps: int, loss: float) -> str:
        return f"epoch {epoch:>3}/{epochs}  batch {step}/{steps}  loss {loss:.4f}"

    def progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description:>7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            # without a terminal there is nothing to redraw (batch_lines stand in), and a
            # stopped bar would still leave a blank line on stdout
            disable=self.quiet or not self.is_main or not self.console.is_terminal,
            transient=True,
        )


# --------------------------------------------------------------------------- TensorBoard

TENSORBOARD_DIR = "tensorboard"
# metrics.jsonl key -> TensorBoard tag, for `train` and `qat` records
TRAIN_SCALARS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "train_top1": "top1/train",
    "test_top1": "top1/test",
    "lr": "lr",
    "images_per_s": "images_per_s",
}
QAT_SCALARS = {
    "loss": "loss/train",
    "fake_quant_top1": "top1/fake_quantized",
    "float_top1": "top1/float_weights",
    "fake_quant_miou": "miou/fake_quantized",
    "float_miou": "miou/float_weights",
    "fake_quant_agreement": "agreement/fake_quantized",
    "fake_quant_sqnr_db": "sqnr_db/fake_quantized",
    "lr": "lr",
    "images_per_s": "images_per_s",
}


class ScalarLog:
    """Each epoch's record as TensorBoard scalars in ``RUN_DIR/tensorboard``, beside
    ``metrics.jsonl``, when the ``tensorboard`` package is installed (the ``tensorboard``
    extra); without it nothing is written and training is the same.

    Event files are appended record by record, as TensorBoard expects; a resumed run starts
    from the epoch after its last checkpoint and purges any later events an interrupted run
    left (``purge_step``), so the curves show each epoch once.
    """

    def __init__(self, run_dir: Path, next_epoch: int, tags: dict[str, str], enabled: bool):
        self.run_dir, self.next_epoch, self.tags, self.enabled = run_dir, next_epoch, tags, enabled
        self.writer: Any = None

    def epoch(self, record: dict[str, Any]) -> None:
        """Log one epoch's record; call it after the epoch's checkpoint (the writer is made
        then, so a run that never finished an epoch leaves nothing behind)."""
        if self.writer is None and self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the extra is not installed
                self.enabled = False
                return
            folder = str(self.run_dir / TENSORBOARD_DIR)
            self.writer = SummaryWriter(folder, purge_step=self.next_epoch)
        if self.writer is None:
            return
        for key, tag in self.tags.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

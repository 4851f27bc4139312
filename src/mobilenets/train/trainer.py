"""The one training loop: epochs of a :class:`~mobilenets.train.task.Task` into a run directory.

:class:`Trainer` does what every training run does the same way, ``train`` (classification,
:mod:`mobilenets.train.loop`) and ``qat`` (:mod:`mobilenets.quant.qat`) alike:

- each epoch reseeded from (seed, epoch, rank), so a resumed run replays it bit for bit;
- the steps: the task's loss, the gradient scaler (mixed precision on a GPU), the optimizer,
  the per-batch schedule, and a loss that stops being finite stopping the run before the
  step, the last checkpoint kept (:class:`NonFiniteLossError`);
- a checkpoint after each epoch: the published model first, then ``train_state.pt`` (the
  weights trained, optimizer, scheduler, scaler, epoch, history) written atomically through a
  file object, then ``metrics.jsonl``; resuming reads them back;
- the console (bars, a line per epoch, lines within an epoch without a terminal) and the
  TensorBoard scalars.

A run says what differs by overriding the hooks: :meth:`begin_epoch` (train/eval modes,
freezing, the epoch's loader), :meth:`measure` (the epoch's record), :meth:`publish` (the
model and record the run directory shows), :meth:`state_extra` and :meth:`epoch_line`.
The run-directory lock is taken by the caller around :meth:`run` (:func:`run_lock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from mobilenets.data.loader import stop_workers
from mobilenets.errors import MobileNetError
from mobilenets.io import DirectoryLock
from mobilenets.runs import load_weights_into
from mobilenets.train.distributed import Processes
from mobilenets.train.progress import ScalarLog, TrainingDisplay
from mobilenets.train.run_dir import STATE_FILE, check_new_run_dir, write_metrics, write_state
from mobilenets.train.task import Task, mean_loss


class NonFiniteLossError(MobileNetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed torch (dropout) from (seed, epoch, rank), so resuming at an epoch replays it."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a state dict's names and bytes: equal digests, bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def run_lock(
    run_dir: Path,
    what: str,
    fresh: bool,
    is_main: bool = True,
    refuse: Callable[[Path], None] = check_new_run_dir,
) -> Iterator[None]:
    """Hold ``run_dir``'s lock (main process only) while a run trains into it; a ``fresh``
    run checks again (``refuse`` raises) that no other run finished there since it looked."""
    with DirectoryLock(run_dir, what) if is_main else contextlib.nullcontext():
        if fresh:
            refuse(run_dir)
        yield


OnEpoch = Callable[[dict[str, Any]], object] | None
OnBatch = Callable[[int, int, int, float], object] | None  # epoch, step, steps, mean loss


class Trainer:
    """The epochs of one run. A subclass sets, in its ``__init__`` before :meth:`resume`:
    ``model`` (what trains and is checkpointed), ``optimizer``, ``scheduler``,
    ``steps_per_epoch``, and optionally ``ddp`` (what is called, default ``model``),
    ``scaler``, ``autocast``, ``memory_format``."""

    curves = True  # draw curves.png (the classification record's loss and top-1)
    closing_line = True  # "run saved to ..." at the end

    def __init__(
        self,
        run_dir: Path,
        task: Task,
        procs: Processes,
        epochs: int,
        seed: int,
        display: TrainingDisplay,
        scalar_tags: dict[str, str],
        stop_after_epoch: int | None = None,
    ) -> None:
        self.run_dir, self.task, self.procs = run_dir, task, procs
        self.epochs, self.seed, self.stop_after_epoch = epochs, seed, stop_after_epoch
        self.display, self.scalar_tags = display, scalar_tags
        self.start_epoch, self.history = 0, []
        self.memory_format = torch.contiguous_format
        device = procs.device.type
        self.autocast = dict(device_type=device, dtype=torch.float16, enabled=device == "cuda")
        self.scaler = torch.amp.GradScaler(device, enabled=device == "cuda")
        self.on_epoch: OnEpoch = None
        self.on_batch: OnBatch = None
        self.model: nn.Module
        self.ddp: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        self.steps_per_epoch = 0

    # ---------------------------------------------------------------- hooks

    def begin_epoch(self, epoch: int) -> Iterable:
        """Set the model's modes for epoch ``epoch`` (from 1); return the epoch's batches."""
        raise NotImplementedError

    def measure(self, epoch: int, sums: torch.Tensor, train_time: float, began: float) -> dict:
        """The epoch's record (``metrics.jsonl``, the history)."""
        raise NotImplementedError

    def publish(self, epoch: int, replica_digests: list[str] | None) -> None:
        """Write the model and record the run directory shows after ``epoch``."""
        raise NotImplementedError

    def state_extra(self) -> dict[str, Any]:
        """What ``train_state.pt`` holds beside the weights, optimizer, schedule and history."""
        return {}

    def banner(self) -> str | None:
        return None

    def epoch_line(self, record: dict[str, Any]) -> str:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimizer step (a moving average of the weights follows it)."""

    # ---------------------------------------------------------------- checkpoints

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (``train_state.pt`` as read back)."""
        try:
            self.load_weights(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.start_epoch, self.history = int(state["epoch"]), list(state["history"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise MobileNetError(
                f"cannot resume {self.run_dir}: {STATE_FILE} does not fit this run ({e})"
            ) from None

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load the trained module's checkpointed state (shapes checked, named if wrong)."""
        load_weights_into(self.model, weights, str(self.run_dir / STATE_FILE))

    def checkpoint(self, epoch: int, replica_digests: list[str] | None = None) -> None:
        """Publish the model, then the state to continue from, then the metrics."""
        if not self.procs.is_main:
            return
        self.publish(epoch, replica_digests)
        state = {
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            **self.state_extra(),
        }
        write_state(self.run_dir, state)
        write_metrics(self.run_dir, self.history, curves=self.curves)

    def kept(self) -> str:
        if self.history:
            return f"the checkpoint of epoch {self.history[-1]['epoch']} in {self.run_dir} is kept"
        return "no checkpoint was written"

    # ---------------------------------------------------------------- epochs

    def run(self) -> Path:
        """Train the remaining epochs and return the run directory; the data loaders'
        worker processes stop when it returns or raises (:func:`stop_workers`)."""
        try:
            return self._run()
        finally:
            stop_workers(*(v for v in vars(self).values() if isinstance(v, DataLoader)))

    def _run(self) -> Path:
        last = self.epochs if self.stop_after_epoch is None else self.stop_after_epoch
        last = min(self.epochs, last)
        banner = self.banner()
        if banner is not None:
            self.display.print(banner)
        scalars = ScalarLog(
            self.run_dir, self.start_epoch + 1, self.scalar_tags, self.procs.is_main
        )
        with self.display.progress() as progress, contextlib.closing(scalars):
            epochs_bar = progress.add_task("epochs", total=self.epochs, completed=self.start_epoch)
            batches_bar = progress.add_task("batches", total=self.steps_per_epoch)
            every = self.display.batch_interval(self.steps_per_epoch)
            for epoch in range(self.start_epoch + 1, last + 1):
                progress.reset(batches_bar)

                def on_batch(step: int, sums: torch.Tensor, epoch: int = epoch) -> None:
                    progress.advance(batches_bar)
                    if self.on_batch is not None:
                        self.on_batch(epoch, step, self.steps_per_epoch, mean_loss(sums))
                    if self.display.batch_lines and step % every == 0:
                        self.display.print(
                            self.display.batch_line(
                                epoch, self.epochs, step, self.steps_per_epoch, mean_loss(sums)
                            )
                        )

                record = self.epoch(epoch, on_batch)
                self.history.append(record)
                digests = (
                    self.procs.gather(state_digest(self.model))
                    if (epoch == self.epochs and self.procs.distributed)
                    else None
                )
                self.checkpoint(epoch, digests)
                scalars.epoch(record)
                progress.advance(epochs_bar)
                progress.console.print(self.epoch_line(record))
                if self.on_epoch is not None:
                    self.on_epoch(record)
        if self.closing_line:
            self.display.print(f"run saved to {self.run_dir}")
        return self.run_dir

    def epoch(self, epoch: int, on_batch: Callable[[int, torch.Tensor], None]) -> dict[str, Any]:
        """Train epoch ``epoch`` and return its record."""
        procs, device = self.procs, self.procs.device
        seed_epoch(self.seed, epoch, procs.rank)
        batches = self.begin_epoch(epoch)
        model = self.ddp if self.ddp is not None else self.model
        sums = None
        start = time.perf_counter()
        for step, batch in enumerate(batches, start=1):
            loss, counts = self.task.step(model, batch, device, self.memory_format, self.autocast)
            if procs.distributed:
                dist.all_reduce(counts)  # every rank sees the same loss, so all stop together
            if not math.isfinite(float(counts[0])):  # before the step: the weights stay good
                raise NonFiniteLossError(
                    f"loss became {float(counts[0] / counts[-1])} at epoch {epoch}, step "
                    f"{step}; stopped, {self.kept()} (try a lower --lr)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.after_step()
            if sums is None:
                sums = torch.zeros_like(counts)
            sums += counts
            on_batch(step, sums)
        if sums is None:
            raise MobileNetError("the training split is empty; add images")
        return self.measure(epoch, sums, time.perf_counter() - start, start)

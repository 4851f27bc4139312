"""Training: one loop for a CPU, a GPU, or N processes under ``torchrun``.

The default recipe is the papers' and the reference trainers' (torchvision, timm): SGD with
Nesterov momentum (RMSprop with decay 0.9 and momentum 0.9, as the papers, with
``optimizer="rmsprop"``), a linear warm-up into a cosine decay stepped every batch, no weight
decay on BatchNorm parameters and biases, label smoothing 0.1. For inputs smaller than 128 px
the models are built with ``small_input`` (total stride 8): a network made for 224 px divides
its input by 32, which would leave a 32 px digit a single feature pixel.

A run directory holds the published model (``model.safetensors`` + ``model.json``, see
:mod:`mobilenets.runs`), rewritten after every epoch, and beside it:

- ``train_state.pt``: what continuing needs (weights, optimizer, scheduler, gradient scaler,
  epoch, history); tensors and primitives only, so it is read back with ``weights_only=True``;
- ``metrics.jsonl``: one line per finished epoch;
- ``curves.png``: loss and accuracy per epoch;
- ``.lock`` while a process trains into it (:class:`mobilenets.io.DirectoryLock`): a second
  ``train`` with the same ``--out`` or ``--resume`` is refused with one line naming the
  holder; a lock left by a killed run is taken over with a warning. Readers (evaluate,
  predict, export) take no lock.

A checkpoint writes the weights, the record, the state to continue from, then the metrics and
the curves. A write that fails (disk full, read-only) stops the run with one line naming the
file; every file written before it is complete and the previous checkpoint still loads.

Small data sets train as they are: the batch is never larger than the training split (a
warning says so), the last partial batch of an epoch is used, and a last batch of one image
joins the batch before it, so BatchNorm never trains on one image alone.

A finished run continues with ``--resume RUN --epochs N`` for a larger N: the warm-up and
cosine schedule are recomputed for N epochs and training goes on from the step it reached
(the learning rate, near 0 at the end of the shorter schedule, rises onto the longer one).

Resuming is exact. Everything random in an epoch is derived from (seed, epoch, rank) when the
epoch starts: the data order and every image's augmentation by the loader's seeded sampler,
dropout by reseeding torch. So the RNG state needs no saving, and a run resumed after epoch k
replays epochs k+1.. bit for bit as the uninterrupted run did (same machine, same settings).
The weights continued from are those in ``train_state.pt``, written after the published model:
a run killed between the two files resumes from the older state and replays the epoch.

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) every process trains a
DistributedDataParallel replica on its shard of each global batch (gloo on CPU, nccl on GPU);
only rank 0 prints and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from mobilenets.data import VAL_FRACTION, DataBundle, load_data, make_loader
from mobilenets.errors import MobileNetError
from mobilenets.io import DirectoryLock
from mobilenets.models import check_resolution, create_model, get_model_factory
from mobilenets.runs import (
    DataRecord,
    RunInfo,
    load_weights_into,
    read_run_info,
    save_run,
)
from mobilenets.train.devices import pick_threads
from mobilenets.train.distributed import Processes
from mobilenets.train.finetune import (
    freeze_features,
    inherit_init,
    init_origin,
    init_run_info,
    load_init_weights,
)
from mobilenets.train.metrics import Evaluation, Tally, tally_predictions
from mobilenets.train.optim import make_optimizer, warmup_cosine
from mobilenets.train.progress import TRAIN_SCALARS, ScalarLog, TrainingDisplay
from mobilenets.train.recipe import DEFAULT_MODEL, DEFAULT_WIDTH_MULT, TrainConfig
from mobilenets.train.run_dir import (
    STATE_FILE,
    check_new_run_dir,
    data_source,
    new_run_dir,
    read_train_state,
    resumed_config,
    write_metrics,
    write_state,
)

# The held-out split is the same whatever the training seed, as a fixed test set should be:
# runs with different seeds are then compared on the same images.
SPLIT_SEED = 0
SMALL_INPUT_BELOW = 128  # px; smaller inputs get the models' small_input (total stride 8)
# --------------------------------------------------------------------------- the recipe


def model_kwargs(config: TrainConfig, num_classes: int, in_chans: int, resolution: int) -> dict:
    """Constructor keywords for ``config.model``, limited to those its constructor takes, so
    any registered classifier trains (one without ``small_input`` simply is not given it)."""
    small_input = config.small_input
    if small_input is None:
        small_input = resolution < SMALL_INPUT_BELOW
    wanted = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "width_mult": DEFAULT_WIDTH_MULT if config.width_mult is None else config.width_mult,
        "dropout": config.dropout,
        "small_input": small_input,
    }
    accepted = inspect.signature(get_model_factory(config.model or DEFAULT_MODEL)).parameters
    return {k: v for k, v in wanted.items() if k in accepted}


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


# --------------------------------------------------------------------------- weights


def class_weights(dataset: Any, num_classes: int) -> torch.Tensor:
    """``n / (k n_c)`` per class c of the training split (1 for a class it lacks): the
    weighted cross-entropy then counts every class as much in total, whatever its share."""
    if hasattr(dataset, "labels"):
        labels = torch.as_tensor(dataset.labels).long()
    elif hasattr(dataset, "samples"):
        labels = torch.tensor([label for _, label in dataset.samples])
    else:
        labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = len(labels) / (num_classes * counts.clamp_min(1))
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


# --------------------------------------------------------------------------- run directory


# --------------------------------------------------------------------------- the loop


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says how to continue from the last epoch kept."""

    def __init__(self, run_dir: Path) -> None:
        if (run_dir / STATE_FILE).is_file():
            message = (
                f"the last finished epoch is kept in {run_dir}; continue with "
                f"mobilenets train --resume {run_dir}"
            )
        else:
            message = "no epoch had finished, nothing was saved"
        super().__init__(message)


class SmallDataWarning(UserWarning):
    """The data is smaller than the recipe assumed (a batch larger than the training split)."""


class NonFiniteLossError(MobileNetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(
    config: TrainConfig, model: nn.Module | None = None, epochs_given: bool | None = None
) -> Path:
    """Train ``config.model`` (or ``model``, any classifier ``nn.Module``, recorded under
    ``config.model``) and return the run directory.

    Resumes ``config.resume`` when set; ``epochs_given`` (default: whether ``config.epochs``
    is set) lets a resumed run grow to ``config.epochs``. The main process holds the
    run directory's lock while it trains. Raises :class:`MobileNetError` for every mistake a
    user can make, and when the loss stops being finite (the last checkpoint stays).
    """
    if config.resume is not None:
        if epochs_given is None:
            epochs_given = config.epochs is not None
        config = resumed_config(config, epochs_given)
    else:
        config = inherit_init(config, init_run_info(config.init))
    config = config.with_recipe()
    config.validate()
    config = dataclasses.replace(config, data=data_source(config.data))
    # Every rank finds the same name: nothing is written before epoch 1 ends.
    run_dir = Path(config.resume) if config.resume is not None else new_run_dir(config)
    procs = Processes.start(config.device)
    previous_threads = torch.get_num_threads()
    try:
        asked = config.threads if config.resume is None else _resumed_threads(config)
        threads, why = pick_threads(asked)
        torch.set_num_threads(threads)
        config = dataclasses.replace(config, threads=threads)
        if procs.is_main and procs.device.type == "cpu":
            print(f"{threads} CPU thread{'s' if threads > 1 else ''}: {why}")
        lock = DirectoryLock(run_dir, "training run") if procs.is_main else None
        with lock or contextlib.nullcontext():
            if config.resume is None:  # another run may have finished here since we looked
                check_new_run_dir(run_dir)
            return _Trainer(config, procs, model, run_dir).run()
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir) from None
    finally:
        torch.set_num_threads(previous_threads)  # the caller's process as it was
        procs.close()


def _resumed_threads(config: TrainConfig) -> int | None:
    """The thread count a resumed run continues with: the one asked for, else the one it
    ran with (recorded each epoch), so that it ends as the unbroken run would have."""
    if config.threads is not None:
        return config.threads
    recorded = read_run_info(Path(config.resume)).metrics.get("threads")
    return recorded if isinstance(recorded, int) and recorded > 0 else None


class _Trainer:
    """One training run: set up in ``__init__``, epochs in ``run``."""

    def __init__(
        self, config: TrainConfig, procs: Processes, model: nn.Module | None, run_dir: Path
    ) -> None:
        self.config, self.procs, self.run_dir = config, procs, run_dir
        if config.batch_size % procs.world_size:
            raise MobileNetError(
                f"batch size {config.batch_size} does not split evenly across "
                f"{procs.world_size} processes"
            )
        self.batch_size = config.batch_size // procs.world_size  # per process
        self.bundle: DataBundle = load_data(
            config.data,
            config.resolution,
            seed=SPLIT_SEED,
            val_fraction=VAL_FRACTION,
            augment=config.augment,
        )
        channels, resolution, _ = self.bundle.input_size
        num_classes = len(self.bundle.class_names)
        self.kwargs = model_kwargs(config, num_classes, channels, resolution)
        torch.manual_seed(config.seed)  # the initial weights
        self.model = create_model(config.model, **self.kwargs) if model is None else model
        check_resolution(self.model, resolution)
        self.init_from = None
        if config.init is not None and config.resume is None:
            load_init_weights(self.model, config.init, config.model, self.kwargs)
            self.init_from = init_origin(config.init, init_run_info(config.init))
        if config.freeze_features:
            freeze_features(self.model)
        if config.freeze_epochs and not isinstance(
            getattr(self.model, "features", None), nn.Module
        ):
            raise MobileNetError(f"{type(self.model).__name__} has no .features to freeze")
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.model.to(procs.device, memory_format=self.memory_format)

        self._fit_batch_to_data()
        self.train_loader = self._train_loader()
        # Each rank evaluates every world_size-th test image (a range serves as a sampler);
        # the tallies are summed, so every image counts once.
        self.test_loader = make_loader(
            self.bundle.test,
            batch_size=max(256, self.batch_size),
            shuffle=False,
            seed=0,
            num_workers=config.num_workers,
            sampler=range(procs.rank, len(self.bundle.test), procs.world_size),
        )
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = warmup_cosine(
            self.optimizer,
            round(config.warmup_epochs * self.steps_per_epoch),
            config.epochs * self.steps_per_epoch,
        )
        amp = procs.device.type == "cuda"
        self.autocast = dict(device_type=procs.device.type, dtype=torch.float16, enabled=amp)
        self.scaler = torch.amp.GradScaler(procs.device.type, enabled=amp)
        weight = None
        if config.class_weights:
            weight = class_weights(self.bundle.train, num_classes).to(procs.device)
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
        self.start_epoch, self.history = 0, []
        if config.resume is not None:
            state = read_train_state(self.run_dir)
            self._restore(state)
            self.init_from = state.get("init_from")
        # After the restore: DDP starts every replica from rank 0's weights.
        self.ddp, self.trunk_frozen = self.model, None
        self.display = TrainingDisplay(quiet=config.quiet, is_main=procs.is_main)

    def _set_trunk_frozen(self, frozen: bool) -> None:
        """Freeze or unfreeze the trunk (``freeze_epochs``; ``freeze_features`` keeps it
        frozen throughout) and wrap the model for DistributedDataParallel, again when what
        trains changed: DDP reduces the gradients of the parameters that trained when it
        was built."""
        frozen = frozen or self.config.freeze_features
        if frozen == self.trunk_frozen:
            return
        if self.config.freeze_epochs or self.config.freeze_features:
            for p in self.model.features.parameters():
                p.requires_grad_(not frozen)
        self.trunk_frozen = frozen
        if self.procs.distributed:
            # Depthwise [C, 1, k, k] and pointwise [C', C, 1, 1] weights get gradients whose
            # strides differ from the weights' only along size-1 dimensions: the same memory
            # layout, which DDP's reducer nonetheless reports once per process as a mismatch.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            device_ids = [self.procs.device] if self.procs.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)

    def _fit_batch_to_data(self) -> None:
        """A batch never larger than a process's share of the training split (with a warning):
        16 images per class train as they are, as in timm and torchvision."""
        share = math.ceil(len(self.bundle.train) / self.procs.world_size)
        if share == 0:
            raise MobileNetError("the training split is empty; add images")
        if self.batch_size > share:
            warnings.warn(
                f"the training split has {len(self.bundle.train)} images, fewer than a batch "
                f"of {self.config.batch_size}: training with batches of "
                f"{share * self.procs.world_size}",
                SmallDataWarning,
                stacklevel=2,
            )
            self.batch_size = share

    def _train_loader(self) -> torch.utils.data.DataLoader:
        """This rank's shard of each epoch, in an order drawn from (seed, epoch)."""
        shards = DistributedSampler(
            self.bundle.train,
            num_replicas=self.procs.world_size,
            rank=self.procs.rank,
            shuffle=True,
            seed=self.config.seed,
        )
        return make_loader(
            self.bundle.train,
            self.batch_size,
            shuffle=True,
            seed=self.config.seed,
            num_workers=self.config.num_workers,
            sampler=shards,
            fold_single=True,
        )

    # ---------------------------------------------------------------- checkpoints

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            load_weights_into(self.model, state["model"], str(self.run_dir / STATE_FILE))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.start_epoch, self.history = int(state["epoch"]), list(state["history"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise MobileNetError(
                f"cannot resume {self.run_dir}: {STATE_FILE} does not fit this run ({e})"
            ) from None

    def _run_info(self, epoch: int) -> RunInfo:
        bundle, last = self.bundle, self.history[-1]
        return RunInfo(
            model=self.config.model,
            model_kwargs=self.kwargs,
            class_names=bundle.class_names,
            mean=bundle.mean,
            std=bundle.std,
            input_size=bundle.input_size,
            epoch=epoch,
            metrics={k: v for k, v in last.items() if k != "epoch"},
            data=DataRecord(
                source=self.config.data,
                name=bundle.name,
                split_seed=SPLIT_SEED,
                val_fraction=VAL_FRACTION,
                crop_pct=bundle.crop_pct,
            ),
            train_config=self.config.recipe(),
            finished=epoch == self.config.epochs,
            world_size=self.procs.world_size,
            init_from=self.init_from,
        )

    def _checkpoint(self, epoch: int, replica_digests: list[str] | None = None) -> None:
        """Publish the model, then the state to continue from (see the module docstring)."""
        if not self.procs.is_main:
            return
        info = self._run_info(epoch)
        if replica_digests is not None:
            info.replica_sha256 = replica_digests
        save_run(self.run_dir, self.model, info)
        state = {
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "init_from": self.init_from,
        }
        write_state(self.run_dir, state)
        write_metrics(self.run_dir, self.history)

    # ---------------------------------------------------------------- epochs

    def run(self) -> Path:
        config = self.config
        last = (
            config.epochs
            if config.stop_after_epoch is None
            else min(config.epochs, config.stop_after_epoch)
        )
        self.display.print(
            self.display.banner(config, self.bundle, self.procs, self.start_epoch, self.run_dir)
        )
        scalars = ScalarLog(self.run_dir, self.start_epoch + 1, TRAIN_SCALARS, self.procs.is_main)
        with self.display.progress() as progress, contextlib.closing(scalars):
            epochs_bar = progress.add_task(
                "epochs", total=config.epochs, completed=self.start_epoch
            )
            batches_bar = progress.add_task("batches", total=self.steps_per_epoch)
            every = self.display.batch_interval(self.steps_per_epoch)
            for epoch in range(self.start_epoch + 1, last + 1):
                progress.reset(batches_bar)

                def on_batch(step: int, sums: torch.Tensor, epoch: int = epoch) -> None:
                    progress.advance(batches_bar)
                    if self.display.batch_lines and step % every == 0:
                        loss = float(sums[0] / sums[2])  # the epoch's mean so far
                        self.display.print(
                            self.display.batch_line(
                                epoch, config.epochs, step, self.steps_per_epoch, loss
                            )
                        )

                record = self._epoch(epoch, on_batch)
                self.history.append(record)
                digests = (
                    self.procs.gather(state_digest(self.model))
                    if (epoch == config.epochs and self.procs.distributed)
                    else None
                )
                self._checkpoint(epoch, digests)
                scalars.epoch(record)
                progress.advance(epochs_bar)
                progress.console.print(self.display.epoch_line(record, config.epochs))
        self.display.print(f"run saved to {self.run_dir}")
        return self.run_dir

    def _epoch(self, epoch: int, on_batch) -> dict[str, Any]:
        config, procs, device = self.config, self.procs, self.procs.device
        seed_epoch(config.seed, epoch, procs.rank)
        self.train_loader.batch_sampler.sampler.set_epoch(epoch)
        self._set_trunk_frozen(epoch <= config.freeze_epochs)
        self.ddp.train()
        if self.trunk_frozen:
            self.model.features.eval()
        if config.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, images
        start = time.perf_counter()
        for step, (images, labels) in enumerate(self.train_loader, start=1):
            images = images.to(device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(**self.autocast):
                logits = self.ddp(images)
                loss = self.criterion(logits, labels)
            correct = (logits.argmax(1) == labels).sum().double()
            n = torch.tensor(len(labels), dtype=torch.float64, device=device)
            batch = torch.stack([loss.detach().double() * n, correct, n])  # loss, correct, n
            if procs.distributed:
                dist.all_reduce(batch)  # every rank sees the same loss, so all stop together
            if not math.isfinite(float(batch[0])):  # before the step: the weights stay good
                raise NonFiniteLossError(
                    f"loss became {float(batch[0] / batch[2])} at epoch {epoch}, step {step}; "
                    f"stopped, {self._kept()} (try a lower --lr)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            sums += batch
            on_batch(step, sums)
        train_time = time.perf_counter() - start
        self._average_batchnorm_statistics()
        tally = tally_predictions(
            self.model,
            self.test_loader,
            len(self.bundle.class_names),
            device,
            channels_last=config.channels_last,
        )
        tally.all_reduce()
        return self._record(epoch, sums, tally, train_time, time.perf_counter() - start)

    def _kept(self) -> str:
        if self.history:
            return f"the checkpoint of epoch {self.history[-1]['epoch']} in {self.run_dir} is kept"
        return "no checkpoint was written"

    def _average_batchnorm_statistics(self) -> None:
        """Average the replicas' BatchNorm running statistics, which each rank updates from
        its own shard, so every replica (and the checkpoint) holds the same model."""
        if not self.procs.distributed:
            return
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= self.procs.world_size

    def _record(self, epoch: int, sums, tally: Tally, train_time: float, epoch_time: float):
        test = Evaluation.from_tally(tally, self.bundle.class_names)
        loss, correct, images = sums.tolist()
        return {
            "epoch": epoch,
            "train_loss": loss / images,
            "train_top1": correct / images,
            "test_loss": test.loss,
            "test_top1": test.top1,
            "test_top5": test.top5,
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": images / train_time,
            "epoch_time_s": epoch_time,
            "threads": torch.get_num_threads(),
        }

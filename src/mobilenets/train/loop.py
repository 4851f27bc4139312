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

import dataclasses
import inspect
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DistributedSampler

from mobilenets.data import VAL_FRACTION, DataBundle, load_data, make_loader
from mobilenets.data.canvases import CANVAS_LOW_STRIDE
from mobilenets.data.dense_sources import load_dense_data
from mobilenets.errors import MobileNetError
from mobilenets.models import (
    check_resolution,
    create_model,
    get_model_factory,
    list_models,
    model_task,
    takes_keyword,
)
from mobilenets.models.multibox import MultiboxLoss
from mobilenets.runs import (
    DataRecord,
    RunInfo,
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
    load_trunk_weights,
)
from mobilenets.train.optim import make_optimizer, warmup_cosine
from mobilenets.train.progress import TRAIN_SCALARS, TrainingDisplay
from mobilenets.train.recipe import DEFAULT_MODEL, DEFAULT_WIDTH_MULT, TRAIN_TASKS, TrainConfig
from mobilenets.train.run_dir import (
    STATE_FILE,
    data_source,
    new_run_dir,
    read_train_state,
    resumed_config,
)
from mobilenets.train.task import Classification, Detection, Segmentation, Task
from mobilenets.train.trainer import (  # noqa: F401 (seed_epoch, state_digest: names of the loop)
    NonFiniteLossError,
    Trainer,
    run_lock,
    seed_epoch,
    state_digest,
)
from mobilenets.train.trunk import TRUNK_DIR, on_canvases, pretrain_trunk, with_trunk_epochs

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
    if config.dense:  # a head on a trunk: torchvision's reduced tail unless the trunk is loaded
        wanted = {**wanted, "reduced_tail": config.init is None}
    accepted = inspect.signature(get_model_factory(config.model or DEFAULT_MODEL)).parameters
    if config.low_stride is not None:
        if "low_stride" not in accepted:
            raise MobileNetError(
                f"--low-stride is LR-ASPP's; {config.model or DEFAULT_MODEL} has no detail map"
            )
        wanted["low_stride"] = config.low_stride
    return {k: v for k, v in wanted.items() if k in accepted}


def _with_canvas_detail(config: TrainConfig) -> TrainConfig:
    """A fresh LR-ASPP run on the digit canvases reads its detail map at
    :data:`CANVAS_LOW_STRIDE` unless told otherwise; set in the config, so the run records
    it and a resumed run builds the same model."""
    if config.low_stride is not None or not on_canvases(config):
        return config
    if not takes_keyword(config.model, "low_stride"):
        return config
    return dataclasses.replace(config, low_stride=CANVAS_LOW_STRIDE)


def _load_bundle(config: TrainConfig) -> DataBundle:
    """Both splits of the data ``config.task`` trains on."""
    if config.dense:
        return load_dense_data(
            TRAIN_TASKS[config.task],
            config.data,
            config.resolution,
            seed=SPLIT_SEED,
            val_fraction=VAL_FRACTION,
        )
    return load_data(
        config.data,
        config.resolution,
        seed=SPLIT_SEED,
        val_fraction=VAL_FRACTION,
        augment=config.augment,
    )


def _check_model_task(config: TrainConfig) -> None:
    """Refuse a model that predicts something else than ``config.task`` trains for."""
    wanted = TRAIN_TASKS[config.task]
    found = model_task(config.model)
    if found != wanted:
        raise MobileNetError(
            f"{config.model} is a {found} model; --task {config.task} needs one of "
            f"{', '.join(list_models(wanted))}"
        )


def _make_task(config: TrainConfig, bundle: DataBundle, model: nn.Module, device) -> Task:
    """What ``config.task`` trains for, on ``model`` (a detector's default boxes) and
    ``bundle`` (its classes; the class weights of its training split)."""
    if config.task == "detect":
        return Detection(MultiboxLoss(model.default_boxes(bundle.input_size[1])).to(device))
    if config.task == "segment":
        return Segmentation(len(bundle.class_names))
    weight = None
    if config.class_weights:
        weight = class_weights(bundle.train, len(bundle.class_names)).to(device)
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    return Classification(bundle.class_names, criterion)


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


# --------------------------------------------------------------------------- the loop


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says how to continue from the last epoch kept."""

    def __init__(self, run_dir: Path, trunk: bool = False) -> None:
        """``trunk``: ``run_dir`` is a head's trunk, trained first by the same command, which
        continues it when run again (mobilenets.train.trunk)."""
        if not (run_dir / STATE_FILE).is_file():
            message = "no epoch had finished, nothing was saved"
        elif trunk:
            message = (
                f"the trunk's last finished epoch is kept in {run_dir}; run the same command "
                "again to continue it"
            )
        else:
            message = (
                f"the last finished epoch is kept in {run_dir}; continue with "
                f"mobilenets train --resume {run_dir}"
            )
        super().__init__(message)


class SmallDataWarning(UserWarning):
    """The data is smaller than the recipe assumed (a batch larger than the training split)."""


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
        config = with_trunk_epochs(inherit_init(config, init_run_info(config.init)))
        config = _with_canvas_detail(config)
    config = config.with_recipe()
    config.validate()
    _check_model_task(config)
    config = dataclasses.replace(config, data=data_source(config.data))
    # Every rank finds the same name: nothing is written before epoch 1 ends.
    run_dir = Path(config.resume) if config.resume is not None else new_run_dir(config)
    if config.resume is None and config.trunk_epochs:
        try:
            config = pretrain_trunk(config, run_dir, train)
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir / TRUNK_DIR, trunk=True) from None
    procs = Processes.start(config.device)
    previous_threads = torch.get_num_threads()
    try:
        asked = config.threads if config.resume is None else _resumed_threads(config)
        threads, why = pick_threads(asked)
        torch.set_num_threads(threads)
        config = dataclasses.replace(config, threads=threads)
        if procs.is_main and procs.device.type == "cpu":
            print(f"{threads} CPU thread{'s' if threads > 1 else ''}: {why}")
        # a fresh run checks again: another may have finished here since we looked
        with run_lock(run_dir, "training run", config.resume is None, procs.is_main):
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


class _Trainer(Trainer):
    """One classification run: set up here, epochs in :class:`Trainer`."""

    def __init__(
        self, config: TrainConfig, procs: Processes, model: nn.Module | None, run_dir: Path
    ) -> None:
        if config.batch_size % procs.world_size:
            raise MobileNetError(
                f"batch size {config.batch_size} does not split evenly across "
                f"{procs.world_size} processes"
            )
        self.config = config
        self.batch_size = config.batch_size // procs.world_size  # per process
        self.bundle = _load_bundle(config)
        channels, resolution, _ = self.bundle.input_size
        num_classes = len(self.bundle.class_names)
        self.kwargs = model_kwargs(config, num_classes, channels, resolution)
        torch.manual_seed(config.seed)  # the initial weights
        model = create_model(config.model, **self.kwargs) if model is None else model
        check_resolution(model, resolution)
        self.init_from = None
        if config.init is not None and config.resume is None:
            if config.dense:
                load_trunk_weights(model, config.init)
            else:
                load_init_weights(model, config.init, config.model, self.kwargs)
            self.init_from = init_origin(config.init, init_run_info(config.init))
        if config.freeze_features:
            freeze_features(model)
        if config.freeze_epochs and not isinstance(getattr(model, "features", None), nn.Module):
            raise MobileNetError(f"{type(model).__name__} has no .features to freeze")
        super().__init__(
            run_dir,
            _make_task(config, self.bundle, model, procs.device),
            procs,
            config.epochs,
            config.seed,
            TrainingDisplay(quiet=config.quiet, is_main=procs.is_main),
            TRAIN_SCALARS,
            config.stop_after_epoch,
        )
        self.model, self.curves = model, not config.dense
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.model.to(procs.device, memory_format=self.memory_format)

        self._fit_batch_to_data()
        self.train_loader = self._train_loader()
        # Each rank evaluates every world_size-th test image (a range serves as a sampler);
        # the tallies are summed, so every image counts once. A dense task's metrics do not
        # add up by shards: every rank scores the whole split.
        shards = 1 if config.dense else procs.world_size
        self.test_loader = make_loader(
            self.bundle.test,
            batch_size=max(256, self.batch_size),
            shuffle=False,
            seed=0,
            num_workers=config.num_workers,
            sampler=range(procs.rank % shards, len(self.bundle.test), shards),
        )
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = warmup_cosine(
            self.optimizer,
            round(config.warmup_epochs * self.steps_per_epoch),
            config.epochs * self.steps_per_epoch,
        )
        # The moving average of the weights (``ema``): BatchNorm's statistics averaged with
        # them; the first step copies the weights, so it starts from the trained network.
        self.ema = None
        if config.ema:
            average = get_ema_multi_avg_fn(config.ema)
            self.ema = AveragedModel(self.model, multi_avg_fn=average, use_buffers=True)
        if config.resume is not None:
            state = read_train_state(self.run_dir)
            self.resume(state)
            self.init_from = state.get("init_from")
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
        # After the restore: DDP starts every replica from rank 0's weights.
        self.ddp, self.trunk_frozen = self.model, None

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

    def publish(self, epoch: int, replica_digests: list[str] | None) -> None:
        info = self._run_info(epoch)
        if replica_digests is not None:
            info.replica_sha256 = replica_digests
        save_run(self.run_dir, self.published(), info)

    def published(self) -> nn.Module:
        """What the run directory holds and each epoch is scored by: the moving average of
        the weights with ``ema``, else the last step's."""
        return self.ema.module if self.ema is not None else self.model

    def state_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"init_from": self.init_from}
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        return extra

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def banner(self) -> str:
        return self.display.banner(
            self.config, self.bundle, self.procs, self.start_epoch, self.run_dir
        )

    def epoch_line(self, record: dict[str, Any]) -> str:
        if self.config.dense:
            return self.display.dense_epoch_line(record, self.config.epochs, self.task.shown)
        return self.display.epoch_line(record, self.config.epochs)

    # ---------------------------------------------------------------- epochs

    def begin_epoch(self, epoch: int) -> torch.utils.data.DataLoader:
        self.train_loader.batch_sampler.sampler.set_epoch(epoch)
        self._set_trunk_frozen(epoch <= self.config.freeze_epochs)
        self.ddp.train()
        if self.trunk_frozen:
            self.model.features.eval()
        if self.config.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self.train_loader

    def _average_batchnorm_statistics(self) -> None:
        """Average the replicas' BatchNorm running statistics, which each rank updates from
        its own shard, so every replica (and the checkpoint) holds the same model."""
        if not self.procs.distributed:
            return
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= self.procs.world_size

    def measure(self, epoch: int, sums: torch.Tensor, train_time: float, began: float) -> dict:
        self._average_batchnorm_statistics()
        device, channels_last = self.procs.device, self.config.channels_last
        test = self.task.evaluate(self.published(), self.test_loader, device, channels_last)
        if self.ema is not None:  # the last step's weights too, to see what the average gave
            last = self.task.evaluate(self.model, self.test_loader, device, channels_last)
            test.update({f"last_step_{k}": v for k, v in last.items()})
        return {
            "epoch": epoch,
            **self.task.train_metrics(sums),
            **test,
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": sums[-1].item() / train_time,
            "epoch_time_s": time.perf_counter() - began,
            "threads": torch.get_num_threads(),
        }

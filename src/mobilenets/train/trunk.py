"""A head's trunk trained first as a classifier of the digits behind the digit canvases.

A detector or segmenter from random weights must learn what a digit is from its boxes or
masks; a classifier learns it from the same digits in a fraction of the time. So, on the
digit canvases, ``train --task segment`` first trains the head's backbone (its registered
classifier, at the head's width) on the embedded digits, the same training digits the
canvases are drawn from (the held-out canvases' digits stay unseen), and then starts the
head's trunk from it, as ``--init`` would (``benchmarks/results/segment_pretrained_trunk.md``:
mIoU 0.8668 against 0.8325 from random weights at the same 15-minute budget).

The classifier is a run of its own, ``<out>/trunk``: its epochs are checkpointed like any
run's, so a command interrupted while it trains continues it when run again, and a finished
one is reused. The head's run records it as the weights it started from (``init_from``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from mobilenets.data.canvases import TRUNK_RESOLUTION
from mobilenets.errors import MobileNetError
from mobilenets.models import backbone_of
from mobilenets.runs import read_run_info
from mobilenets.train.recipe import CANVAS_TRUNK_EPOCHS, RUNTIME_FIELDS, TrainConfig
from mobilenets.train.run_dir import STATE_FILE, holds_run

TRUNK_DIR = "trunk"  # the classifier's run, inside the head's run directory


def on_canvases(config: TrainConfig) -> bool:
    """Whether ``config`` trains a head on the embedded digit canvases."""
    return config.dense and config.data in (None, "digits")


def with_trunk_epochs(config: TrainConfig) -> TrainConfig:
    """``config`` with ``trunk_epochs`` decided: the task's default on the digit canvases for
    a trunk from random weights (:data:`CANVAS_TRUNK_EPOCHS`), else 0. Asked for where there
    are no digits to classify, or beside ``--init`` (which already starts the trunk), it is
    refused in one line."""
    asked = config.trunk_epochs
    if asked is None:
        epochs = CANVAS_TRUNK_EPOCHS.get(config.task, 0)
        fits = on_canvases(config) and config.init is None
        return dataclasses.replace(config, trunk_epochs=epochs if fits else 0)
    if asked < 0:
        raise MobileNetError(f"--trunk-epochs must be 0 or more, got {asked}")
    if asked and not on_canvases(config):
        what = "a classifier" if not config.dense else f"--data {config.data}"
        raise MobileNetError(
            f"--trunk-epochs trains a head's trunk on the digits behind the digit canvases; "
            f"{what} has none (start the trunk from a run with --init instead)"
        )
    if asked and config.init is not None:
        raise MobileNetError("--trunk-epochs and --init both start the trunk: pass one")
    return config


def trunk_config(config: TrainConfig, trunk_dir: Path) -> TrainConfig:
    """The classifier run that pretrains ``config``'s trunk: the head's backbone at its
    width, on the embedded digits at :data:`TRUNK_RESOLUTION` px with the full stride (the
    digits about as large as on the head's input), the scratch recipe, the head's seed,
    threads and device."""
    return TrainConfig(
        task="classify",
        model=backbone_of(config.model),
        data="digits",
        width_mult=config.width_mult,
        resolution=TRUNK_RESOLUTION,
        small_input=False,
        recipe_name="scratch",
        epochs=config.trunk_epochs,
        seed=config.seed,
        out=str(trunk_dir),
        quiet=config.quiet,
        num_workers=config.num_workers,
        device=config.device,
        threads=config.threads,
    )


def pretrain_trunk(
    config: TrainConfig, run_dir: Path, train: Callable[[TrainConfig], Path]
) -> TrainConfig:
    """Train the classifier of ``config``'s trunk in ``run_dir/trunk`` with ``train`` (the
    loop's, which calls this: passed in, so imports run one way), continuing it if an earlier
    command stopped while it trained, reusing it if it finished; return ``config`` starting
    its trunk from it."""
    trunk_dir = run_dir / TRUNK_DIR
    wanted = trunk_config(config, trunk_dir)
    if os.environ.get("RANK", "0") == "0":
        print(
            f"first the trunk: {wanted.model} learns the digits for {config.trunk_epochs} "
            f"epochs in {trunk_dir} (--trunk-epochs; 0 skips it)"
        )
    if not holds_run(trunk_dir):
        train(wanted)
    else:
        done = read_run_info(trunk_dir)
        if done.model != wanted.model or done.model_kwargs.get("width_mult") != wanted.width_mult:
            raise MobileNetError(
                f"{trunk_dir} holds a {done.model} trunk of another width or family than "
                f"{config.model} needs; remove it or pick another --out"
            )
        if (done.epoch or 0) < config.trunk_epochs:
            if not (trunk_dir / STATE_FILE).is_file():
                raise MobileNetError(f"cannot continue the trunk in {trunk_dir}: no state")
            runtime = {k: getattr(wanted, k) for k in RUNTIME_FIELDS if k not in ("out", "resume")}
            train(TrainConfig(resume=str(trunk_dir), **runtime))
    return dataclasses.replace(config, init=str(trunk_dir))

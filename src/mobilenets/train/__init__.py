"""Training: the loop (:mod:`~mobilenets.train.loop`), its recipe
(:mod:`~mobilenets.train.recipe`, torch-free: the command line is generated from it), the
optimizer and schedule (:mod:`~mobilenets.train.optim`), processes under ``torchrun``
(:mod:`~mobilenets.train.distributed`), devices and threads (:mod:`~mobilenets.train.devices`),
accuracy tallies (:mod:`~mobilenets.train.metrics`), the console
(:mod:`~mobilenets.train.progress`), the run directory (:mod:`~mobilenets.train.run_dir`) and
starting from another run's weights (:mod:`~mobilenets.train.finetune`).

``mobilenets.train.train`` and the other names of the loop, the run directory, fine-tuning and
the recipe are read from those modules on first use (PEP 562): building the command line
imports :mod:`~mobilenets.train.recipe` through this package, and must not import torch.
"""

from __future__ import annotations

from mobilenets import names_from

__getattr__ = names_from(
    __name__, tuple(f"{__name__}.{part}" for part in ("loop", "run_dir", "finetune", "recipe"))
)

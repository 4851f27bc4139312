"""The optimizer and learning-rate schedule of the training recipe (the papers' and the
reference trainers': SGD with Nesterov momentum or RMSprop, linear warm-up into a cosine
decay stepped every batch, no weight decay on BatchNorm parameters and biases)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mobilenets.errors import MobileNetError
from mobilenets.train.recipe import TrainConfig


def parameter_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, trunk_lr: float = 1.0
) -> list[dict[str, Any]]:
    """Weight decay on convolution and linear weights only: decaying BatchNorm's scale and
    shift or a bias only fights the normalisation (as in the reference recipes).

    With ``trunk_lr`` other than 1, the parameters of ``model.features`` (the pretrained trunk,
    when fine-tuning) learn at ``trunk_lr * lr`` and the rest (the new head) at ``lr``: four
    groups instead of two."""
    if trunk_lr == 1.0:
        parts = [(list(model.parameters()), None)]
    else:
        features = getattr(model, "features", None)
        if not isinstance(features, nn.Module):
            raise MobileNetError(f"{type(model).__name__} has no .features for a trunk lr")
        trunk = {id(p) for p in features.parameters()}
        head = [p for p in model.parameters() if id(p) not in trunk]
        parts = [(list(features.parameters()), trunk_lr * lr), (head, lr)]
    groups = []
    for params, group_lr in parts:
        decay = [p for p in params if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in params if p.requires_grad and p.ndim <= 1]
        extra = {} if group_lr is None else {"lr": group_lr}
        groups += [
            {"params": decay, "weight_decay": weight_decay, **extra},
            {"params": no_decay, "weight_decay": 0.0, **extra},
        ]
    return groups


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer (settings left None filled from it) over ``model``'s trainable
    parameters, the trunk at ``config.trunk_lr`` times the learning rate."""
    config = config.with_recipe()
    groups = parameter_groups(model, config.weight_decay, config.lr, config.trunk_lr)
    return build_optimizer(config.optimizer, groups, config.lr, config.momentum)


def build_optimizer(
    name: str, groups: list[dict[str, Any]], lr: float, momentum: float, nesterov: bool = True
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` over parameter ``groups``: what ``train`` and ``qat``
    both build their optimizer with."""
    if name == "rmsprop":
        # The papers' RMSprop (decay 0.9, momentum 0.9). TensorFlow adds epsilon inside the
        # square root, torch outside: 1e-3 here is roughly TF's 1e-6 for typical gradients.
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=1e-3, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name != "sgd":
        raise MobileNetError(f"unknown optimizer {name!r}; choose from sgd, rmsprop, adamw, adam")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then a cosine decay to 0 at the last step.

    Warm-up keeps the first, large updates from wrecking freshly initialised BatchNorm
    statistics at the full learning rate.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""The float steps before post-training int8, in the one order they compose.

Each step changes the BN-folded float model so that a runtime's own quantizer, calibrating
it afterwards, loses less; none needs the runtime to know about it. Equalization rescales
channels (:mod:`mobilenets.deploy.equalize`). Bias correction then cancels the int8 shift of
each layer's mean output (:mod:`mobilenets.deploy.bias_correction`). The correction runs
last, because it measures the shifts of the weights and ranges that will be quantized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mobilenets.deploy.bias_correction import bias_correct as correct_biases
from mobilenets.deploy.equalize import equalize as equalize_channels


@dataclass
class Preparation:
    """What was done to the float model before int8 (``None``: that step was not asked)."""

    equalization: str | None = None
    bias_correction: str | None = None

    def describe(self) -> str | None:
        done = [step for step in (self.equalization, self.bias_correction) if step]
        return "; ".join(done) or None


def prepare_for_int8(
    folded: nn.Module,
    calibration: Sequence[torch.Tensor],
    equalize: bool = False,
    bias_correct: bool = False,
    on_message: Callable[[str], object] | None = None,
) -> tuple[nn.Module, Preparation]:
    """``folded`` after the steps asked for, measured on the ``calibration`` images."""
    say = on_message or (lambda _: None)
    done = Preparation()
    model = folded
    if equalize:
        model, equalization = equalize_channels(model, calibration)
        done.equalization = equalization.describe()
        say(done.equalization)
    if bias_correct:
        model, correction = correct_biases(model, calibration)
        done.bias_correction = correction.describe()
        say(done.bias_correction)
    return model, done

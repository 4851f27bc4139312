"""The float steps before post-training int8, in the one order they compose.

Each step changes the BN-folded float model so that a runtime's own quantizer, calibrating
it afterwards, loses less; none needs the runtime to know about it. Equalization rescales
channels (:mod:`mobilenets.int8.equalize`). AdaRound then puts the weights on the int8
grid, each rounded up or down as its layer's output needs (:mod:`mobilenets.int8.adaround`).
Bias correction cancels the int8 shift of each layer's mean output
(:mod:`mobilenets.int8.bias_correction`). Each step measures the model that the steps
before it left, so the correction comes last: it measures the shifts of the weights and
ranges that will be quantized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mobilenets.int8.adaround import DEFAULT_ITERATIONS
from mobilenets.int8.adaround import adaround as round_adaptively
from mobilenets.int8.bias_correction import bias_correct as correct_biases
from mobilenets.int8.equalize import can_equalize
from mobilenets.int8.equalize import equalize as equalize_channels


@dataclass
class Preparation:
    """What was done to the float model before int8 (``None``: that step was not asked)."""

    equalization: str | None = None
    rounding: str | None = None
    bias_correction: str | None = None


def prepare_for_int8(
    folded: nn.Module,
    calibration: Sequence[torch.Tensor],
    equalize: bool | None = False,
    bias_correct: bool = False,
    adaround: bool | int = False,
    on_message: Callable[[str], object] | None = None,
) -> tuple[nn.Module, Preparation]:
    """``folded`` after the steps asked for, measured on the ``calibration`` images;
    ``adaround`` is True (AdaRound's default steps per layer) or a number of steps.

    ``equalize`` None equalizes every network that :func:`~mobilenets.int8.equalize.
    can_equalize` takes (a format's default, :attr:`mobilenets.deploy.target.Target.equalize`,
    asks for it so), True asks for it (one line where it cannot be done), False leaves it
    out."""
    say = on_message or (lambda _: None)
    done = Preparation()
    model = folded
    if equalize is None:
        equalize = can_equalize(folded)
    if equalize:
        model, equalization = equalize_channels(model, calibration)
        done.equalization = equalization.describe()
        say(done.equalization)
    if adaround:
        steps = DEFAULT_ITERATIONS if adaround is True else adaround
        model, rounding = round_adaptively(model, calibration, steps)
        done.rounding = rounding.describe()
        say(done.rounding)
    if bias_correct:
        model, correction = correct_biases(model, calibration)
        done.bias_correction = correction.describe()
        say(done.bias_correction)
    return model, done

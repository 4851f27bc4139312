"""Which device to run on: one parser for every ``--device``, with one-line errors."""

from __future__ import annotations

import torch

from mobilenets.errors import MobileNetError


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a torch device (None: the GPU when there is one), or a one-line error."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MobileNetError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MobileNetError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device

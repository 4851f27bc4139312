"""Which device to run on (one parser for every ``--device``, with one-line errors), and how
many CPU threads to use when other processes share the machine."""

from __future__ import annotations

import math
import os
import time

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


# --------------------------------------------------------------------------- CPU threads

# How long the other processes' load is sampled before a run picks its thread count.
LOAD_SAMPLE_S = 0.3


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def busy_cores(interval: float = LOAD_SAMPLE_S) -> float:
    """How many cores other processes kept busy over the next ``interval`` seconds, from the
    kernel's CPU time counters (``/proc/stat``); where there is none, the 1-minute load
    average. This process sleeps meanwhile, so what is counted is the others' load."""
    try:
        before = _cpu_times()
        time.sleep(interval)
        after = _cpu_times()
    except OSError:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    total = sum(after) - sum(before)
    idle = (after[3] + after[4]) - (before[3] + before[4])  # idle and iowait
    if total <= 0:
        return 0.0
    return (os.cpu_count() or 1) * (total - idle) / total


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal


def pick_threads(requested: int | None = None) -> tuple[int, str]:
    """The intra-op thread count for CPU work, and why.

    ``requested``, or ``OMP_NUM_THREADS`` when set (torchrun sets 1 per process), wins.
    Otherwise one thread per core that other processes leave idle, at least one. PyTorch's
    default is one per core whatever else runs, and a parallel region ends only when its
    slowest thread does: with another busy process on one of two cores, every one of the
    thousands of small operations of a training step waited for a time slice on the shared
    core, and a digits epoch ran several times slower than on one thread
    (``benchmarks/train_threads.py`` measures it).
    """
    if requested is not None:
        if requested < 1:
            raise MobileNetError(f"threads must be at least 1, got {requested}")
        return requested, "as asked"
    from_env = os.environ.get("OMP_NUM_THREADS", "")
    if from_env.isdigit() and int(from_env) > 0:
        return int(from_env), "OMP_NUM_THREADS"
    cores = usable_cores()
    busy = busy_cores() if cores > 1 else 0.0
    free = max(1, min(cores, math.floor(cores - busy + 0.5)))
    if free == cores:
        return free, f"{cores} idle cores"
    return free, f"{busy:.1f} of {cores} cores busy with other work"

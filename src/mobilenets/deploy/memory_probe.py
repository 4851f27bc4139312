"""Inference memory of one exported program, measured in a process of its own.

Programs loaded one after another in one process say little about each: the allocator hands a
program the memory an earlier one freed, and the runtime's own start-up is paid once, by
whichever came first (a second int8 program once "grew" the resident set by 0.2 MiB). So each
program gets a fresh Python. It imports the runtime and first loads and runs a one-layer
program of the same format (``warmup``): what that adds to the resident set is the runtime's
start-up (its CPU plugin's code, thread pools, kernel caches), paid once per process whatever
the model. Then it notes the resident set, loads the program, runs it twice on a batch of zeros
and reports the high-water mark above that baseline: what the model costs a process whose
runtime is up (the weights and the runtime's packed copies of them, activations, workspaces).

``python -m mobilenets.deploy.memory_probe FORMAT PATH WARMUP_PATH BATCH CHANNELS HEIGHT WIDTH
THREADS`` prints one JSON line; :func:`program_memory_bytes` runs it and reads the line.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from mobilenets.deploy.export import target_of

PROBE_TIMEOUT_S = 600
WARMUP_SHAPE = (1, 3, 32, 32)  # any network passes check_resolution at 32 px


def status_bytes(field: str) -> int | None:
    """``VmRSS``, ``VmHWM``, ... of this process from ``/proc/self/status`` (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak() -> bool:
    """Start the high-water mark afresh at the current resident set (Linux 4.0 and later)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_above(baseline: int | None, reset: bool) -> int | None:
    peak = status_bytes("VmHWM") if reset else status_bytes("VmRSS")
    return None if baseline is None or peak is None else max(peak - baseline, 0)


def probe(
    fmt: str, path: str, warmup: str, shape: Sequence[int], threads: int
) -> dict[str, int | None]:
    """Start the runtime on ``warmup`` (a one-layer program taking ``WARMUP_SHAPE``), then load
    and run ``path`` twice: the bytes each added to this process at its peak."""
    target = target_of(fmt)
    for module in target.modules:
        importlib.import_module(module)
    before = status_bytes("VmRSS")
    reset = reset_peak()
    start = target.load(Path(warmup), threads)
    start(np.zeros(WARMUP_SHAPE, dtype=np.float32))
    startup = _peak_above(before, reset)
    images = np.zeros(tuple(shape), dtype=np.float32)
    baseline = status_bytes("VmRSS")
    reset = reset_peak()
    runner = target.load(Path(path), threads)
    runner(images)
    runner(images)
    return {"startup_bytes": startup, "bytes": _peak_above(baseline, reset)}


def warmup_model() -> nn.Module:
    """The one-layer model that starts a runtime up: a 1x1 convolution on ``WARMUP_SHAPE``."""
    return nn.Sequential(nn.Conv2d(WARMUP_SHAPE[1], 8, 1)).eval()


def program_memory_bytes(
    fmt: str, path: str | Path, warmup: str | Path, shape: Sequence[int], threads: int
) -> dict[str, int | None]:
    """``{"startup_bytes", "bytes"}``: what starting the runtime, and then loading and running
    ``path``, added to a fresh process at its peak; None where the platform cannot say (no
    ``/proc``) or the probe failed. ``warmup`` is :func:`warmup_model` written in ``fmt``."""
    failed: dict[str, int | None] = {"startup_bytes": None, "bytes": None}
    argv = [sys.executable, "-m", __name__, fmt, str(path), str(warmup)]
    argv += [*map(str, shape), str(threads)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return failed
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return failed
    return json.loads(lines[-1])


def main(argv: Sequence[str] | None = None) -> None:
    fmt, path, warmup, *numbers = list(sys.argv[1:] if argv is None else argv)
    *shape, threads = (int(n) for n in numbers)
    print(json.dumps(probe(fmt, path, warmup, shape, threads)), flush=True)


if __name__ == "__main__":
    main()

"""Inference memory of one exported program, measured in a process of its own.

Programs loaded one after another in one process say little about each: the allocator hands a
program the memory an earlier one freed, and the runtime's own start-up is paid once, by
whichever came first (a second int8 program once "grew" the resident set by 0.2 MiB). So each
program gets a fresh Python: it imports the runtime, notes its resident set, loads the program,
runs it twice on a batch of zeros and reports the resident set's high-water mark above that
baseline. That is what running the model costs a process already holding the runtime: the
weights and the runtime's packed copies of them, activations and workspaces, thread pools.

``python -m mobilenets.deploy.memory_probe FORMAT PATH BATCH CHANNELS HEIGHT WIDTH THREADS``
prints one JSON line; :func:`program_memory_bytes` runs it and reads the line.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mobilenets.deploy.export import target_of

PROBE_TIMEOUT_S = 600


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


def probe(fmt: str, path: str, shape: Sequence[int], threads: int) -> dict[str, int | None]:
    """Load and run ``path`` twice in this process; the peak resident set above the baseline."""
    target = target_of(fmt)
    for module in target.modules:
        importlib.import_module(module)
    images = np.zeros(tuple(shape), dtype=np.float32)
    baseline = status_bytes("VmRSS")
    reset = reset_peak()
    runner = target.load(Path(path), threads)
    runner(images)
    runner(images)
    peak = status_bytes("VmHWM") if reset else status_bytes("VmRSS")
    used = None if baseline is None or peak is None else max(peak - baseline, 0)
    return {"baseline_bytes": baseline, "peak_bytes": peak, "bytes": used}


def program_memory_bytes(
    fmt: str, path: str | Path, shape: Sequence[int], threads: int
) -> int | None:
    """Peak resident-set growth of loading and running ``path`` in a fresh process, or None
    where the platform cannot say (no ``/proc``) or the probe failed."""
    argv = [sys.executable, "-m", __name__, fmt, str(path), *map(str, shape), str(threads)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None
    return json.loads(lines[-1])["bytes"]


def main(argv: Sequence[str] | None = None) -> None:
    fmt, path, *numbers = list(sys.argv[1:] if argv is None else argv)
    *shape, threads = (int(n) for n in numbers)
    print(json.dumps(probe(fmt, path, shape, threads)), flush=True)


if __name__ == "__main__":
    main()

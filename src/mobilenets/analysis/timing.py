"""Timing several candidates against each other on a shared machine: the one loop that
``mobilenets bench`` and ``mobilenets speedup`` both use.

Candidates are timed in interleaved rounds (a slice of calls of each, then the next, round
after round), so a slow period of a shared machine (another process, a frequency drop) is
spread over all of them instead of being charged to whichever happened to run then. What to
make of the samples (median for latency, minimum for what the hardware can do) is the
caller's choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from mobilenets.errors import MobileNetError


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    rounds: int,
    per_round: int = 1,
    settle: int = 0,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate: ``rounds`` rounds of ``per_round`` timed calls each.

    ``settle`` untimed calls open every slice: a runtime whose worker threads spin while
    waiting for work (onnxruntime's pools) can otherwise steal the next candidate's cores for
    its first calls.
    """
    if rounds < 1 or per_round < 1 or settle < 0:
        raise MobileNetError("rounds and calls per round must be >= 1, settle calls >= 0")
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(settle):
                fn()
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times

"""The shared interleaved timing loop: every candidate gets the same rounds, in alternation,
and the settle calls are never counted."""

from __future__ import annotations

import pytest

from mobilenets.analysis.timing import time_interleaved
from mobilenets.errors import MobileNetError


def test_candidates_alternate_slice_by_slice() -> None:
    log: list[str] = []
    calls = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    times = time_interleaved(calls, rounds=3, per_round=2, settle=1)
    assert {name: len(t) for name, t in times.items()} == {"a": 6, "b": 6}
    assert "".join(log) == "aaabbb" * 3  # one settle call + two timed ones per slice
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_a_slow_call_is_charged_to_its_candidate() -> None:
    import time

    times = time_interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.01)}, rounds=2)
    assert min(times["slow"]) > 0.005 > max(times["fast"])


@pytest.mark.parametrize(
    "kwargs", [{"rounds": 0}, {"rounds": 1, "per_round": 0}, {"rounds": 1, "settle": -1}]
)
def test_bad_counts(kwargs: dict) -> None:
    with pytest.raises(MobileNetError, match="rounds"):
        time_interleaved({"a": lambda: None}, **kwargs)

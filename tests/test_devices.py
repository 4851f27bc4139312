"""How many CPU threads training takes: the cores other processes leave idle."""

from __future__ import annotations

import os

import pytest
from conftest import raises_one_line

from mobilenets.train import devices


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    return monkeypatch


@pytest.mark.parametrize(
    ("busy", "threads"), [(0.0, 2), (0.3, 2), (0.7, 1), (1.0, 1), (1.9, 1), (3.5, 1)]
)
def test_threads_are_the_cores_others_leave_idle(
    two_cores: pytest.MonkeyPatch, busy: float, threads: int
) -> None:
    two_cores.setattr(devices, "busy_cores", lambda: busy)
    count, why = devices.pick_threads()
    assert count == threads
    busy_text = f"{busy:.1f} of 2 cores busy with other work"
    assert why == ("2 idle cores" if threads == 2 else busy_text)


def test_asked_threads_and_the_environment_win(two_cores: pytest.MonkeyPatch) -> None:
    two_cores.setattr(devices, "busy_cores", lambda: 2.0)
    assert devices.pick_threads(2) == (2, "as asked")
    two_cores.setenv("OMP_NUM_THREADS", "2")
    assert devices.pick_threads() == (2, "OMP_NUM_THREADS")
    with raises_one_line("threads must be at least 1"):
        devices.pick_threads(0)


def test_busy_cores_reads_this_machine() -> None:
    busy = devices.busy_cores(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9

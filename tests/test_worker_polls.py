"""The reads a backend's worker repeats on its own (Coordinator.every): the fleet control's
version on the stores that cannot be watched (nfs:, Redis, PostgreSQL, etcd), read without
waking the scheduler's thread unless something changed, on real servers."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from pyjob.core.backends import open_backend
from pyjob.core.clock import SystemClock, Waker
from pyjob.core.control import ControlState, control_for, poll
from pyjob.core.coordinator import Coordinator
from pyjob.core.errors import BackendError


class CountingWaker(Waker):
    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1
        super().wake()


def _until(what: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "not within the time given"
        time.sleep(0.02)


@pytest.mark.parametrize("fleet_lock_url", ["nfs", "redis", "postgresql", "etcd"], indirect=True)
def test_the_worker_reads_the_control_on_its_own_and_wakes_the_scheduler_only_on_a_change(
    fleet_lock_url: str,
) -> None:
    clock = SystemClock()
    waker = CountingWaker()
    coordinator = Coordinator(clock, "a", waker, lambda *a, **k: None)
    other = open_backend(fleet_lock_url, None, clock)
    try:
        store = control_for(coordinator.open(fleet_lock_url))
        theirs = control_for(other)
        assert store is not None and theirs is not None
        seen = {"version": store.version()}
        reads: list[float] = []
        got: list[ControlState | BackendError] = []

        def read() -> ControlState | None:
            reads.append(time.monotonic())
            if len(reads) == 4:
                raise BackendError("the fourth read fails")
            return poll(store, seen["version"])

        assert coordinator.every(fleet_lock_url, 0.1, read, got.append)
        _until(lambda: len(reads) >= 8)
        # Nothing changed: the reads went on, past the failure, and the one wake-up is the
        # failure's (it is told, as every backend error is).
        coordinator.drain()
        assert waker.wakes == 1 and len(got) == 1 and isinstance(got[0], BackendError)
        assert min(b - a for a, b in itertools.pairwise(reads)) >= 0.09

        theirs.pause(["j"], "b", int(time.time() * 1e6))
        _until(lambda: coordinator.drain() > 0 or len(got) > 1)
        changed = got[1]
        assert isinstance(changed, ControlState) and "j" in changed.paused
        seen["version"] = changed.version
        wakes, count = waker.wakes, len(reads)
        _until(lambda: len(reads) >= count + 5)
        coordinator.drain()
        assert waker.wakes == wakes and len(got) == 2
    finally:
        coordinator.close()
        other.close()


def test_without_a_worker_the_caller_times_the_reads() -> None:
    from pyjob.core.clock import FakeClock

    from .conftest import NOW

    coordinator = Coordinator(FakeClock(NOW), "a", Waker(), lambda *a, **k: None, threaded=False)
    assert not coordinator.every(None, 1.0, lambda: None, lambda _: None)

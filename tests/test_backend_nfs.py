"""The shared-filesystem backend. NFS cannot be mounted on these machines, so the algorithm
(link-based creation, staleness on the waiter's monotonic clock, in-place heartbeats) runs here on
a local directory, with several processes; the mount options it needs are in the README."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyjob.core.backends.nfs import NfsBackend, link_create
from pyjob.core.clock import FakeClock

from .backend_suite import *  # noqa: F403
from .backend_suite import KEEP, T0, claim_one, renew_one


@pytest.fixture
def lock_url(tmp_path: Path) -> str:
    return f"nfs:{tmp_path / 'shared'}"


def test_link_create_is_exclusive(tmp_path: Path) -> None:
    assert link_create(tmp_path / "x", "a")
    assert not link_create(tmp_path / "x", "b")
    assert (tmp_path / "x").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temporary file left behind


def test_stale_claim_lock_of_a_dead_claimer_is_broken(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    backend = NfsBackend(tmp_path / "shared", clock)
    backend.check()
    (tmp_path / "shared" / "claims.lock").write_text("dead-host 1234")  # a crashed claimer's
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won  # waits out the staleness, then breaks
    assert clock.monotonic() - 1000.0 > 10.0


def test_staleness_is_judged_on_the_waiters_clock_not_file_times(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    holder = NfsBackend(tmp_path / "shared")
    waiter = NfsBackend(tmp_path / "shared", clock)
    lease = holder.acquire_lease("job", "holder", 5.0)
    assert lease is not None
    assert waiter.acquire_lease("job", "waiter", 5.0) is None
    clock.advance(4.0)
    assert renew_one(holder, lease)  # the heartbeat changes the content...
    clock.advance(4.0)
    assert waiter.acquire_lease("job", "waiter", 5.0) is None  # ...so 8 s is not stale
    clock.advance(6.0)  # no heartbeat for 6 s > TTL on the waiter's clock
    taken = waiter.acquire_lease("job", "waiter", 5.0)
    assert taken is not None
    assert not renew_one(holder, lease)  # the old holder learns it lost the lease

"""The reads a backend's worker repeats on its own (Coordinator.every): the fleet control's
version on the stores that cannot be watched (nfs:, Redis, PostgreSQL, etcd), read without
waking the scheduler's thread unless something changed; on Redis and PostgreSQL read when a
writer publishes (the worker's subscription), and rarely else. On real servers."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyjob.core.backends import open_backend
from pyjob.core.clock import SystemClock, Waker
from pyjob.core.control import ControlState, ControlStore, control_for, poll
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


@contextlib.contextmanager
def _two_hosts(url: str) -> Iterator[tuple[Coordinator, CountingWaker, ControlStore, ControlStore]]:
    """This process's coordinator (its scheduler's waker counts wake-ups) and control store,
    beside another host's control store on the same backend."""
    clock = SystemClock()
    waker = CountingWaker()
    coordinator = Coordinator(clock, "a", waker, lambda *a, **k: None)
    other = open_backend(url, None, clock)
    try:
        store = control_for(coordinator.open(url))
        theirs = control_for(other)
        assert store is not None and theirs is not None
        yield coordinator, waker, store, theirs
    finally:
        coordinator.close()
        other.close()


@pytest.mark.parametrize("fleet_lock_url", ["nfs", "redis", "postgresql", "etcd"], indirect=True)
def test_the_worker_reads_the_control_on_its_own_and_wakes_the_scheduler_only_on_a_change(
    fleet_lock_url: str,
) -> None:
    with _two_hosts(fleet_lock_url) as (coordinator, waker, store, theirs):
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


def test_without_a_worker_the_caller_times_the_reads() -> None:
    from pyjob.core.clock import FakeClock

    from .conftest import NOW

    coordinator = Coordinator(FakeClock(NOW), "a", Waker(), lambda *a, **k: None, threaded=False)
    assert not coordinator.every(None, 1.0, lambda: None, lambda _: None)


def _listeners(url: str) -> list[str]:
    """The connections subscribed to the control's channel: their ids."""
    if url.startswith("redis"):
        import redis

        clients = redis.Redis.from_url(url).client_list()
        return [c["id"] for c in clients if c.get("flags") == "P"]
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [str(pid) for (pid,) in rows]


def _kill_listeners(url: str) -> None:
    if url.startswith("redis"):
        import redis

        redis.Redis.from_url(url).client_kill_filter(_type="pubsub")
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for pid in _listeners(url):
            conn.execute("SELECT pg_terminate_backend(%s)", (int(pid),))


@pytest.mark.parametrize("fleet_lock_url", ["redis", "postgresql"], indirect=True)
def test_the_worker_reads_the_control_when_a_writer_publishes_and_rarely_else(
    fleet_lock_url: str,
) -> None:
    from pyjob.core.backendcalls import SUBSCRIBED_EVERY

    with _two_hosts(fleet_lock_url) as (coordinator, waker, store, theirs):
        seen = {"version": store.version()}
        reads: list[float] = []
        got: list[ControlState | BackendError] = []

        fail = {"next": False}

        def read() -> ControlState | None:
            reads.append(time.monotonic())
            if fail["next"]:
                fail["next"] = False
                raise BackendError("this read fails")
            state = poll(store, seen["version"])
            if state is not None:
                seen["version"] = state.version
            return state

        subscribe = getattr(store, "subscribe", None)
        assert coordinator.every(fleet_lock_url, 0.1, read, got.append, subscribe)
        # The first poll: a read, the subscription, a read again (what changed in between).
        _until(lambda: len(reads) == 2 and len(_listeners(fleet_lock_url)) == 1)
        time.sleep(1.5)  # read every 0.1 s, it would have made some 15 reads by now
        assert len(reads) == 2 and SUBSCRIBED_EVERY >= 10

        def told(count: int) -> None:
            start, before = time.monotonic(), len(reads)
            theirs.pause([f"j{count}"], "b", int(time.time() * 1e6))
            _until(lambda: coordinator.drain() > 0 and len(got) == count)
            state = got[-1]
            assert isinstance(state, ControlState) and f"j{count}" in state.paused
            assert time.monotonic() - start < 5  # told, not found by a read 30 s later
            assert len(reads) == before + 1

        told(1)
        assert waker.wakes == 1
        # The read a change prompts fails: it is made again a period later, not 30 s later.
        fail["next"] = True
        theirs.pause(["j-late"], "b", int(time.time() * 1e6))
        _until(lambda: coordinator.drain() > 0 and len(got) == 3, timeout=5)
        assert isinstance(got[1], BackendError) and "j-late" in got[2].paused  # type: ignore[union-attr]
        if fleet_lock_url.startswith("redis"):  # a message it cannot decode ends nothing
            import redis

            channel = f"pyjob-control:version@{fleet_lock_url.rsplit('/', 1)[1]}"
            count = len(reads)
            redis.Redis.from_url(fleet_lock_url).publish(channel, b"\xff\xfe")
            _until(lambda: len(reads) == count + 1)
        del got[1:]
        # The subscription's connection is killed: the worker reads at once (what was written
        # while none listened is found), subscribes anew, and is told again.
        [first] = _listeners(fleet_lock_url)
        count = len(reads)  # before the kill: the worker may read before this thread goes on
        _kill_listeners(fleet_lock_url)
        _until(lambda: len(reads) >= count + 2)
        _until(lambda: _listeners(fleet_lock_url) not in ([], [first]))
        time.sleep(0.5)  # the read that follows the new subscription is done
        told(2)
        assert len(got) == 2
    _until(lambda: _listeners(fleet_lock_url) == [])  # closed with the process's backends


@pytest.mark.parametrize("fleet_lock_url", ["redis"], indirect=True)
def test_a_subscription_that_cannot_be_made_leaves_the_reads_at_their_period_and_waits(
    fleet_lock_url: str,
) -> None:
    coordinator = Coordinator(SystemClock(), "a", Waker(), lambda *a, **k: None)
    try:
        coordinator.open(fleet_lock_url)
        tries: list[float] = []
        reads: list[float] = []

        def subscribe() -> Any:
            tries.append(time.monotonic())
            raise BackendError("not subscribed")

        assert coordinator.every(fleet_lock_url, 0.1, lambda: reads.append(1), print, subscribe)
        _until(lambda: len(reads) >= 8)
        assert len(tries) == 1  # tried again SUBSCRIBED_EVERY later, not at each read
    finally:
        coordinator.close()


@pytest.mark.parametrize("fleet_lock_url", ["redis"], indirect=True)
def test_when_the_read_after_a_new_subscription_fails_the_first_answer_stands(
    fleet_lock_url: str,
) -> None:
    coordinator = Coordinator(SystemClock(), "a", Waker(), lambda *a, **k: None)
    try:
        store = control_for(coordinator.open(fleet_lock_url))
        assert store is not None
        answers: list[Any] = ["first", BackendError("the read after subscribing fails")]
        reads: list[Any] = []
        got: list[Any] = []

        def read() -> Any:
            reads.append(1)
            answer = answers.pop(0) if answers else None
            if isinstance(answer, BackendError):
                raise answer
            return answer

        assert coordinator.every(fleet_lock_url, 0.1, read, got.append, store.subscribe)
        _until(lambda: coordinator.drain() > 0 or len(got) > 0)
        assert got == ["first"]
        _until(lambda: len(reads) >= 3)  # a period later, not 30 s: the feed is new
        coordinator.drain()
        assert got == ["first"]
    finally:
        coordinator.close()


@pytest.mark.parametrize("fleet_lock_url", ["redis", "postgresql"], indirect=True)
def test_a_feed_whose_connection_raises_anything_as_it_closes_ends_no_worker(
    fleet_lock_url: str,
) -> None:
    """A feed is closed on the worker when it ends, outside the worker's error policy: what the
    client library raises from a broken connection (not always its own error class) is not
    allowed out, or the worker, and every claim of the URL with it, would end."""
    coordinator = Coordinator(SystemClock(), "a", Waker(), lambda *a, **k: None)
    try:
        store = control_for(coordinator.open(fleet_lock_url))
        assert store is not None
        feeds: list[Any] = []

        def subscribe() -> Any:
            feed = store.subscribe()  # type: ignore[attr-defined]
            inner = feed._ps if hasattr(feed, "_ps") else feed._conn
            close = inner.close

            def broken() -> None:
                close()
                raise RuntimeError("not the client's error class")

            inner.close = broken
            feeds.append(feed)
            return feed

        assert coordinator.every(fleet_lock_url, 0.1, lambda: None, print, subscribe)
        for made in (2, 3):  # the feed ends: closed, then made anew, by a worker that lives on
            before = made - 1
            _until(lambda: len(feeds) == before and len(_listeners(fleet_lock_url)) == 1)  # noqa: B023
            _kill_listeners(fleet_lock_url)
            _until(lambda: len(feeds) == before + 1)  # noqa: B023
    finally:
        coordinator.close()

"""Run lease releases against real servers: the leases of a burst of runs that end about together
go back in a few round trips, not one per run, and none is kept so long that it blocks the job's
next tick."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from pyjob.core.backends import Backend, open_backend
from pyjob.core.clock import SystemClock
from pyjob.core.events import Event
from pyjob.core.jobsettings import JobSettings
from pyjob.core.process import Command, RealRunner
from pyjob.core.schedule import Schedule, parse
from pyjob.core.scheduler import Job, Scheduler
from pyjob.core.settings import Overlap

JOBS = 120
TICKS = 2


@pytest.fixture(params=["redis", "postgresql"])
def release_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        import redis

        server = request.getfixturevalue("redis_server")
        db = random.randint(1, 15)
        redis.Redis(port=server.port, db=db).flushdb()
        return f"redis://127.0.0.1:{server.port}/{db}"
    import psycopg

    server = request.getfixturevalue("pg_server")
    name = f"releases_{random.randrange(10**9)}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def _counted(backend: Backend, calls: dict[str, list[int]]) -> Backend:
    """``backend`` with the size of each of its claim and release batches noted."""
    for name in ("claim_many", "release_many"):
        real: Callable[..., Any] = getattr(backend, name)

        def counted(items: Any, *args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[_name].append(len(items))
            return _real(items, *args)

        setattr(backend, name, counted)
    return backend


def _run_all(s: Scheduler, jobs: list[Job]) -> None:
    """Run ``jobs`` until each is done, then close (the last releases go out)."""
    s.open(jobs)
    for j in jobs:
        s.add(j)
    try:
        assert s.run() == 0
    finally:
        s.close()


def test_a_burst_of_runs_releases_its_leases_in_a_few_round_trips(release_url: str) -> None:
    """120 jobs due on the same ticks of a 3 s schedule, each holding a run lease
    (--overlap skip): the releases of each burst are gathered, so far fewer release round
    trips than runs; every lease is released by the end, and every job's second tick runs (no
    gathered release is still held when the next tick is claimed)."""
    clock = SystemClock()
    calls: dict[str, list[int]] = {"claim_many": [], "release_many": []}
    backend = _counted(open_backend(release_url, None, clock), calls)
    events: list[Event] = []
    s = Scheduler(
        clock,
        RealRunner(),
        events.append,
        instance="burst",
        opener=lambda _: backend,
    )
    spec = parse("every 3s align tz UTC", env={"TZ": "UTC"}, now=clock.now())
    jobs = [
        Job(
            f"job{n}",
            Schedule(spec, job_id=f"job{n}", anchor=clock.now()),
            Command(("true",)),
            JobSettings(overlap=Overlap.SKIP, max_runs=TICKS, lease_ttl=30.0),
        )
        for n in range(JOBS)
    ]
    _run_all(s, jobs)
    started = [e for e in events if e.kind == "run-started"]
    assert len(started) == JOBS * TICKS, sorted({e.kind for e in events})
    assert not [e for e in events if e.kind in ("skipped", "backend-error")]
    released = calls["release_many"]
    assert sum(released) == JOBS * TICKS  # each run's lease, once
    assert len(released) <= JOBS * TICKS // 10, released
    check = open_backend(release_url, None, clock)
    try:
        assert [j.job_id for j in jobs if check.lease_holder(j.job_id) is not None] == []
    finally:
        check.close()


def test_a_gathered_release_goes_before_the_next_claim_and_a_failed_one_is_kept(
    release_url: str,
) -> None:
    """A release that may wait for others is sent before any claim that follows it on the same
    backend (that claim takes the job's lease again, in the same worker's next two round
    trips); one that fails is kept and sent again once the backend answers."""
    from datetime import UTC, datetime, timedelta

    from pyjob.core.backends.protocol import ClaimRequest
    from pyjob.core.clock import Waker
    from pyjob.core.coordinator import Coordinator
    from pyjob.core.errors import BackendError
    from pyjob.core.releases import RELEASE_GATHER

    clock = SystemClock()
    calls: dict[str, list[int]] = {"claim_many": [], "release_many": []}
    backend = _counted(open_backend(release_url, None, clock), calls)
    reports: list[tuple[Any, ...]] = []
    coordinator = Coordinator(
        clock, "a", Waker(), lambda *a, **k: reports.append(a), opener=lambda _: backend
    )
    coordinator.open(release_url)
    answers: list[Any] = []
    now = datetime.now(UTC)
    tick = now.replace(microsecond=0)

    def claim(t: datetime) -> Any:
        request = ClaimRequest("job", t, t + timedelta(minutes=11), 30.0)
        coordinator.claim(release_url, [request], answers.append)
        while not answers:
            clock.wait(coordinator.waker, 5.0)
            coordinator.drain()
        return answers.pop()

    try:
        first = claim(tick)
        assert first[0].lease is not None, first
        coordinator.release(release_url, [first[0].lease], RELEASE_GATHER)
        second = claim(tick + timedelta(seconds=1))
        assert second[0].lease is not None, second  # released first, though it could wait
        assert calls["release_many"] == [1]
        # A release the backend refuses is kept, reported once, and sent again with the next
        # call's round trip.
        real = backend.release_many
        failing = True

        def refused(leases: Any) -> None:
            if failing:
                raise BackendError("refused")
            real(leases)

        backend.release_many = refused  # type: ignore[method-assign]
        coordinator.release(release_url, [second[0].lease], RELEASE_GATHER)
        third = claim(tick + timedelta(seconds=2))
        assert third[0].lease is None and third[0].lease_holder is not None, third
        assert [r[2] for r in reports].count("backend-error") == 1, reports
        failing = False
        fourth = claim(tick + timedelta(seconds=3))
        assert fourth[0].lease is not None, fourth
        assert "backend-recovered" in [r[2] for r in reports], reports
    finally:
        coordinator.close()


def test_a_release_waits_for_others_only_while_another_run_still_goes(tmp_path: Any) -> None:
    """Two jobs due on one tick, a short run and one of a second: the short run's release may
    wait to share a round trip with the longer's, which, the last run of the process, goes at
    once (a `pyjob trigger` must not find the run still going); a lone run's goes at once."""
    clock = SystemClock()
    url = f"file:{tmp_path / 'locks'}"
    events: list[Event] = []
    s = Scheduler(clock, RealRunner(), events.append, instance="i")
    waits: dict[str, float] = {}
    real = s.coordinator.release

    def release(u: str | None, leases: Any, wait: float = 0.0) -> None:
        for lease in leases:
            waits[lease.job] = wait
        real(u, leases, wait)

    s.coordinator.release = release  # type: ignore[method-assign]
    spec = parse("every 2s align tz UTC", env={"TZ": "UTC"}, now=clock.now())
    argv = {"short": ("true",), "long": ("sleep", "1")}
    jobs = [
        Job(
            name,
            Schedule(spec, job_id=name, anchor=clock.now()),
            Command(argv[name]),
            JobSettings(overlap=Overlap.SKIP, max_runs=1, lease_ttl=30.0, lock=url),
        )
        for name in argv
    ]
    _run_all(s, jobs)
    assert len([e for e in events if e.kind == "run-finished"]) == 2, events
    assert waits["short"] > 0 and waits["long"] == 0, waits

"""What an idle instance reads of the fleet costs what changed, not what the fleet holds: the
newest records of many jobs come in one call (the orphan look-up at a start), and --spread reads
the job registry again only when an instance's registrations changed (their count rides on each
heartbeat). Real stores on every backend that keeps records."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyjob.core.backendcalls import RegisterCall
from pyjob.core.backends import open_backend
from pyjob.core.clock import FakeClock, Waker
from pyjob.core.coordinator import Coordinator
from pyjob.core.records import InstanceInfo, JobInfo, RunRecord


def _store(url: str) -> Any:
    backend = open_backend(url)
    backend.check()
    store = backend.records()
    assert store is not None
    return backend, store


def test_newest_reads_the_newest_records_of_many_jobs_at_once(fleet_lock_url: str) -> None:
    backend, store = _store(fleet_lock_url)
    try:
        now_us = int(time.time() * 1e6)
        # Past a Redis pipeline's slice (1,000 jobs) and an etcd transaction (100 ranges).
        names = [f"j{i:04d}" for i in range(1_203)]
        have = {"j0000": 5, "j0999": 1, "j1000": 3, "j1202": 2}
        records = [
            RunRecord(job, now_us - k * 1_000_000, f"{job}-{k}", "x", "success")
            for job, n in have.items()
            for k in range(n)
        ]
        store.put_runs(records, 100)
        got = store.newest(names, 3)
        assert set(got) == set(have)  # a job with no records is left out
        for job, n in have.items():
            # newest first, at most the limit
            assert [r.run_id for r in got[job]] == [f"{job}-{k}" for k in range(min(n, 3))]
        assert store.newest([], 3) == {}
    finally:
        backend.close()


def _read_counted(store: Any) -> tuple[Any, list[int]]:
    """Spreading's reader of ``store``, and how many times it read the jobs."""
    from types import SimpleNamespace

    from pyjob.core.sched.spread import Spreading

    count = [0]
    jobs = store.jobs

    def counted() -> list[JobInfo]:
        count[0] += 1
        return jobs()

    store.jobs = counted
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))
    sp = Spreading(SimpleNamespace(instance="a", clock=clock))  # type: ignore[arg-type]
    return sp._reader(SimpleNamespace(server_time=lambda: None), store), count


def test_the_registry_is_read_again_only_when_an_instances_registrations_changed(
    fleet_lock_url: str,
) -> None:
    backend, store = _store(fleet_lock_url)
    try:
        read, count = _read_counted(store)
        j1, j2 = (JobInfo(j, "@daily", "UTC", "true") for j in ("j1", "j2"))
        a = InstanceInfo("a", "h", 1, "0", seen_us=1, registered=1)
        store.register([j1], a)
        jobs, instances, _ = read()
        assert [j.job for j in jobs] == ["j1"] and set(instances) >= {"a"} and count == [1]
        a.seen_us = 2
        store.heartbeat(a)  # a heartbeat alone changes nothing
        assert read()[0] is None and count == [1]
        b = InstanceInfo("b", "h", 2, "0", seen_us=1, registered=1)
        store.register([j1], b)  # another instance came
        jobs, _, _ = read()
        assert count == [2] and [sorted(j.instances) for j in jobs] == [["a", "b"]]
        a.registered = 2
        store.register([j2], a)  # a reload registered a new job
        jobs, _, _ = read()
        assert count == [3] and sorted(j.job for j in jobs) == ["j1", "j2"]
        assert read()[0] is None and count == [3]
        old = InstanceInfo("c", "h", 3, "0", seen_us=1)  # a pyjob that does not say
        store.register([j1], old)
        read()
        read()
        assert count == [5]
    finally:
        backend.close()


def test_the_registration_count_grows_only_with_new_registrations(tmp_path: Path) -> None:
    url = f"file:{tmp_path / 'locks'}"
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))
    coordinator = Coordinator(clock, "i0", Waker(), lambda *a, **k: None, threaded=False)
    coordinator.open(url)
    me = InstanceInfo("i0", "host", 1, "0", seen_us=1)
    store = coordinator.backend(url).records()
    assert store is not None

    def said() -> int | None:
        return store.instances()["i0"].registered

    j1, j2 = (JobInfo(j, "@daily", "UTC", "true") for j in ("j1", "j2"))
    coordinator.register(url, RegisterCall([j1], me))
    assert said() == 1
    coordinator.heartbeat(me)
    assert said() == 1  # the heartbeat says it too
    coordinator.register(url, RegisterCall([j1], me))  # the same again: nothing new
    assert said() == 1
    coordinator.register(url, RegisterCall([j1, j2], me))
    assert said() == 2
    for _ in range(2):  # the whole registration written again, every 5 minutes: nothing new
        clock.advance(151)
        coordinator.heartbeat(me)
    coordinator.heartbeat(me)
    assert said() == 2
    coordinator.close()


def test_a_job_added_here_gets_its_members_though_the_registry_did_not_change() -> None:
    """A reload that adds back a job the registry already lists (its registration brings
    nothing new, so no heartbeat says the registry changed) still ranks it among its peers."""
    from types import SimpleNamespace

    from pyjob.core.sched.spread import Spreading
    from pyjob.core.settings import Spread

    jobs: dict[str, Any] = {"j1": object()}
    sh = SimpleNamespace(
        instance="a",
        jobs=jobs,
        emit=lambda *a, **k: None,
        retries=SimpleNamespace(quiet=lambda name, info: False),
        books=SimpleNamespace(hurry=lambda: None),
        coordinator=SimpleNamespace(has_records=lambda url: True),
    )
    sp = Spreading(sh)  # type: ignore[arg-type]
    sp._set = True  # its first reads are under way
    registry = [JobInfo(j, "@daily", "UTC", "true", instances=["a", "b"]) for j in ("j1", "j2")]
    beats = {n: InstanceInfo(n, "h", 1, "0", seen_us=1, registered=1) for n in ("a", "b")}
    sp.heard("", (registry, beats, None))
    assert sp.members == {"j1": ("a", "b")}
    jobs["j2"] = object()  # the reload adds j2 back
    sp.added(SimpleNamespace(s=SimpleNamespace(spread=Spread.EVEN), job=SimpleNamespace(lock=None)))
    sp.heard("", (None, beats, None))  # the registry is the same
    assert sp.members == {"j1": ("a", "b"), "j2": ("a", "b")}


def test_the_urls_read_follow_the_jobs_without_a_walk_over_them_at_every_heartbeat() -> None:
    """A heartbeat reads the registry of each lock URL a spread job uses; that set is worked
    out again when jobs come or go (a 10,000-job process walked them all at every beat)."""
    from types import SimpleNamespace

    from pyjob.core.sched.spread import Spreading
    from pyjob.core.settings import Spread

    walked: list[str | None] = []
    read: list[str | None] = []

    def has_records(url: str | None) -> bool:
        walked.append(url)
        return True

    def job(lock: str, spread: Spread = Spread.EVEN) -> Any:
        return SimpleNamespace(s=SimpleNamespace(spread=spread), job=SimpleNamespace(lock=lock))

    jobs: dict[str, Any] = {"a": job("redis://a"), "b": job("redis://b", Spread.OFF)}
    sh = SimpleNamespace(
        jobs=jobs,
        clock=None,
        coordinator=SimpleNamespace(
            has_records=has_records,
            backend=lambda url: SimpleNamespace(records=lambda: object()),
            call=lambda url, fn, done, held: read.append(url),
        ),
    )
    sp = Spreading(sh)  # type: ignore[arg-type]
    sp._set = True  # its first reads are under way
    sp.read()
    assert read == ["redis://a"] and walked == ["redis://a"]
    sp.read()
    sp.read()
    assert read == ["redis://a"] * 3 and walked == ["redis://a"]  # not walked again
    jobs["c"] = job("redis://c")
    sp.added(jobs["c"])
    read.clear()
    sp.read()
    assert read == ["redis://a", "redis://c"]
    del jobs["a"]  # retired by a reload
    read.clear()
    sp.read()
    assert read == ["redis://c"]

"""The scheduler's decisions against a fake clock and a fake runner whose children end at chosen
fake times: the exact event sequences of overlap, timeouts, leases, jitter, max-runs, clean-up."""

from __future__ import annotations

import re
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from pyjob.core.backends import ClaimResult
from pyjob.core.backends.null import NullBackend
from pyjob.core.clock import FakeClock
from pyjob.core.errors import BackendError
from pyjob.core.events import CATALOGUE, Event
from pyjob.core.jobsettings import JobSettings
from pyjob.core.process import Command
from pyjob.core.schedule import Schedule, parse, to_us
from pyjob.core.scheduler import Job, Scheduler, overlap_action
from pyjob.core.settings import Overlap

from .fakes import FakeRunner, FlakyBackend, RecordingBackend

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def job(text: str, clock: FakeClock, name: str = "job", **settings: Any) -> Job:
    spec = parse(text, env={"TZ": "UTC"}, now=clock.now())
    return Job(
        name,
        Schedule(spec, job_id=name, anchor=clock.now()),
        Command(("true",)),
        JobSettings(**settings),
    )


def make(
    jobs: list[Job], runner: FakeRunner, clock: FakeClock, backend: Any = None
) -> tuple[Scheduler, list[Event]]:
    events: list[Event] = []
    backend = backend or NullBackend()
    s = Scheduler(
        clock, runner, events.append, instance="test:1", threaded=False, opener=lambda u: backend
    )
    s.open(jobs)
    for j in jobs:
        s.add(j)
    return s, events


def seq(events: list[Event], *skip: str) -> list[tuple[str, str]]:
    """(kind, tick as HH:MM:SS) of each event, leaving out ``skip`` kinds."""
    return [
        (e.kind, e.tick.strftime("%H:%M:%S") if e.tick else "-")
        for e in events
        if e.kind not in skip
    ]


def ticks_run(runner: FakeRunner) -> list[str]:
    return [env["PYJOB_TICK"] for env in runner.started]


def test_runs_each_tick_once_and_ends_when_exhausted() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock)
    s, events = make(
        [job("every 10s align tz UTC stop-at 2026-06-01T12:00:30Z", clock)], runner, clock
    )
    assert s.run() == 0
    assert ticks_run(runner) == [f"2026-06-01T12:00:{x}+00:00" for x in ("10", "20", "30")]
    assert seq(events) == [
        ("started", "-"),
        ("next-tick", "12:00:10"),
        ("claimed", "12:00:10"),
        ("run-started", "12:00:10"),
        ("next-tick", "12:00:20"),
        ("run-finished", "12:00:10"),
        ("claimed", "12:00:20"),
        ("run-started", "12:00:20"),
        ("next-tick", "12:00:30"),
        ("run-finished", "12:00:20"),
        ("claimed", "12:00:30"),
        ("run-started", "12:00:30"),
        ("run-finished", "12:00:30"),
        ("exhausted", "-"),
    ]


def test_events_no_consumer_takes_are_not_made() -> None:
    """The scheduler makes only the events some consumer takes (``wants``): the same runs, the
    other events in the same order."""
    clock = FakeClock(T0)
    runner = FakeRunner(clock)
    every = job("every 10s align tz UTC stop-at 2026-06-01T12:00:30Z", clock)
    s, events = make([every], runner, clock)
    assert s.run() == 0
    clock = FakeClock(T0)
    quiet_runner = FakeRunner(clock)
    quiet: list[Event] = []
    asked: set[str] = set()

    def wants(kind: str) -> bool:
        asked.add(kind)
        return kind not in ("next-tick", "claimed")

    q = Scheduler(
        clock,
        quiet_runner,
        quiet.append,
        instance="test:1",
        threaded=False,
        opener=lambda u: NullBackend(),
        wants=wants,
    )
    q.open([every])
    q.add(job("every 10s align tz UTC stop-at 2026-06-01T12:00:30Z", clock))
    assert q.run() == 0
    assert ticks_run(quiet_runner) == ticks_run(runner)
    assert {"next-tick", "claimed"} <= asked
    assert seq(quiet) == seq(events, "next-tick", "claimed")


def test_waits_without_polling() -> None:
    clock = FakeClock(T0)
    s, _ = make([job("every 1h align tz UTC", clock, max_runs=2)], FakeRunner(clock), clock)
    s.run()
    # Sleeps are whole stretches (a few per minute at most), not a busy loop.
    assert len(clock.sleeps) < 2 * (3600 / 20 + 10)
    assert max(clock.sleeps) <= 20.0


def test_failed_run_makes_exit_1() -> None:
    clock = FakeClock(T0)
    s, events = make(
        [job("every 1s align tz UTC", clock, max_runs=2)], FakeRunner(clock, code=3), clock
    )
    assert s.run() == 1
    finished = [e for e in events if e.kind == "run-finished"]
    assert [e.level for e in finished] == ["error", "error"]


def test_late_wakeup_runs_only_the_most_recent_tick_and_counts_missed() -> None:
    clock = FakeClock(T0)

    def suspend(n: int) -> None:
        if n == 2:
            clock.step(45)  # the host slept: 12:00:20 -> 12:01:05 on the wall clock

    runner = FakeRunner(clock, on_start=suspend)
    s, events = make([job("every 10s align tz UTC", clock, max_runs=4)], runner, clock)
    s.run()
    assert ticks_run(runner)[:3] == [
        "2026-06-01T12:00:10+00:00",
        "2026-06-01T12:00:20+00:00",
        "2026-06-01T12:01:00+00:00",
    ]
    missed = [e for e in events if e.kind == "missed"]
    assert len(missed) == 1 and missed[0].fields["count"] == 3  # 12:00:30, :40, :50


def test_misfire_grace_skips_a_tick_that_is_too_late() -> None:
    clock = FakeClock(T0)

    def stall(n: int) -> None:
        if n == 1:
            clock.step(17)  # 12:00:10 -> 12:00:27: 7 s late for 12:00:20, before 12:00:30

    runner = FakeRunner(clock, on_start=stall)
    s, events = make(
        [job("every 10s align tz UTC", clock, max_runs=3, misfire_grace=5.0)], runner, clock
    )
    s.run()
    missed = [e for e in events if e.kind == "missed"]
    assert missed and "over --misfire-grace 5s" in missed[0].fields["reason"]


def test_clock_step_back_never_reruns_a_handled_tick() -> None:
    clock = FakeClock(T0)

    def step_back(n: int) -> None:
        if n == 2:
            clock.step(-35)  # NTP steps the clock back over three handled ticks

    runner = FakeRunner(clock, on_start=step_back)
    s, _ = make([job("every 10s align tz UTC", clock, max_runs=4)], runner, clock)
    s.run()
    ran = ticks_run(runner)
    assert len(ran) == len(set(ran)) == 4
    assert ran == sorted(ran)


def test_backend_error_skips_the_tick_and_goes_on() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock)
    backend = FlakyBackend({T0 + timedelta(seconds=20)})
    s, events = make([job("every 10s align tz UTC", clock, max_runs=3)], runner, clock, backend)
    assert s.run() == 0
    assert "2026-06-01T12:00:20+00:00" not in ticks_run(runner)
    assert len(runner.started) == 3  # the loop went on: 12:00:10, :30, :40
    errors = [e for e in events if e.kind == "backend-error"]
    assert [(e.fields["action"], e.level) for e in errors] == [("skip", "debug")]
    # the outage is told at warning level once as it starts, and once as it ends
    edges = [(e.kind, e.level) for e in events if e.kind in ("backend-down", "backend-up")]
    assert edges == [("backend-down", "warning"), ("backend-up", "info")]


def test_backend_error_fail_open_runs_the_tick() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock)
    backend = FlakyBackend({T0 + timedelta(seconds=20)})
    jobs = [job("every 10s align tz UTC", clock, max_runs=3, on_backend_error="run")]
    s, _ = make(jobs, runner, clock, backend)
    s.run()
    assert "2026-06-01T12:00:20+00:00" in ticks_run(runner)


def test_environment_of_the_command() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock)
    spec = parse("every 1h align tz Europe/Berlin", env={}, now=clock.now())
    j = Job("job", Schedule(spec, job_id="job"), Command(("true",)), JobSettings(max_runs=1))
    s, _ = make([j], runner, clock)
    s.run()
    env = runner.started[0]
    assert env["PYJOB_JOB"] == "job"
    assert env["PYJOB_TICK"] == "2026-06-01T15:00:00+02:00"
    assert env["PYJOB_TICK_UNIX"] == str(int((T0 + timedelta(hours=1)).timestamp()))
    assert env["PYJOB_RUN_ID"] == "job-20260601T130000Z"
    assert env["PYJOB_INSTANCE"] == "test:1"
    assert "PYJOB_FENCE" not in env  # the null backend has no fences


def test_run_now_runs_at_start_without_a_claim() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock)
    s, _ = make([job("every 1h align tz UTC", clock, max_runs=1, run_now=True)], runner, clock)
    s.run()
    assert len(runner.started) == 2
    assert runner.started[0]["PYJOB_RUN_ID"].endswith("-now")


def test_jitter_delays_within_bound() -> None:
    clock = FakeClock(T0)
    starts: list[datetime] = []
    runner = FakeRunner(clock, on_start=lambda n: starts.append(clock.now()))
    s, events = make([job("every 10s align tz UTC", clock, max_runs=5, jitter=3.0)], runner, clock)
    s.run()
    ticks = [datetime.fromisoformat(env["PYJOB_TICK"]) for env in runner.started]
    delays = [(a - t).total_seconds() for a, t in zip(starts, ticks, strict=True)]
    assert all(0 <= d <= 3.0 + 1e-6 for d in delays) and len(set(delays)) > 1
    logged = [e.fields["delay"] for e in events if e.kind == "jitter"]
    assert logged == pytest.approx(delays, abs=1e-5)


@pytest.mark.parametrize(
    ("policy", "queued", "action"),
    [
        (Overlap.SKIP, False, "skip"),
        (Overlap.SKIP, True, "skip"),
        (Overlap.QUEUE, False, "queue"),
        (Overlap.QUEUE, True, "skip-queued"),
        (Overlap.ALLOW, False, "start"),
        (Overlap.ALLOW, True, "start"),
        (Overlap.REPLACE, False, "replace"),
    ],
)
def test_overlap_decision_table(policy: Overlap, queued: bool, action: str) -> None:
    assert overlap_action(policy, queued) == action


QUIET = ("next-tick", "claimed", "started", "exhausted")


def test_overlap_skip_skips_ticks_while_the_run_goes_on() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, durations=[25.0, 1.0])
    s, events = make([job("every 10s align tz UTC", clock, max_runs=4)], runner, clock)
    s.run()
    assert seq(events, *QUIET) == [
        ("run-started", "12:00:10"),
        ("skipped", "12:00:20"),
        ("skipped", "12:00:30"),
        ("run-finished", "12:00:10"),  # at 12:00:35
        ("run-started", "12:00:40"),
        ("run-finished", "12:00:40"),
    ]
    assert events[[e.kind for e in events].index("skipped")].fields["running_on"] == "test:1"


def test_overlap_queue_keeps_one_waiting_and_starts_it_when_the_run_ends() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, durations=[25.0, 1.0, 1.0])
    s, events = make(
        [job("every 10s align tz UTC", clock, max_runs=4, overlap=Overlap.QUEUE)], runner, clock
    )
    s.run()
    assert seq(events, *QUIET) == [
        ("run-started", "12:00:10"),
        ("queued", "12:00:20"),
        ("skipped", "12:00:30"),  # one is already queued
        ("run-finished", "12:00:10"),
        ("run-started", "12:00:20"),  # the queued tick, at 12:00:35
        ("run-finished", "12:00:20"),
        ("run-started", "12:00:40"),
        ("run-finished", "12:00:40"),
    ]
    assert runner.started[1]["PYJOB_RUN_ID"] == "job-20260601T120020Z"


def test_overlap_allow_runs_concurrently() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, durations=[15.0, 1.0])
    s, events = make(
        [job("every 10s align tz UTC", clock, max_runs=2, overlap=Overlap.ALLOW)], runner, clock
    )
    s.run()
    assert seq(events, *QUIET) == [
        ("run-started", "12:00:10"),
        ("run-started", "12:00:20"),
        ("run-finished", "12:00:20"),
        ("run-finished", "12:00:10"),
    ]


def test_overlap_replace_terminates_the_running_one_first() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, durations=[100.0, 1.0])
    s, events = make(
        [job("every 10s align tz UTC", clock, max_runs=2, overlap=Overlap.REPLACE)],
        runner,
        clock,
    )
    s.run()
    assert seq(events, *QUIET) == [
        ("run-started", "12:00:10"),
        ("run-finished", "12:00:10"),
        ("run-started", "12:00:20"),
        ("run-finished", "12:00:20"),
    ]
    first = next(e for e in events if e.kind == "run-finished")
    assert first.fields["terminated"] == "replace" and first.fields["exit_code"] == 143
    assert runner.children[0].signals == [signal.SIGTERM]


def test_timeout_sends_sigterm_then_sigkill_after_kill_after() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, duration=100.0, ignores_term=True)
    jobs = [job("every 1m align tz UTC", clock, max_runs=1, timeout=5.0, kill_after=2.0)]
    s, events = make(jobs, runner, clock)
    assert s.run() == 1
    assert seq(events, *QUIET) == [
        ("run-started", "12:01:00"),
        ("timeout", "12:01:00"),
        ("run-finished", "12:01:00"),
    ]
    finished = events[-2]
    assert finished.fields["exit_code"] == 137 and finished.fields["terminated"] == "timeout"
    assert finished.fields["duration"] == pytest.approx(7.0)
    assert runner.children[0].signals == [signal.SIGTERM, signal.SIGKILL]


def test_the_run_lease_is_taken_with_the_claim_renewed_and_released() -> None:
    clock = FakeClock(T0)
    backend = RecordingBackend()
    released: list[str] = []
    original = backend.release_lease
    backend.release_lease = lambda lease: (released.append(lease.job), original(lease))  # type: ignore[method-assign]
    runner = FakeRunner(clock, duration=65.0)
    s, _ = make([job("every 10m align tz UTC", clock, max_runs=1)], runner, clock, backend)
    s.run()
    assert backend.batches == [1]  # claim and lease: one round trip
    assert backend.renewals == [1] * 12  # every ttl/3 = 5 s (the default 15 s TTL) for 65 s
    assert released == ["job"]


def test_max_runs_counts_ticks_another_instance_ran() -> None:
    clock = FakeClock(T0)
    backend = RecordingBackend(lose={T0 + timedelta(seconds=10), T0 + timedelta(seconds=30)})
    runner = FakeRunner(clock)
    s, events = make([job("every 10s align tz UTC", clock, max_runs=3)], runner, clock, backend)
    assert s.run() == 0
    assert ticks_run(runner) == ["2026-06-01T12:00:20+00:00"]
    lost = [e for e in events if e.kind == "lost"]
    assert [e.fields["holder"] for e in lost] == ["other:1", "other:1"]


def test_jobs_due_together_are_claimed_in_one_batch_and_cleaned_up_together() -> None:
    clock = FakeClock(T0)
    backend = RecordingBackend()
    runner = FakeRunner(clock)
    jobs = [job("every 1m align tz UTC", clock, name=f"j{i}", max_runs=3) for i in range(100)]
    s, _ = make(jobs, runner, clock, backend)
    assert s.run() == 0
    assert len(runner.started) == 300
    assert backend.batches == [100, 100, 100]
    assert backend.cleanups and set(backend.cleanups) == {100}


def test_stop_terminates_runs_then_kills_after_stop_timeout() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, duration=1000.0, ignores_term=True)
    s, events = make([job("every 10s align tz UTC", clock, stop_timeout=4.0)], runner, clock)
    runner.on_start = lambda n: s.request_stop()
    assert s.run() == 0
    assert seq(events, *QUIET) == [
        ("run-started", "12:00:10"),
        ("stopping", "-"),
        ("run-finished", "12:00:10"),
        ("stopped", "-"),
    ]
    finished = events[-2]
    assert finished.fields["terminated"] == "stop" and finished.fields["duration"] == 4.0
    assert finished.level == "info"  # pyjob stopped it: not a failure
    assert events[-1].fields == {"runs": 1, "failures": 0}


def test_a_lease_whose_release_failed_is_released_once_the_backend_answers() -> None:
    clock = FakeClock(T0)
    # The backend is down from the end of the first run (12:00:11) until 12:00:15.
    backend = FlakyBackend(clock=clock, releases_down_until=T0 + timedelta(seconds=15))
    runner = FakeRunner(clock, duration=1.0)
    s, events = make([job("every 10s align tz UTC", clock, max_runs=3)], runner, clock, backend)
    assert s.run() == 0
    assert seq(events, *QUIET) == [
        ("run-started", "12:00:10"),
        ("run-finished", "12:00:10"),
        ("backend-down", "-"),
        ("backend-error", "-"),
        ("backend-up", "-"),
        ("backend-recovered", "-"),  # retried at the next call, before the next claim
        ("run-started", "12:00:20"),  # so the lease left by the outage blocked no tick
        ("run-finished", "12:00:20"),
        ("run-started", "12:00:30"),
        ("run-finished", "12:00:30"),
    ]
    error = next(e for e in events if e.kind == "backend-error")
    assert error.job == "job" and "released again" in error.fields["action"]
    assert backend.released == ["job", "job", "job"]


def test_a_changed_job_is_drained_and_the_new_one_scheduled_on_reload() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, duration=15.0)
    old = job("every 10s align tz UTC", clock, name="a")
    new = job("every 1m align tz UTC", clock, name="a", max_runs=1)
    s, events = make([old], runner, clock)
    runner.on_start = lambda n: s.request_reload() if n == 1 else None
    assert s.run(lambda: [new]) == 0
    assert ticks_run(runner) == ["2026-06-01T12:00:10+00:00", "2026-06-01T12:01:00+00:00"]
    assert seq(events, "next-tick", "claimed") == [
        ("started", "-"),
        ("run-started", "12:00:10"),
        ("reloaded", "-"),
        ("stopping", "-"),
        ("started", "-"),
        ("run-finished", "12:00:10"),  # the old definition's run finished (a drain)
        ("run-started", "12:01:00"),
        ("run-finished", "12:01:00"),
        ("exhausted", "-"),
    ]


def test_every_event_emitted_anywhere_is_in_the_catalogue() -> None:
    root = Path(__file__).resolve().parent.parent
    emitted: set[str] = set()
    for path in [*root.glob("core/**/*.py"), *root.glob("cli/*.py")]:
        text = path.read_text()
        emitted |= set(re.findall(r"""(?:emit|report)\(\s*["']([a-z-]+)["']""", text))
        emitted |= set(re.findall(r"""\(\s*"\*",\s*None,\s*"([a-z-]+)\"""", text))
        emitted |= set(re.findall(r"""self\.emit\(\s*\n?\s*"([a-z-]+)\"""", text))
    assert emitted, "the scan found no emitters"
    assert emitted <= set(CATALOGUE), emitted - set(CATALOGUE)


def test_nothing_is_logged_or_recorded_between_the_spawns_of_one_tick(tmp_path: Path) -> None:
    """A log line or a record written between two spawns of one tick makes every later command
    of that tick late: the turn's events and record writes wait until its spawns are done (the
    events keep the time they were made)."""
    from pyjob.core.backends.file import FileBackend

    # the file backend judges claims by the host's clock, and refuses a tick more than a few
    # seconds ahead of it: the fake clock starts a second before the last 10 s boundary passed
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(seconds=now.second % 10 + 1)
    clock = FakeClock(start)
    events: list[Event] = []
    seen: list[tuple[int, int]] = []  # at each spawn: events logged, records on disk

    def spawned(n: int) -> None:
        on_disk = len(list((tmp_path / "locks").glob("*/runs/*.json")))
        seen.append((sum(1 for e in events if e.kind == "run-started"), on_disk))

    runner = FakeRunner(clock, duration=0.5, on_start=spawned)
    backend = FileBackend(tmp_path / "locks")
    jobs = [job("every 10s align tz UTC", clock, name=f"j{k}", max_runs=1) for k in range(3)]
    s = Scheduler(
        clock, runner, events.append, instance="test:1", threaded=False, opener=lambda u: backend
    )
    s.open(jobs)
    for j in jobs:
        s.add(j)
    assert s.run() == 0
    assert seen == [(0, 0), (0, 0), (0, 0)]
    started = [e for e in events if e.kind == "run-started"]
    due = start + timedelta(seconds=10 - start.second % 10)
    assert len(started) == 3 and all(e.at == due for e in started)
    assert len(list((tmp_path / "locks").glob("*/runs/*.json"))) == 3


def test_a_late_catch_up_answer_never_claims_a_tick_this_instance_already_ran() -> None:
    """--catch-up asks the backend for the latest tick anyone handled; the answer may come back
    after this instance claimed and ran the next tick, and still say the tick before. Claiming
    one's own claim again is won: a catch-up that read the job's next tick only when the answer
    came would claim that tick again and run it twice."""
    clock = FakeClock(T0)
    asked: list[Any] = []
    events: list[Event] = []
    ran: list[str] = []

    def answer_late(n: int) -> None:
        # 12:00:10 runs here: only now does the answer come, read before that claim.
        if n == 1:
            s.coordinator._deliver(asked.pop(), (to_us(T0), None))

    runner = FakeRunner(clock, on_start=answer_late)
    spec = job("every 10s align tz UTC", clock, catch_up=0.5, max_runs=3)
    s = Scheduler(
        clock,
        runner,
        events.append,
        instance="test:1",
        threaded=False,
        opener=lambda u: NullBackend(),
    )
    s.coordinator.latest = lambda url, job, done: asked.append(done) or True  # type: ignore
    s.open([spec])
    s.add(spec)
    assert len(asked) == 1
    assert s.run() == 0
    ran = ticks_run(runner)
    assert ran == [f"2026-06-01T12:00:{x}+00:00" for x in ("10", "20", "30")], ran
    assert not [e for e in events if e.kind == "caught-up"]


class LeaseFails(NullBackend):
    """The n-th claims that take a run lease (counted from 1, in ``fail``) fail as a dropped
    connection does."""

    def __init__(self, fail: set[int]) -> None:
        super().__init__()
        self.fail = fail
        self.leasing = 0

    def claim_many(self, requests, instance, now):  # type: ignore[no-untyped-def]
        for r in requests:
            if r.lease_ttl is not None:
                self.leasing += 1
                if self.leasing in self.fail:
                    raise BackendError("connection dropped (test)")
        return super().claim_many(requests, instance, now)


def stop_at(s: Scheduler, clock: FakeClock, limit: datetime) -> None:
    """Ask the scheduler to stop once the fake clock passes ``limit`` (a run that never ends
    must fail the test, not hang it)."""
    wait = clock.wait_for

    def bounded(*args: Any) -> list[int]:
        ready = wait(*args)
        if clock.now() > limit and not s._sh.stop:
            s.request_stop()
        return ready

    clock.wait_for = bounded  # type: ignore[method-assign]


def test_a_backend_error_at_a_retrys_lease_delays_the_attempt_it_does_not_drop_it() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, code=3, duration=1.0)
    backend = LeaseFails({2})  # the lease of the second attempt: the connection drops once
    spec = job("every 1m align tz UTC", clock, max_runs=1, retries=1, retry_delay=2.0)
    spec = Job(spec.job_id, spec.schedule, spec.command, replace(spec.settings, on_failure="x"))
    s, events = make([spec], runner, clock, backend)
    stop_at(s, clock, T0 + timedelta(minutes=5))
    assert s.run() == 1  # ended by itself (its run failed), not by the stop
    attempts = [env.get("PYJOB_ATTEMPT") for env in runner.started if "PYJOB_HOOK" not in env]
    assert attempts == ["1", "2"]
    hooks = [env for env in runner.started if "PYJOB_HOOK" in env]
    assert len(hooks) == 1 and hooks[0]["PYJOB_ATTEMPT"] == "2"
    ends = [e for e in events if e.kind == "run-finished" and "retry_in" not in e.fields]
    assert len(ends) == 1 and ends[0].fields["attempt"] == 2
    error = next(e for e in events if e.kind == "backend-error")
    assert "tried again" in error.fields["action"]


def test_a_retry_whose_lease_never_comes_ends_the_run_once_with_its_hook() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, code=3, duration=1.0)
    backend = LeaseFails(set(range(2, 1000)))  # the backend drops every later lease claim
    spec = job("every 1m align tz UTC", clock, max_runs=1, retries=2, retry_delay=5.0)
    spec = Job(spec.job_id, spec.schedule, spec.command, replace(spec.settings, on_failure="x"))
    s, events = make([spec], runner, clock, backend)
    stop_at(s, clock, T0 + timedelta(minutes=5))
    assert s.run() == 1
    assert [env for env in runner.started if "PYJOB_HOOK" not in env] == runner.started[:1]
    assert len([env for env in runner.started if "PYJOB_HOOK" in env]) == 1
    dropped = [e for e in events if e.kind == "retry-dropped"]
    assert len(dropped) == 1 and dropped[0].fields["result"] == "failure"
    assert dropped[0].fields["exit_code"] == 3
    # Tried while the tick's window was open (the following tick at 12:02), not past it.
    assert dropped[0].at < T0 + timedelta(minutes=2)


def with_records(
    s: Scheduler, records: dict[tuple[str, int], Any], beating: tuple[str, ...] = ()
) -> None:
    """Run records kept in ``records`` (by job and tick), as a backend that keeps them would:
    the orphan look-up answers each job's newest ones, and the heartbeats of the ``beating``
    instances (each beat just now) and of no other."""
    from pyjob.core.records import InstanceInfo

    co = s.coordinator
    co.has_records = lambda url: True  # type: ignore[method-assign]
    co.register = lambda *a: None  # type: ignore[method-assign]
    co.heartbeat = lambda me: None  # type: ignore[method-assign]
    co.prune = lambda *a: None  # type: ignore[method-assign]

    def record(url: Any, r: Any, keep: int) -> None:
        records[(r.job, r.tick_us)] = replace(r)

    def orphans(url: Any, jobs: Any, done: Any, n: int = 1, heartbeats: bool = False) -> None:
        newest = {}
        for job in jobs:
            mine = [r for (j, _), r in records.items() if j == job]
            mine.sort(key=lambda r: -r.tick_us)
            if mine:
                newest[job] = [replace(r) for r in mine[:n]]
        now = to_us(s.clock.now())
        beats = {i: InstanceInfo(i, "h", 1, "0", seen_us=now) for i in beating}
        co._deliver(done, (newest, beats if newest or heartbeats else {}))

    co.record = record  # type: ignore[method-assign]
    co.orphans = orphans  # type: ignore[method-assign]


def test_an_idle_instance_beats_once_a_minute_and_fast_while_its_run_goes_on() -> None:
    """Nothing in flight: a heartbeat a minute, saying a quiet time of 3.5 minutes. A run's
    `running` record is preceded by a heartbeat at the fast pace (a third of the TTL), so that a
    run lost with this instance is noticed within about 1.5 × the TTL; once it ended, the pace
    is the idle one again."""
    from pyjob.core.sched.books import IDLE_BEAT

    clock = FakeClock(T0 + timedelta(seconds=1))
    runner = FakeRunner(clock, duration=20.0)
    spec = job("every 10m align tz UTC", clock, lease_ttl=15.0)
    events: list[Event] = []
    backend = NullBackend()
    s = Scheduler(
        clock, runner, events.append, instance="test:1", threaded=False, opener=lambda u: backend
    )
    records: dict[tuple[str, int], Any] = {}
    with_records(s, records)
    co = s.coordinator
    log: list[tuple[float, str, Any]] = []
    record = co.record

    def beat(me: Any) -> None:
        log.append((clock.monotonic(), "beat", me.quiet_us))

    def logged(url: Any, r: Any, keep: int) -> None:
        log.append((clock.monotonic(), "record", r.result))
        record(url, r, keep)

    co.heartbeat = beat  # type: ignore[method-assign]
    co.record = logged  # type: ignore[method-assign]
    s.open([spec])
    s.add(spec)
    stop_at(s, clock, T0 + timedelta(minutes=25))
    s.run()
    fast, idle = int(5 * 3.5e6), int(IDLE_BEAT * 3.5e6)
    running = [i for i, (_, kind, what) in enumerate(log) if (kind, what) == ("record", "running")]
    assert len(running) == 2  # 12:10 and 12:20
    for i in running:
        beat = max(j for j in range(i) if log[j][1] == "beat")
        assert log[beat][2] == fast and log[i][0] - log[beat][0] < 1.0, log
    beats = [(at, quiet) for at, kind, quiet in log if kind == "beat"]
    # Idle between the runs: beats a minute apart, each saying so.
    gaps = [b[0] - a[0] for a, b in pairwise(beats)]
    assert max(gaps) >= IDLE_BEAT - 1
    idle_beats = [at for at, quiet in beats if quiet == idle]
    # None while a run goes on (12:10:00-12:10:20 and 12:20:00-12:20:20: 599-619 s and 1199-1219
    # s after the start, whose monotonic time is 1000).
    during = [at for at in idle_beats if 1599 < at < 1619 or 2199 < at < 2219]
    assert idle_beats and not during, beats
    # The whole 25 minutes cost far fewer beats than a beat every 5 s (300).
    assert len(beats) < 60, beats


def test_the_instance_that_took_over_a_dead_ones_attempts_runs_its_later_attempts() -> None:
    """The taker holds the run by its take-over claim (the dead instance won the tick's claim):
    its next attempt claims that again, and is not mistaken for a run of somebody else's."""
    from pyjob.core.records import RunRecord

    clock = FakeClock(T0 + timedelta(seconds=5))
    runner = FakeRunner(clock, code=3, duration=1.0)
    backend = RecordingBackend(lose={T0})  # the dead instance won 12:00:00
    spec = job("every 1m align tz UTC", clock, max_runs=1, retries=2, retry_delay=1.0)
    spec = Job(spec.job_id, spec.schedule, spec.command, replace(spec.settings, on_failure="x"))
    events: list[Event] = []
    s = Scheduler(
        clock, runner, events.append, instance="test:1", threaded=False, opener=lambda u: backend
    )
    records: dict[tuple[str, int], Any] = {}
    dead = RunRecord("job", to_us(T0), "job-20260601T120000Z", "dead:1", "running", fence=7)
    records[("job", to_us(T0))] = dead
    with_records(s, records)
    s.open([spec])
    s.add(spec)
    stop_at(s, clock, T0 + timedelta(minutes=5))
    assert s.run() == 1
    first = [env for env in runner.started if env.get("PYJOB_TICK", "").endswith("12:00:00+00:00")]
    attempts = [env["PYJOB_ATTEMPT"] for env in first if "PYJOB_HOOK" not in env]
    assert attempts == ["2", "3"]  # 1 was lost with its instance; 2 and 3 ran here
    assert len([env for env in first if "PYJOB_HOOK" in env]) == 1
    assert not [e for e in events if e.kind == "skipped"]
    final = records[("job", to_us(T0))]
    assert final.result == "failure" and final.attempt == 3 and final.instance == "test:1"
    assert [a["result"] for a in final.attempts] == ["lost", "failure"]


@pytest.mark.parametrize("winner", ["quiet", "beating"])
def test_a_run_whose_winner_was_lost_before_it_wrote_a_record_is_taken_over(winner: str) -> None:
    """other:1 won 12:00:00's claim and wrote no record of it (it died just after its spawn,
    before the run's `running` record): once it is quiet, this instance, which lost that claim,
    continues the run as one whose first attempt was lost. While other:1 beats, nothing."""
    clock = FakeClock(T0 - timedelta(seconds=10))
    runner = FakeRunner(clock, code=3, duration=1.0)
    backend = RecordingBackend(lose={T0})  # other:1 wins 12:00:00
    spec = job("every 1m align tz UTC", clock, retries=2, retry_delay=1.0)
    events: list[Event] = []
    s = Scheduler(
        clock, runner, events.append, instance="test:1", threaded=False, opener=lambda u: backend
    )
    records: dict[tuple[str, int], Any] = {}
    with_records(s, records, beating=("other:1",) if winner == "beating" else ())
    s.open([spec])
    s.add(spec)
    stop_at(s, clock, T0 + timedelta(seconds=50))
    s.run()
    lost = [e for e in events if e.kind == "lost"]
    assert [(e.tick, e.fields["holder"]) for e in lost] == [(T0, "other:1")]
    first = [env for env in runner.started if env.get("PYJOB_TICK", "").endswith("12:00:00+00:00")]
    if winner == "beating":
        assert first == [] and records == {}
        return
    assert [env["PYJOB_ATTEMPT"] for env in first] == ["2", "3"]
    assert {env["PYJOB_RUN_ID"] for env in first} == {"job-20260601T120000Z"}
    assert {env["PYJOB_FENCE"] for env in first} == {"7"}  # the winner's claim's
    taken = [e for e in events if e.kind == "retrying" and "taken_over_from" in e.fields]
    assert [e.fields["taken_over_from"] for e in taken] == ["other:1"]
    final = records[("job", to_us(T0))]
    assert final.result == "failure" and final.attempt == 3 and final.instance == "test:1"
    assert [a["result"] for a in final.attempts] == ["lost", "failure"]


def lost_run_fleet(
    start: datetime,
    retries: int,
    backend: Any = None,
    instance: str = "test:1",
    records: dict[tuple[str, int], Any] | None = None,
    beating: tuple[str, ...] = (),
) -> tuple[Scheduler, list[Event], FakeRunner, dict[tuple[str, int], Any]]:
    """This instance (``instance``) starts at ``start`` and serves a job whose run of 12:00:00 was
    left `running` by dead:1, an instance that is gone (no heartbeat; ``beating`` are live)."""
    from pyjob.core.records import RunRecord

    clock = FakeClock(start)
    runner = FakeRunner(clock, code=3, duration=1.0)
    spec = job("every 1m align tz UTC", clock, retries=retries, retry_delay=1.0)
    spec = Job(spec.job_id, spec.schedule, spec.command, replace(spec.settings, on_failure="x"))
    events: list[Event] = []
    backend = backend or RecordingBackend(lose={T0})  # dead:1 won 12:00:00
    s = Scheduler(
        clock, runner, events.append, instance=instance, threaded=False, opener=lambda u: backend
    )
    records = {} if records is None else records
    dead = RunRecord(
        "job", to_us(T0), "job-20260601T120000Z", "dead:1", "running", fence=7, started_us=to_us(T0)
    )
    records[("job", to_us(T0))] = dead
    with_records(s, records, beating)
    s.open([spec])
    s.add(spec)
    stop_at(s, clock, T0 + timedelta(minutes=3))  # it runs until stopped
    return s, events, runner, records


@pytest.mark.parametrize(
    "start, retries",
    [(T0 + timedelta(seconds=5), 0), (T0 + timedelta(seconds=58), 2)],
    ids=["no-retries", "no-time-left-for-an-attempt"],
)
def test_a_run_lost_with_its_host_is_recorded_lost_counted_and_notified_once(
    start: datetime, retries: int
) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from pyjob.core.metrics import Metrics
    from pyjob.core.pings import PingSender

    s, events, runner, records = lost_run_fleet(start, retries)
    s.run()
    final = records[("job", to_us(T0))]
    assert final.result == "lost" and final.instance == "dead:1" and final.finished_us
    hooks = [
        env for env in runner.started if "PYJOB_HOOK" in env and "12:00:00" in env["PYJOB_TICK"]
    ]
    assert len(hooks) == 1
    assert hooks[0]["PYJOB_RESULT"] == "lost" and hooks[0]["PYJOB_RUN_ID"] == final.run_id
    assert not [
        env for env in runner.started if "PYJOB_HOOK" not in env and "12:00:00" in env["PYJOB_TICK"]
    ]
    ends = [e for e in events if e.kind == "retry-dropped"]
    assert len(ends) == 1 and ends[0].fields["result"] == "lost"
    # This instance starts after the death: it sees the dead one's heartbeat unchanged for 3.5
    # of its own beats from its first look, a beat after its start, and acts at the next beat.
    assert ends[0].at <= start + timedelta(seconds=6 * s._sh.books.heartbeat_every + 1)
    pings = PingSender({"job": "http://127.0.0.1:9/ping"}, s.clock, lambda *a, **k: None)
    metrics = Metrics(s.clock, "test:1", "0", {"job": 60.0}, {"job": "none"})
    for e in events:
        pings.on_event(e)
        metrics.on_event(e)
    assert [p.what for p in pings._queue if p.tick == T0] == ["1"]  # the final ping, a failure
    text = generate_latest(metrics.registry).decode()
    lost = [
        sample.value
        for fam in text_string_to_metric_families(text)
        for sample in fam.samples
        if sample.name == "pyjob_runs_total" and sample.labels.get("result") == "lost"
    ]
    assert lost == [1.0]


class SharedClaims(NullBackend):
    """Claims shared by the instances of a test: a tick is won by its first claimer (and again
    by it); 12:00:00 was won by dead:1."""

    def __init__(self, claims: dict[tuple[str, datetime], str]) -> None:
        super().__init__()
        self.claims = claims

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        holder = self.claims.setdefault((job, tick), instance)
        return ClaimResult(holder == instance, holder, 7)


def test_a_lost_run_is_ended_by_one_instance_of_the_fleet() -> None:
    """Two instances find the run lost, each before it sees the other's record of it: the one
    that wins the take-over claim ends it, the other leaves it."""
    claims = {("job", T0): "dead:1"}
    fleet, views = [], []
    for n in (1, 2):
        start = T0 + timedelta(seconds=5)
        live = ("test:1", "test:2")  # each other's records are not in its view: alive
        s, events, runner, view = lost_run_fleet(
            start, 0, SharedClaims(claims), f"test:{n}", beating=live
        )
        fleet.append((s, events, runner))
        views.append(view)
    for s, _, _ in fleet:
        s.run()
    ends = [e for _, events, _ in fleet for e in events if e.kind == "retry-dropped"]
    hooks = [
        env
        for _, _, runner in fleet
        for env in runner.started
        if "PYJOB_HOOK" in env and "12:00:00" in env["PYJOB_TICK"]
    ]
    assert len(ends) == 1 and len(hooks) == 1
    assert sorted(v[("job", to_us(T0))].result for v in views) == ["lost", "running"]


class DownBetween(NullBackend):
    """Every claim fails while the fake clock is within [``start``, ``end``): an outage."""

    def __init__(self, clock: FakeClock, start: datetime, end: datetime) -> None:
        super().__init__()
        self.clock, self.start, self.end = clock, start, end

    def claim_many(self, requests, instance, now):  # type: ignore[no-untyped-def]
        if self.start <= self.clock.now() < self.end:
            raise BackendError("backend unreachable (test)")
        return super().claim_many(requests, instance, now)


def test_after_an_outage_the_latest_tick_it_kept_from_being_claimed_runs_once() -> None:
    clock = FakeClock(T0)
    backend = DownBetween(clock, T0 + timedelta(seconds=15), T0 + timedelta(seconds=45))
    runner = FakeRunner(clock, duration=0.2)
    spec = job("every 10s align tz UTC", clock, catch_up=60.0, max_runs=4)
    s, events = make([spec], runner, clock, backend)
    assert s.run() == 0
    ran = [t[14:19] for t in ticks_run(runner)]
    # 12:00:20, :30 and :40 could not be claimed; :40, the latest, runs when the backend is back.
    assert ran == ["00:10", "00:40", "00:50", "01:00"], ran
    assert [(e.kind, e.tick.strftime("%M:%S")) for e in events if e.kind == "caught-up"] == [
        ("caught-up", "00:40")
    ]


def test_a_run_left_by_a_predecessor_under_the_same_name_is_found_lost() -> None:
    """An instance started again under the same --instance-id (a restarted pod, a systemd
    restart) finds the run its predecessor left `running`: the name's heartbeat is alive again,
    but the run started before this process did, so it died with the predecessor."""
    s, _, runner, records = lost_run_fleet(T0 + timedelta(seconds=5), 0, instance="dead:1")
    s.run()
    final = records[("job", to_us(T0))]
    assert final.result == "lost" and final.finished_us
    hooks = [
        env for env in runner.started if "PYJOB_HOOK" in env and "12:00:00" in env["PYJOB_TICK"]
    ]
    assert len(hooks) == 1 and hooks[0]["PYJOB_RESULT"] == "lost"


class _AheadBackend(NullBackend):
    """Refuses every claim while ``ahead`` (the backend judging this host's clock ahead of
    its own); at the second refusal the host's clock is set right again."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.ahead = False
        self.refusals = 0

    def claim(self, job, tick, instance, keep_until, now):  # type: ignore[no-untyped-def]
        if self.ahead:
            self.refusals += 1
            if self.refusals == 2:
                self.clock.step(-60)
                self.ahead = False
            return ClaimResult(False, instance, None, refused="clock-ahead (test)", ahead=60.0)
        return super().claim(job, tick, instance, keep_until, now)


def test_a_clock_stepped_ahead_then_back_resumes_at_the_next_tick_it_never_won() -> None:
    """The host's clock jumps a minute ahead after the 12:00:10 run (its claims are refused
    meanwhile), then is set right: it runs 12:00:40 and on, not only from 12:01:30 on, the tick
    its clock had reached. The tick it won is never claimed again."""
    clock = FakeClock(T0)
    backend = _AheadBackend(clock)

    def jump(n: int) -> None:
        if n == 1:
            clock.step(60)
            backend.ahead = True

    runner = FakeRunner(clock, on_start=jump)
    s, _ = make([job("every 10s align tz UTC", clock, max_runs=3)], runner, clock, backend)
    s.run()
    assert ticks_run(runner) == [
        "2026-06-01T12:00:10+00:00",
        "2026-06-01T12:00:40+00:00",
        "2026-06-01T12:00:50+00:00",
    ]
    assert backend.refusals == 2

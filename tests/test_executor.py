"""The run loop with a fake clock and a fake runner: late ticks, clock steps, exhaustion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyjob.core.backends.null import NullBackend
from pyjob.core.clock import FakeClock
from pyjob.core.executor import Event, Executor, JobConfig
from pyjob.core.process import Command
from pyjob.core.schedule import Schedule, parse

from .fakes import FakeRunner, FlakyBackend

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def make(
    text: str,
    runner: FakeRunner,
    clock: FakeClock,
    backend=None,
    **options,  # type: ignore[no-untyped-def]
) -> tuple[Executor, list[Event]]:
    events: list[Event] = []
    spec = parse(text, env={"TZ": "UTC"}, now=clock.now())
    config = JobConfig(
        job_id="job",
        schedule=Schedule(spec, job_id="job", anchor=clock.now()),
        command=Command(("true",)),
        instance="test:1",
        **options,
    )
    return Executor(config, backend or NullBackend(), clock, runner, events.append), events


def ticks_run(runner: FakeRunner) -> list[str]:
    return [env["PYJOB_TICK"] for env in runner.started]


def test_runs_each_tick_once_and_ends_when_exhausted() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner()
    ex, events = make("every 10s align tz UTC stop-at 2026-06-01T12:01:00Z", runner, clock)
    assert ex.run(clock.now()) == 0
    assert ticks_run(runner) == [
        f"2026-06-01T12:00:{s:02d}+00:00" for s in (10, 20, 30, 40, 50)
    ] + ["2026-06-01T12:01:00+00:00"]
    assert [e.kind for e in events][-1] == "exhausted"


def test_waits_without_polling() -> None:
    clock = FakeClock(T0)
    ex, _ = make("every 1h align tz UTC", FakeRunner(), clock, max_runs=2)
    ex.run(clock.now())
    # Sleeps are whole stretches (a few per minute at most), not a busy loop.
    assert len(clock.sleeps) < 2 * (3600 / 20 + 10)
    assert max(clock.sleeps) <= 20.0


def test_failed_run_makes_exit_1() -> None:
    clock = FakeClock(T0)
    ex, _ = make("every 1s align tz UTC", FakeRunner(code=3), clock, max_runs=2)
    assert ex.run(clock.now()) == 1


def test_late_wakeup_runs_only_the_most_recent_tick_and_counts_missed() -> None:
    clock = FakeClock(T0)

    def suspend(n: int) -> None:
        if n == 2:
            clock.step(45)  # the host slept: 12:00:02 -> 12:00:47 on the wall clock

    runner = FakeRunner(on_start=suspend)
    ex, events = make("every 10s align tz UTC", runner, clock, max_runs=4)
    ex.run(clock.now())
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

    runner = FakeRunner(on_start=stall)
    ex, events = make("every 10s align tz UTC", runner, clock, max_runs=3, misfire_grace=5.0)
    ex.run(clock.now())
    skipped = [e for e in events if e.kind == "missed"]
    assert skipped and "over --misfire-grace" in skipped[0].fields["reason"]


def test_clock_step_back_never_reruns_a_handled_tick() -> None:
    clock = FakeClock(T0)

    def step_back(n: int) -> None:
        if n == 2:
            clock.step(-35)  # NTP steps the clock back over three handled ticks

    runner = FakeRunner(on_start=step_back)
    ex, _ = make("every 10s align tz UTC", runner, clock, max_runs=4)
    ex.run(clock.now())
    ran = ticks_run(runner)
    assert len(ran) == len(set(ran)) == 4
    assert ran == sorted(ran)


def test_backend_error_skips_the_tick_and_goes_on() -> None:
    clock = FakeClock(T0)
    down = {T0 + timedelta(seconds=20)}
    runner = FakeRunner()
    ex, events = make("every 10s align tz UTC", runner, clock, FlakyBackend(down), max_runs=3)
    assert ex.run(clock.now()) == 0
    assert "2026-06-01T12:00:20+00:00" not in ticks_run(runner)
    errors = [e for e in events if e.kind == "backend-error"]
    assert errors and errors[0].fields["action"] == "skip"


def test_backend_error_fail_open_runs_the_tick() -> None:
    clock = FakeClock(T0)
    down = {T0 + timedelta(seconds=20)}
    runner = FakeRunner()
    ex, _ = make(
        "every 10s align tz UTC",
        runner,
        clock,
        FlakyBackend(down),
        max_runs=3,
        on_backend_error="run",
    )
    ex.run(clock.now())
    assert "2026-06-01T12:00:20+00:00" in ticks_run(runner)


def test_environment_of_the_command() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner()
    ex, _ = make("every 1h align tz Europe/Berlin", runner, clock, max_runs=1)
    ex.run(clock.now())
    env = runner.started[0]
    assert env["PYJOB_JOB"] == "job"
    assert env["PYJOB_TICK"] == "2026-06-01T15:00:00+02:00"
    assert env["PYJOB_TICK_UNIX"] == str(int((T0 + timedelta(hours=1)).timestamp()))
    assert env["PYJOB_RUN_ID"] == "job-20260601T130000Z"
    assert env["PYJOB_INSTANCE"] == "test:1"
    assert "PYJOB_FENCE" not in env  # the null backend has no fences


def test_run_now_runs_at_start_without_a_claim() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner()
    ex, _ = make("every 1h align tz UTC", runner, clock, max_runs=1, run_now=True)
    ex.run(clock.now())
    assert len(runner.started) == 2
    assert runner.started[0]["PYJOB_RUN_ID"].endswith("-now")


@pytest.mark.parametrize("jitter", [3.0])
def test_jitter_delays_within_bound(jitter: float) -> None:
    clock = FakeClock(T0)
    starts: list[datetime] = []
    runner = FakeRunner(on_start=lambda n: starts.append(clock.now()))
    ex, _ = make("every 10s align tz UTC", runner, clock, max_runs=5, jitter=jitter)
    ex.run(clock.now())
    ticks = [datetime.fromisoformat(env["PYJOB_TICK"]) for env in runner.started]
    delays = [(s - t).total_seconds() for s, t in zip(starts, ticks, strict=True)]
    assert all(0 <= d <= jitter + 1e-6 for d in delays) and len(set(delays)) > 1

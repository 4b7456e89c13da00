"""--retries: a failed run runs again as the same run (run id, tick, fence), with backoff, within
its tick; a stop cancels what waits; and when the instance running the attempts dies, another
takes over from the next attempt."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from pyjob.core.clock import FakeClock

from .fakes import FakeRunner
from .runproc import PyjobRun
from .test_scheduler import QUIET, T0, job, make, seq


class CodesRunner(FakeRunner):
    """Each start exits with the next code of ``codes`` (then 0)."""

    def __init__(self, clock: FakeClock, codes: list[int], duration: float = 1.0) -> None:
        super().__init__(clock, duration=duration)
        self.codes = list(codes)

    def start(self, command, env, on_line, found=None):  # type: ignore[no-untyped-def]
        self.code = self.codes.pop(0) if self.codes else 0
        return super().start(command, env, on_line, found)


def test_fails_twice_then_succeeds_as_one_run_in_three_attempts() -> None:
    clock = FakeClock(T0)
    runner = CodesRunner(clock, [1, 3])
    jobs = [job("every 1m align tz UTC", clock, max_runs=1, retries=2, retry_delay=0.3)]
    s, events = make(jobs, runner, clock)
    assert s.run() == 0  # the run succeeded in the end
    assert [e["PYJOB_ATTEMPT"] for e in runner.started] == ["1", "2", "3"]
    assert len({e["PYJOB_RUN_ID"] for e in runner.started}) == 1
    assert len({e["PYJOB_TICK"] for e in runner.started}) == 1
    assert seq(events, *QUIET) == [
        ("run-started", "12:01:00"),
        ("run-finished", "12:01:00"),
        ("retrying", "12:01:00"),
        ("run-started", "12:01:00"),
        ("run-finished", "12:01:00"),
        ("retrying", "12:01:00"),
        ("run-started", "12:01:00"),
        ("run-finished", "12:01:00"),
    ]
    retrying = [e for e in events if e.kind == "retrying"]
    assert [e.fields["delay"] for e in retrying] == [0.3, 0.6]  # doubled (--retry-backoff 2)
    starts = [e.at for e in events if e.kind == "run-started"]
    assert (starts[1] - starts[0]).total_seconds() == pytest.approx(1.3)  # 1 s run + 0.3 s
    assert (starts[2] - starts[1]).total_seconds() == pytest.approx(1.6)


def test_the_last_attempt_failing_is_one_failure_and_one_failure_hook() -> None:
    clock = FakeClock(T0)
    runner = CodesRunner(clock, [1, 2])
    jobs = [
        job(
            "every 1m align tz UTC",
            clock,
            max_runs=1,
            retries=1,
            retry_delay=0.3,
            on_failure="alert",
        )
    ]
    s, _ = make(jobs, runner, clock)
    assert s.run() == 1
    hooks = [e for e in runner.started if "PYJOB_HOOK" in e]
    assert len(hooks) == 1 and hooks[0]["PYJOB_EXIT_CODE"] == "2"
    assert hooks[0]["PYJOB_ATTEMPT"] == "2"


def test_a_retry_due_after_the_following_tick_is_dropped() -> None:
    clock = FakeClock(T0)
    runner = CodesRunner(clock, [1, 1])
    jobs = [job("every 10s align tz UTC", clock, max_runs=2, retries=3, retry_delay=20.0)]
    s, events = make(jobs, runner, clock)
    assert s.run() == 1
    dropped = [e for e in events if e.kind == "retry-dropped"]
    assert dropped and "following tick" in dropped[0].fields["reason"]
    assert [e["PYJOB_ATTEMPT"] for e in runner.started] == ["1", "1"]


def test_retry_on_limits_the_codes() -> None:
    clock = FakeClock(T0)
    runner = CodesRunner(clock, [2])
    jobs = [
        job(
            "every 1m align tz UTC",
            clock,
            max_runs=1,
            retries=2,
            retry_delay=0.1,
            retry_on=frozenset({"1", "75"}),
        )
    ]
    s, _ = make(jobs, runner, clock)
    assert s.run() == 1
    assert len(runner.started) == 1  # 2 is not retried


def test_a_stop_cancels_the_attempts_that_wait() -> None:
    clock = FakeClock(T0)
    runner = CodesRunner(clock, [1])
    jobs = [job("every 1m align tz UTC", clock, retries=2, retry_delay=30.0, on_failure="x")]
    s, events = make(jobs, runner, clock)

    def stop_after_first(n: int) -> None:
        if n == 1:
            clock.advance(0)

    runner.on_start = stop_after_first
    original = s._schedule_retry

    def then_stop(*args, **kw):  # type: ignore[no-untyped-def]
        original(*args, **kw)
        s.request_stop()

    s._schedule_retry = then_stop  # type: ignore[method-assign]
    assert s.run() == 0
    assert [e.get("PYJOB_HOOK") for e in runner.started] == [None, "on-failure"]  # no attempt 2
    dropped = [e for e in events if e.kind == "retry-dropped"]
    assert [e.fields["reason"] for e in dropped] == ["cancelled by the stop"]
    assert dropped[0].fields["exit_code"] == 1 and dropped[0].fields["result"] == "failure"
    from pyjob.core.pings import PingSender

    pings = PingSender({"job": "http://127.0.0.1:9/ping"}, clock, lambda *a, **k: None)
    for e in events:
        pings.on_event(e)
    assert [p.what for p in pings._queue] == ["start", "1"]  # the stop ended the run: one end


@pytest.mark.slow
@pytest.mark.long
def test_another_instance_takes_over_the_attempts_of_one_that_was_killed(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    import json
    import subprocess

    from .conftest import pyjob_exe

    url = fleet_lock_url
    out = tmp_path / "attempts"
    cmd = (
        f'echo "$PYJOB_ATTEMPT $PYJOB_INSTANCE $PYJOB_RUN_ID $PYJOB_FENCE" >> {out}; '
        'if [ "$PYJOB_ATTEMPT" = 1 ]; then sleep 60; fi'
    )
    args = ["-s", "*/20 * * * * *", "--lock", url, "--name", "flaky", "--retries", "2"]
    args += ["--retry-delay", "200ms", "--lease-ttl", "3s", "--shell", "--", cmd]
    runs = {n: PyjobRun(["--instance-id", n, *args], tmp_path, n) for n in ("a", "b")}
    deadline = time.time() + 30
    while time.time() < deadline and not (out.exists() and out.read_text().strip()):
        time.sleep(0.1)
    first = out.read_text().split()
    assert first[0] == "1"
    victim, survivor = first[1], "b" if first[1] == "a" else "a"
    runs[victim].signal(signal.SIGKILL)  # during attempt 1: the reaper kills the command too
    runs[victim].wait()
    deadline = time.time() + 20
    while time.time() < deadline and len(out.read_text().splitlines()) < 2:
        time.sleep(0.1)
    lines = [line.split() for line in out.read_text().splitlines()]
    assert lines[1][:2] == ["2", survivor] and lines[1][2] == lines[0][2]  # the same run
    assert lines[1][3:] == lines[0][3:]  # and the same fence (none on some backends)
    taken = runs[survivor].wait_for("retrying")
    assert taken[0]["taken_over_from"] == victim and taken[0]["attempt"] == 2
    time.sleep(0.5)
    assert runs[survivor].stop() == 0
    hist = subprocess.run(
        [*pyjob_exe(), "history", "flaky", "--lock", url, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = json.loads(hist.stdout)["runs"][0]
    assert record["attempt"] == 2 and record["result"] == "success"
    assert [(a["attempt"], a["result"]) for a in record["attempts"]] == [(1, "lost")]


def test_pings_and_metrics_see_a_retried_run_once_with_its_final_result() -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from pyjob.core.metrics import Metrics
    from pyjob.core.pings import PingSender

    clock = FakeClock(T0)
    runner = CodesRunner(clock, [1, 3])
    jobs = [job("every 1m align tz UTC", clock, max_runs=1, retries=2, retry_delay=0.3)]
    s, events = make(jobs, runner, clock)
    assert s.run() == 0
    pings = PingSender({"job": "http://127.0.0.1:9/ping"}, clock, lambda *a, **k: None)
    for e in events:
        pings.on_event(e)
    assert [p.what for p in pings._queue] == ["start", "0"]  # one start, the final end
    metrics = Metrics(clock, "test:1", "0", {"job": 60.0}, {"job": "none"})
    for e in events:
        metrics.on_event(e)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    runs = {
        s.labels["result"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "pyjob_runs_total" and s.labels.get("job_name") == "job"
    }
    assert runs.get("success") == 1.0 and not runs.get("failure")


def test_the_instance_that_took_over_runs_the_attempts_after_the_one_it_took(
    redis_server: object, tmp_path: Path
) -> None:
    """Two instances on Redis; the one running attempt 1 is killed. The survivor takes over
    attempt 2 (which fails) and runs attempt 3 too: its own take-over claim is not mistaken for
    somebody else's run. The run ends once: one record (failure, three attempts), one hook."""
    import json
    import subprocess

    import redis

    from .conftest import pyjob_exe

    port = redis_server.port  # type: ignore[attr-defined]
    db = 7
    redis.Redis(port=port, db=db).flushdb()
    url = f"redis://127.0.0.1:{port}/{db}"
    out, hooks = tmp_path / "attempts", tmp_path / "hooks"
    cmd = (
        f'echo "$PYJOB_ATTEMPT $PYJOB_INSTANCE $PYJOB_RUN_ID" >> {out}; '
        'if [ "$PYJOB_ATTEMPT" = 1 ]; then sleep 60; fi; exit 3'
    )
    hook = f'echo "$PYJOB_RESULT $PYJOB_ATTEMPT $PYJOB_INSTANCE" >> {hooks}'
    # A tick a minute: the three attempts have all the time they need within it.
    args = ["-s", "0 * * * * *", "--lock", url, "--name", "flaky", "--retries", "2"]
    args += ["--retry-delay", "200ms", "--lease-ttl", "1s", "--on-failure", hook]
    args += ["--shell", "--", cmd]
    runs = {n: PyjobRun(["--instance-id", n, *args], tmp_path, n) for n in ("a", "b")}

    def lines(path: Path, n: int, timeout: float) -> list[list[str]]:
        deadline = time.time() + timeout
        while time.time() < deadline and not (
            path.exists() and len(path.read_text().splitlines()) >= n
        ):
            time.sleep(0.1)
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    first = lines(out, 1, 90)
    assert first and first[0][0] == "1", first
    victim, survivor = first[0][1], "b" if first[0][1] == "a" else "a"
    runs[victim].signal(signal.SIGKILL)
    runs[victim].wait()
    attempts = lines(out, 3, 40)
    assert [row[:2] for row in attempts] == [["1", victim], ["2", survivor], ["3", survivor]]
    assert len({row[2] for row in attempts}) == 1  # one run
    assert lines(hooks, 1, 20) == [["failure", "3", survivor]]
    time.sleep(1.0)
    assert runs[survivor].stop() == 0
    assert lines(hooks, 1, 0) == [["failure", "3", survivor]]  # once
    assert not runs[survivor].events("skipped")
    hist = subprocess.run(
        [*pyjob_exe(), "history", "flaky", "--lock", url, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = json.loads(hist.stdout)["runs"][0]
    assert record["attempt"] == 3 and record["result"] == "failure"
    assert [(a["attempt"], a["result"]) for a in record["attempts"]] == [
        (1, "lost"),
        (2, "failure"),
    ]


def test_a_run_killed_with_its_host_is_recorded_lost_and_notified_once_by_the_fleet(
    redis_server: object, tmp_path: Path
) -> None:
    """Two instances on Redis, no --retries; the one running the tick is SIGKILLed. The survivor
    finds the run's instance quiet, records the run lost and fires its on-failure hook, once."""
    import json
    import subprocess

    import redis

    from .conftest import pyjob_exe

    port = redis_server.port  # type: ignore[attr-defined]
    db = 8
    redis.Redis(port=port, db=db).flushdb()
    url = f"redis://127.0.0.1:{port}/{db}"
    out, hooks = tmp_path / "runs", tmp_path / "hooks"
    cmd = f'echo "$PYJOB_INSTANCE" >> {out}; sleep 60'
    hook = f'echo "$PYJOB_RESULT $PYJOB_INSTANCE $PYJOB_RUN_ID" >> {hooks}'
    args = ["-s", "0 * * * * *", "--lock", url, "--name", "doomed", "--lease-ttl", "1s"]
    args += ["--on-failure", hook, "--shell", "--", cmd]
    runs = {n: PyjobRun(["--instance-id", n, *args], tmp_path, n) for n in ("a", "b")}

    def lines(path: Path, n: int, timeout: float) -> list[list[str]]:
        deadline = time.time() + timeout
        while time.time() < deadline and not (
            path.exists() and len(path.read_text().splitlines()) >= n
        ):
            time.sleep(0.1)
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    first = lines(out, 1, 90)
    assert first, "no run started"
    victim, survivor = first[0][0], "b" if first[0][0] == "a" else "a"
    runs[victim].signal(signal.SIGKILL)
    runs[victim].wait()
    # Quiet after 3.5 beats of a third of the 1 s TTL, found at the survivor's next beat.
    notified = lines(hooks, 1, 30)
    assert [row[:2] for row in notified] == [["lost", survivor]], notified
    ended = runs[survivor].wait_for("retry-dropped")
    assert ended[0]["result"] == "lost" and ended[0]["run_id"] == notified[0][2]
    time.sleep(2.0)  # later beats must not end it again
    assert runs[survivor].stop() == 0
    assert len(lines(hooks, 1, 0)) == 1
    hist = subprocess.run(
        [*pyjob_exe(), "history", "doomed", "--lock", url, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = json.loads(hist.stdout)["runs"][0]
    assert record["result"] == "lost" and record["run_id"] == notified[0][2]
    assert record["finished"]  # written so (a reader alone would show it lost, unfinished)


def test_an_instance_whose_clock_is_ahead_never_ends_a_live_instance_s_run(
    redis_server: object, tmp_path: Path
) -> None:
    """Two instances on Redis; b's clock is two minutes ahead, so every heartbeat of a looks two
    minutes old to it. a runs and retries each tick's failing run; b must not find a quiet and
    end or take over its runs (a second hook, a second attempt): quiet is judged by b's own
    monotonic clock over what it reads, never by comparing wall clocks."""
    import redis

    from .clockshim import ClockShim

    port = redis_server.port  # type: ignore[attr-defined]
    db = 9
    redis.Redis(port=port, db=db).flushdb()
    url = f"redis://127.0.0.1:{port}/{db}"
    out, hooks = tmp_path / "runs", tmp_path / "hooks"
    cmd = f'echo "$PYJOB_INSTANCE $PYJOB_TICK_UNIX $PYJOB_ATTEMPT" >> {out}; sleep 1; exit 1'
    hook = f'echo "$PYJOB_INSTANCE $PYJOB_TICK_UNIX $PYJOB_RESULT" >> {hooks}'
    args = ["--every", "6s", "--align", "--lock", url, "--name", "skewed", "--lease-ttl", "1s"]
    args += ["--retries", "1", "--retry-delay", "0.5s", "--overlap", "allow"]
    args += ["--on-failure", hook, "--shell", "--", cmd]
    b = PyjobRun(
        ["--instance-id", "b", *args],
        tmp_path,
        "b",
        env=ClockShim(tmp_path / "clock-b", 120.0).env(),
    )
    a = PyjobRun(["--instance-id", "a", *args], tmp_path, "a")
    try:
        # Two of a's ticks, each two failed attempts and one hook, while b reads a's beats.
        deadline = time.time() + 60
        while time.time() < deadline and not (
            hooks.exists() and len(hooks.read_text().splitlines()) >= 2
        ):
            time.sleep(0.2)
        time.sleep(3.0)  # b's beats every third of a second would have ended a run by now
    finally:
        assert b.stop() == 0
        assert a.stop() == 0
    ran = [line.split() for line in out.read_text().splitlines()]
    alerts = [line.split() for line in hooks.read_text().splitlines()]
    assert len(alerts) >= 2, (ran, alerts)
    assert {row[0] for row in ran} == {"a"}, ran
    assert {row[0] for row in alerts} == {"a"}, alerts
    ticks = [row[1] for row in alerts]
    assert len(ticks) == len(set(ticks)), alerts
    assert not b.events("retry-dropped") and not b.events("retrying"), b.log_path.read_text()

"""Hooks: which runs fire them (a table of the pure decision), what they get, their timeout, and
once per run across a fleet of real instances on a real Redis."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyjob.core.clock import FakeClock
from pyjob.core.hooks import hooks_to_run
from pyjob.core.jobsettings import JobSettings
from pyjob.core.settings import NotifyOn

from .fakes import FakeRunner
from .runproc import PyjobRun
from .test_scheduler import T0, job, make

ALL = {"on_failure": "F", "on_success": "S", "on_finish": "E"}


@pytest.mark.parametrize(
    ("notify", "result", "previous", "fired"),
    [
        (NotifyOn.ALWAYS, "success", None, ["on-success", "on-finish"]),
        (NotifyOn.ALWAYS, "failure", "failure", ["on-failure", "on-finish"]),
        (NotifyOn.ALWAYS, "timeout", None, ["on-failure", "on-finish"]),
        (NotifyOn.ALWAYS, "start-failed", None, ["on-failure", "on-finish"]),
        (NotifyOn.ALWAYS, "stopped", None, ["on-finish"]),
        (NotifyOn.FAILURE, "success", None, []),
        (NotifyOn.FAILURE, "failure", "failure", ["on-failure", "on-finish"]),
        (NotifyOn.FAILURE, "stopped", None, []),
        (NotifyOn.CHANGE, "failure", None, ["on-failure", "on-finish"]),  # none = succeeding
        (NotifyOn.CHANGE, "failure", "success", ["on-failure", "on-finish"]),
        (NotifyOn.CHANGE, "failure", "timeout", []),  # still failing
        (NotifyOn.CHANGE, "success", "failure", ["on-success", "on-finish"]),  # the recovery
        (NotifyOn.CHANGE, "success", "success", []),
        (NotifyOn.CHANGE, "success", None, []),
        (NotifyOn.CHANGE, "stopped", "failure", []),
    ],
)
def test_which_hooks_a_run_fires(
    notify: NotifyOn, result: str, previous: str | None, fired: list[str]
) -> None:
    settings = JobSettings(notify_on=notify, **ALL)
    assert [name for name, _ in hooks_to_run(settings, result, previous)] == fired


def test_a_hook_gets_the_runs_environment_and_its_outcome() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, durations=[2.0], code=3)
    s, events = make(
        [job("every 1m align tz UTC", clock, max_runs=1, on_failure="alert")], runner, clock
    )
    assert s.run() == 1
    run_env, hook_env = runner.started
    assert "PYJOB_HOOK" not in run_env
    assert hook_env["PYJOB_HOOK"] == "on-failure" and hook_env["PYJOB_RESULT"] == "failure"
    assert hook_env["PYJOB_EXIT_CODE"] == "3" and hook_env["PYJOB_DURATION"] == "2.000000"
    assert hook_env["PYJOB_RUN_ID"] == run_env["PYJOB_RUN_ID"] and hook_env["PYJOB_ATTEMPT"] == "1"
    kinds = [e.kind for e in events]
    assert kinds.index("run-finished") < kinds.index("hook-failed")  # the fake hook exits 3 too


def test_a_hook_past_its_timeout_is_stopped_and_logged_not_a_failed_run() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, durations=[1.0, 100.0], ignores_term=True)
    jobs = [job("every 1m align tz UTC", clock, max_runs=1, on_success="slow", hook_timeout=3.0)]
    s, events = make(jobs, runner, clock)
    assert s.run() == 0  # the run succeeded; the hook's trouble is only logged
    failed = [e for e in events if e.kind == "hook-failed"]
    assert len(failed) == 1 and "hook-timeout 3s" in failed[0].fields["error"]
    assert failed[0].fields["duration"] == pytest.approx(8.0)  # 3 s, then SIGKILL 5 s later
    assert runner.children[1].signals == [signal.SIGTERM, signal.SIGKILL]


def test_hooks_never_delay_the_next_tick() -> None:
    clock = FakeClock(T0)
    runner = FakeRunner(clock, durations=[0.5, 25.0, 0.5, 25.0])  # run, hook, run, hook
    jobs = [job("every 10s align tz UTC", clock, max_runs=2, on_finish="slow")]
    s, events = make(jobs, runner, clock)
    assert s.run() == 0
    started = [e for e in events if e.kind == "run-started"]
    assert [e.fields["lateness"] for e in started] == [0.0, 0.0]


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("notify", ["always", "change"])
def test_hooks_fire_once_per_run_across_three_instances(
    notify: str, redis_server: object, tmp_path: Path
) -> None:
    import random

    import redis

    port = redis_server.port  # type: ignore[attr-defined]
    db = random.randint(1, 15)
    redis.Redis(port=port, db=db).flushdb()
    url = f"redis://127.0.0.1:{port}/{db}"
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    last = first + timedelta(seconds=3)
    # fail, fail, ok, ok
    cmd = f"test $PYJOB_TICK_UNIX -ge {int(first.timestamp()) + 2}"
    out = tmp_path / "hooks"
    record = f'echo "$PYJOB_HOOK $PYJOB_TICK_UNIX $PYJOB_EXIT_CODE $PYJOB_INSTANCE" >> {out}'
    args = ["--every", "1s", "--align", "--start-at", _iso(first), "--stop-at", _iso(last)]
    args += ["--lock", url, "--name", "flappy", "--notify-on", notify]
    args += ["--on-failure", record, "--on-success", record, "--shell", "--", cmd]
    runs = [PyjobRun(["--instance-id", f"i{n}", *args], tmp_path, f"i{n}") for n in range(3)]
    for r in runs:
        assert r.wait(timeout=40) in (0, 1)
    lines = sorted(out.read_text().split("\n")[:-1], key=lambda line: line.split()[1])
    t0 = int(first.timestamp())
    fired = [(line.split()[0], int(line.split()[1]) - t0, line.split()[2]) for line in lines]
    if notify == "always":
        assert fired == [
            ("on-failure", 0, "1"),
            ("on-failure", 1, "1"),
            ("on-success", 2, "0"),
            ("on-success", 3, "0"),
        ]
    else:
        assert fired == [("on-failure", 0, "1"), ("on-success", 2, "0")]
    for line in lines:  # each by the instance that ran the tick
        tick, instance = int(line.split()[1]), line.split()[3]
        ran = [
            e
            for r in runs
            for e in r.events("run-started")
            if e["instance"] == instance
            and int(datetime.fromisoformat(e["tick"]).timestamp()) == tick
        ]
        assert len(ran) == 1

"""`pyjob pause`, `pyjob resume` and `pyjob trigger` with several real `pyjob run` processes
sharing each backend (file:, nfs:, Redis, PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import pyjob_exe
from .runproc import PyjobRun

pytestmark = pytest.mark.slow

RECORD = 'echo "$PYJOB_RUN_ID ${PYJOB_TRIGGERED:-0} $PYJOB_INSTANCE" >> "$OUT"'


def _pyjob(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "TZ": "UTC"}
    env.pop("PYJOB_LOCK", None)
    return subprocess.run(
        [*pyjob_exe(), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _start(url: str, tmp: Path, name: str, every: str = "1s") -> PyjobRun:
    run = PyjobRun(
        ["--every", every, "--align", "--name", "job", "--lock", url, "--shell", "--", RECORD],
        tmp,
        name,
        {"OUT": str(tmp / "runs")},
    )
    run.wait_for("next-tick", timeout=30)
    return run


def _at(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))


def _tick(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["tick"]).replace("Z", "+00:00"))


def _started_between(run: PyjobRun, after: datetime, before: datetime | None) -> list[str]:
    return [
        str(e["run_id"])
        for e in run.events("run-started")
        if _tick(e) > after and (before is None or _tick(e) < before)
    ]


def test_pause_is_seen_by_three_instances_and_survives_a_restart(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    runs = [_start(fleet_lock_url, tmp_path, f"i{n}") for n in range(3)]
    runs[0].wait_for("run-finished", timeout=30)
    paused = _pyjob("pause", "job", "--lock", fleet_lock_url)
    assert paused.returncode == 0, paused.stderr
    seen = [r.wait_for("paused", timeout=30)[0] for r in runs]
    assert {e["by"] for e in seen} == {seen[0]["by"]} and "@" in str(seen[0]["by"])
    for r in runs:
        r.wait_for("skipped", 2, timeout=30)  # two ticks at least went by paused on each
    # An instance started while the job is paused knows it before its first tick.
    late = _start(fleet_lock_url, tmp_path, "late")
    late.wait_for("paused", timeout=30)
    late.wait_for("skipped", timeout=30)
    runs.append(late)
    status = _pyjob("status", "--lock", fleet_lock_url, "--format", "json")
    assert status.returncode == 0, status.stderr
    (job,) = json.loads(status.stdout)["jobs"]
    assert job["paused"]["by"] == seen[0]["by"]
    table = _pyjob("status", "--lock", fleet_lock_url)
    assert "paused" in table.stdout, table.stdout
    resumed = _pyjob("resume", "job", "--lock", fleet_lock_url)
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed job"), resumed.stderr
    back = [r.wait_for("resumed", timeout=30)[0] for r in runs]
    finished = sum(len(r.events("run-finished")) for r in runs)
    deadline = time.monotonic() + 30
    while sum(len(r.events("run-finished")) for r in runs) < finished + 2:
        assert time.monotonic() < deadline, "no runs after resume"
        time.sleep(0.1)
    for r in runs:
        assert r.stop() == 0
    # No instance started a tick due after it logged the pause and before it logged the resume.
    for r, p, b in zip(runs, [*seen, late.events("paused")[0]], back, strict=True):
        assert _started_between(r, _at(p), _at(b)) == [], r.log_path.read_text()[-2000:]
        reasons = {e["reason"] for e in r.events("skipped")}
        assert reasons == {"paused"}
    history = _pyjob("history", "job", "--lock", fleet_lock_url, "--format", "json", "-n", "200")
    records = json.loads(history.stdout)["runs"]
    assert any(r["result"] == "skipped" and r.get("reason") == "paused" for r in records)
    counts = Counter(line.split()[0] for line in (tmp_path / "runs").read_text().splitlines())
    assert max(counts.values()) == 1


def test_trigger_runs_once_with_three_instances_racing(fleet_lock_url: str, tmp_path: Path) -> None:
    runs = [_start(fleet_lock_url, tmp_path, f"i{n}", every="1h") for n in range(3)]
    said = []
    for _ in range(3):
        done = _pyjob("trigger", "job", "--lock", fleet_lock_url)
        assert done.returncode == 0, done.stderr
        said.append(done.stdout)
    assert all(" started on " in s for s in said), said
    deadline = time.monotonic() + 30
    while sum(len(r.events("run-finished")) for r in runs) < 3:
        assert time.monotonic() < deadline, "the triggered runs did not all finish"
        time.sleep(0.1)
    for r in runs:
        assert r.stop() == 0
    lines = [line.split() for line in (tmp_path / "runs").read_text().splitlines()]
    ids = Counter(line[0] for line in lines)
    assert len(ids) == 3 and set(ids.values()) == {1}, lines
    assert all(rid.startswith("job-trigger-") and flag == "1" for rid, flag, _ in lines)
    for s in said:
        assert s.split()[1] in ids
    won = [e for r in runs for e in r.events("triggered")]
    assert sorted(str(e["run_id"]) for e in won) == sorted(ids)
    history = _pyjob("history", "job", "--lock", fleet_lock_url, "--format", "json")
    recorded = {r["run_id"]: r for r in json.loads(history.stdout)["runs"]}
    assert all(recorded[rid]["result"] == "success" for rid in ids)


def test_trigger_and_pause_need_a_known_job_a_live_instance_and_a_shared_backend(
    tmp_path: Path,
) -> None:
    url = f"file:{tmp_path / 'locks'}"
    run = PyjobRun(
        ["--every", "1h", "--name", "job", "--lock", url, "--lease-ttl", "3s", "--", "true"],
        tmp_path,
    )
    run.wait_for("next-tick", timeout=30)
    for command in (["pause", "nosuch"], ["resume", "nosuch"], ["trigger", "nosuch"]):
        done = _pyjob(*command, "--lock", url)
        assert done.returncode == 1 and done.stderr == (
            "Error: no such job: nosuch (pyjob status lists the jobs)\n"
        ), done.stderr
    for command in (["pause", "job"], ["trigger", "job"]):
        done = _pyjob(*command, "--lock", "none")
        assert done.returncode == 2, done.stderr
        assert "needs a shared lock backend" in done.stderr and done.stderr.count("\n") == 1
    assert _pyjob("pause", "--all", "--lock", url).stdout.startswith("paused job")
    paused = _pyjob("trigger", "job", "--lock", url)
    assert paused.returncode == 1 and "is paused" in paused.stderr
    assert _pyjob("resume", "--all", "--lock", url).returncode == 0
    assert run.stop() == 0
    deadline = time.monotonic() + 30
    while True:  # its heartbeats stop: quiet after 3.5 beats of a second
        done = _pyjob("trigger", "job", "--lock", url)
        if done.returncode == 1:
            break
        assert time.monotonic() < deadline, done.stdout
        time.sleep(1)
    assert done.stderr.startswith("Error: no live instance serves job")


POOLED = (
    'echo "start $(date +%s.%N) $PYJOB_JOB $PYJOB_INSTANCE" >> "$OUT"; sleep 2; '
    'echo "end $(date +%s.%N) $PYJOB_JOB $PYJOB_INSTANCE" >> "$OUT"'
)


def _pool_file(tmp: Path) -> Path:
    """Six 2-second jobs due every second, in one pool of 2."""
    lines = ['[defaults]\nevery = "1s"\nalign = true\npool = "p"\npool-size = 2\n']
    for n in range(6):
        lines.append(f"[jobs.j{n}]\nshell = {json.dumps(POOLED)}\n")
    path = tmp / "jobs.toml"
    path.write_text("\n".join(lines))
    return path


def _spans(out: Path, killed_at: float = 0.0) -> list[tuple[float, float, str]]:
    """(start, end, instance) of each run; one killed with its instance ended then (the reaper
    of a SIGKILLed pyjob kills its runs' process groups)."""
    starts: dict[tuple[str, str], float] = {}
    spans = []
    for line in out.read_text().splitlines():
        what, at, job, instance = line.split()
        if what == "start":
            starts[(job, instance)] = float(at)
        else:
            spans.append((starts.pop((job, instance)), float(at), instance))
    spans += [(at, max(at, killed_at), instance) for (_, instance), at in starts.items()]
    return spans


def _most_at_once(spans: list[tuple[float, float, str]]) -> int:
    edges = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    most = n = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        n += step
        most = max(most, n)
    return most


def test_a_pool_of_two_never_runs_more_than_two_and_a_killed_holders_slot_returns(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    jobs = _pool_file(tmp_path)
    out = tmp_path / "runs"
    args = ["--file", str(jobs), "--lock", fleet_lock_url, "--lease-ttl", "3s"]
    a = PyjobRun(args, tmp_path, "a", {"OUT": str(out)})
    b = PyjobRun(args, tmp_path, "b", {"OUT": str(out)})
    a.wait_for("run-finished", 2, timeout=60)
    b.wait_for("run-finished", 2, timeout=60)
    assert a.events("pool-full") or b.events("pool-full")
    # Kill a holder while its run goes on: its slot comes back after its lease's TTL.
    started = len(a.events("run-started"))
    a.wait_for("run-started", started + 1, timeout=60)
    a.proc.kill()
    a.wait()
    killed_at = time.time()
    # Then b alone holds both slots at once (two runs going on together), the killed one's too.
    deadline = time.monotonic() + 60
    while True:
        after = [s for s in _spans(out, killed_at) if s[2] == b.events("started")[0]["instance"]]
        if _most_at_once([s for s in after if s[0] > killed_at]) >= 2:
            break
        assert time.monotonic() < deadline, "the killed holder's slot never came back"
        time.sleep(0.5)
    assert b.stop() == 0
    spans = _spans(out, killed_at)
    assert len(spans) >= 6
    assert _most_at_once(spans) <= 2, sorted(spans)
    # The records say the same: no more than two runs of the pool at once, fleet-wide.
    recorded = []
    for n in range(6):
        done = _pyjob("history", f"j{n}", "--lock", fleet_lock_url, "--format", "json", "-n", "500")
        for r in json.loads(done.stdout)["runs"]:
            # A lost run's end is when the fleet noticed its instance was gone, not its end.
            if r["started"] and r["finished"] and r["result"] != "lost":
                span = (_at({"time": r["started"]}), _at({"time": r["finished"]}))
                recorded.append((span[0].timestamp(), span[1].timestamp(), r["instance"]))
    assert len(recorded) >= 4 and _most_at_once(recorded) <= 2, sorted(recorded)


def test_a_tick_that_finds_its_pool_full_waits_its_misfire_grace_then_is_skipped(
    tmp_path: Path,
) -> None:
    url = f"file:{tmp_path / 'locks'}"
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[defaults]\nevery = "1s"\nalign = true\npool = "p"\npool-size = 1\n\n'
        '[jobs.long]\nshell = "sleep 30"\n\n'
        '[jobs.short]\nshell = "true"\nmisfire-grace = "300ms"\n'
    )
    run = PyjobRun(["--file", str(jobs), "--lock", url], tmp_path)
    run.wait_for("run-started", timeout=30)
    full = [e for e in run.wait_for("skipped", 3, timeout=30) if e["reason"].startswith("pool")]
    deadline = time.monotonic() + 30
    while len(full) < 2:
        assert time.monotonic() < deadline, run.log_path.read_text()[-2000:]
        time.sleep(0.2)
        full = [e for e in run.events("skipped") if e["reason"].startswith("pool")]
    assert run.stop() == 0
    assert {e["job"] for e in run.events("run-started")} == {"long"}
    assert full[0]["reason"] == "pool full: p (1 running)"
    assert any(e["job"] == "short" for e in run.events("pool-full"))
    history = _pyjob("history", "short", "--lock", url, "--format", "json")
    reasons = {r.get("reason") for r in json.loads(history.stdout)["runs"]}
    assert "pool full: p (1 running)" in reasons


def test_a_trigger_never_shares_its_tick_with_one_of_the_schedule() -> None:
    from pyjob.core.control import Trigger, trigger_tick
    from pyjob.core.schedule import Schedule, parse, to_us

    schedule = Schedule(parse("every 1s align", env={}))
    on_a_tick = Trigger("t1", "job", "me@host", 1_796_200_000_000_000)
    between = Trigger("t2", "job", "me@host", 1_796_200_000_250_000)
    assert to_us(trigger_tick(on_a_tick, schedule)) == on_a_tick.at_us + 1
    assert to_us(trigger_tick(between, schedule)) == between.at_us
    assert on_a_tick.run_id == "job-trigger-t1"


def test_a_pause_read_stops_the_next_tick_and_a_resume_starts_the_one_after(
    tmp_path: Path,
) -> None:
    """Against a fake clock: a pause written just after a tick is read within a second, the
    ticks after it are skipped (reason paused, recorded), and after the resume they run."""
    from datetime import UTC, timedelta

    from pyjob.core.backends.dirstore import DirectoryRecords
    from pyjob.core.backends.file import FileBackend
    from pyjob.core.clock import FakeClock
    from pyjob.core.control import DirectoryControl
    from pyjob.core.events import Event
    from pyjob.core.jobsettings import JobSettings
    from pyjob.core.process import Command
    from pyjob.core.schedule import Schedule, parse, to_us
    from pyjob.core.scheduler import Job, Scheduler

    from .fakes import FakeRunner

    # the file backend refuses a tick more than a few seconds ahead of the host's clock: the
    # fake clock, much faster, starts far enough behind it to end behind it too
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(seconds=now.second % 2 + 14)
    clock = FakeClock(start)
    control = DirectoryControl(tmp_path / "locks", "file:test")
    events: list[Event] = []

    def emit(event: Event) -> None:
        events.append(event)
        if event.kind == "skipped" and sum(e.kind == "skipped" for e in events) == 2:
            control.resume(["job"])

    def started(n: int) -> None:
        if n == 1:
            control.pause(["job"], "a@h", to_us(clock.now()))

    spec = parse(f"every 2s align tz UTC stop-at {iso(start + timedelta(seconds=10))}", env={})
    job = Job("job", Schedule(spec, job_id="job", anchor=start), Command(("true",)), JobSettings())
    backend = FileBackend(tmp_path / "locks")
    s = Scheduler(
        clock,
        FakeRunner(clock, on_start=started),
        emit,
        instance="t",
        threaded=False,
        opener=lambda u: backend,
    )
    s.open([job])
    s.add(job)
    assert s.run() == 0
    first = start + timedelta(seconds=2)
    kinds = [(e.kind, e.tick) for e in events if e.kind in ("run-started", "skipped")]
    assert kinds == [
        ("run-started", first),
        ("skipped", first + timedelta(seconds=2)),
        ("skipped", first + timedelta(seconds=4)),
        ("run-started", first + timedelta(seconds=6)),
        ("run-started", first + timedelta(seconds=8)),
    ]
    (paused,) = [e for e in events if e.kind == "paused"]
    assert paused.fields["by"] == "a@h" and paused.at <= first + timedelta(seconds=1)
    assert [e.kind for e in events].count("resumed") == 1
    records = DirectoryRecords(tmp_path / "locks", "file:test").runs("job", 10)
    assert sorted(r.result for r in records) == [
        "skipped",
        "skipped",
        "success",
        "success",
        "success",
    ]
    assert {r.reason for r in records if r.result == "skipped"} == {"paused"}


def iso(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("kind", ["file", "nfs"])
def test_file_control_is_watched_and_nfs_control_is_read_every_second_by_its_worker(
    tmp_path: Path, kind: str
) -> None:
    """On file: a change of the control wakes the loop (inotify), and nothing reads it every
    second; on nfs:, whose other hosts' writes make no event here, the backend's worker reads
    it every second, and the loop hears of it only when it changed (no timer of its own)."""
    from pyjob.core.backends.file import FileBackend
    from pyjob.core.backends.nfs import NfsBackend
    from pyjob.core.clock import SystemClock
    from pyjob.core.control import DirectoryControl
    from pyjob.core.jobsettings import JobSettings
    from pyjob.core.process import Command
    from pyjob.core.schedule import Schedule, parse
    from pyjob.core.scheduler import Job, Scheduler

    from .fakes import FakeRunner

    clock = SystemClock()
    backend = FileBackend(tmp_path / "locks") if kind == "file" else NfsBackend(tmp_path / "locks")
    spec = parse("every 1h align tz UTC", env={})
    job = Job("job", Schedule(spec, job_id="job"), Command(("true",)), JobSettings())
    s = Scheduler(clock, FakeRunner(clock), lambda e: None, instance="t", opener=lambda u: backend)
    try:
        s.open([job])
        s.add(job)
        fleet = s._sh.fleet
        polls = [t for _, _, t in s._sh.mono._heap if type(t).__name__ == "ControlPoll"]
        if kind == "nfs":
            assert not fleet.fds() and not polls and len(fleet.standing) == 1
            DirectoryControl(tmp_path / "locks", backend.url).pause(["job"], "a@h", 0)
            deadline = time.monotonic() + 20
            while "job" not in fleet.paused:
                assert time.monotonic() < deadline, "the pause was never read"
                s.waker.block(0.5)
                s.coordinator.drain()
            return
        assert len(fleet.fds()) == 1 and not polls
        (fd,) = fleet.fds()
        DirectoryControl(tmp_path / "locks", backend.url).pause(["job"], "a@h", 0)
        assert s.waker.poll([fd], 10.0) == [fd]  # readable once the pause is written
        assert fleet.woken([fd]) == [] and fleet.reading  # and read at once
    finally:
        s.close()


def _scheduler(tmp_path: Path, kind: str) -> tuple[Any, Any, Any]:
    """A scheduler on a real file: or nfs: backend (threaded coordinator), not opened yet."""
    from pyjob.core.backends.file import FileBackend
    from pyjob.core.backends.nfs import NfsBackend
    from pyjob.core.clock import SystemClock
    from pyjob.core.jobsettings import JobSettings
    from pyjob.core.process import Command
    from pyjob.core.schedule import Schedule, parse
    from pyjob.core.scheduler import Job, Scheduler

    from .fakes import FakeRunner

    clock = SystemClock()
    backend = FileBackend(tmp_path / "locks") if kind == "file" else NfsBackend(tmp_path / "locks")
    spec = parse("every 1h align tz UTC", env={})
    jobs = [
        Job(name, Schedule(spec, job_id=name), Command(("true",)), JobSettings())
        for name in ("a", "b")
    ]
    s = Scheduler(clock, FakeRunner(clock), lambda e: None, instance="t", opener=lambda u: backend)
    return s, backend, jobs


def test_a_url_whose_first_control_read_failed_is_read_by_its_worker_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs on one URL whose first read fails: the second job's start reads nothing on the
    scheduler's thread (the worker reads it from then on, on the one connection)."""
    import threading

    from pyjob.core.control import DirectoryControl
    from pyjob.core.errors import BackendError

    s, backend, jobs = _scheduler(tmp_path, "nfs")
    here: list[str] = []
    real = DirectoryControl.version

    def version(self: DirectoryControl) -> str:
        here.append(threading.current_thread().name)
        if len(here) == 1:
            raise BackendError("the first read fails")
        return real(self)

    monkeypatch.setattr(DirectoryControl, "version", version)
    try:
        s.open(jobs)
        for job in jobs:
            s.add(job)
        main = threading.current_thread().name
        assert here == [main]  # one read here, the one that failed
        DirectoryControl(tmp_path / "locks", backend.url).pause(["a"], "a@h", 0)
        deadline = time.monotonic() + 20
        while "a" not in s._sh.fleet.paused:
            assert time.monotonic() < deadline, "the pause was never read"
            s.waker.block(0.5)
            s.coordinator.drain()
        assert here.count(main) == 1 and len(here) >= 2
    finally:
        s.close()


def test_a_url_a_reload_brings_is_watched_on_file_and_a_stop_takes_no_new_trigger(
    tmp_path: Path,
) -> None:
    from pyjob.core.control import ControlState, Pause

    s, _, jobs = _scheduler(tmp_path, "file")
    try:
        s.coordinator.open(jobs[0].lock)  # as a reload opens a URL it brings
        s.add(jobs[0])  # no fleet.open: the reload path
        fleet = s._sh.fleet
        assert len(fleet.fds()) == 1 and not fleet.standing
        # A read answered while the process stops changes nothing (no trigger claimed then).
        s._sh.stop = True
        k = next(iter(fleet.stores))
        fleet._changed(k)(ControlState("v9", paused={"a": Pause("a", "x@h", 0)}))
        assert fleet.seen[k] != "v9" and not fleet.paused
    finally:
        s.close()


def test_a_resume_read_as_a_tick_falls_due_leaves_that_tick_skipped() -> None:
    """The resume is applied in the turn where the tick is due, a few ms after it: the tick
    was passed by paused, and is skipped as the ones before it; the next one runs."""
    from datetime import UTC, timedelta
    from types import SimpleNamespace

    from pyjob.core.clock import FakeClock
    from pyjob.core.control import ControlState, Pause
    from pyjob.core.sched.fleet import Fleet

    tick = datetime(2030, 1, 1, 12, 0, 5, tzinfo=UTC)
    clock = FakeClock(tick - timedelta(seconds=3))
    said: list[str] = []
    state = SimpleNamespace(id="job", gone=False, job=SimpleNamespace(lock=None))
    sh = SimpleNamespace(
        jobs={"job": state}, clock=clock, emit=lambda kind, *a, **k: said.append(kind)
    )
    fleet = Fleet(sh)  # type: ignore[arg-type]
    fleet._paused("", ControlState("1", {"job": Pause("job", "a@h", 0)}))
    assert fleet.is_paused(state, tick)  # type: ignore[arg-type]
    clock.sleep(3.004)
    fleet._paused("", ControlState("2"))
    assert said == ["paused", "resumed"]
    assert not fleet.is_paused(state)  # type: ignore[arg-type]
    assert fleet.is_paused(state, tick)  # type: ignore[arg-type]
    assert not fleet.is_paused(state, tick + timedelta(seconds=1))  # type: ignore[arg-type]
    assert fleet.resumed == {}  # kept no longer than the first tick after it

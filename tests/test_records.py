"""Run records on every backend: the fleet's history and status, read from a process that runs
nothing. The nfs: backend runs on a local directory here (NFS cannot be mounted on these
machines)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import pyjob_exe
from .runproc import PyjobRun

pytestmark = pytest.mark.slow

FAIL_ON_ODD = "exit $(( ${PYJOB_TICK_UNIX%%.*} % 2 ))"


def pyjob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pyjob_exe(), *args], capture_output=True, text=True, timeout=60, env=_env()
    )


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "TZ": "UTC", "PYJOB_NO_CLOCK_CHECK": "1"}


def history(url: str, *args: str) -> list[dict[str, Any]]:
    out = pyjob("history", *args, "--lock", url, "--format", "json")
    assert out.returncode == 0, out.stderr
    runs: list[dict[str, Any]] = json.loads(out.stdout)["runs"]
    return runs


def status(url: str) -> dict[str, dict[str, Any]]:
    out = pyjob("status", "--lock", url, "--format", "json")
    assert out.returncode == 0, out.stderr
    return {j["job"]: j for j in json.loads(out.stdout)["jobs"]}


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.long
def test_three_instances_five_ticks_one_record_per_tick(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    last = first + timedelta(seconds=4)
    args = ["--every", "1s", "--align", "--start-at", _iso(first), "--stop-at", _iso(last)]
    args += ["--lock", fleet_lock_url, "--name", "flaky", "--shell", "--", FAIL_ON_ODD]
    runs = [PyjobRun(["--instance-id", f"i{n}", *args], tmp_path, f"i{n}") for n in range(3)]
    codes = [r.wait(timeout=40) for r in runs]
    assert set(codes) <= {0, 1}
    got = history(fleet_lock_url, "flaky")
    ticks = [int(datetime.fromisoformat(r["tick"]).timestamp()) for r in got]
    assert ticks == list(range(int(last.timestamp()), int(first.timestamp()) - 1, -1))
    for r, tick in zip(got, ticks, strict=True):
        assert r["exit_code"] == tick % 2
        assert r["result"] == ("failure" if tick % 2 else "success")
        assert r["instance"] in {"i0", "i1", "i2"}
        assert r["run_id"] == f"flaky-{datetime.fromtimestamp(tick, UTC):%Y%m%dT%H%M%SZ}"
        assert r["fence"] is not None and r["attempt"] == 1
        assert r["duration"] >= 0 and r["finished"] >= r["started"]
    fences = [r["fence"] for r in reversed(got)]
    assert fences == sorted(fences)
    job = status(fleet_lock_url)["flaky"]
    assert job["last"]["tick"] == got[0]["tick"] and job["running"] == []
    assert job["next_tick"] is None  # --stop-at: no tick after the last
    assert {i["instance"] for i in job["instances"]} <= {"i0", "i1", "i2"}
    assert pyjob("history", "--lock", fleet_lock_url, "--result", "failure", "--format", "json")
    failed = history(fleet_lock_url, "--result", "failure")
    assert [r["exit_code"] for r in failed] == [1] * len(failed) and len(failed) in (2, 3)


def test_status_shows_a_run_in_progress_with_its_instance(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    args = ["--every", "1s", "--align", "--lock", fleet_lock_url, "--name", "slow"]
    run = PyjobRun([*args, "--instance-id", "busy", "--", "sleep", "30"], tmp_path)
    run.wait_for("run-started", timeout=30)
    time.sleep(0.3)
    job = status(fleet_lock_url)["slow"]
    assert [r["instance"] for r in job["running"]] == ["busy"]
    assert job["running"][0]["result"] == "running"
    assert [i["instance"] for i in job["instances"]] == ["busy"]
    assert job["command"] == "sleep 30" and job["zone"] == "UTC"
    assert job["schedule"] == "every 1s align tz UTC" and job["next_tick"] is not None
    table = pyjob("status", "--lock", fleet_lock_url)
    assert table.returncode == 0 and "slow" in table.stdout and "busy since" in table.stdout
    assert run.stop() == 0
    stopped = next(r for r in history(fleet_lock_url, "slow") if r["result"] != "skipped")
    assert stopped["result"] == "stopped" and stopped["exit_code"] == 143


def test_a_killed_instances_running_record_becomes_lost(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    args = ["--every", "1s", "--align", "--lock", fleet_lock_url, "--name", "victim"]
    args += ["--lease-ttl", "1s", "--instance-id", "doomed", "--", "sleep", "30"]
    run = PyjobRun(args, tmp_path)
    run.wait_for("run-started", timeout=30)
    time.sleep(0.5)
    ran = [r for r in history(fleet_lock_url, "victim") if r["result"] != "skipped"]
    assert ran[0]["result"] == "running"  # (later ticks skipped while it runs are recorded too)
    run.signal(signal.SIGKILL)
    run.wait()
    time.sleep(2.0)  # the heartbeat (every 1/3 s with a 1 s lease) has stopped for > 3.5 beats
    ran = [r for r in history(fleet_lock_url, "victim") if r["result"] != "skipped"]
    assert ran[0]["result"] == "lost"
    assert status(fleet_lock_url)["victim"]["running"] == []


def test_history_keeps_the_newest_n_runs(fleet_lock_url: str, tmp_path: Path) -> None:
    args = ["--every", "200ms", "--align", "--max-runs", "6", "--lock", fleet_lock_url]
    args += ["--name", "short", "--history-keep", "3", "--", "true"]
    assert PyjobRun(args, tmp_path).wait(timeout=30) == 0
    got = history(fleet_lock_url, "short")
    assert len(got) == 3 and [r["result"] for r in got] == ["success"] * 3
    assert got == sorted(got, key=lambda r: r["tick"], reverse=True)


def test_records_older_than_the_max_age_are_pruned(fleet_lock_url: str) -> None:
    from pyjob.core.backends import open_backend
    from pyjob.core.records import RunRecord

    backend = open_backend(fleet_lock_url)
    backend.check()
    store = backend.records()
    assert store is not None
    now_us = int(time.time() * 1e6)
    old = [RunRecord("aged", now_us - i * 3_600_000_000, f"r{i}", "x", "success") for i in range(5)]
    store.put_runs(old, 100)
    assert len(store.runs("aged", 100)) == 5
    removed = store.prune(["aged"], 100, now_us - int(2.5 * 3_600_000_000))
    assert removed == 2 and [r.run_id for r in store.runs("aged", 100)] == ["r0", "r1", "r2"]
    backend.close()


def test_missing_names_the_registrations_gone_or_changed_and_writes_nothing(
    fleet_lock_url: str,
) -> None:
    """The periodic check of an instance's registrations: a read on every backend, which names
    a job registered with another document, or not by this instance, and no other."""
    from pyjob.core.backends import open_backend
    from pyjob.core.records import InstanceInfo, JobInfo

    backend = open_backend(fleet_lock_url)
    backend.check()
    store = backend.records()
    assert store is not None
    jobs = [JobInfo(f"job {n}", "@hourly", "UTC", f"echo {n}") for n in range(4)]
    jobs.append(JobInfo("job é 🙂", "@hourly", "UTC", "echo 'é 🙂'"))  # not ASCII
    # names one of which extends another ('-' and '.' sort before '/' in keys)
    jobs += [JobInfo(n, "@daily", "UTC", n) for n in ("backup", "backup-db", "backup.daily")]
    me = InstanceInfo("i0", "host", 1, "0", seen_us=int(time.time() * 1e6))
    store.register(jobs, me)
    assert store.missing(jobs, "i0") == []
    assert store.missing(jobs[1:3], "i1") == jobs[1:3]  # another instance registered nothing
    store.register([JobInfo("job 3", "@daily", "UTC", "echo 3")], me)  # written over
    assert store.missing(jobs, "i0") == [jobs[3]]
    assert store.missing([*jobs, JobInfo("new", "@daily", "UTC", "x")], "i0")[-1].job == "new"
    assert store.missing(jobs, "i0") == [jobs[3]]  # the check wrote nothing
    store.register([jobs[3]], me)
    assert store.missing(jobs, "i0") == []
    assert store.missing(jobs[-3:], "i0") == []  # a share of them alone
    assert store.missing(jobs[-3:-1], "i0/other") == jobs[-3:-1]  # an id with a slash
    if fleet_lock_url.startswith("redis"):  # a key of another type: damage of that job alone
        import redis
        from pyjob.core.names import safe_name

        server = redis.Redis.from_url(fleet_lock_url)
        key = f"pyjob:{safe_name('backup')}:instances"
        server.delete(key)
        server.set(key, "not a set")
        assert store.missing(jobs, "i0") == [jobs[-3]]
        store.register([jobs[-3]], me)  # the set made again
        assert store.missing(jobs, "i0") == []
    backend.close()


def _wipe(url: str) -> None:
    """Everything pyjob keeps in the backend of ``url`` gone at once: a FLUSHDB, a database's
    tables emptied, a key prefix deleted, a lock directory removed."""
    if url.startswith("redis"):
        import redis

        redis.Redis.from_url(url).flushdb()
    elif url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE pyjob_jobs, pyjob_job_instances, pyjob_instances, pyjob_runs")
    elif url.startswith("etcd"):
        from pyjob.core.backends import open_backend

        backend: Any = open_backend(url)
        try:
            prefix = backend.prefix + "/"
            body = {"key": _b64(prefix), "range_end": _b64(prefix[:-1] + "0")}
            backend.call("/v3/kv/deleterange", body, "wiped")
        finally:
            backend.close()
    else:
        import shutil

        shutil.rmtree(url.split(":", 1)[1])


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_a_heartbeat_says_whether_the_one_before_it_was_there(fleet_lock_url: str) -> None:
    from pyjob.core.backends import open_backend
    from pyjob.core.records import InstanceInfo, JobInfo

    backend = open_backend(fleet_lock_url)
    backend.check()
    store = backend.records()
    assert store is not None
    me = InstanceInfo("i0", "host", 1, "0", seen_us=int(time.time() * 1e6))
    store.register([JobInfo("nightly", "@daily", "UTC", "backup")], me)
    assert store.heartbeat(me)
    assert store.heartbeat(me)
    backend.close()
    _wipe(fleet_lock_url)
    backend = open_backend(fleet_lock_url)
    backend.check()
    store = backend.records()
    assert store is not None
    found = store.heartbeat(me)
    # file: and nfs: write what was registered again themselves (the store of a fresh process
    # holds nothing, so here nothing), and say the heartbeat was found only when they did.
    assert not found
    assert store.heartbeat(me)
    backend.close()


def test_an_instance_registers_again_at_its_next_heartbeat_after_a_wipe(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    """Everything pyjob kept in the backend is lost (a FLUSHDB, a restored backup): the next
    heartbeat finds its own last one gone, and the instance writes what it registered again
    then, so `status` lists its jobs within seconds, not at the periodic check."""
    args = ["--every", "300ms", "--align", "--lease-ttl", "3s", "--lock", fleet_lock_url]
    run = PyjobRun([*args, "--name", "wiped", "--", "true"], tmp_path)
    run.wait_for("run-finished", timeout=30)
    assert "wiped" in status(fleet_lock_url)
    _wipe(fleet_lock_url)
    deadline = time.monotonic() + 20  # heartbeats every second (a third of the lease)
    jobs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        jobs = status(fleet_lock_url)
        if jobs.get("wiped", {}).get("instances"):
            break
        time.sleep(0.3)
    assert jobs.get("wiped", {}).get("instances"), jobs
    assert run.stop() == 0


def test_a_failing_record_write_never_skips_a_run(tmp_path: Path) -> None:
    lock = tmp_path / "locks"
    lock.mkdir(mode=0o700)
    (lock / "broken").mkdir()
    (lock / "broken" / "runs").write_text("a file where the records directory should be")
    args = ["--every", "200ms", "--align", "--max-runs", "4", "--lock", f"file:{lock}"]
    run = PyjobRun([*args, "--name", "broken", "--", "true"], tmp_path)
    assert run.wait(timeout=30) == 0
    assert len(run.events("run-finished")) == 4
    errors = run.events("backend-error")
    assert any("runs not recorded" in e["action"] for e in errors)
    # records only, never a run; written again until the stop, which says what it gave up
    assert all("runs go on" in e["action"] for e in errors[:-1])
    assert "4 run records of broken not written" in errors[-1]["error"]


def test_unknown_job_is_exit_1_and_an_unreachable_backend_exit_5(tmp_path: Path) -> None:
    lock = tmp_path / "locks"
    out = pyjob("history", "nope", "--lock", f"file:{lock}")
    assert out.returncode == 1 and out.stderr.startswith("Error: no such job: nope")
    out = pyjob("status", "--lock", "redis://127.0.0.1:1/0")
    assert out.returncode == 5 and out.stderr.count("\n") == 1 and "Error:" in out.stderr
    out = pyjob("history", "--lock", "none")
    assert out.returncode == 5 and "keeps no run records" in out.stderr


@pytest.mark.parametrize("local", [True, False])
def test_a_ticks_later_records_are_written_over_its_file_when_they_fit(
    tmp_path: Path, local: bool
) -> None:
    """file: writes a run's final record over its "running" one in place when it fits in the
    file's blocks (a shorter one padded with spaces), and renames a longer one into place;
    nfs: always renames."""
    from pyjob.core.backends.dirstore import DirectoryRecords
    from pyjob.core.records import RunRecord

    store = DirectoryRecords(tmp_path, "file:x", local=local)
    running = RunRecord("job", 1_000_000, "rid", "me", "running", output_tail="x" * 300)
    store.put_runs([running])
    path = tmp_path / "job" / "runs" / "1000000.json"
    inode = path.stat().st_ino
    final = RunRecord("job", 1_000_000, "rid", "me", "ok", exit_code=0, duration=1.5)
    store.put_runs([final])
    text = path.read_text()  # whole, padded to the longer one's length, nothing of it left
    assert text.rstrip(" ") == final.to_json() and set(text[len(final.to_json()) :]) <= {" "}
    assert RunRecord.from_json(text) == final
    assert (path.stat().st_ino == inode) is local
    big = RunRecord("job", 1_000_000, "rid", "me", "failed", output_tail="y" * 9000)
    store.put_runs([big])
    assert path.read_text() == big.to_json()
    if local:
        assert path.stat().st_ino != inode  # it did not fit: renamed into place
    assert [r.result for r in store.runs("job", 10)] == ["failed"]


def test_status_says_when_no_instance_serves_a_job_and_forgets_it_after_a_day(
    fleet_lock_url: str,
) -> None:
    """A job whose instances all went quiet is not "NEXT ... (in 1s)": nothing will run it. One
    whose instances were last seen over 24 h ago is not listed (its history stays)."""
    from pyjob.core.backends import open_backend
    from pyjob.core.records import InstanceInfo, JobInfo, RunRecord

    backend = open_backend(fleet_lock_url)
    backend.check()
    store = backend.records()
    assert store is not None
    now_us = int(time.time() * 1e6)
    for name, seen_ago in (("served", 0.0), ("quiet", 120.0), ("gone", 25 * 3600.0)):
        job = JobInfo(name, "every 1s align tz UTC", "UTC", "true")
        instance = InstanceInfo(f"{name}-host", "h", 1, "0", seen_us=now_us - int(seen_ago * 1e6))
        store.register([job], instance)
    store.put_runs([RunRecord("gone", now_us - 90_000_000_000, "old", "gone-host", "success")])
    backend.close()
    jobs = status(fleet_lock_url)
    assert sorted(jobs) == ["quiet", "served"]
    assert jobs["served"]["next_tick"] is not None and len(jobs["served"]["instances"]) == 1
    assert jobs["quiet"]["next_tick"] is None and jobs["quiet"]["instances"] == []
    assert jobs["quiet"]["last_seen"] is not None
    table = pyjob("status", "--lock", fleet_lock_url)
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if line.startswith("quiet"))
    assert "- no live instance (seen 2m ago)" in row
    assert "gone" not in table.stdout
    assert "1 job(s) not listed: none of their instances seen for 24h" in table.stderr
    assert [r["run_id"] for r in history(fleet_lock_url, "gone")] == ["old"]


def test_history_shows_the_attempt_of_a_retried_run(tmp_path: Path) -> None:
    """A run that succeeded at its second attempt: TOOK is that attempt's, and says so."""
    url = f"file:{tmp_path / 'locks'}"
    args = ["--every", "1s", "--max-runs", "1", "--retries", "2", "--retry-delay", "100ms"]
    args += ["--lock", url, "--name", "second", "--shell", "--", '[ "$PYJOB_ATTEMPT" = 2 ]']
    assert PyjobRun(args, tmp_path).wait(timeout=30) == 0
    [run] = history(url, "second")
    assert run["attempt"] == 2 and run["result"] == "success"
    assert [a["exit_code"] for a in run["attempts"]] == [1]
    table = pyjob("history", "--lock", url).stdout.splitlines()
    assert table[0].split()[3:6] == ["EXIT", "ATTEMPT", "TOOK"]
    assert table[1].split()[5:8] == ["success", "0", "2"]  # (after a date, a time, "1s ago")

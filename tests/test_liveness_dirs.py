"""Issue 24, item 7: lock directories (file: and nfs:) deleted or damaged under running instances.
Every directory pyjob makes is 0700 with its parents; a damaged file refuses (or rebuilds) its
own job and never the others of its batch; registrations come back after a deletion. The nfs:
backend runs on a local directory here (NFS cannot be mounted on these machines)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pyjob.core.backends import Backend, ClaimRequest, open_backend

from .backend_suite import KEEP, T0, claim_one
from .conftest import pyjob_exe
from .runproc import PyjobRun

# Bytes that are not UTF-8 (a disk or a tool that wrote garbage over the mark).
GARBAGE = b"\xff\xfe\x80\x81" + bytes(range(0xC0, 0x100)) + b"\x00\n"


@pytest.fixture(params=["file", "nfs"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The umask of the processes started inside (the usual 022, whatever the runner's)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _open(url: str) -> Backend:
    backend = open_backend(url)
    backend.check()
    return backend


def pyjob(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": "UTC", "PYJOB_NO_CLOCK_CHECK": "1"}
    cmd = [*pyjob_exe(), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def status_jobs(url: str) -> dict[str, dict[str, Any]]:
    out = pyjob("status", "--lock", url, "--format", "json")
    assert out.returncode == 0, out.stderr
    return {j["job"]: j for j in json.loads(out.stdout)["jobs"]}


def history_runs(url: str, *args: str) -> list[dict[str, Any]]:
    out = pyjob("history", *args, "--lock", url, "--format", "json")
    assert out.returncode == 0, out.stderr
    runs: list[dict[str, Any]] = json.loads(out.stdout)["runs"]
    return runs


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# ---------------------------------------------------------------------------- directories


def test_make_private_dirs_gives_every_parent_it_makes_0700(tmp_path: Path) -> None:
    from pyjob.core.backends.common import make_private_dirs

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    deep = mine / "a" / "b" / "c"
    with umask(0o022):
        assert make_private_dirs(deep)
    assert [_mode(p) for p in (mine / "a", mine / "a" / "b", deep)] == [0o700] * 3
    assert _mode(mine) == 0o755  # a directory it did not make keeps its mode
    assert not make_private_dirs(deep)  # there already: nothing made


@pytest.mark.slow
def test_a_deleted_file_lock_directory_comes_back_0700_with_its_parents_and_serves_again(
    tmp_path: Path,
) -> None:
    """The lock directory's parents are deleted under a running instance: every directory made
    again is 0700 (not the umask's 0755, which the next start refused), and a restart, status
    and history work."""
    state = tmp_path / "state"
    lock = state / "a" / "b" / "locks"
    url = f"file:{lock}"
    args = ["--every", "300ms", "--align", "--lease-ttl", "3s", "--lock", url]
    with umask(0o022):
        run = PyjobRun([*args, "--name", "tidy", "--", "true"], tmp_path, "first")
        run.wait_for("run-finished", timeout=30)
        shutil.rmtree(state / "a")
        # runs go on, and make everything again; the heartbeat (every second here) remakes
        # .instances
        seen = len(run.events("run-finished"))
        run.wait_for("run-finished", count=seen + 4, timeout=30)
        deadline = time.monotonic() + 20
        while not (lock / ".instances").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        made = [state / "a", state / "a" / "b", lock, lock / "tidy", lock / "tidy" / "claims"]
        made += [lock / "tidy" / "runs", lock / ".instances"]
        assert {str(p.relative_to(tmp_path)): _mode(p) for p in made} == {
            str(p.relative_to(tmp_path)): 0o700 for p in made
        }
        assert "tidy" in status_jobs(url)
        assert history_runs(url, "tidy", "-n", "3")
        again = PyjobRun([*args, "--name", "tidy", "--", "true"], tmp_path, "second")
        again.wait_for("next-tick", timeout=30)  # a restart accepts the directory
        assert again.proc.poll() is None
    assert run.stop() == 0 and again.stop() == 0


# ---------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("claims_left", [True, False], ids=["claims-left", "no-claim-left"])
def test_a_mark_of_non_utf8_bytes_refuses_or_rebuilds_its_own_job_only(
    scheme: str, tmp_path: Path, claims_left: bool
) -> None:
    """A mark of random bytes failed every claim of its batch, for good. Now it is damage: the
    job is rebuilt from its claims, or refused saying what to write; the other job of the same
    batch wins its tick either way."""
    d = tmp_path / "locks"
    url = f"{scheme}:{d}"
    first = _open(url)

    def batch(i: int) -> list[ClaimRequest]:
        tick = T0 + timedelta(seconds=i)
        return [ClaimRequest("bad", tick, KEEP), ClaimRequest("good", tick, KEEP)]

    for i in range(3):
        assert all(o.claim.won for o in first.claim_many(batch(i), "a", T0))
    if not claims_left:
        for claim in (d / "bad" / "claims").iterdir():
            claim.unlink()
    (d / "bad" / "mark").write_bytes(GARBAGE)
    fresh = _open(url)  # a restarted instance: no mark in memory to carry on from
    bad, good = fresh.claim_many(batch(5), "b", T0)
    assert good.claim.won and good.claim.fence == 4
    if claims_left:
        assert bad.claim.won and bad.claim.fence == 4  # rebuilt from the claims on disk
        json.loads((d / "bad" / "mark").read_text())  # and written whole again
    else:
        assert not bad.claim.won and bad.claim.refused is not None
        assert "mark is damaged" in bad.claim.refused
        assert 'write {"fence": N, "tick_us": null} into it' in bad.claim.refused
    # and the next batch too: nothing stopped for good
    assert fresh.claim_many(batch(6), "b", T0)[1].claim.won


def test_an_nfs_claim_file_of_non_utf8_bytes_refuses_only_its_tick(tmp_path: Path) -> None:
    """(file: refused such a tick already; nfs: failed the whole batch.)"""
    d = tmp_path / "locks"
    url = f"nfs:{d}"
    first = _open(url)
    assert claim_one(first, "bad", T0, "a", KEEP, T0).won
    (claim,) = (d / "bad" / "claims").iterdir()
    claim.write_bytes(GARBAGE)
    bad, good = _open(url).claim_many(
        [ClaimRequest("bad", T0, KEEP), ClaimRequest("good", T0, KEEP)], "b", T0
    )
    assert not bad.claim.won and bad.claim.refused and "unreadable" in bad.claim.refused
    assert good.claim.won


def test_damaged_records_and_registrations_are_skipped_by_status_and_history(
    tmp_path: Path,
) -> None:
    """A record or registration of another JSON type (a list, a string) is damage to skip, not a
    traceback."""
    from pyjob.core.records import InstanceInfo, JobInfo, RunRecord

    d = tmp_path / "locks"
    url = f"file:{d}"
    store = _open(url).records()
    assert store is not None
    me = InstanceInfo("i0", "host", 1, "0", seen_us=int(time.time() * 1e6))  # live
    store.register([JobInfo("ok", "@every 1m", "UTC", "true")], me)
    store.register([JobInfo("broken", "@every 1m", "UTC", "true")], me)
    store.put_runs([RunRecord("ok", 1_000_000, "r1", "i0", "success")])
    store.put_runs([RunRecord("ok", 2_000_000, "r2", "i0", "success")])
    (d / "ok" / "runs" / "2000000.json").write_text("[1, 2]")
    (d / "broken" / "job.json").write_text('"a string"')
    (d / ".instances" / "i1.json").write_text("[]")  # another instance's heartbeat
    assert list(status_jobs(url)) == ["ok"]
    assert [r["run_id"] for r in history_runs(url, "ok")] == ["r1"]


# ---------------------------------------------------------------------------- nfs: registrations


@pytest.mark.slow
def test_nfs_registrations_come_back_after_the_directory_is_deleted(tmp_path: Path) -> None:
    """`status` showed no jobs and `history JOB` exit 1 until every instance restarted: what an
    instance registered is written again once it finds the directory gone."""
    shared = tmp_path / "shared"
    url = f"nfs:{shared}"
    args = ["--every", "500ms", "--align", "--lease-ttl", "3s", "--lock", url]
    run = PyjobRun([*args, "--name", "sync", "--", "true"], tmp_path)
    run.wait_for("run-finished", timeout=30)
    assert "sync" in status_jobs(url)
    shutil.rmtree(shared)
    deadline = time.monotonic() + 30
    jobs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        jobs = status_jobs(url)
        if jobs.get("sync", {}).get("instances"):
            break
        time.sleep(0.5)
    assert jobs.get("sync", {}).get("instances"), jobs
    seen = len(run.events("run-finished"))
    run.wait_for("run-finished", count=seen + 2, timeout=30)
    assert history_runs(url, "sync", "-n", "2")  # exit 0 (the job is known again), and its runs
    assert run.stop() == 0


@pytest.mark.slow
def test_a_restart_on_a_non_utf8_mark_refuses_that_job_and_runs_the_other_of_its_batch(
    tmp_path: Path,
) -> None:
    """Two jobs due at the same instants (one claim batch); one's mark becomes random bytes and
    its claims are gone, then the instance restarts: that job's ticks are refused saying what to
    write into the mark, and the other job runs every tick."""
    lock = tmp_path / "locks"
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[jobs.bad]\nevery = "500ms"\nalign = true\ncommand = ["true"]\n\n'
        '[jobs.good]\nevery = "500ms"\nalign = true\ncommand = ["true"]\n'
    )
    args = ["--file", str(jobs), "--lock", f"file:{lock}"]
    first = PyjobRun(args, tmp_path, "first")
    first.wait_for("run-finished", count=4, timeout=30)
    assert first.stop() == 0
    for claim in (lock / "bad" / "claims").iterdir():
        claim.unlink()
    (lock / "bad" / "mark").write_bytes(GARBAGE)
    again = PyjobRun(args, tmp_path, "again")
    refused = again.wait_for("refused", count=2, timeout=30)
    assert {e["job"] for e in refused} == {"bad"}
    assert all("mark is damaged" in e["reason"] and "write {" in e["reason"] for e in refused)
    deadline = time.monotonic() + 30
    while len([e for e in again.events("run-finished") if e["job"] == "good"]) < 3:
        assert time.monotonic() < deadline, again.log_path.read_text()[-3000:]
        time.sleep(0.1)
    assert again.proc.poll() is None
    assert again.stop() == 0
    assert not [e for e in again.events("backend-error") if e["job"] == "good"]


def test_a_damaged_registration_is_written_again_within_minutes(tmp_path: Path) -> None:
    """A registration file damaged (or deleted, on any backend) while the instance runs is
    found by the periodic check and written again, so `status` lists the job again without a
    restart."""
    from datetime import UTC, datetime

    from pyjob.core.backendcalls import RegisterCall
    from pyjob.core.clock import FakeClock, Waker
    from pyjob.core.coordinator import Coordinator
    from pyjob.core.records import InstanceInfo, JobInfo
    from pyjob.core.recordwrites import REREGISTER_EVERY

    lock = tmp_path / "locks"
    url = f"file:{lock}"
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))
    coordinator = Coordinator(clock, "i0", Waker(), lambda *a, **k: None, threaded=False)
    coordinator.open(url)
    me = InstanceInfo("i0", "host", 1, "0", seen_us=int(time.time() * 1e6))  # live
    coordinator.register(url, RegisterCall([JobInfo("nightly", "@daily", "UTC", "backup")], me))
    (lock / "nightly" / "job.json").write_bytes(GARBAGE)
    assert "nightly" not in status_jobs(url)  # skipped as damaged, not a traceback
    for _ in range(2):  # a check period on; a heartbeat finds it damaged, the next call writes it
        clock.advance(REREGISTER_EVERY / 2 + 1)
        coordinator.heartbeat(me)
    coordinator.heartbeat(me)
    assert "nightly" in status_jobs(url)


def test_registrations_are_checked_a_share_at_each_heartbeat_and_only_the_damaged_rewritten(
    tmp_path: Path,
) -> None:
    """Every registration is checked once a period, a share at each heartbeat (an even cost,
    where writing all of them again at once cost a 10,000-job instance 6 s of CPU); only the
    ones damaged are written again."""
    from datetime import UTC, datetime

    from pyjob.core.backendcalls import RegisterCall
    from pyjob.core.clock import FakeClock, Waker
    from pyjob.core.coordinator import Coordinator
    from pyjob.core.records import InstanceInfo, JobInfo
    from pyjob.core.recordwrites import REREGISTER_EVERY

    lock = tmp_path / "locks"
    url = f"file:{lock}"
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))
    coordinator = Coordinator(clock, "i0", Waker(), lambda *a, **k: None, threaded=False)
    coordinator.open(url)
    me = InstanceInfo("i0", "host", 1, "0", seen_us=int(time.time() * 1e6))
    jobs = [JobInfo(f"j{n}", "@daily", "UTC", f"echo {n}") for n in range(10)]
    coordinator.register(url, RegisterCall(jobs, me))
    store = coordinator._links[coordinator.key(url)].records
    assert store is not None
    checked: list[list[str]] = []
    check = store.missing
    store.missing = lambda js, i: checked.append([j.job for j in js]) or check(js, i)  # type: ignore[method-assign]
    (lock / "j7" / "job.json").write_bytes(GARBAGE)
    (lock / "j2" / "instances" / "i0").unlink()
    written = {p: p.stat().st_mtime_ns for p in lock.glob("*/job.json")}
    for _ in range(5):
        clock.advance(REREGISTER_EVERY / 5)
        coordinator.heartbeat(me)
    assert [len(c) for c in checked] == [2, 2, 2, 2, 2]
    assert sorted(j for c in checked for j in c) == sorted(j.job for j in jobs)
    coordinator.heartbeat(me)  # the call after the check writes what it found
    assert (lock / "j7" / "job.json").read_text() == jobs[7].to_json()
    assert (lock / "j2" / "instances" / "i0").exists()
    rewritten = {p.parent.name for p, t in written.items() if p.stat().st_mtime_ns != t}
    assert rewritten <= {"j2", "j7"}  # the others were read, not written


def _nightly(scheme: str, tmp_path: Path) -> tuple[Path, Any, Any]:
    """A lock directory's record store with one job, "nightly", registered by instance i0."""
    from pyjob.core.records import InstanceInfo, JobInfo

    d = tmp_path / "locks"
    store = _open(f"{scheme}:{d}").records()
    assert store is not None
    job = JobInfo("nightly", "@daily", "UTC", "backup")
    store.register([job], InstanceInfo("i0", "host", 1, "0"))
    return d, store, job


def test_the_check_of_a_registration_stats_it_and_reads_it_again_only_when_it_changed(
    scheme: str, tmp_path: Path
) -> None:
    d, store, job = _nightly(scheme, tmp_path)
    assert store.missing([job], "i0") == []
    path = d / "nightly" / "job.json"
    reads = []
    real_open = os.open

    def counting_open(p: Any, *args: Any, **kwargs: Any) -> int:
        reads.append(str(p))
        return real_open(p, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", counting_open)
        assert store.missing([job], "i0") == []
        assert reads == []  # found right before, unchanged since: only stated
        time.sleep(0.01)  # a later modification time
        path.write_text(path.read_text().replace("backup", "BACKUP"))  # same size, other bytes
        assert store.missing([job], "i0") == [job]
        assert reads == [str(path)]
    path.write_text(job.to_json())
    assert store.missing([job], "i0") == []


def test_a_jobs_first_record_makes_its_runs_directory_and_a_deleted_job_registers_again(
    scheme: str, tmp_path: Path
) -> None:
    """A registration makes the job's directory, its file and its instance's mark, no runs
    directory: the first record makes that, without taking the job for deleted. A job whose
    whole directory was deleted is registered again by its next record."""
    from pyjob.core.records import RunRecord

    d, store, job = _nightly(scheme, tmp_path)
    assert sorted(p.name for p in (d / "nightly").iterdir()) == ["instances", "job.json"]
    assert stat.S_IMODE((d / "nightly" / "instances").stat().st_mode) == 0o700
    before = (d / "nightly" / "job.json").stat().st_mtime_ns
    time.sleep(0.01)
    store.put_runs([RunRecord("nightly", 1, "r1", "i0", "success")])
    assert (d / "nightly" / "job.json").stat().st_mtime_ns == before  # not registered again
    assert stat.S_IMODE((d / "nightly" / "runs").stat().st_mode) == 0o700
    shutil.rmtree(d / "nightly" / "runs")  # the records alone: written again, no registration
    store.put_runs([RunRecord("nightly", 2, "r2", "i0", "success")])
    assert (d / "nightly" / "job.json").stat().st_mtime_ns == before
    assert [r.run_id for r in store.runs("nightly", 10)] == ["r2"]
    shutil.rmtree(d / "nightly")  # the whole job: its next record registers it again,
    (d / "nightly" / "claims").mkdir(parents=True)  # though its claim made the directory again
    store.put_runs([RunRecord("nightly", 3, "r3", "i0", "success")])
    assert (d / "nightly" / "job.json").read_text() == job.to_json()
    assert (d / "nightly" / "instances" / "i0").exists()
    assert [r.run_id for r in store.runs("nightly", 10)] == ["r3"]


def test_one_jobs_broken_path_holds_back_no_heartbeat_no_other_registration_no_record(
    tmp_path: Path,
) -> None:
    """A job's directory becomes a symlink loop (any error of that path alone: a permission,
    I/O): the check finds it damaged, its registration fails alone and is said, and the
    heartbeats, the other jobs' registrations and every record are written all the same."""
    from datetime import UTC, datetime

    from pyjob.core.backendcalls import RegisterCall
    from pyjob.core.clock import FakeClock, Waker
    from pyjob.core.coordinator import Coordinator
    from pyjob.core.records import InstanceInfo, JobInfo, RunRecord
    from pyjob.core.recordwrites import REREGISTER_EVERY

    lock = tmp_path / "locks"
    url = f"file:{lock}"
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))
    events: list[tuple[str, str]] = []
    coordinator = Coordinator(
        clock,
        "i0",
        Waker(),
        lambda job, tick, kind, **f: events.append((job, kind)),
        threaded=False,
    )
    coordinator.open(url)
    jobs = [JobInfo(n, "@daily", "UTC", n) for n in ("a", "bad", "c")]
    coordinator.register(url, RegisterCall(jobs, InstanceInfo("i0", "host", 1, "0")))
    shutil.rmtree(lock / "bad")
    (lock / "bad").symlink_to(lock / "bad")  # ELOOP for every path under it
    (lock / "c" / "instances" / "i0").unlink()  # damage the check repairs
    beats = lock / ".instances" / "i0.json"
    for n in range(1, 7):
        clock.advance(REREGISTER_EVERY / 5)
        me = InstanceInfo("i0", "host", 1, "0", seen_us=n)
        coordinator.heartbeat(me)
        assert json.loads(beats.read_text())["seen_us"] == n  # every beat written
        coordinator.record(url, RunRecord("a", n, f"r{n}", "i0", "success"), 100)
    assert ("bad", "backend-error") in events
    assert not [e for e in events if e[0] in ("a", "c", "*")]
    assert (lock / "c" / "instances" / "i0").exists()
    assert len(list((lock / "a" / "runs").iterdir())) == 6


def test_records_that_fail_go_behind_the_others_so_one_job_holds_back_no_other(
    tmp_path: Path,
) -> None:
    """More records of one job whose runs directory refuses them than a write takes at once
    (25 on file:): the other job's records, queued after them, are written at the next try."""
    from datetime import UTC, datetime

    from pyjob.core.clock import FakeClock, Waker
    from pyjob.core.coordinator import Coordinator
    from pyjob.core.records import InstanceInfo, RunRecord

    lock = tmp_path / "locks"
    url = f"file:{lock}"
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))
    coordinator = Coordinator(clock, "i0", Waker(), lambda *a, **k: None, threaded=False)
    coordinator.open(url)
    (lock / "bad").mkdir(mode=0o700)
    (lock / "bad" / "runs").write_text("a file where the records directory should be")
    for n in range(30):
        coordinator.record(url, RunRecord("bad", n, f"b{n}", "i0", "success"), 100)
    for n in range(5):
        coordinator.record(url, RunRecord("good", n, f"g{n}", "i0", "success"), 100)
    me = InstanceInfo("i0", "host", 1, "0")
    for _ in range(3):  # retries, after their backoff
        clock.advance(10)
        coordinator.heartbeat(me)
    assert len(list((lock / "good" / "runs").iterdir())) == 5


def test_a_file_where_one_jobs_directory_should_be_refuses_that_job_only(
    scheme: str, tmp_path: Path
) -> None:
    d = tmp_path / "locks"
    url = f"{scheme}:{d}"
    backend = _open(url)
    (d / "bad").write_text("not a directory")
    bad, good = backend.claim_many(
        [ClaimRequest("bad", T0, KEEP), ClaimRequest("good", T0, KEEP)], "a", T0
    )
    assert good.claim.won
    assert not bad.claim.won and bad.claim.refused and "cannot be used" in bad.claim.refused
    assert str(d / "bad") in bad.claim.refused  # names what stands in the way


def test_one_jobs_broken_records_directory_holds_back_no_other_jobs_records(
    scheme: str, tmp_path: Path
) -> None:
    from pyjob.core.errors import BackendError
    from pyjob.core.records import RunRecord

    d = tmp_path / "locks"
    store = _open(f"{scheme}:{d}").records()
    assert store is not None
    (d / "bad").mkdir(mode=0o700)
    (d / "bad" / "runs").write_text("a file where the records directory should be")
    batch = [
        RunRecord("bad", 1, "b1", "i0", "success"),
        RunRecord("good", 1, "g1", "i0", "success"),
    ]
    with pytest.raises(BackendError) as failed:
        store.put_runs(batch)
    assert [r.run_id for r in store.runs("good", 10)] == ["g1"]
    # and the error says which were not written (RecordsNotWritten), for the coordinator to retry
    assert getattr(failed.value, "unwritten", None) == {("bad", 1)}

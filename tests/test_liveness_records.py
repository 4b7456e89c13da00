"""Issue 24, item 8: run records under faults, on real Redis and PostgreSQL behind the fault proxy
(tests/faultproxy.py). A record write that fails is written again until it is written, the
newest state of a run winning; `pyjob status` and `pyjob history` survive one dropped
connection wherever it falls."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pyjob.core.backends import open_backend
from pyjob.core.records import InstanceInfo, JobInfo, RecordStore, RunRecord
from pyjob.core.results import event_result

from .conftest import pyjob_exe
from .faultproxy import FaultProxy
from .runproc import PyjobRun
from .test_backend_faults import proxied  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def _direct(proxy: FaultProxy, url: str) -> RecordStore:
    """The record store of ``url`` reached straight, not through the proxy."""
    backend = open_backend(url.replace(f":{proxy.port}/", f":{proxy.target[1]}/"))
    backend.check()
    store = backend.records()
    assert store is not None
    return store


def _final(store: RecordStore, job: str, run_ids: set[str]) -> dict[str, str]:
    """The result recorded for each of ``run_ids``."""
    return {r.run_id: r.result for r in store.runs(job, 1000) if r.run_id in run_ids}


def _wait_final(store: RecordStore, job: str, finished: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        recorded = _final(store, job, set(finished))
        if recorded == finished or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert recorded == finished


def _finished(run: PyjobRun) -> dict[str, str]:
    """run id → result of every run-finished in the log (`stopped` for the run the stop
    ended, whatever its exit code)."""
    return {e["run_id"]: str(event_result(e)) for e in run.events("run-finished")}


def test_every_runs_final_record_is_written_through_dropped_connections(
    proxied: tuple[FaultProxy, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A run ends while every request loses its connection, then requests are dropped at
    random: every run that finished ends with its final record, none left `running`."""
    proxy, url = proxied
    args = ["--every", "2s", "--align", "--lock", url, "--name", "slow", "--", "sleep", "1"]
    run = PyjobRun(args, tmp_path)
    run.wait_for("run-finished", timeout=30)
    started = len(run.events("run-started"))
    run.wait_for("run-started", count=started + 1, timeout=30)
    proxy.drop(1.0)  # the run's final record cannot be written now
    run.wait_for("run-finished", count=started + 1, timeout=30)
    deadline = time.monotonic() + 30  # its write was tried, and failed
    while not any("not recorded" in e["action"] for e in run.events("backend-error")):
        assert time.monotonic() < deadline, run.log_path.read_text()[-3000:]
        time.sleep(0.1)
    proxy.drop(0.3)
    time.sleep(6)
    proxy.forward()
    store = _direct(proxy, url)
    _wait_final(store, "slow", _finished(run), timeout=30)
    assert run.stop() == 0
    _wait_final(store, "slow", _finished(run), timeout=5)  # the last run's too
    assert proxy.dropped > 0


def test_a_stop_waits_for_owed_records_within_its_stop_timeout(
    proxied: tuple[FaultProxy, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """A run's final record that the backend could not take is still written when the backend
    answers again before the stop timeout ends, not given up a second after the runs end."""
    proxy, url = proxied
    args = ["--every", "2s", "--align", "--lock", url, "--name", "owed", "--stop-timeout", "30s"]
    run = PyjobRun([*args, "--", "sleep", "1"], tmp_path)
    run.wait_for("run-started", timeout=30)
    proxy.drop(1.0)  # from now on nothing reaches the backend
    run.signal(15)  # the run ends by the stop; its record is owed
    deadline = time.monotonic() + 30
    while not any("not recorded" in e["action"] for e in run.events("backend-error")):
        assert time.monotonic() < deadline, run.log_path.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(3)  # longer than the one second a stop used to give the last writes
    proxy.forward()
    assert run.wait(timeout=60) == 0
    store = _direct(proxy, url)
    results = [r.result for r in store.runs("owed", 100) if r.result != "missed"]
    assert results and "running" not in results, results


def _pyjob(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": "UTC", "PYJOB_NO_CLOCK_CHECK": "1"}
    cmd = [*pyjob_exe(), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


# redis-py makes a broken connection again once by itself, so only psycopg's readers gave up
@pytest.mark.parametrize("proxied", ["postgresql"], indirect=True)
def test_status_and_history_survive_one_dropped_connection_wherever_it_falls(
    proxied: tuple[FaultProxy, str],  # noqa: F811
) -> None:
    proxy, url = proxied
    store = _direct(proxy, url)
    me = InstanceInfo("i0", "h", 1, "0", seen_us=int(time.time() * 1e6))  # live: status lists it
    store.register([JobInfo("nightly", "@daily", "UTC", "backup")], me)
    store.put_runs(
        [RunRecord("nightly", i * 86_400_000_000, f"r{i}", "i0", "success") for i in (1, 2)]
    )

    def read(command: str) -> Any:
        out = _pyjob(command, "--lock", url, "--format", "json")
        assert out.returncode == 0, (command, out.stderr)
        doc = json.loads(out.stdout)
        if command == "status":  # what does not move with the time of day
            return [(j["job"], j["last"]) for j in doc["jobs"]]
        return doc

    for command in ("history", "status"):
        before = proxy.chunks
        clean = read(command)
        assert clean and "nightly" in json.dumps(clean)
        requests = proxy.chunks - before  # how many requests the command makes
        assert requests >= 2
        for n in range(1, requests + 1):
            dropped = proxy.dropped
            proxy.drop_at(n)
            assert read(command) == clean, (command, n)
            assert proxy.dropped == dropped + 1, (command, n)  # the n-th request was dropped


# ---------------------------------------------------------------------------- the pending queue


class _Coordinated:
    """A coordinator on a file: directory, unthreaded on a fake clock, whose record writes fail
    while a file stands where the job's records directory should be."""

    def __init__(self, tmp_path: Path) -> None:
        from datetime import UTC, datetime

        from pyjob.core.clock import FakeClock, Waker
        from pyjob.core.coordinator import Coordinator

        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))
        self.lock = tmp_path / "locks"
        self.url = f"file:{self.lock}"

        def report(job: str, tick: object, kind: str, **fields: Any) -> None:
            self.events.append((kind, job, fields))

        self.coordinator = Coordinator(self.clock, "i0", Waker(), report, threaded=False)
        self.coordinator.open(self.url)
        (self.lock / "job").mkdir()
        self.block = self.lock / "job" / "runs"
        self.block.write_text("a file where the records directory should be")

    def record(self, tick_us: int, result: str) -> None:
        self.coordinator.record(
            self.url, RunRecord("job", tick_us, f"r{tick_us}", "i0", result), 100
        )

    def written(self) -> dict[int, str]:
        store = open_backend(self.url).records()
        assert store is not None
        return {r.tick_us: r.result for r in store.runs("job", 100)}


def test_failed_record_writes_are_retried_and_the_newest_state_of_a_run_wins(
    tmp_path: Path,
) -> None:
    c = _Coordinated(tmp_path)
    c.record(1, "running")
    c.record(1, "success")  # the run ended while its first record was not written yet
    c.record(2, "running")
    errors = [e for e in c.events if e[0] == "backend-error"]
    assert len(errors) == 1 and "not recorded yet" in errors[0][2]["action"]  # said once
    assert c.coordinator.pending() == 2
    c.block.unlink()
    c.clock.advance(60)  # past the backoff: the next call writes what is owed first
    c.record(2, "failure")
    assert c.written() == {1: "success", 2: "failure"}
    assert c.coordinator.pending() == 0
    assert ("backend-recovered", "*", {"recorded": ["job"]}) in c.events


def test_pending_records_are_bounded_and_the_oldest_go_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyjob.core.recordwrites as recordwrites

    monkeypatch.setattr(recordwrites, "PENDING_MAX", 3)
    c = _Coordinated(tmp_path)
    for tick in range(1, 6):
        c.record(tick, "success")
    assert c.coordinator.pending() == 3
    c.block.unlink()
    c.clock.advance(60)
    c.coordinator.close()  # the stop writes what is pending
    assert c.written() == {3: "success", 4: "success", 5: "success"}
    dropped = [e for e in c.events if e[0] == "backend-error" and "dropped" in e[2]["error"]]
    assert dropped and dropped[0][2]["error"].startswith("2 run records were dropped")


def test_records_owed_on_file_go_a_few_at_a_time_and_a_claim_goes_between(
    tmp_path: Path,
) -> None:
    """A record file each: the records an outage left behind are written ``batch`` (25) at a
    time, and a claim queued meanwhile goes before the rest, so it never waits behind
    hundreds of record files."""
    from datetime import timedelta

    from pyjob.core.backends.protocol import ClaimRequest

    c = _Coordinated(tmp_path)
    for tick in range(1, 61):
        c.record(tick, "success")
    assert c.coordinator.pending() == 60
    c.block.unlink()
    c.clock.advance(60)
    c.coordinator.heartbeat(_me())  # a call no tick waits for
    assert c.coordinator.pending() == 35
    tick = c.clock.now().replace(microsecond=0) + timedelta(seconds=1)
    answers: list[object] = []
    request = ClaimRequest("other", tick, tick + timedelta(minutes=11), None)
    c.coordinator.claim(c.url, [request], answers.append)
    c.coordinator.drain()
    assert len(answers) == 1 and c.coordinator.pending() == 35  # the claim did not wait
    c.coordinator.close()
    assert len(c.written()) == 60


def _me() -> Any:
    from pyjob.core.records import InstanceInfo

    return InstanceInfo("i0", "host", 1, "0")


def test_a_fleet_call_that_fails_gets_its_error_not_silence(tmp_path: Path) -> None:
    """Coordinator.call's reads and writes of the fleet's state (pauses, triggers, pool slots):
    a backend error goes to ``done``, so a run waiting for a pool slot asks again (or gives up at
    its misfire grace) instead of waiting for an answer that never comes."""
    from datetime import UTC, datetime

    from pyjob.core.backends.null import NullBackend
    from pyjob.core.clock import FakeClock, Waker
    from pyjob.core.coordinator import Coordinator
    from pyjob.core.errors import BackendError

    coordinator = Coordinator(
        FakeClock(datetime(2026, 6, 1, 12, tzinfo=UTC)),
        "i0",
        Waker(),
        lambda *a, **k: None,
        threaded=False,
        opener=lambda u: NullBackend(),
    )
    coordinator.open("none")
    got: list[object] = []

    def fail() -> None:
        raise BackendError("slot not taken (test)")

    coordinator.call("none", fail, got.append)
    coordinator.drain()
    assert len(got) == 1 and isinstance(got[0], BackendError), got

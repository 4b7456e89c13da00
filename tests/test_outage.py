"""A run lease left behind by an outage must not block the job: a release that failed while the
backend was down is made again once it answers, and runs resume at the next tick, not after the
lease's 30 s TTL. Real servers: PostgreSQL stopped and started again (its lease row survives the
restart, as Redis with AOF would keep its key), etcd SIGKILLed and started again on its data
directory (its leases survive, renewed to their full TTL), and Redis and etcd frozen with SIGSTOP
(a hang: the socket stays open, nothing answers) then thawed."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .runproc import PyjobRun
from .servers import (
    EtcdServer,
    PostgresServer,
    RedisServer,
    start_etcd,
    start_postgres,
    start_redis,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.destroy()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    yield server
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    server = start_etcd()
    yield server
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)
    server.destroy()


def _job(url: str, tmp: Path) -> PyjobRun:
    # A 4 s grid; each run takes 2 s, so its lease is released at the end of the run, well
    # inside the outage the test starts as soon as the run has started.
    cmd = 'sleep 2; echo "$PYJOB_TICK_UNIX" >> "$OUT"'
    args = ["--every", "4s", "--align", "--lock", url, "--shell", "--", cmd]
    return PyjobRun(args, tmp, env={"OUT": str(tmp / "runs")})


def _t(event: dict[str, object]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(event["time"])).timestamp()


def _assert_recovers(run: PyjobRun, back: float) -> None:
    """After the backend is back at ``back``: the lease is released again and a tick runs within
    two grid steps (with the lease left behind it would wait out the 30 s TTL)."""
    deadline = back + 12
    while time.time() < deadline:
        if [e for e in run.events("run-started") if _t(e) > back]:
            break
        time.sleep(0.1)
    # Which call meets the hang first (the release, a record write, a heartbeat) depends on the
    # moment; what must hold is that no lease is left to block the tick after it.
    assert run.events("backend-recovered"), run.log_path.read_text()[-2000:]
    started = [e for e in run.events("run-started") if _t(e) > back]
    assert started, run.log_path.read_text()[-3000:]
    assert _t(started[0]) - back < 10
    assert run.proc.poll() is None  # no backend error ends the process
    assert run.stop() == 0


def test_a_lease_left_by_a_postgresql_restart_is_released_when_it_is_back(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    run = _job(pg_server.url, tmp_path)
    run.wait_for("run-started", timeout=30)
    pg_server.stop()  # the run ends in the outage: its lease release fails
    time.sleep(4)
    pg_server.start()
    _assert_recovers(run, time.time())


def test_a_lease_left_by_a_hung_redis_is_released_when_it_answers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    run = _job(redis_server.url, tmp_path)
    run.wait_for("run-started", timeout=30)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # hangs: the socket stays open
    time.sleep(6)
    redis_server.proc.send_signal(signal.SIGCONT)
    _assert_recovers(run, time.time())


def test_a_lease_left_by_a_sigkilled_etcd_is_released_when_it_is_back_on_its_data(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    run = _job(etcd_server.url, tmp_path)
    run.wait_for("run-started", timeout=30)
    assert etcd_server.proc is not None
    etcd_server.proc.kill()  # no shutdown: what it wrote is on its data directory, nothing more
    etcd_server.proc.wait()
    etcd_server.proc = None
    time.sleep(4)
    etcd_server.start()
    _assert_recovers(run, time.time())
    ticks = (tmp_path / "runs").read_text().split()
    assert len(ticks) == len(set(ticks))


def test_a_lease_left_by_a_hung_etcd_is_released_when_it_answers(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    run = _job(etcd_server.url, tmp_path)
    run.wait_for("run-started", timeout=30)
    assert etcd_server.proc is not None
    etcd_server.proc.send_signal(signal.SIGSTOP)  # hangs: the socket stays open
    time.sleep(6)
    etcd_server.proc.send_signal(signal.SIGCONT)
    _assert_recovers(run, time.time())


def test_an_outage_is_logged_once_as_it_starts_and_once_as_it_ends(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Not one line per failed claim (8 jobs logged 35-39 lines in a 20 s outage): backend-down,
    then backend-up with what the outage cost; each failed call only at debug level."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text("".join(f'[jobs.j{n}]\nevery = "1s"\ncommand = ["true"]\n' for n in range(4)))
    run = PyjobRun(
        ["--file", str(jobs), "--lock", redis_server.url],
        tmp_path,
        env={"PYJOB_LOG_LEVEL": "info"},  # what an operator sees
    )
    run.wait_for("run-finished", count=4, timeout=30)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    time.sleep(6)
    redis_server.proc.send_signal(signal.SIGCONT)
    (up,) = run.wait_for("backend-up", timeout=30)
    time.sleep(2)  # the claims queued in the hang are answered or dropped: no second outage
    assert run.stop() == 0
    (down,) = run.events("backend-down")
    assert down["level"] == "warning" and down["backend"] == redis_server.url
    assert "error" in down
    assert run.events("backend-up") == [up]
    assert up["level"] == "info" and _t(down) < _t(up)
    # 4 jobs a second for several seconds: many calls failed and many ticks went unclaimed
    assert up["failed_calls"] >= 2 and up["unclaimed_ticks"] >= 4, json.dumps(up)
    assert 2 < up["down_for"] < 20, up
    assert run.events("backend-error") == []  # each failed call is at debug level
    # The leases of the runs that ended just before the hang may have been gathered for a
    # release that the hang made fail: one more line says they were released once it was over.
    backend = [e for e in run.events() if e["event"].startswith("backend")]
    recovered = [e for e in backend if e["event"] == "backend-recovered"]
    assert [e for e in backend if e not in recovered] == [down, up], backend
    assert len(recovered) <= 1 and all(e["level"] == "info" for e in recovered), recovered


def test_catch_up_runs_the_latest_tick_missed_in_an_outage_once_when_the_backend_is_back(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two instances with --catch-up 1m; the backend hangs (a partition: nothing answers) for
    about four ticks. When it answers again, the latest tick the outage kept from being claimed
    runs once in the fleet, then the grid goes on; no tick runs twice."""
    from .faultproxy import FaultProxy

    proxy = FaultProxy(redis_server.port).start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    out = tmp_path / "runs"
    cmd = 'echo "$PYJOB_TICK_UNIX $PYJOB_INSTANCE" >> "$OUT"'
    args = ["--every", "3s", "--align", "--lock", url, "--catch-up", "1m"]
    runs = [
        PyjobRun(
            [*args, "--instance-id", name, "--shell", "--", cmd],
            tmp_path,
            name,
            {"OUT": str(out)},
        )
        for name in ("a", "b")
    ]
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not all(
            r.events("claimed") + r.events("lost") for r in runs
        ):
            time.sleep(0.2)
        assert all(r.events("claimed") + r.events("lost") for r in runs)
        hung = time.time()
        proxy.hang()
        time.sleep(12)
        back = time.time()
        proxy.forward()
        deadline = back + 60
        while time.time() < deadline and not any(r.events("caught-up") for r in runs):
            time.sleep(0.2)
        time.sleep(4)
        for r in runs:
            assert r.stop() == 0
    finally:
        proxy.stop()
    rows = [line.split() for line in out.read_text().splitlines()]
    ticks = [float(row[0]) for row in rows]
    assert len(ticks) == len(set(ticks)), rows  # nothing ran twice
    caught = [e for r in runs for e in r.events("caught-up")]
    assert len(caught) == 1, caught  # once in the fleet
    inside = [t for t in ticks if hung + 3 < t < back]
    assert inside, (hung, back, rows)  # the latest missed tick ran once it was back
    assert max(inside) > back - 3 - 0.5, (hung, back, rows)  # the latest one, not an earlier

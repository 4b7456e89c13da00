"""Claims hold under skew (DESIGN §5): no tick is won by two instances while any one clock — an
instance's or the backend's — is off by up to an hour (SKEW_LIMIT), and a tick pyjob cannot be
sure about is refused, with the reason. Real clock shifts: the processes (and the Redis server)
run under tests/clockshim.py, an LD_PRELOAD library that moves only CLOCK_REALTIME."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyjob.core.backends import open_backend
from pyjob.core.errors import BackendError

from .backend_suite import claim_one
from .clockshim import ClockShim
from .conftest import etcd_lock_url
from .servers import PostgresServer, RedisServer, free_port, need

# An instance as the scheduler drives it: each tick of an "every 1s" schedule claimed once, when
# its own clock reaches the tick, kept until the following tick plus 10 minutes.
_CLAIMER = """
import json, sys, time
from datetime import UTC, datetime, timedelta
from pyjob.core.backends import ClaimRequest, open_backend
from pyjob.core.errors import BackendError
b = open_backend(sys.argv[1]); b.check()
instance, end = sys.argv[2], time.monotonic() + float(sys.argv[3])
last = None
while time.monotonic() < end:
    now = datetime.now(UTC)
    tick = now.replace(microsecond=0)
    if tick != last:
        last = tick
        keep = tick + timedelta(seconds=1) + timedelta(minutes=10)
        try:
            o = b.claim_many([ClaimRequest("job", tick, keep)], instance, now)[0].claim
            print(json.dumps([tick.timestamp(), o.won, o.holder, o.refused]), flush=True)
            b.cleanup_many(["job"], now)  # as the scheduler does, now and then
        except BackendError as e:
            print(json.dumps([tick.timestamp(), False, None, "error: " + str(e)]), flush=True)
    time.sleep(0.05)
"""

_n = itertools.count()


@pytest.fixture(params=["file", "nfs", "redis", "postgresql", "etcd"])
def lock_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param in ("file", "nfs"):
        return f"{request.param}:{tmp_path / 'locks'}"
    if request.param == "etcd":
        return etcd_lock_url(request.getfixturevalue("etcd_server"))
    if request.param == "redis":
        import redis

        server: RedisServer = request.getfixturevalue("redis_server")
        db = next(_n) % 15 + 1
        redis.Redis(port=server.port, db=db).flushdb()
        return f"redis://127.0.0.1:{server.port}/{db}"
    import psycopg

    pg: PostgresServer = request.getfixturevalue("pg_server")
    name = f"s{next(_n)}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


Rows = dict[str, list[tuple[float, bool, str | None, str | None]]]


def _claimers(
    lock_url: str, tmp_path: Path, offsets: dict[str, float], seconds: float
) -> list[tuple[str, subprocess.Popen[str], ClockShim]]:
    procs = []
    for instance, offset in offsets.items():
        shim = ClockShim(tmp_path / f"clock-{instance}", offset)
        env = {**os.environ, **shim.env()}
        proc = subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, lock_url, instance, str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append((instance, proc, shim))
    return procs


def _results(procs: list[tuple[str, subprocess.Popen[str], ClockShim]]) -> Rows:
    out = {}
    for instance, proc, _ in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        out[instance] = [tuple(json.loads(line)) for line in stdout.splitlines()]
    return out  # type: ignore[return-value]


def _assert_no_tick_won_twice(
    results: dict[str, list[tuple[float, bool, str | None, str | None]]],
) -> None:
    winners: dict[float, set[str]] = defaultdict(set)
    for instance, rows in results.items():
        for tick, won, _, refused in rows:
            assert refused is None or not refused.startswith("error"), refused
            if won:
                winners[tick].add(instance)
    assert winners, "no tick was run at all"
    doubled = {t: w for t, w in winners.items() if len(w) > 1}
    assert not doubled, doubled


@pytest.mark.parametrize("skew", [2.5, 660.0, 3540.0], ids=["2.5s", "11min", "59min"])
def test_no_tick_is_won_twice_with_instances_behind_and_ahead(
    lock_url: str, tmp_path: Path, skew: float
) -> None:
    procs = _claimers(lock_url, tmp_path, {"true": 0.0, "ahead": skew, "behind": -skew}, 3.0)
    results = _results(procs)
    _assert_no_tick_won_twice(results)
    if skew > 600:
        # the instance behind claims ticks an hour ago whose claims are gone: refused, with why
        refused = [r for r in results["behind"] if r[3]]
        assert refused and all("latest tick claimed" in r[3] for r in refused), results["behind"]
        assert all("up to 1h" in r[3] for r in refused)


def _shifted_postgres(shim: ClockShim) -> PostgresServer:
    """A PostgreSQL server whose clock (clock_timestamp()) the shim moves."""
    import pwd
    import tempfile

    initdb = need("initdb", "/usr/lib/postgresql/*/bin/initdb")
    bindir = Path(os.path.realpath(initdb)).parent
    base = Path(tempfile.mkdtemp(prefix="pyjob-pg-skew-", dir="/tmp"))
    base.chmod(0o755)
    datadir = base / "data"
    prefix = ["env", *(f"{k}={v}" for k, v in shim.env().items())]
    if os.getuid() == 0:  # PostgreSQL refuses to run as root
        pw = pwd.getpwnam("postgres")
        datadir.mkdir()
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--", *prefix]
    server = PostgresServer(bindir, free_port(), datadir, prefix)
    try:
        server.init()
        server.start()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return server


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
def test_backend_clock_jumping_11_minutes_ahead_mid_run_doubles_no_tick(
    tmp_path: Path, kind: str
) -> None:
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="pyjob-clock-", dir="/tmp"))  # the server reads it
    shared.chmod(0o755)
    shim = ClockShim(shared / "server-clock", 0.0)
    (shared / "server-clock").chmod(0o644)
    if kind == "redis":
        server, url = _shifted_redis(tmp_path, shim)

        def stop() -> None:
            server.terminate()
            server.wait(timeout=20)
    else:
        pg = _shifted_postgres(shim)
        url, stop = pg.url, pg.destroy
    try:
        procs = _claimers(url, tmp_path, {"true": 0.0, "behind": -2.5}, 5.0)
        time.sleep(2.0)
        shim.set(660.0)  # every claim made so far is past its retention at once
        results = _results(procs)
        _assert_no_tick_won_twice(results)
        refused = [r for r in results["behind"] if r[3]]
        assert refused, results["behind"]  # ticks whose claim vanished: refused, not run
        assert all("no longer kept" in r[3] for r in refused)
    finally:
        stop()
        shutil.rmtree(shared, ignore_errors=True)


def test_nfs_host_11_minutes_ahead_removes_no_claim_the_others_need(tmp_path: Path) -> None:
    url = f"nfs:{tmp_path / 'shared'}"
    backend = open_backend(url)
    backend.check()
    now = datetime.now(UTC)
    tick = now.replace(microsecond=0)
    keep = tick + timedelta(minutes=10, seconds=1)
    assert claim_one(backend, "job", tick, "true", keep, now).won
    shim = ClockShim(tmp_path / "clock", 660.0)
    cleanup = (
        "import sys; from datetime import UTC, datetime; from pyjob.core.backends import "
        "open_backend; b = open_backend(sys.argv[1]); "
        "print(b.cleanup_many(['job'], datetime.now(UTC)), datetime.now(UTC).isoformat())"
    )
    out = subprocess.run(
        [sys.executable, "-c", cleanup, url],
        capture_output=True,
        text=True,
        env={**os.environ, **shim.env()},
        check=True,
    ).stdout.split()
    assert datetime.fromisoformat(out[1]) > now + timedelta(minutes=10)  # its clock is ahead
    assert out[0] == "0"  # judged by the file server's clock, not its own
    again = claim_one(backend, "job", tick, "other", keep, datetime.now(UTC))
    assert not again.won and again.holder == "true" and again.refused is None


def _shifted_redis(tmp_path: Path, shim: ClockShim) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [
            need("redis-server"),
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        env={**os.environ, **shim.env()},
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            open_backend(url).check()
            return server, url
        except BackendError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.05)


def test_check_clock_flags_a_backend_clock_beyond_the_skew_limit(tmp_path: Path) -> None:
    from .conftest import pyjob_exe
    from .servers import free_udp_port

    shim = ClockShim(tmp_path / "redis-clock", 2 * 3600.0)
    server, url = _shifted_redis(tmp_path, shim)
    try:
        proc = subprocess.run(
            [
                *pyjob_exe(),
                *("check-clock", "--server", f"127.0.0.1:{free_udp_port()}", "--lock", url),
                *("--format", "json", "--samples", "1"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "NO_COLOR": "1"},
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["status"] == "over", proc.stdout + proc.stderr
    assert doc["backend"]["offset"] == pytest.approx(7200, abs=1)
    assert doc["backend"]["within_skew_limit"] is False and doc["backend"]["skew_limit"] == 3600
    assert any("beyond the skew limit 1h" in p for p in doc["problems"]), doc["problems"]


def test_a_run_claimed_before_the_backend_clock_stepped_back_keeps_its_records(
    tmp_path: Path,
) -> None:
    """The run's tick was claimed while the clocks agreed; then Redis' clock steps 30 s back, so
    the tick is "ahead" of it while the run ends. Its records are written all the same: a run
    that happened is never dropped from the history as a tick a wrong clock invented."""
    import tempfile

    from .conftest import pyjob_exe
    from .runproc import PyjobRun

    shared = Path(tempfile.mkdtemp(prefix="pyjob-clock-", dir="/tmp"))
    shared.chmod(0o755)
    shim = ClockShim(shared / "server-clock", 0.0)
    (shared / "server-clock").chmod(0o644)
    server, url = _shifted_redis(tmp_path, shim)
    try:
        run = PyjobRun(
            ["--every", "5s", "--align", "--lock", url, "--name", "stepped", "--", "sleep", "12"],
            tmp_path,
        )
        try:
            started = run.wait_for("run-started", timeout=30)[0]
            shim.set(-30.0)
            # The run outlasts the coordinator's reading of the backend's clock (every 10 s), so
            # its final record is judged by a reading made while that clock is behind.
            run.wait_for("run-finished", timeout=40)
            time.sleep(1.0)  # its final record, written (or not) at the run's end
            shim.set(0.0)
        finally:
            assert run.stop() == 0
        hist = subprocess.run(
            [*pyjob_exe(), "history", "stepped", "--lock", url, "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        runs = {r["run_id"]: r for r in json.loads(hist.stdout)["runs"]}
        assert started["run_id"] in runs, runs
        assert runs[started["run_id"]]["result"] == "success", runs
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize(("round_trip", "calls"), [(0.0002, 1), (0.004, 3)])
def test_a_backend_clock_reading_stops_at_the_first_tight_bracket(
    round_trip: float, calls: int
) -> None:
    """A heartbeat reads the backend's clock (--spread): a reading bracketed within half a
    millisecond is kept at once (one round trip, not three); a wider one is sampled again and
    the tightest bracket wins."""
    from types import SimpleNamespace

    from pyjob.core.clock import FakeClock
    from pyjob.core.clockcheck import backend_clock

    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    asked: list[float] = []
    widths = iter([round_trip, round_trip / 2, round_trip])

    def server_time() -> tuple[float, float]:
        width = next(widths)
        asked.append(width)
        clock.advance(width / 2)
        at = clock.now().timestamp() + 0.3  # the backend's clock is 300 ms ahead
        clock.advance(width / 2)
        return at, 0.0

    backend = SimpleNamespace(url="x://", server_time=server_time)
    reading = backend_clock(backend, clock, samples=3, calibrate=False)  # type: ignore[arg-type]
    assert reading is not None and len(asked) == calls
    assert reading.offset == pytest.approx(0.3, abs=1e-6)
    assert reading.error == pytest.approx(min(asked) / 2, abs=1e-9)

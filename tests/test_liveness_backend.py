"""Liveness of the claim protocol, the backend side (issue 24, items 1, 2 and 6; DESIGN §8): a host
whose clock is wrong hurts only itself, a stall leaves no run lease that nobody holds, and a step
of PostgreSQL's clock takes no lease from a holder that renews it. Real servers and real faults:
the clock shim (tests/clockshim.py) moves a `pyjob run` process's or PostgreSQL's clock, Redis is
frozen with SIGSTOP, the fault proxy swallows a reply."""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyjob.core.backends import Backend, ClaimRequest, open_backend
from pyjob.core.errors import BackendError

from .backend_suite import claim_one
from .clockshim import ClockShim
from .faultproxy import FaultProxy
from .runproc import PyjobRun
from .servers import PostgresServer, RedisServer, start_redis
from .test_backend_skew import (
    _shifted_postgres,
    lock_url,  # noqa: F401  (the fixture: a URL per backend)
)


def _open(url: str) -> Backend:
    backend = open_backend(url)
    backend.check()
    return backend


def _second(offset: float = 0.0) -> tuple[datetime, datetime]:
    """(now, the tick of an "every 1s" job due now) by a clock ``offset`` seconds off."""
    now = datetime.now(UTC) + timedelta(seconds=offset)
    return now, now.replace(microsecond=0)


def _keep(tick: datetime) -> datetime:
    return tick + timedelta(seconds=1) + timedelta(minutes=10)  # as the scheduler keeps a 1 s job


# ----------------------------------------------------------------------------- item 1: clocks


@pytest.mark.parametrize("offset", [60.0, 660.0], ids=["60s", "11min"])
def test_a_claimer_whose_clock_is_ahead_is_refused_and_the_others_keep_their_ticks(
    lock_url: str,  # noqa: F811
    offset: float,
) -> None:
    ahead, healthy = _open(lock_url), _open(lock_url)
    now, tick = _second(offset)
    refused = ahead.claim_many([ClaimRequest("job", tick, _keep(tick), 30.0)], "ahead", now)[0]
    r = refused.claim
    assert not r.won and r.fence is None and refused.lease is None
    assert r.refused is not None and r.refused.startswith("clock-ahead"), r.refused
    assert r.ahead == pytest.approx(offset, abs=2.0)  # the measured offset, for the log
    # nothing the others rely on moved: the healthy host's ticks are won, one after the other
    for back in (2, 1, 0):
        now, tick = _second()
        tick -= timedelta(seconds=back)
        got = healthy.claim_many([ClaimRequest("job", tick, _keep(tick), 30.0)], "healthy", now)[0]
        assert got.claim.won, got.claim.refused
        assert got.lease is not None
        healthy.release_many([got.lease])
    assert ahead.lease_holder("job") is None
    # a clock ahead by less than the limit still claims (and wins) its ticks
    from pyjob.core.backends.protocol import AHEAD_LIMIT

    now, tick = _second(AHEAD_LIMIT / 2)
    assert claim_one(ahead, "job", tick + timedelta(seconds=1), "early", _keep(tick), now).won


@pytest.mark.parametrize("lock_url", ["redis", "postgresql", "etcd"], indirect=True)
def test_a_tick_below_the_mark_nobody_claimed_is_won_while_its_claim_would_be_kept(
    lock_url: str,  # noqa: F811
) -> None:
    """The mark refuses only a tick whose claim would be gone by now: an earlier tick that nobody
    claimed (a catch-up, a take-over, a host that stepped ahead within the limit) is won. (On
    file: and nfs: only once the directory has kept every claim since before that tick.)"""
    backend = _open(lock_url)
    now, tick = _second()
    assert claim_one(backend, "job", tick, "a", _keep(tick), now).won
    earlier = tick - timedelta(seconds=5)
    r = claim_one(backend, "job", earlier, "b", _keep(earlier), now)
    assert r.won and r.refused is None
    assert not claim_one(backend, "job", earlier, "c", _keep(earlier), now).won  # once


RECORD = 'echo "$PYJOB_TICK_UNIX $PYJOB_INSTANCE" >> "$OUT"'


def _instance(url: str, tmp: Path, name: str, env: dict[str, str] | None = None) -> PyjobRun:
    args = ["--every", "1s", "--align", "--lock", url, "--instance-id", name]
    run = PyjobRun(
        [*args, "--shell", "--", RECORD], tmp, name, {"OUT": str(tmp / "runs"), **(env or {})}
    )
    run.wait_for("next-tick", timeout=30)
    return run


@pytest.mark.slow
def test_one_instance_stepped_a_minute_ahead_leaves_the_healthy_one_running_its_ticks(
    tmp_path: Path,
) -> None:
    """Issue 24, item 1, as reported: two instances on file:, one stepped +60 s for 4 s. The
    healthy one was refused every tick ("… its own claim is no longer kept"); now the ahead one
    is refused as clock-ahead and the healthy one runs on."""
    url = f"file:{tmp_path / 'locks'}"
    shim = ClockShim(tmp_path / "clock", 0.0)
    runs = [_instance(url, tmp_path, "healthy"), _instance(url, tmp_path, "ahead", shim.env())]
    try:
        runs[0].wait_for("run-started", timeout=30)
        stepped = time.time()
        shim.set(60.0)
        time.sleep(max(0.0, stepped + 4.0 - time.time()))
        back = time.time()
        shim.set(0.0)
        time.sleep(1.0)
    finally:
        codes = [r.stop() for r in runs]
    assert codes == [0, 0], [r.log_path.read_text()[-2000:] for r in runs]
    rows = [line.split() for line in (tmp_path / "runs").read_text().splitlines()]
    ticks = [float(t) for t, _ in rows]
    assert len(ticks) == len(set(ticks)), sorted(ticks)  # never twice
    window = [t for t in ticks if stepped + 1.0 <= t <= back]
    assert len(window) >= 2, (stepped, back, rows)  # the healthy instance kept running
    assert all(who == "healthy" for t, who in rows if stepped + 1.0 <= float(t) <= back)
    assert not runs[0].events("refused"), runs[0].events("refused")
    reasons = [e["reason"] for e in runs[1].events("refused")]
    assert reasons and all(r.startswith("clock-ahead") for r in reasons), reasons
    # a 60 s step, as durations are written for people (59.8s, 1m, 1m1s)
    ahead = re.compile(r"this host's clock is (59(\.\d)?s|60s|1m|1m1s) ahead")
    assert all(ahead.search(r) for r in reasons), reasons
    # no record of a tick the wrong clock invented (the ticks it passed over, logged as missed)

    store = open_backend(url).records()
    assert store is not None
    job = runs[0].events("started")[0]["job"]
    invented = [r for r in store.runs(job, 1000) if r.tick_us > (time.time() + 5) * 1e6]
    assert not invented, invented
    assert runs[1].events("missed")  # the ahead instance did pass over them


# ------------------------------------------------------------------- item 2: stalls, lost answers


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of the test's own, to freeze with SIGSTOP."""
    server = start_redis(tmp_path)
    yield server
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


def _warm(backend: Backend, now: datetime) -> None:
    """One claim (of another job), so that Redis knows the claim script: a client sends it by
    its hash once it has been loaded, as in any run past its first claim."""
    claim_one(backend, "warm-up", now.replace(microsecond=0), "warm", _keep(now), now)


def test_a_claim_that_reaches_redis_after_its_client_gave_up_takes_nothing(
    own_redis: RedisServer,
) -> None:
    """Redis frozen (SIGSTOP) while a claim with its run lease is sent: the client gives up after
    its timeout; when Redis wakes it runs the script it was sent, which now does nothing, so no
    lease is left that nobody holds (before: the job was skipped fleet-wide for --lease-ttl)."""
    from pyjob.core.backends.redis import RedisBackend

    assert own_redis.proc is not None
    gave_up = RedisBackend(own_redis.url, timeout=1.0)
    gave_up.check()
    other = _open(own_redis.url)
    now, tick = _second()
    _warm(gave_up, now)
    request = ClaimRequest("job", tick, _keep(tick), 30.0)
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(BackendError, match="no answer within 1s"):
            gave_up.claim_many([request], "stalled", now)
        time.sleep(0.5)
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while True:  # until Redis answers again (it runs what it was sent first)
        try:
            other.check()
            break
        except BackendError:
            assert time.monotonic() < deadline, "Redis did not come back"
            time.sleep(0.1)
    time.sleep(0.3)
    assert other.lease_holder("job") is None
    following = tick + timedelta(seconds=1)
    won = other.claim_many([ClaimRequest("job", following, _keep(following), 30.0)], "b", now)[0]
    assert won.claim.won and won.lease is not None, won
    # the tick itself was not taken either: it is there for whoever claims it
    assert claim_one(other, "job", tick, "b", _keep(tick), now).won


@pytest.mark.parametrize("lock_url", ["postgresql"], indirect=True)
def test_a_claim_that_reaches_postgresql_after_its_client_gave_up_takes_nothing(
    lock_url: str,  # noqa: F811
) -> None:
    """The same with PostgreSQL: the server process of the claimer's connection frozen while the
    claim is sent runs it when it wakes, after its client gave up: it does nothing."""
    import os

    import psycopg
    from pyjob.core.backends.postgres import PostgresBackend

    gave_up = PostgresBackend(lock_url, timeout=1.0)
    gave_up.check()
    other = _open(lock_url)
    now, tick = _second()
    claim_one(gave_up, "warm-up", tick, "warm", _keep(tick), now)  # its last statement: a claim
    with psycopg.connect(lock_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE '%pyjob_claim%' AND pid <> pg_backend_pid()"
        ).fetchall()
    assert len(rows) == 1, rows
    pid = int(rows[0][0])
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(BackendError, match="no answer within 1s"):
            gave_up.claim_many([ClaimRequest("job", tick, _keep(tick), 30.0)], "stalled", now)
        time.sleep(0.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(1.0)  # it reads and runs what it was sent, then finds its client gone
    assert other.lease_holder("job") is None
    following = tick + timedelta(seconds=1)
    won = other.claim_many([ClaimRequest("job", following, _keep(following), 30.0)], "b", now)[0]
    assert won.claim.won and won.lease is not None, won
    assert claim_one(other, "job", tick, "b", _keep(tick), now).won


def test_a_lease_taken_by_a_claim_whose_answer_was_lost_is_released_once_redis_answers(
    own_redis: RedisServer,
) -> None:
    """The script ran in time, but its answer was lost (Redis frozen, then the link swallowing
    the reply): the lease it took is released by its owner, by its token, without the answer."""
    from pyjob.core.backends.protocol import LostAnswer
    from pyjob.core.backends.redis import RedisBackend
    from pyjob.core.clock import SystemClock, Waker
    from pyjob.core.coordinator import Coordinator

    assert own_redis.proc is not None
    proxy = FaultProxy(own_redis.port).start()
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        backend = RedisBackend(url, timeout=2.0)
        coordinator = Coordinator(
            SystemClock(),
            "a",
            Waker(),
            lambda *a, **k: None,
            threaded=False,
            opener=lambda _: backend,
        )
        coordinator.open(url)
        other = _open(own_redis.url)
        now, tick = _second()
        _warm(backend, now)
        answers: list[object] = []
        own_redis.proc.send_signal(signal.SIGSTOP)
        claim = threading.Thread(
            target=coordinator.claim,
            args=(url, [ClaimRequest("job", tick, _keep(tick), 30.0)], answers.append),
        )
        claim.start()
        time.sleep(0.5)  # the script waits in the frozen server's socket
        proxy.hang()  # and its answer will not come back
        own_redis.proc.send_signal(signal.SIGCONT)
        claim.join(timeout=10)
        coordinator.drain()
        assert len(answers) == 1 and isinstance(answers[0], LostAnswer), answers
        from pyjob.core.coordinator import holder_name

        assert holder_name(other.lease_holder("job") or "") == "a"  # taken all the same, in time
        proxy.forward()
        coordinator.renew(url, [], lambda _: None)  # the next call, whatever it is
        assert other.lease_holder("job") is None
        following = tick + timedelta(seconds=1)
        won = other.claim_many([ClaimRequest("job", following, _keep(following), 30.0)], "b", now)
        assert won[0].lease is not None
    finally:
        proxy.stop()


@pytest.mark.slow
def test_after_redis_is_frozen_longer_than_the_client_timeout_the_next_ticks_run(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """Issue 24, item 2, as reported: three instances of a 1 s job, Redis SIGSTOPped 4 s. Every
    tick after it was skipped ("overlap: the previous run is still going") for the lease's
    30 s TTL; now runs resume at once."""
    assert own_redis.proc is not None
    runs = [_instance(own_redis.url, tmp_path, f"i{n}") for n in range(3)]
    try:
        runs[0].wait_for("claimed", timeout=30)
        time.sleep(1.0)
        own_redis.proc.send_signal(signal.SIGSTOP)
        time.sleep(4.0)
        own_redis.proc.send_signal(signal.SIGCONT)
        back = time.time()
        time.sleep(7.0)
    finally:
        codes = [r.stop() for r in runs]
    assert codes == [0, 0, 0], [r.log_path.read_text()[-2000:] for r in runs]
    ticks = [float(line.split()[0]) for line in (tmp_path / "runs").read_text().splitlines()]
    assert len(ticks) == len(set(ticks)), sorted(ticks)
    after = [t for t in ticks if back + 2.0 <= t <= back + 7.0]
    skipped = [e for r in runs for e in r.events("skipped")]
    assert len(after) >= 3, (back, sorted(ticks), skipped)
    # A run that ended in the stall may hold its lease until its owner's release, made again
    # within a second of Redis answering; no lease blocks a tick after that.
    blocked = [
        e
        for e in skipped
        if "overlap" in str(e.get("reason"))
        and datetime.fromisoformat(str(e["tick"])).timestamp() >= back + 2.0
    ]
    assert not blocked, blocked


# ------------------------------------------------------------ item 6: a step of the backend clock


@pytest.fixture
def stepped_postgres() -> Iterator[tuple[PostgresServer, ClockShim]]:
    """A PostgreSQL server whose clock (clock_timestamp()) the clock shim moves."""
    shared = Path(tempfile.mkdtemp(prefix="pyjob-clock-", dir="/tmp"))  # the server reads it
    shared.chmod(0o755)
    shim = ClockShim(shared / "server-clock", 0.0)
    (shared / "server-clock").chmod(0o644)
    pg = _shifted_postgres(shim)
    try:
        yield pg, shim
    finally:
        pg.destroy()
        shutil.rmtree(shared, ignore_errors=True)


def test_a_postgresql_clock_step_takes_no_lease_from_a_holder_that_renews_it(
    stepped_postgres: tuple[PostgresServer, ClockShim],
) -> None:
    pg, shim = stepped_postgres
    holder, taker = _open(pg.url), _open(pg.url)
    ttl = 3.0
    now, tick = _second()
    got = holder.claim_many([ClaimRequest("job", tick, _keep(tick), ttl)], "holder", now)[0]
    assert got.lease is not None
    shim.set(660.0)  # the database's clock: 11 minutes ahead, past the lease's expiry
    time.sleep(0.1)
    for i in range(1, 5):  # four renewals, 4 s: longer than the TTL
        assert holder.renew_many([got.lease]) == [True]  # re-asserted, not lost
        now, t = _second()
        t += timedelta(seconds=i)
        lost = taker.claim_many([ClaimRequest("job", t, _keep(t), ttl)], "taker", now)[0]
        assert lost.claim.won and lost.lease is None and lost.lease_holder == "holder", lost
        time.sleep(1.0)
    # the holder dies (renews no more): the lease is the taker's once its TTL has passed
    deadline = time.monotonic() + ttl + 5
    i = 10
    while True:
        now, t = _second()
        t += timedelta(seconds=i)
        i += 1
        taken = taker.claim_many([ClaimRequest("job", t, _keep(t), ttl)], "taker", now)[0]
        if taken.lease is not None:
            break
        assert time.monotonic() < deadline, taken
        time.sleep(0.25)


def test_a_restarted_instance_of_the_same_name_does_not_take_its_predecessors_claims(
    fleet_lock_url: str,
) -> None:
    """A claim is its process's: the same process asking again gets it back (a lost answer),
    but an instance started again under the same --instance-id does not, or it would run a tick
    its predecessor already ran (found by tests/soak.py: a host stepped ahead ran its future
    tick, was killed, and its successor ran the tick again at its time, under the same fence)."""
    from pyjob.core.clock import SystemClock, Waker
    from pyjob.core.coordinator import Coordinator

    tick = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    request = ClaimRequest("job", tick, tick + timedelta(seconds=60), 30.0)

    def process() -> Coordinator:
        coordinator = Coordinator(
            SystemClock(), "i0", Waker(), lambda *a, **k: None, threaded=False
        )
        coordinator.open(fleet_lock_url)
        return coordinator

    def claim(coordinator: Coordinator) -> object:
        answers: list[object] = []
        coordinator.claim(fleet_lock_url, [request], answers.append)
        coordinator.drain()
        assert len(answers) == 1 and isinstance(answers[0], list), answers
        return answers[0][0]

    first = process()
    won = claim(first)
    again = claim(first)  # the same process asking again, as after a lost answer
    successor = process()
    lost = claim(successor)
    first.close()
    successor.close()
    assert won.claim.won and again.claim.won  # type: ignore[attr-defined]
    assert not lost.claim.won and lost.claim.holder == "i0"  # type: ignore[attr-defined]

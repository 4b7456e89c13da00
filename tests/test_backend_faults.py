"""Redis, PostgreSQL and etcd behind a fault-injecting TCP proxy (tests/faultproxy.py): the shared
suite through it, a server that stops answering (every call bounded on the client side, then a
reconnect), and connections dropped at random requests (BackendError and nothing else, never a
hang, never a tick won twice)."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyjob.core.backends import Backend, ClaimRequest, open_backend
from pyjob.core.errors import BackendError

from .backend_suite import *  # noqa: F403
from .backend_suite import KEEP, T0, claim_one
from .conftest import etcd_lock_url
from .faultproxy import FaultProxy
from .servers import EtcdServer, PostgresServer, RedisServer

BOUND = 2.0  # the backends' client-side bound, seconds
SLACK = 1.0  # scheduling noise on a shared 2-core machine

_n = itertools.count()


@pytest.fixture(params=["redis", "postgresql", "etcd"])
def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FaultProxy, str]]:
    """(proxy, lock URL through it) onto a fresh, empty store."""
    if request.param == "redis":
        import redis

        server: RedisServer = request.getfixturevalue("redis_server")
        db = next(_n) % 15 + 1
        r = redis.Redis(port=server.port, db=db)
        r.flushdb()
        r.close()
        proxy = FaultProxy(server.port).start()
        url = f"redis://127.0.0.1:{proxy.port}/{db}"
    elif request.param == "etcd":
        etcd: EtcdServer = request.getfixturevalue("etcd_server")
        proxy = FaultProxy(etcd.port).start()
        url = etcd_lock_url(etcd).replace(f":{etcd.port}/", f":{proxy.port}/")
    else:
        import psycopg

        pg: PostgresServer = request.getfixturevalue("pg_server")
        name = f"f{next(_n)}"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        proxy = FaultProxy(pg.port).start()
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"
    try:
        yield proxy, url
    finally:
        proxy.stop()


@pytest.fixture
def lock_url(proxied: tuple[FaultProxy, str]) -> str:
    """The shared suite, through a proxy that forwards."""
    return proxied[1]


def _open(url: str) -> Backend:
    backend = open_backend(url)
    backend.check()
    return backend


def _calls(backend: Backend, instance: str) -> dict[str, Callable[[int], object]]:
    """Every kind of backend call that talks to the server, each taking a tick number."""

    def claim_many(i: int) -> object:
        tick = T0 + timedelta(seconds=i)
        batch = [
            ClaimRequest(f"job{j}", tick, KEEP, lease_ttl=5.0 if j == 0 else None) for j in range(3)
        ]
        out = backend.claim_many(batch, instance, T0)
        leases = [o.lease for o in out if o.lease is not None]
        if leases:
            backend.renew_many(leases)
            backend.release_many(leases)
        return out

    calls: dict[str, Callable[[int], object]] = {
        "claim_many": claim_many,
        "claim": lambda i: claim_one(
            backend, "solo", T0 + timedelta(seconds=i), instance, KEEP, T0
        ),
        "acquire_lease": lambda i: backend.acquire_lease("lease", instance, 0.5),
        "lease_holder": lambda i: backend.lease_holder("lease"),
        "server_time": lambda i: backend.server_time(),
    }
    if not backend.url.startswith("redis"):  # Redis expires claims itself: no call
        calls["cleanup_many"] = lambda i: backend.cleanup_many(["job0"], datetime.now(UTC))
    return calls


def test_a_server_that_stops_answering_gives_backend_error_within_the_bound_then_recovers(
    proxied: tuple[FaultProxy, str],
) -> None:
    proxy, url = proxied
    backend = _open(url)
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won
    proxy.hang()
    for i, (name, call) in enumerate(_calls(backend, "a").items(), start=1):
        start = time.monotonic()
        with pytest.raises(BackendError, match=r"no answer within 2s"):
            call(i)
        assert time.monotonic() - start < BOUND + SLACK, name
    proxy.forward()
    assert claim_one(backend, "job", T0 + timedelta(minutes=1), "a", KEEP, T0).won  # reconnected
    assert not claim_one(backend, "job", T0, "b", KEEP, T0).won
    backend.close()


def test_a_new_connection_to_a_hung_server_is_bounded_too(proxied: tuple[FaultProxy, str]) -> None:
    proxy, url = proxied
    proxy.hang()
    backend = open_backend(url)
    start = time.monotonic()
    with pytest.raises(BackendError):
        backend.check()
    assert time.monotonic() - start < BOUND + SLACK
    proxy.forward()
    backend.check()
    backend.close()


def test_dropped_connections_give_backend_errors_only_and_no_tick_is_won_twice(
    proxied: tuple[FaultProxy, str],
) -> None:
    proxy, url = proxied
    a, b = _open(url), _open(url)
    proxy.drop(0.25)
    rng = random.Random(1)
    errors = 0
    winners: dict[tuple[str, int], set[str]] = {}
    for i in range(40):
        for instance, backend in (("a", a), ("b", b)):
            calls = _calls(backend, instance)
            call = calls[rng.choice(["claim_many", "claim"])]  # claims: they must not double
            start = time.monotonic()
            try:
                out = call(i)
            except BackendError:
                errors += 1
                out = None
            # anything else than BackendError fails the test here
            assert time.monotonic() - start < BOUND + SLACK
            for o in out if isinstance(out, list) else [out] if out is not None else []:
                claim = getattr(o, "claim", o)
                if claim.won:
                    winners.setdefault((claim.holder, i), set()).add(instance)
            for name, other in calls.items():
                if name.startswith("claim"):
                    continue
                try:
                    other(i)
                except BackendError:
                    errors += 1
    assert errors > 0 and proxy.dropped > 0
    assert all(len(who) == 1 for who in winners.values()), winners
    proxy.forward()
    assert claim_one(a, "after", T0, "a", KEEP, T0).won  # recovered
    assert not claim_one(b, "after", T0, "b", KEEP, T0).won


# ---------------------------------------------------------------------------- real `pyjob run`


@pytest.mark.slow
@pytest.mark.long
def test_instances_behind_a_dropping_proxy_never_exit_nor_run_a_tick_twice(
    proxied: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    from .runproc import PyjobRun

    proxy, url = proxied
    out = tmp_path / "runs"
    cmd = 'echo "$PYJOB_TICK_UNIX" >> "$OUT"'
    args = ["--every", "500ms", "--align", "--lock", url, "--shell", "--", cmd]
    runs = [
        PyjobRun(["--instance-id", f"i{n}", *args], tmp_path, f"i{n}", {"OUT": str(out)})
        for n in range(2)
    ]
    for r in runs:  # each has reached the backend: either may win every race
        r.wait_for(("claimed", "lost"), timeout=30)
    proxy.drop(0.08)  # 8 % of requests lose their connection
    time.sleep(10)
    proxy.forward()
    time.sleep(2)
    assert [r.proc.poll() for r in runs] == [None, None]  # no backend error ends pyjob run
    for r in runs:
        assert r.stop() == 0
        assert "Traceback" not in r.log_path.read_text()
    # A dropped connection is made again and the call tried once more, so a failure reaches
    # the log only when two drop in a row (about 0.6 % of calls at 8 %): a couple a run, and
    # none in about one run in eight (CI saw one). What is asserted is that they were survived.
    assert proxy.dropped > 0
    ticks = out.read_text().split()
    assert len(ticks) == len(set(ticks)), sorted(t for t in ticks if ticks.count(t) > 1)
    assert len(ticks) >= 12  # the fleet kept running through it


@pytest.mark.slow
def test_sigterm_is_honoured_during_a_hang(proxied: tuple[FaultProxy, str], tmp_path: Path) -> None:
    from .runproc import PyjobRun

    proxy, url = proxied
    args = ["--every", "500ms", "--align", "--lock", url, "--stop-timeout", "2s", "--", "true"]
    run = PyjobRun(args, tmp_path)
    run.wait_for("run-finished", timeout=30)
    proxy.hang()  # the server stops answering; the sockets stay open
    errors = run.wait_for("backend-error", timeout=10)  # within the 2 s bound, logged
    assert errors and all(e["error"] and e["action"] for e in errors)
    start = time.monotonic()
    run.signal(__import__("signal").SIGTERM)
    assert run.wait(timeout=10) == 0
    assert time.monotonic() - start < 2 + 1  # --stop-timeout plus a second
    assert run.events("stopped")

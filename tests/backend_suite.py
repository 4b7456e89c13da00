"""The shared suite every lock backend passes (APScheduler runs one suite on every data store).

A backend's test module provides a ``lock_url`` fixture (a fresh, empty store for each test) and
imports these tests: ``from .backend_suite import *``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from pyjob.core.backends import Backend, open_backend

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEEP = T0 + timedelta(days=1)


def _open(url: str) -> Backend:
    backend = open_backend(url)
    backend.check()
    return backend


def test_claims_race_one_winner_per_tick_threads(lock_url: str) -> None:
    ticks = [T0 + timedelta(seconds=i) for i in range(20)]
    results: dict[int, list[tuple[datetime, bool, str, int | None]]] = {}
    barrier = threading.Barrier(16, timeout=60)  # a claimer that fails must not hang the rest

    def claimer(n: int) -> None:
        try:
            backend = _open(lock_url)  # each its own connection / file handles
        finally:
            barrier.wait()
        out = []
        for tick in ticks:
            r = backend.claim("job", tick, f"i{n}", KEEP, T0)
            out.append((tick, r.won, r.holder, r.fence))
        results[n] = out
        backend.close()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, tick in enumerate(ticks):
        rows = [results[n][i] for n in range(16)]
        winners = [n for n in range(16) if rows[n][1]]
        assert len(winners) == 1, (tick, rows)
        holder = f"i{winners[0]}"
        assert all(row[2] == holder for row in rows)  # losers learn who won
        assert len({row[3] for row in rows}) == 1  # and the fence it got


_CLAIM_SCRIPT = """
import sys, json
from datetime import UTC, datetime, timedelta
from pyjob.core.backends import open_backend
b = open_backend(sys.argv[1]); b.check()
t0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
won = [i for i in range(30) if b.claim("job", t0 + timedelta(seconds=i), sys.argv[2],
       t0 + timedelta(days=1), t0).won]
print(json.dumps(won))
"""


def test_claims_race_one_winner_per_tick_processes(lock_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIM_SCRIPT, lock_url, f"p{n}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    import json

    won = Counter()
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        won.update(json.loads(out))
    assert sorted(won) == list(range(30)) and set(won.values()) == {1}


def test_fences_strictly_increase(lock_url: str) -> None:
    a, b = _open(lock_url), _open(lock_url)
    fences = []
    for i in range(10):
        backend = a if i % 2 else b
        r = backend.claim("job", T0 + timedelta(minutes=i), "x", KEEP, T0)
        assert r.won
        fences.append(r.fence)
    assert all(f is not None for f in fences)
    assert fences == sorted(fences) and len(set(fences)) == len(fences)
    # another job has its own sequence, and re-claiming an old tick gives no new fence
    assert a.claim("other", T0, "x", KEEP, T0).won
    again = b.claim("job", T0, "y", KEEP, T0)
    assert not again.won and again.holder == "x" and again.fence == fences[0]


def test_claims_are_kept_until_keep_until_then_removed(lock_url: str) -> None:
    # Real time: Redis and PostgreSQL judge retention by their own clocks, not by ``now``.
    backend = _open(lock_url)
    now = datetime.now(UTC)
    backend.claim("job", T0, "a", now + timedelta(seconds=1.2), now)
    backend.claim("job", T0 + timedelta(minutes=1), "a", now + timedelta(hours=5), now)
    backend.cleanup("job", datetime.now(UTC))
    assert not backend.claim("job", T0, "b", KEEP, now).won  # still kept
    time.sleep(1.6)
    backend.cleanup("job", datetime.now(UTC))
    assert backend.claim("job", T0, "b", KEEP, datetime.now(UTC)).won  # removed: a new claim
    assert not backend.claim("job", T0 + timedelta(minutes=1), "b", KEEP, now).won


_LEASE_SCRIPT = """
import sys, time
from pyjob.core.backends import open_backend
b = open_backend(sys.argv[1]); b.check()
ttl = float(sys.argv[2])
lease = b.acquire_lease("job", "victim", ttl)
print("held" if lease else "refused", flush=True)
while True:
    time.sleep(ttl / 4)
    b.renew_lease(lease)
"""


def test_lease_expires_after_a_sigkilled_holder(lock_url: str) -> None:
    ttl = 1.0
    proc = subprocess.Popen(
        [sys.executable, "-c", _LEASE_SCRIPT, lock_url, str(ttl)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        backend = _open(lock_url)
        assert backend.acquire_lease("job", "other", ttl) is None
        assert backend.lease_holder("job") == "victim"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + ttl + 3
        lease = None
        while lease is None and time.monotonic() < deadline:
            lease = backend.acquire_lease("job", "other", ttl)
            time.sleep(0.05)
        assert lease is not None, "the dead holder's lease never expired"
        backend.release_lease(lease)
        assert backend.lease_holder("job") is None
    finally:
        proc.kill()


def test_lease_is_not_stolen_from_a_live_holder(lock_url: str) -> None:
    ttl = 0.6
    proc = subprocess.Popen(
        [sys.executable, "-c", _LEASE_SCRIPT, lock_url, str(ttl)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        backend = _open(lock_url)
        end = time.monotonic() + 4 * ttl
        while time.monotonic() < end:
            assert backend.acquire_lease("job", "thief", ttl) is None
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


def test_lease_release_lets_the_next_holder_in(lock_url: str) -> None:
    a, b = _open(lock_url), _open(lock_url)
    lease = a.acquire_lease("job", "a", 5.0)
    assert lease is not None and a.renew_lease(lease)
    assert b.acquire_lease("job", "b", 5.0) is None
    a.release_lease(lease)
    second = b.acquire_lease("job", "b", 5.0)
    assert second is not None
    b.release_lease(second)


def test_backend_clock_agrees_with_this_host(lock_url: str) -> None:
    # Every test server runs on this host, so its clock is ours: the measured offset must be
    # zero within the error bound the measurement claims (plus 2 ms for scheduling noise).
    from pyjob.core.clock import SystemClock
    from pyjob.core.clockcheck import backend_clock

    backend = _open(lock_url)
    try:
        reading = backend_clock(backend, SystemClock())
    finally:
        backend.close()
    assert reading is not None and reading.url == backend.url
    assert 0 < reading.error < 0.05
    assert abs(reading.offset) <= reading.error + 0.002, reading

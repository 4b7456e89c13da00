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

from pyjob.core.backends import Backend, ClaimRequest, ClaimResult, Lease, open_backend

# Ticks of the last hour: backends refuse a tick older than its claims are kept by their own clock
# (plus the skew limit), and one more than AHEAD_LIMIT ahead of that clock (clock-ahead), so the
# suite's ticks are recent and in the past (T0 + 59 min at most) for real servers.
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
KEEP = T0 + timedelta(days=1)


# The Backend protocol has batch calls only (what the coordinator makes); tests claim, renew,
# release and clean up one item at a time through these. Leases are probed with the backend's own
# ``acquire_lease(job, instance, ttl) -> Lease | None`` and ``lease_holder(job) -> str | None``,
# which every backend has for tests beside the protocol.


def claim_one(
    backend: Backend, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
) -> ClaimResult:
    return backend.claim_many([ClaimRequest(job, tick, keep_until)], instance, now)[0].claim


def renew_one(backend: Backend, lease: Lease) -> bool:
    return backend.renew_many([lease])[0]


def release_one(backend: Backend, lease: Lease) -> None:
    backend.release_many([lease])


def cleanup_one(backend: Backend, job: str, now: datetime) -> int:
    return backend.cleanup_many([job], now)


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
            r = claim_one(backend, "job", tick, f"i{n}", KEEP, T0)
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
from pyjob.core.backends import ClaimRequest, open_backend
b = open_backend(sys.argv[1]); b.check()
t0 = datetime.fromisoformat(sys.argv[3])
won = [i for i in range(30) if b.claim_many([ClaimRequest("job", t0 + timedelta(seconds=i),
       t0 + timedelta(days=1))], sys.argv[2], t0)[0].claim.won]
print(json.dumps(won))
"""


def test_claims_race_one_winner_per_tick_processes(lock_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIM_SCRIPT, lock_url, f"p{n}", T0.isoformat()],
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
        r = claim_one(backend, "job", T0 + timedelta(minutes=i), "x", KEEP, T0)
        assert r.won
        fences.append(r.fence)
    assert all(f is not None for f in fences)
    assert fences == sorted(fences) and len(set(fences)) == len(fences)
    # another job has its own sequence, and re-claiming an old tick gives no new fence
    assert claim_one(a, "other", T0, "x", KEEP, T0).won
    again = claim_one(b, "job", T0, "y", KEEP, T0)
    assert not again.won and again.holder == "x" and again.fence == fences[0]


def test_claims_are_kept_until_keep_until_then_removed_and_never_won_again(
    lock_url: str,
) -> None:
    # Real time: Redis and PostgreSQL judge retention by their own clocks, not by ``now``.
    backend = _open(lock_url)
    now = datetime.now(UTC)
    until = now + timedelta(seconds=1.2)  # every claimer of a tick computes the same
    claim_one(backend, "job", T0, "a", until, now)
    claim_one(backend, "job", T0 + timedelta(minutes=1), "a", now + timedelta(hours=5), now)
    cleanup_one(backend, "job", datetime.now(UTC))
    kept = claim_one(backend, "job", T0, "b", until, now)
    assert not kept.won and kept.holder == "a" and kept.refused is None  # still kept
    time.sleep(1.6)
    cleanup_one(backend, "job", datetime.now(UTC))
    # removed, but the job's mark (the latest tick claimed) still says it may have been claimed
    gone = claim_one(backend, "job", T0, "b", until, datetime.now(UTC))
    assert not gone.won and gone.refused is not None and "no longer kept" in gone.refused
    assert not claim_one(backend, "job", T0 + timedelta(minutes=1), "b", KEEP, now).won


_LEASE_SCRIPT = """
import sys, time
from pyjob.core.backends import open_backend
b = open_backend(sys.argv[1]); b.check()
ttl = float(sys.argv[2])
lease = b.acquire_lease("job", "victim", ttl)
print("held" if lease else "refused", flush=True)
while True:
    time.sleep(ttl / 4)
    b.renew_many([lease])
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
        release_one(backend, lease)
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
    assert lease is not None and renew_one(a, lease)
    assert b.acquire_lease("job", "b", 5.0) is None and b.lease_holder("job") == "a"
    release_one(a, lease)
    second = b.acquire_lease("job", "b", 5.0)
    assert second is not None and a.lease_holder("job") == "b"  # the new holder, by name
    release_one(b, second)
    assert a.lease_holder("job") is None
    third = a.acquire_lease("job", "a", 5.0)
    assert third is not None and b.lease_holder("job") == "a"
    release_one(a, third)


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
    assert 0 < reading.error < 0.5  # half a loopback round trip, on a busy machine too
    assert abs(reading.offset) <= reading.error + 0.002, reading


# ------------------------------------------------------------------------------------- batches


def test_claim_many_answers_each_request_in_order_with_leases(lock_url: str) -> None:
    from pyjob.core.backends import ClaimRequest

    a, b = _open(lock_url), _open(lock_url)
    batch = [
        ClaimRequest("j1", T0, KEEP),
        ClaimRequest("j2", T0, KEEP, lease_ttl=5.0),
        ClaimRequest("j3", T0, KEEP, lease_ttl=5.0),
    ]
    other = b.acquire_lease("j3", "b", 5.0)  # j3's run lease is taken already
    assert other is not None
    won = a.claim_many(batch, "a", T0)
    assert [o.claim.won for o in won] == [True, True, True]
    assert all(o.claim.fence for o in won)
    assert won[0].lease is None and won[0].lease_holder is None
    assert won[1].lease is not None and won[1].lease.job == "j2" and won[1].lease_holder is None
    assert won[2].lease is None and won[2].lease_holder == "b"
    assert b.acquire_lease("j2", "b", 5.0) is None and b.lease_holder("j2") == "a"
    lost = b.claim_many(batch, "b", T0)
    assert [(o.claim.won, o.claim.holder) for o in lost] == [(False, "a")] * 3
    assert [o.claim.fence for o in lost] == [o.claim.fence for o in won]
    assert all(o.lease is None for o in lost)  # a lost claim takes no lease
    assert a.claim_many([], "a", T0) == []
    leases = [won[1].lease, other]
    assert a.renew_many([won[1].lease]) == [True]
    assert b.renew_many([won[1].lease, other]) == [True, True]  # by token, not by object
    a.release_many([x for x in leases if x is not None])
    assert a.lease_holder("j2") is None and a.lease_holder("j3") is None


_BATCH_SCRIPT = """
import sys, json
from datetime import datetime, timedelta
from pyjob.core.backends import ClaimRequest, open_backend
b = open_backend(sys.argv[1]); b.check()
t0 = datetime.fromisoformat(sys.argv[3])
won = []
for i in range(15):
    tick = t0 + timedelta(seconds=i)
    keep = t0 + timedelta(days=1)
    batch = [ClaimRequest(f"job{j}", tick, keep, lease_ttl=30.0 if j == 0 else None)
             for j in range(6)]
    for r, o in zip(batch, b.claim_many(batch, sys.argv[2], t0)):
        if o.claim.won:
            won.append([r.job, i, o.claim.fence])
        if o.lease is not None:
            b.release_many([o.lease])
print(json.dumps(won))
"""


def test_claim_many_races_between_processes_one_winner_and_growing_fences(lock_url: str) -> None:
    import json

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BATCH_SCRIPT, lock_url, f"p{n}", T0.isoformat()],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    won: list[tuple[str, int, int]] = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        won += [tuple(x) for x in json.loads(out)]
    assert sorted((job, i) for job, i, _ in won) == [
        (f"job{j}", i) for j in range(6) for i in range(15)
    ]
    for j in range(6):
        by_tick = [f for job, _, f in sorted(won, key=lambda x: x[1]) if job == f"job{j}"]
        assert by_tick == sorted(by_tick) and len(set(by_tick)) == 15, by_tick


def test_cleanup_many_removes_expired_claims_of_every_job(lock_url: str) -> None:
    from pyjob.core.backends import ClaimRequest

    backend = _open(lock_url)
    now = datetime.now(UTC)
    soon = now + timedelta(seconds=0.5)
    backend.claim_many([ClaimRequest(f"j{i}", T0, soon) for i in range(3)], "a", now)
    time.sleep(1.2)
    removed = backend.cleanup_many(["j0", "j1", "j2"], datetime.now(UTC))
    assert removed in (0, 3)  # 0 where the backend expires claims itself (Redis)
    after = backend.claim_many(
        [ClaimRequest(f"j{i}", T0, soon) for i in range(3)], "b", datetime.now(UTC)
    )
    assert all(not o.claim.won and o.claim.refused for o in after)  # the mark still holds


# --------------------------------------------------------------------------- marks and refusals


def test_a_tick_at_or_before_the_mark_whose_claim_would_be_gone_is_refused(lock_url: str) -> None:
    backend = _open(lock_url)
    assert claim_one(backend, "job", T0 + timedelta(minutes=5), "a", KEEP, T0).won
    # T0 has no claim, and by the backend's clock a claim of it would be gone by now (kept
    # until now): nobody can tell whether T0 ran
    now = datetime.now(UTC)
    r = claim_one(backend, "job", T0, "b", now, now)
    assert not r.won and r.refused is not None and r.ahead is None
    assert "not after" in r.refused and "latest tick claimed" in r.refused and "1h" in r.refused
    assert claim_one(backend, "job", T0 + timedelta(minutes=6), "b", KEEP, T0).won  # later ones run


def test_a_tick_older_than_its_claims_are_kept_plus_the_skew_limit_is_refused(
    lock_url: str,
) -> None:
    backend = _open(lock_url)
    now = datetime.now(UTC)
    old = now - timedelta(hours=3)  # a host three hours behind the backend claims "now"
    r = claim_one(backend, "job", old, "a", old + timedelta(minutes=11), old)
    assert not r.won and r.refused is not None and r.fence is None
    assert "backend's clock" in r.refused and "skew limit of 1h" in r.refused
    # 59 minutes behind is within the limit: that claim is made
    late = now - timedelta(minutes=59)
    assert claim_one(backend, "job", late, "a", late + timedelta(minutes=1), late).won


def test_a_repeated_claim_many_is_won_again_and_keeps_one_lease(lock_url: str) -> None:
    """A retry after a lost reply: the same claim (same fence), and the lease it took already
    (or a word that this instance holds it), never a second holder."""
    from pyjob.core.backends import ClaimRequest

    backend, other = _open(lock_url), _open(lock_url)
    batch = [ClaimRequest("job", T0, KEEP, lease_ttl=5.0)]
    first = backend.claim_many(batch, "a", T0)[0]
    again = backend.claim_many(batch, "a", T0)[0]
    assert first.claim.won and again.claim.won and again.claim.fence == first.claim.fence
    assert first.lease is not None
    assert (again.lease is not None and again.lease.token == first.lease.token) or (
        again.lease is None and again.lease_holder == "a"
    )
    assert other.acquire_lease("job", "b", 5.0) is None and other.lease_holder("job") == "a"
    backend.release_many([first.lease])
    assert other.lease_holder("job") is None

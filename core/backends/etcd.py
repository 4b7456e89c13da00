"""`etcd://` — coordination through an etcd cluster (v3 API, through its JSON gateway).

Keys, under the URL's prefix (``pyjob`` unless the URL names one), per job:

    <prefix>/job/<job>/claim/<tick µs, 20 digits>  {"instance", "keep_until_us"}; the claim's
                                                   create revision is its fence
    <prefix>/job/<job>/mark                        the latest tick claimed (20 digits), kept forever
    <prefix>/job/<job>/lease                       "<instance> <token>", attached to an etcd lease

Fences are etcd's cluster revision: the revision of the transaction that made the claim. It only
grows, cluster-wide, so each job's fences grow with every claim of it (a transaction holds each
job at most once). A batch of claims is one transaction (up to TXN_CLAIMS of them; a larger batch
goes in several): for each request a nested transaction puts the claim if its key is absent and
the tick is after the mark, raising the mark, and takes the run lease when asked for; otherwise
it reads what stands. A second transaction, only when needed, makes a job's first claim (no mark
yet), claims a tick at or before the mark whose claim is absent, only while its claim, had it
been made, would still be kept, and takes the run lease of a repeated claim (same instance, after
a lost reply).

etcd's data model has no clock: leases are timed by the leader's monotonic clock. What the
protocol judges by "the backend's clock" (DESIGN §8) is judged here by the etcd server's wall
clock as the Date headers of its answers bound it (etcd_http.DateClock), each bound used on the
safe side: a claim is removed only once the earliest the server's clock may read is within
0.9 KEPT_MARGIN of its keep_until, and a tick behind the mark is refused once the latest it may
read is within KEPT_MARGIN of it. These judgements are made by the client between two
transactions, not inside one, which the compare-and-set on the claim key makes safe: two
claimers still cannot both win a tick. Run leases are etcd leases (one per lease TTL per
process, kept alive by renewals): a holder that stops renewing loses them when the cluster's
lease expires, whatever any wall clock says.

One backend object is one HTTP connection (etcd_http.EtcdHttp); every call is bounded by
``timeout`` on the client side. etcd cannot compare with a deadline, so a request the client gave
up on (a stall) is kept from taking effect later by a session key: every transaction compares
its revision, and it is written again after any call that may have left a request in flight.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clock import Clock, SystemClock
from ..errors import BackendError
from ..instants import to_us
from .common import (
    refused_behind_mark,
    refused_clock_ahead,
    refused_too_old,
    safe_name,
)
from .etcd_http import EtcdError, EtcdHttp, ServerClock, b64, range_end, unb64
from .protocol import (
    AHEAD_LIMIT,
    KEPT_MARGIN,
    SKEW_LIMIT,
    ClaimOutcome,
    ClaimRequest,
    ClaimResult,
    Lease,
    LostAnswer,
    lease_token,
)

if TYPE_CHECKING:
    from .etcdstore import EtcdRecords

# Claims per transaction: etcd refuses a transaction with more than --max-txn-ops (128 by
# default) operations at one level, nested ones counted against what their parents leave.
TXN_CLAIMS = 100
# How long before its keep_until a claim may be removed, by the earliest the server's clock may
# read: less than KEPT_MARGIN, so that a tick is refused (by the latest the clock may read)
# before its claim can be gone, however wide the bounds on the clock of either reader.
_EARLY_US = int(KEPT_MARGIN * 0.9 * 1e6)
# The TTL (s) of a process's session key: a process gone leaves it for no longer than this.
SESSION_TTL = 3600


def _absent(key: str) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def _put(key: str, value: str, lease: int | None = None) -> dict[str, Any]:
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease is not None:
        put["lease"] = str(lease)
    return {"request_put": put}


def _get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def _prefix(start: str, **options: Any) -> dict[str, Any]:
    """Read every key that starts with ``start``."""
    return {"request_range": {"key": b64(start), "range_end": b64(range_end(start)), **options}}


def _after(mark: str, tick: str) -> dict[str, Any]:
    """The compare: the job's mark is before ``tick`` (fixed-width numbers compare as bytes)."""
    return {"key": b64(mark), "target": "VALUE", "result": "LESS", "value": b64(tick)}


def _txn(compare: list[Any], success: list[Any], failure: list[Any]) -> dict[str, Any]:
    return {"request_txn": {"compare": compare, "success": success, "failure": failure}}


def _kv(response: dict[str, Any]) -> dict[str, Any] | None:
    """The key-value of a range answer (of one key), or None when the key is absent."""
    kvs = response.get("response_range", {}).get("kvs") or []
    return kvs[0] if kvs else None


def _tick_text(tick_us: int) -> str:
    return f"{tick_us:020d}"  # fixed width: etcd compares values as bytes


@dataclass
class _Plan:
    """One request of a batch on its way through the transactions."""

    request: ClaimRequest
    token: str
    kind: str  # "claim", or "read" when it can only be refused unless already held
    outcome: ClaimOutcome | None = None
    second: str | None = None  # "claim" or "lease": what the second transaction does
    mark_us: int | None = None
    held: dict[str, Any] = field(default_factory=dict)


class LeasePool:
    """The etcd leases this process attaches its keys to, one per TTL (in whole seconds), kept
    alive as they are used and granted again when one expired."""

    def __init__(
        self, call: Callable[[str, dict[str, Any], str], dict[str, Any]], clock: Clock
    ) -> None:
        self.call = call
        self._clock = clock
        self.leases: dict[int, int] = {}  # lease TTL (s) -> the etcd lease this process uses
        self.kept: dict[int, float] = {}  # lease TTL (s) -> monotonic, when last kept alive

    def lease_id(self, ttl: float) -> int:
        """The etcd lease this process attaches its run leases of ``ttl`` to, with most of its
        TTL left: a key put on it lives only as long as it does, so one not kept alive for a
        quarter of its TTL is kept alive first (granted again when it expired meanwhile)."""
        seconds = max(1, math.ceil(ttl))
        lease = self.leases.get(seconds)
        if lease is not None and self._clock.monotonic() - self.kept[seconds] > seconds / 4:
            self.keep_alive(seconds, lease)
            lease = self.leases.get(seconds)
        if lease is None:
            reply = self.call("/v3/lease/grant", {"TTL": str(seconds)}, "lease grant failed")
            lease = self.leases[seconds] = int(reply["ID"])
            self.kept[seconds] = self._clock.monotonic()
        return lease

    def keep_alive(self, seconds: int, lease: int) -> None:
        sent = self._clock.monotonic()
        reply = self.call("/v3/lease/keepalive", {"ID": str(lease)}, "lease renewal failed")
        if int(reply.get("result", {}).get("TTL") or 0) <= 0:
            del self.leases[seconds]  # expired: its keys are gone; a new one takes them again
        else:
            self.kept[seconds] = sent


class EtcdBackend:
    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        prefix: str,
        url: str,
        timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.prefix = prefix
        self._clock = SystemClock()  # real elapsed time: bounds and deadlines are the network's
        self.http = EtcdHttp(endpoints, url, timeout, self._clock.monotonic)
        self.server_clock = ServerClock(self.http, self.check, self._clock, url)
        self._nonce = uuid.uuid4().hex
        self.pool = LeasePool(self.call, self._clock)
        # Every transaction compares this key's revision: after a call whose request may still
        # reach etcd (a timeout, a dropped connection), the key is written again before the next
        # transaction, so a late request finds it changed and does nothing (DESIGN §8, "etcd").
        self._session_key = f"{prefix}/session/{self._nonce}"
        self._session_rev: int | None = None

    def call(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            return self.http.call(path, body, what)
        except EtcdError:
            raise  # etcd answered: nothing of it is left to land later
        except BackendError:
            self._session_rev = None
            raise

    def _session(self) -> dict[str, Any]:
        """The compare every transaction makes: this process's session key is as last written
        (written first when it is not, or may not be)."""
        if self._session_rev is None:
            body = {"key": b64(self._session_key), "lease": str(self.pool.lease_id(SESSION_TTL))}
            try:
                reply = self.call("/v3/kv/put", body, "session not written")
            except EtcdError as e:
                if not e.lease_not_found:
                    raise
                self.pool.leases.pop(SESSION_TTL, None)
                body["lease"] = str(self.pool.lease_id(SESSION_TTL))
                reply = self.call("/v3/kv/put", body, "session not written")
            self._session_rev = int(reply["header"]["revision"])
        return {
            "key": b64(self._session_key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": str(self._session_rev),
        }

    def key(self, job: str, *parts: str) -> str:
        return "/".join([self.prefix, "job", safe_name(job), *parts])

    def check(self) -> None:
        self.call(
            "/v3/kv/range",
            {"key": b64(self.prefix + "/"), "range_end": b64(self.prefix + "0"), "limit": "1"},
            "cannot reach etcd",
        )

    def records(self) -> EtcdRecords:
        """The record store that lives in this cluster, through this connection."""
        from .etcdstore import EtcdRecords

        return EtcdRecords(self)

    # ---------------------------------------------------------------- the server's clock

    def _server_now(self) -> tuple[int, int]:
        return self.server_clock.now_us()

    def server_time(self) -> tuple[float, float]:
        return self.server_clock.read()

    def calibrate(self, target: float = 0.01, probes: int = 10) -> None:
        self.server_clock.calibrate(target, probes)

    # ---------------------------------------------------------------- claims

    def claim_many(
        self, requests: Sequence[ClaimRequest], instance: str, now: datetime
    ) -> list[ClaimOutcome]:
        """One transaction per TXN_CLAIMS claims, each job at most once in each (its fences
        are revisions); a second one only for ticks behind the mark and repeated claims."""
        chunks: list[list[int]] = []
        for i, r in enumerate(requests):
            for chunk in chunks:
                if len(chunk) < TXN_CLAIMS and all(requests[j].job != r.job for j in chunk):
                    chunk.append(i)
                    break
            else:
                chunks.append([i])
        out: list[ClaimOutcome | None] = [None] * len(requests)
        for chunk in chunks:
            done = self._claim_batch([requests[i] for i in chunk], instance, to_us(now))
            for i, outcome in zip(chunk, done, strict=True):
                out[i] = outcome
        return [o for o in out if o is not None]

    def _claim_batch(
        self, requests: Sequence[ClaimRequest], instance: str, now_us: int
    ) -> list[ClaimOutcome]:
        plans = [_Plan(r, lease_token(self._nonce, to_us(r.tick)), "claim") for r in requests]
        try:
            low, high = self._server_now()
            for p in plans:
                tick_us, keep_us = to_us(p.request.tick), to_us(p.request.keep_until)
                if tick_us > high + AHEAD_LIMIT * 1e6 or low > keep_us + SKEW_LIMIT * 1e6:
                    p.kind = "read"
            self._first(plans, instance)
            second = [p for p in plans if p.second is not None]
            if second:
                low, high = self._server_now()
                self._second(second, instance, high)
        except BackendError as e:
            if isinstance(e, LostAnswer):
                raise
            # It may have been done all the same (a timeout, a dropped connection): the leases
            # it may have taken are named, so that the caller can release them.
            maybe = [
                Lease(p.request.job, instance, p.token, p.request.lease_ttl)
                for p in plans
                if p.request.lease_ttl is not None
            ]
            raise LostAnswer(str(e), maybe) from e
        return [_final(p, instance, now_us, low, high) for p in plans]

    def _lease_op(self, p: _Plan, instance: str) -> list[dict[str, Any]]:
        if p.request.lease_ttl is None:
            return []
        key = self.key(p.request.job, "lease")
        lease = self.pool.lease_id(p.request.lease_ttl)
        mine = f"{instance} {p.token}"
        return [_txn([_absent(key)], [_put(key, mine, lease)], [_get(key)])]

    def _first(self, plans: list[_Plan], instance: str) -> None:
        reply = self._txn(lambda: [self._first_op(p, instance) for p in plans], "claim failed")
        revision = int(reply["header"]["revision"])
        for p, response in zip(plans, reply["responses"], strict=True):
            self._read_first(p, response, instance, revision)

    def _first_op(self, p: _Plan, instance: str) -> dict[str, Any]:
        """Put the claim if its key is absent and the tick is after the mark, raising the mark
        and taking the run lease; else read claim, mark and lease. (A job with no mark yet, on
        its first claim, is claimed in the second transaction: etcd's compare of a value fails
        on an absent key, and a branch for it here would double every claim's size.)"""
        claim = self.key(p.request.job, "claim", str(to_us(p.request.tick)))
        if p.kind == "read":
            return _get(claim)
        mark = self.key(p.request.job, "mark")
        tick = _tick_text(to_us(p.request.tick))
        return _txn(
            [_absent(claim), _after(mark, tick)],
            self._won_ops(p, instance, with_mark=True),
            [_get(claim), _get(mark), _get(self.key(p.request.job, "lease"))],
        )

    def _won_ops(self, p: _Plan, instance: str, with_mark: bool) -> list[dict[str, Any]]:
        """What a won claim writes: the claim, the mark (unless the tick is behind it), and the
        run lease when asked for."""
        job, tick_us = p.request.job, to_us(p.request.tick)
        value = json.dumps({"instance": instance, "keep_until_us": to_us(p.request.keep_until)})
        ops = [_put(self.key(job, "claim", str(tick_us)), value)]
        if with_mark:
            ops.append(_put(self.key(job, "mark"), _tick_text(tick_us)))
        return ops + self._lease_op(p, instance)

    def _txn(self, build: Callable[[], list[dict[str, Any]]], what: str) -> dict[str, Any]:
        """One transaction of the operations ``build`` makes, under the session's compare; made
        and sent again once when a lease of this process expired meanwhile (a stall longer than
        its TTL: granted again) or the session key changed (expired, or removed)."""
        for attempt in (1, 2):
            session = self._session()
            ops = build()
            try:
                reply = self.call("/v3/kv/txn", {"compare": [session], "success": ops}, what)
            except EtcdError as e:
                if not e.lease_not_found or attempt == 2:
                    raise
                self.pool.leases.clear()
                self._session_rev = None
                continue
            if reply.get("succeeded"):
                break
            self._session_rev = None
        else:
            raise BackendError(f"{self.url}: {what}: the session key keeps changing")
        if len(reply.get("responses") or []) != len(ops):
            raise BackendError(f"{self.url}: {what}: unexpected answer {str(reply)[:200]}")
        return reply

    def _read_first(self, p: _Plan, response: dict[str, Any], instance: str, revision: int) -> None:
        if p.kind == "read":
            p.held = _kv(response) or {}
            return
        txn = response["response_txn"]
        if txn.get("succeeded"):
            p.outcome = self._won(p, revision, txn["responses"][2:], instance)
            return
        claim, mark, lease = (_kv(r) for r in txn["responses"])
        p.held = claim or {}
        p.mark_us = int(unb64(mark["value"])) if mark else None
        if claim is None:
            # the job's first claim, or a tick behind the mark (judged by the server's clock)
            p.second = "first" if mark is None else "claim"
        elif p.request.lease_ttl is not None and _holder(claim) == instance:
            if lease is None:
                p.second = "lease"  # a repeated claim whose lease is free
            else:
                p.held["lease"] = lease

    def _won(
        self, p: _Plan, revision: int, lease_responses: list[Any], instance: str
    ) -> ClaimOutcome:
        claim = ClaimResult(True, instance, revision)
        if p.request.lease_ttl is None:
            return ClaimOutcome(claim)
        txn = lease_responses[0]["response_txn"]
        if txn.get("succeeded"):
            return ClaimOutcome(claim, Lease(p.request.job, instance, p.token, p.request.lease_ttl))
        return _lease_outcome(p, claim, _kv(txn["responses"][0]), instance)

    def _second(self, plans: list[_Plan], instance: str, high: int) -> None:
        """Ticks behind the mark whose claim would still be kept, and the run leases of
        repeated claims: one more transaction."""
        for p in plans:
            if p.second == "claim" and high >= to_us(p.request.keep_until) - KEPT_MARGIN * 1e6:
                p.second = None  # refused in _final: its claim would be gone by now
        sent = [p for p in plans if p.second is not None]
        if not sent:
            return
        reply = self._txn(lambda: [self._second_op(p, instance) for p in sent], "claim failed")
        revision = int(reply["header"]["revision"])
        for p, response in zip(sent, reply["responses"], strict=True):
            txn = response["response_txn"]
            if p.second == "lease":
                claim = ClaimResult(True, instance, int(p.held["create_revision"]))
                outcome = self._won(p, revision, [response], instance)
                p.outcome = ClaimOutcome(claim, outcome.lease, outcome.lease_holder)
                continue
            skip = 1  # the claim's put, then the lease
            if p.second == "first":
                skip = 2  # the claim's and the mark's puts
                if not txn.get("succeeded"):  # another first claim made the mark meanwhile
                    txn = txn["responses"][0]["response_txn"]
            if txn.get("succeeded"):
                p.outcome = self._won(p, revision, txn["responses"][skip:], instance)
            else:
                p.held = _kv(txn["responses"][0]) or {}

    def _second_op(self, p: _Plan, instance: str) -> dict[str, Any]:
        if p.second == "lease":
            return self._lease_op(p, instance)[0]
        claim = self.key(p.request.job, "claim", str(to_us(p.request.tick)))
        if p.second == "claim":
            return _txn([_absent(claim)], self._won_ops(p, instance, False), [_get(claim)])
        mark, tick = self.key(p.request.job, "mark"), _tick_text(to_us(p.request.tick))
        won = self._won_ops(p, instance, True)
        after = _txn([_absent(claim), _after(mark, tick)], won, [_get(claim)])
        return _txn([_absent(claim), _absent(mark)], won, [after])

    def cleanup_many(self, jobs: Sequence[str], now: datetime) -> int:
        """Remove the claims of ``jobs`` whose keep_until the server's clock is surely past, or
        within _EARLY_US of (read in one transaction, removed in another, each only if it was
        not made again meanwhile)."""
        if not jobs:
            return 0
        ranges = []
        for job in jobs:
            ranges.append(_prefix(self.key(job, "claim") + "/"))
        reply = self._txn(lambda: ranges, "cleanup failed")
        low, _ = self._server_now()
        doomed = []
        for response in reply["responses"]:
            for kv in response["response_range"].get("kvs") or []:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    if json.loads(unb64(kv["value"]))["keep_until_us"] < low + _EARLY_US:
                        doomed.append(kv)
        for first in range(0, len(doomed), TXN_CLAIMS):
            ops = [
                _txn(
                    [
                        {
                            "key": kv["key"],
                            "target": "MOD",
                            "result": "EQUAL",
                            "mod_revision": kv["mod_revision"],
                        }
                    ],
                    [{"request_delete_range": {"key": kv["key"]}}],
                    [],
                )
                for kv in doomed[first : first + TXN_CLAIMS]
            ]
            self._txn(functools.partial(list, ops), "cleanup failed")
        return len(doomed)

    # ---------------------------------------------------------------- run lease

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        key, token = self.key(job, "lease"), uuid.uuid4().hex
        mine = f"{instance} {token}"
        reply = self._txn(
            lambda: [_txn([_absent(key)], [_put(key, mine, self.pool.lease_id(ttl))], [])],
            "lease failed",
        )
        taken = reply["responses"][0]["response_txn"].get("succeeded")
        return Lease(job, instance, token, ttl) if taken else None

    def lease_holder(self, job: str) -> str | None:
        reply = self.call(
            "/v3/kv/range", {"key": b64(self.key(job, "lease"))}, "lease lookup failed"
        )
        kvs = reply.get("kvs") or []
        return unb64(kvs[0]["value"]).rpartition(" ")[0] if kvs else None

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        """Keep alive the etcd leases they hang on, then re-assert each: a key still bearing
        its holder's value is renewed; one gone (its etcd lease expired during a stall, and no
        one took it meanwhile) is made again, on a fresh etcd lease."""
        if not leases:
            return []
        for ttl in sorted({max(1, math.ceil(x.ttl)) for x in leases}):
            lease = self.pool.leases.get(ttl)
            if lease is not None:
                self.pool.keep_alive(ttl, lease)
        responses = []
        for first in range(0, len(leases), TXN_CLAIMS):
            chunk = leases[first : first + TXN_CLAIMS]
            build = functools.partial(self._reassert_all, chunk)
            responses += self._txn(build, "lease renewal failed")["responses"]
        out = []
        for response in responses:
            txn = response["response_txn"]
            out.append(
                bool(txn.get("succeeded"))
                or bool(txn["responses"][0]["response_txn"].get("succeeded"))
            )
        return out

    def _reassert_all(self, leases: Sequence[Lease]) -> list[dict[str, Any]]:
        return [self._reassert(x) for x in leases]

    def _reassert(self, x: Lease) -> dict[str, Any]:
        key, mine = self.key(x.job, "lease"), f"{x.instance} {x.token}"
        still = {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(mine)}
        again = _txn([_absent(key)], [_put(key, mine, self.pool.lease_id(x.ttl))], [])
        return _txn([still], [], [again])

    def release_many(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        ops = []
        for x in leases:
            key = b64(self.key(x.job, "lease"))
            mine = b64(f"{x.instance} {x.token}")
            ops.append(
                _txn(
                    [{"key": key, "target": "VALUE", "result": "EQUAL", "value": mine}],
                    [{"request_delete_range": {"key": key}}],
                    [],
                )
            )
        for first in range(0, len(ops), TXN_CLAIMS):
            self._txn(
                functools.partial(list, ops[first : first + TXN_CLAIMS]), "lease release failed"
            )

    def close(self) -> None:
        # The run leases and the session go with the process: revoked at once rather than left
        # to expire.
        for lease in self.pool.leases.values():
            with contextlib.suppress(BackendError):
                self.call("/v3/lease/revoke", {"ID": str(lease)}, "lease revoke failed")
        self.pool.leases.clear()
        self.http.close()


def _lease_outcome(
    p: _Plan, claim: ClaimResult, lease: dict[str, Any] | None, instance: str
) -> ClaimOutcome:
    assert p.request.lease_ttl is not None
    value = unb64(lease["value"]) if lease else ""
    if value == f"{instance} {p.token}":
        return ClaimOutcome(claim, Lease(p.request.job, instance, p.token, p.request.lease_ttl))
    return ClaimOutcome(claim, None, value.rpartition(" ")[0] or "unknown")


def _final(p: _Plan, instance: str, now_us: int, low: int, high: int) -> ClaimOutcome:
    if p.outcome is not None:
        return p.outcome
    r = p.request
    if p.held:
        holder = _holder(p.held)
        claim = ClaimResult(holder == instance, holder, int(p.held["create_revision"]))
        if r.lease_ttl is None or not claim.won:
            return ClaimOutcome(claim)
        return _lease_outcome(p, claim, p.held.get("lease"), instance)
    tick_us, keep_us = to_us(r.tick), to_us(r.keep_until)
    mid = (low + high) // 2
    if tick_us > high + AHEAD_LIMIT * 1e6:
        ahead = max(0.0, (now_us - mid) / 1e6)
        why = refused_clock_ahead(tick_us, mid, ahead, AHEAD_LIMIT)
        return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why, ahead=ahead))
    if p.kind == "read":
        why = refused_too_old(tick_us, keep_us, low, SKEW_LIMIT)
        return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why))
    mark_us = p.mark_us if p.mark_us is not None else tick_us
    why = refused_behind_mark(tick_us, mark_us, keep_us, high, SKEW_LIMIT)
    return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why))


def _holder(kv: dict[str, Any]) -> str:
    try:
        return str(json.loads(unb64(kv["value"]))["instance"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


__all__ = ["TXN_CLAIMS", "EtcdBackend"]

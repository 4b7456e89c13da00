"""`redis://` and `rediss://` — coordination through a Redis server (redis-py, `pyjob[redis]`).

Keys, per job:

    pyjob:<job>:claim:<tick µs>   "<instance> <fence>", set NX with a PX TTL that outlives the tick
    pyjob:<job>:fence             INCR'ed for every claim won
    pyjob:<job>:mark              the latest tick claimed (µs); never expires
    pyjob:<job>:lease             "<instance> <token>", PX TTL, renewed by compare-and-extend

A batch of claims (every job due at one instant, each optionally with its run lease) is one Lua
script, so each fence is taken only by the claim that wins and in the order claims are won, and
the whole batch is one round trip. The script judges time by the server's clock (TIME) alone
(DESIGN §8): a tick more than AHEAD_LIMIT ahead of it is refused to its claimer ("clock-ahead")
and changes nothing; a claim key lives until the tick's keep_until by that clock; a tick at or
before the mark whose claim key is gone is refused only once that clock says its claim would be
gone anyway (it may have been claimed: never won twice), or when it is older than keep_until plus
the skew limit. Each request carries a deadline by the server's clock (BackendClock): a script
that reaches the server after its client gave up (a stall, a partition) does nothing, so it takes
no run lease that nobody holds; a claim whose answer is lost names the leases it may have taken
(their tokens come from the tick), for the caller to release. The URL's password, TLS (rediss://)
and database are honoured; messages show the URL without its password.

One backend object is one connection. Every call is bounded on the client side: a server that
stops answering gives BackendError after ``timeout`` seconds (socket timeout, no retry on a
timeout); the next call reconnects.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clock import SystemClock
from ..errors import BackendError, InputError
from ..instants import to_us
from .common import (
    BackendClock,
    redact,
    refused_behind_mark,
    refused_clock_ahead,
    refused_too_old,
    safe_name,
)
from .protocol import (
    AHEAD_LIMIT,
    BATCH_LIMIT,
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
    from .redisstore import RedisRecords

# KEYS: 4 per request (claim, fence, mark, lease). ARGV: instance, skew limit, ahead limit, kept
# margin, the claimer's clock, the request's deadline by the server's clock (0: none; all µs), then
# 4 per request (tick µs, keep_until µs, lease TTL ms or 0, lease token). Numbers stay exact: µs
# since 1970 are below 2^53; ticks are compared as numbers but stored as given. The answer is
# {server clock µs, outcomes}, or {server clock µs, 0} when the deadline had passed: then nothing
# was done (the client gave up on this request; see BackendClock).
_CLAIM_MANY = """
-- Redis 3.2-4 replicate scripts verbatim unless told otherwise, and refuse writes after TIME
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local instance, skew = ARGV[1], tonumber(ARGV[2])
local ahead, margin, deadline = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
if deadline > 0 and now > deadline then return {now, 0} end
-- the run lease: ours already (a repeated claim after a lost reply), or SET NX, or who has it
local function lease(key, token, ttl, status, value)
  local mine = instance .. ' ' .. token
  if redis.call('GET', key) == mine or redis.call('SET', key, mine, 'NX', 'PX', ttl) then
    return {status, value, 1}
  end
  return {status, value, 0, redis.call('GET', key) or 'unknown'}
end
local out = {}
for i = 0, #KEYS / 4 - 1 do
  local claim, fence_key, mark_key, lease_key = KEYS[4*i+1], KEYS[4*i+2], KEYS[4*i+3], KEYS[4*i+4]
  local a = 7 + 4 * i
  local tick, keep_until, lease_ttl = tonumber(ARGV[a]), tonumber(ARGV[a+1]), tonumber(ARGV[a+2])
  local held = redis.call('GET', claim)
  local mark = redis.call('GET', mark_key)
  if held then
    if lease_ttl > 0 and string.match(held, '^(.*) %d+$') == instance then
      out[#out+1] = lease(lease_key, ARGV[a+3], lease_ttl, 0, held)
    else
      out[#out+1] = {0, held}
    end
  elseif tick > now + ahead then
    out[#out+1] = {4, now}
  elseif now > keep_until + skew then
    out[#out+1] = {2, now}
  elseif mark and tonumber(mark) >= tick and now >= keep_until - margin then
    out[#out+1] = {3, mark, now}
  else
    local fence = redis.call('INCR', fence_key)
    local value = instance .. ' ' .. fence
    -- kept until keep_until by this server's clock: a claim gone before then was never made
    local ttl = math.max(1000, math.ceil((keep_until - now) / 1000))
    redis.call('SET', claim, value, 'PX', string.format('%d', ttl))
    if not mark or tonumber(mark) < tick then redis.call('SET', mark_key, ARGV[a]) end
    if lease_ttl > 0 then
      out[#out+1] = lease(lease_key, ARGV[a+3], lease_ttl, 1, value)
    else
      out[#out+1] = {1, value}
    end
  end
end
return {now, out}
"""
# SET NX, or: we hold it already (redis-py repeated the call after a lost reply).
_ACQUIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# ARGV: the deadline by the server's clock (µs, 0: none), then 2 per lease (value, TTL ms). A
# lease that expired with no one taking it meanwhile (the server's clock stepped) is the holder's
# again: renewal re-asserts it. A renewal that comes after its deadline does nothing.
_RENEW_MANY = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deadline = tonumber(ARGV[1])
if deadline > 0 and now > deadline then return {now, 0} end
local out = {}
for i = 1, #KEYS do
  local value, ttl = ARGV[2*i], ARGV[2*i+1]
  if redis.call('GET', KEYS[i]) == value then
    out[i] = redis.call('PEXPIRE', KEYS[i], ttl)
  elseif redis.call('SET', KEYS[i], value, 'NX', 'PX', ttl) then
    out[i] = 1
  else
    out[i] = 0
  end
end
return {now, out}
"""
_RELEASE_MANY = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then redis.call('DEL', KEYS[i]) end
end
return 0
"""


class RedisBackend:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as e:
            raise BackendError(
                f"{redact(url)}: the Redis backend needs redis-py: pip install 'pyjob[redis]'"
            ) from e
        self.url = redact(url)
        self.timeout = timeout
        self._errors = (redis.RedisError, OSError)
        try:
            # One connection, made on first use; a second caller waits for it (bounded).
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=1,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # A connection found broken is made again once, at once (every call is
                # idempotent for its caller); a timeout is never retried: that is the bound.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                decode_responses=True,
            )
            self._r: Any = redis.Redis(connection_pool=pool)
        except (ValueError, TypeError, redis.RedisError) as e:
            raise InputError(f"bad Redis URL '{self.url}': {e}") from e
        self._nonce = uuid.uuid4().hex
        # Real elapsed time, whatever clock the scheduler is given: deadlines are about the network
        self._mono = SystemClock().monotonic
        self._server = BackendClock(timeout)
        self._claim = self._r.register_script(_CLAIM_MANY)
        self._acquire = self._r.register_script(_ACQUIRE)
        self._renew = self._r.register_script(_RENEW_MANY)
        self._release = self._r.register_script(_RELEASE_MANY)

    def _fail(self, what: str, e: BaseException) -> BackendError:
        if isinstance(e, TimeoutError) or type(e).__name__ == "TimeoutError":
            return BackendError(f"{self.url}: {what}: no answer within {self.timeout:g}s")
        return BackendError(f"{self.url}: {what}: {e}")

    def check(self) -> None:
        try:
            self._r.ping()
        except self._errors as e:
            raise self._fail("cannot reach Redis", e) from e
        with contextlib.suppress(BackendError):
            self.server_time()  # the first reading of its clock: requests get deadlines

    def _key(self, job: str, *parts: str) -> str:
        return ":".join(["pyjob", safe_name(job), *parts])

    # ---------------------------------------------------------------- claims

    def claim_many(
        self, requests: Sequence[ClaimRequest], instance: str, now: datetime
    ) -> list[ClaimOutcome]:
        """One round trip per BATCH_LIMIT claims (one for every usual batch)."""
        out: list[ClaimOutcome] = []
        for start in range(0, len(requests), BATCH_LIMIT):
            out += self._claim_batch(requests[start : start + BATCH_LIMIT], instance, now)
        return out

    def _claim_batch(
        self, requests: Sequence[ClaimRequest], instance: str, now: datetime
    ) -> list[ClaimOutcome]:
        keys: list[str] = []
        args: list[str | int] = []
        tokens = []
        for r in requests:
            keys += [
                self._key(r.job, "claim", str(to_us(r.tick))),
                self._key(r.job, "fence"),
                self._key(r.job, "mark"),
                self._key(r.job, "lease"),
            ]
            lease_ms = 0 if r.lease_ttl is None else max(1, int(r.lease_ttl * 1000))
            token = lease_token(self._nonce, to_us(r.tick))
            tokens.append(token)
            args += [to_us(r.tick), to_us(r.keep_until), lease_ms, token]
        head: list[str | int] = [
            instance,
            int(SKEW_LIMIT * 1e6),
            int(AHEAD_LIMIT * 1e6),
            int(KEPT_MARGIN * 1e6),
            to_us(now),
        ]
        for attempt in (1, 2):
            sent = self._mono()
            try:
                reply = self._claim(keys=keys, args=[*head, self._server.deadline_us(sent), *args])
            except self._errors as e:
                # It may have been done all the same (a timeout, a dropped connection): the
                # leases it may have taken are named, so that the caller can release them.
                maybe = [
                    Lease(r.job, instance, token, r.lease_ttl)
                    for r, token in zip(requests, tokens, strict=True)
                    if r.lease_ttl is not None
                ]
                failed = self._fail("claim failed", e)
                raise LostAnswer(str(failed), maybe) from e
            try:
                self._server.learn(int(reply[0]), sent, self._mono())
                replies = reply[1]
                if replies == 0:
                    if attempt == 1:
                        continue  # past its deadline by a clock that stepped: again, on time
                    raise BackendError(f"{self.url}: claim failed: the server's clock jumps")
                return [
                    self._outcome(r, reply, instance, token, to_us(now))
                    for r, reply, token in zip(requests, replies, tokens, strict=True)
                ]
            except (ValueError, TypeError, IndexError) as e:
                raise BackendError(f"{self.url}: claim failed: unexpected reply {reply!r}") from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _outcome(
        self, r: ClaimRequest, reply: list[Any], instance: str, token: str, now_us: int
    ) -> ClaimOutcome:
        status = int(reply[0])
        if status in (2, 3, 4):
            tick_us, keep_us = to_us(r.tick), to_us(r.keep_until)
            if status == 2:
                why = refused_too_old(tick_us, keep_us, int(reply[1]), SKEW_LIMIT)
                return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why))
            if status == 3:
                mark_us, server_us = int(reply[1]), int(reply[2])
                why = refused_behind_mark(tick_us, mark_us, keep_us, server_us, SKEW_LIMIT)
                return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why))
            server_us = int(reply[1])
            ahead = max(0.0, (now_us - server_us) / 1e6)
            why = refused_clock_ahead(tick_us, server_us, ahead, AHEAD_LIMIT)
            return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why, ahead=ahead))
        holder, _, fence = str(reply[1]).rpartition(" ")
        claim = ClaimResult(status == 1 or holder == instance, holder, int(fence))
        if r.lease_ttl is None or not claim.won:
            return ClaimOutcome(claim)
        if int(reply[2]) == 1:
            return ClaimOutcome(claim, Lease(r.job, instance, token, r.lease_ttl))
        return ClaimOutcome(claim, None, str(reply[3]).rpartition(" ")[0] or "unknown")

    def cleanup_many(self, jobs: Sequence[str], now: datetime) -> int:
        return 0

    # ---------------------------------------------------------------- run lease

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        token = uuid.uuid4().hex
        try:
            ok = self._acquire(
                keys=[self._key(job, "lease")],
                args=[f"{instance} {token}", max(1, int(ttl * 1000))],
            )
        except self._errors as e:
            raise self._fail("lease failed", e) from e
        return Lease(job, instance, token, ttl) if ok else None

    def lease_holder(self, job: str) -> str | None:
        try:
            value = self._r.get(self._key(job, "lease"))
        except self._errors as e:
            raise self._fail("lease lookup failed", e) from e
        return None if value is None else str(value).rpartition(" ")[0]

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []
        args: list[str | int] = []
        for lease in leases:
            args += [f"{lease.instance} {lease.token}", max(1, int(lease.ttl * 1000))]
        keys = [self._key(x.job, "lease") for x in leases]
        for attempt in (1, 2):
            sent = self._mono()
            try:
                reply = self._renew(keys=keys, args=[self._server.deadline_us(sent), *args])
            except self._errors as e:
                raise self._fail("lease renewal failed", e) from e
            self._server.learn(int(reply[0]), sent, self._mono())
            if reply[1] != 0 or attempt == 2:
                break  # else: past its deadline by a clock that stepped: again, on time
        if not isinstance(reply[1], list):
            raise BackendError(f"{self.url}: lease renewal failed: the server's clock jumps")
        return [bool(x) for x in reply[1]]

    def release_many(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        try:
            self._release(
                keys=[self._key(x.job, "lease") for x in leases],
                args=[f"{x.instance} {x.token}" for x in leases],
            )
        except self._errors as e:
            raise self._fail("lease release failed", e) from e

    def server_time(self) -> tuple[float, float]:
        sent = self._mono()
        try:
            seconds, micros = self._r.time()
        except self._errors as e:
            raise self._fail("TIME failed", e) from e
        self._server.learn(int(seconds) * 1_000_000 + int(micros), sent, self._mono())
        return int(seconds) + int(micros) / 1e6, 1e-6

    def records(self) -> RedisRecords:
        from .redisstore import RedisRecords

        return RedisRecords(self._r, self.url, self._errors)

    def close(self) -> None:
        with contextlib.suppress(*self._errors):
            self._r.close()

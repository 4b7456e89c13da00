"""`redis://` and `rediss://` — coordination through a Redis server (redis-py, `pyjob[redis]`).

Keys, per job:

    pyjob:<job>:claim:<tick µs>   "<instance> <fence>", set NX with a PX TTL that outlives the tick
    pyjob:<job>:fence             INCR'ed for every claim won
    pyjob:<job>:lease             "<instance> <token>", PX TTL, renewed by compare-and-extend

Claim and fence are one Lua script, so the fence is taken only by the claim that wins and in the
order claims are won. Expiry is judged by the Redis server's clock alone (PX TTLs are relative),
never by comparing hosts' wall clocks. The URL's password, TLS (rediss://) and database are
honoured; messages show the URL without its password.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime
from typing import Any

from ..errors import BackendError
from .common import redact, safe_name
from .protocol import Batched, ClaimResult, Lease

_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local fence = redis.call('INCR', KEYS[2])
local value = ARGV[1] .. ' ' .. fence
redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2])
return {1, value}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisBackend(Batched):
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        try:
            import redis
        except ImportError as e:
            raise BackendError(
                f"{redact(url)}: the Redis backend needs redis-py: pip install 'pyjob[redis]'"
            ) from e
        self.url = redact(url)
        self._errors = (redis.RedisError, OSError)
        try:
            self._r: Any = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=30,
                decode_responses=True,
            )
        except (ValueError, redis.RedisError) as e:
            raise BackendError(f"{self.url}: bad Redis URL: {e}") from e
        self._claim = self._r.register_script(_CLAIM)
        self._renew = self._r.register_script(_RENEW)
        self._release = self._r.register_script(_RELEASE)

    def _fail(self, what: str, e: BaseException) -> BackendError:
        return BackendError(f"{self.url}: {what}: {e}")

    def check(self) -> None:
        try:
            self._r.ping()
        except self._errors as e:
            raise self._fail("cannot reach Redis", e) from e

    def _key(self, job: str, *parts: str) -> str:
        return ":".join(["pyjob", safe_name(job), *parts])

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        from .common import to_us

        ttl_ms = max(1000, int((keep_until - now).total_seconds() * 1000))
        try:
            won, value = self._claim(
                keys=[self._key(job, "claim", str(to_us(tick))), self._key(job, "fence")],
                args=[instance, ttl_ms],
            )
        except self._errors as e:
            raise self._fail("claim failed", e) from e
        holder, _, fence = str(value).rpartition(" ")
        return ClaimResult(bool(won) or holder == instance, holder, int(fence))

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        token = uuid.uuid4().hex
        try:
            ok = self._r.set(
                self._key(job, "lease"), f"{instance} {token}", nx=True, px=max(1, int(ttl * 1000))
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

    def renew_lease(self, lease: Lease) -> bool:
        try:
            return bool(
                self._renew(
                    keys=[self._key(lease.job, "lease")],
                    args=[f"{lease.instance} {lease.token}", max(1, int(lease.ttl * 1000))],
                )
            )
        except self._errors as e:
            raise self._fail("lease renewal failed", e) from e

    def release_lease(self, lease: Lease) -> None:
        try:
            self._release(
                keys=[self._key(lease.job, "lease")], args=[f"{lease.instance} {lease.token}"]
            )
        except self._errors as e:
            raise self._fail("lease release failed", e) from e

    def cleanup(self, job: str, now: datetime) -> int:
        return 0  # claims carry their own TTL in Redis

    def server_time(self) -> tuple[float, float]:
        try:
            seconds, micros = self._r.time()
        except self._errors as e:
            raise self._fail("TIME failed", e) from e
        return int(seconds) + int(micros) / 1e6, 1e-6

    def close(self) -> None:
        with contextlib.suppress(*self._errors):
            self._r.close()

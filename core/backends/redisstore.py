"""The run records and registry of `redis://`: keys beside the claims."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import BackendError
from ..records import (
    RECORD_BATCH,
    InstanceInfo,
    JobInfo,
    RunRecord,
    newest_finished,
    parse_records,
)
from .common import safe_name

_PUT = """
for i = 1, #ARGV, 4 do
  local job, tick, doc, keep = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local z = 'pyjob:' .. job .. ':runs'
  local h = 'pyjob:' .. job .. ':records'
  redis.call('HSET', h, tick, doc)
  redis.call('ZADD', z, tonumber(tick), tick)
  local n = redis.call('ZCARD', z)
  if n > keep then
    local old = redis.call('ZRANGE', z, 0, n - keep - 1)
    redis.call('ZREM', z, unpack(old))
    redis.call('HDEL', h, unpack(old))
  end
end
return 1
"""

# ARGV[1]: the instance; ARGV[2]: a JSON list of [job, its safe name, its registration]; the
# 0-based indexes of those whose registration, membership of pyjob:jobs or instance entry is
# gone or differs. One argument however many jobs: redis-py packs each argument in Python.
# pcall: a key of another type (someone's SET over a set) is damage of that job, not an error
# of the whole check.
_MISSING = """
local me, jobs, out = ARGV[1], cjson.decode(ARGV[2]), {}
for i, j in ipairs(jobs) do
  local p = 'pyjob:' .. j[2]
  if redis.pcall('GET', p .. ':info') ~= j[3]
      or redis.pcall('SISMEMBER', p .. ':instances', me) ~= 1
      or redis.pcall('SISMEMBER', 'pyjob:jobs', j[1]) ~= 1 then
    out[#out + 1] = i - 1
  end
end
return out
"""

# The same argument; a key of another type where a set belongs (damage) is replaced; any other
# error (out of memory) ends the script as it is, deleting nothing.
_REGISTER = """
local me, jobs = ARGV[1], cjson.decode(ARGV[2])
local function sadd(key, member)
  local r = redis.pcall('SADD', key, member)
  if type(r) == 'table' and r.err then
    if string.sub(r.err, 1, 9) ~= 'WRONGTYPE' then
      error(r)
    end
    redis.call('DEL', key)
    redis.call('SADD', key, member)
  end
end
for _, j in ipairs(jobs) do
  local p = 'pyjob:' .. j[2]
  sadd('pyjob:jobs', j[1])
  redis.call('SET', p .. ':info', j[3])
  sadd(p .. ':instances', me)
end
return #jobs
"""


def _triples(jobs: Sequence[JobInfo]) -> str:
    """The argument of _MISSING and _REGISTER: [job, its safe name, its registration] each."""
    return json.dumps([[j.job, safe_name(j.job), j.to_json()] for j in jobs])


_SLICE = 10_000  # jobs per script call when registering or checking registrations
_READ_SLICE = 1_000  # jobs per pipeline when reading many jobs' records


class RedisRecords:
    """Redis: per job a hash of records and a sorted set of their ticks (trimmed as written),
    the registration ``pyjob:<job>:info`` and ``pyjob:<job>:instances``; the set ``pyjob:jobs``;
    heartbeats ``pyjob:instance:<id>``, which expire by themselves."""

    batch = RECORD_BATCH

    def __init__(self, client: Any, url: str, errors: tuple[type[BaseException], ...]) -> None:
        self._r = client
        self.url = url
        self._errors = errors
        self._put = client.register_script(_PUT)
        self._missing = client.register_script(_MISSING)
        self._register = client.register_script(_REGISTER)

    def _k(self, job: str, part: str) -> str:
        return f"pyjob:{safe_name(job)}:{part}"

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except self._errors as e:
            raise BackendError(f"{self.url}: {what}: {e}") from e

    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        args: list[Any] = []
        for r in records:
            args += [safe_name(r.job), r.tick_us, r.to_json(), keep]
        self._call("run record not written", lambda: self._put(keys=[], args=args))

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        def go() -> None:
            # A slice of jobs in one script call, with one argument: redis-py packs every
            # argument and every command in Python, which for a SADD a job cost more than the
            # rest of the start of a 10,000-line crontab's registration.
            pipe = self._r.pipeline(transaction=False)
            for i in range(0, len(jobs), _SLICE):
                self._register(
                    keys=[], args=[instance.instance, _triples(jobs[i : i + _SLICE])], client=pipe
                )
            pipe.set(f"pyjob:instance:{instance.instance}", instance.to_json(), ex=86400)
            pipe.execute()

        self._call("jobs not registered", go)

    def heartbeat(self, instance: InstanceInfo) -> bool:
        key = f"pyjob:instance:{instance.instance}"

        def go() -> bool:
            pipe = self._r.pipeline(transaction=False)  # one round trip
            pipe.exists(key)
            pipe.set(key, instance.to_json(), ex=86400)
            return bool(pipe.execute()[0])

        found: bool = self._call("heartbeat not written", go)
        return found

    def missing(self, jobs: Sequence[JobInfo], instance: str) -> list[JobInfo]:
        out: list[JobInfo] = []
        for i in range(0, len(jobs), _SLICE):
            part = jobs[i : i + _SLICE]
            args = [instance, _triples(part)]
            found = self._call(
                "registrations not read", lambda a=args: self._missing(keys=[], args=a)
            )
            out += [part[int(n)] for n in found]
        return out

    def jobs(self) -> list[JobInfo]:
        def go() -> list[JobInfo]:
            names = sorted(self._r.smembers("pyjob:jobs"))
            pipe = self._r.pipeline(transaction=False)
            for n in names:
                pipe.get(self._k(n, "info"))
                pipe.smembers(self._k(n, "instances"))
            replies = pipe.execute()
            out = []
            for i in range(len(names)):
                doc, members = replies[2 * i], replies[2 * i + 1]
                if doc:
                    info = JobInfo.from_json(doc)
                    info.instances = sorted(members)
                    out.append(info)
            return out

        result: list[JobInfo] = self._call("jobs not read", go)
        return result

    def instances(self) -> dict[str, InstanceInfo]:
        def go() -> dict[str, InstanceInfo]:
            keys = list(self._r.scan_iter(match="pyjob:instance:*", count=1000))
            values = self._r.mget(keys) if keys else []
            out = {}
            for v in values:
                if v:
                    info = InstanceInfo.from_json(v)
                    out[info.instance] = info
            return out

        result: dict[str, InstanceInfo] = self._call("instances not read", go)
        return result

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        def go() -> list[RunRecord]:
            z, h = self._k(job, "runs"), self._k(job, "records")
            low = "-inf" if since_us is None else since_us
            ticks = self._r.zrevrangebyscore(z, "+inf", low, start=0, num=limit)
            docs = self._r.hmget(h, ticks) if ticks else []
            return parse_records(docs)

        result: list[RunRecord] = self._call("history not read", go)
        return result

    def newest(self, jobs: Sequence[str], limit: int) -> dict[str, list[RunRecord]]:
        def go() -> dict[str, list[RunRecord]]:
            # Two pipelines a slice: the ticks of every job, then the records of those with any.
            out: dict[str, list[RunRecord]] = {}
            for i in range(0, len(jobs), _READ_SLICE):
                part = jobs[i : i + _READ_SLICE]
                pipe = self._r.pipeline(transaction=False)
                for job in part:
                    pipe.zrevrange(self._k(job, "runs"), 0, limit - 1)
                replies = zip(part, pipe.execute(), strict=True)
                found = [(job, ticks) for job, ticks in replies if ticks]
                if not found:
                    continue
                pipe = self._r.pipeline(transaction=False)
                for job, ticks in found:
                    pipe.hmget(self._k(job, "records"), ticks)
                for (job, _), docs in zip(found, pipe.execute(), strict=True):
                    records = parse_records(docs)
                    if records:
                        out[job] = records
            return out

        result: dict[str, list[RunRecord]] = self._call("history not read", go)
        return result

    def recent(self, job: str) -> list[RunRecord]:
        return newest_finished(self, job)

    def prune(self, jobs: Sequence[str], keep: int, oldest_us: int) -> int:
        def go() -> int:
            removed = 0
            for job in jobs:
                z, h = self._k(job, "runs"), self._k(job, "records")
                old = self._r.zrangebyscore(z, "-inf", f"({oldest_us}")
                n = self._r.zcard(z) - len(old)
                if n > keep:
                    old += self._r.zrange(z, len(old), len(old) + n - keep - 1)
                if old:
                    self._r.zrem(z, *old)
                    self._r.hdel(h, *old)
                    removed += len(old)
            return removed

        result: int = self._call("history not pruned", go)
        return result

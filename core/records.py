"""Run records: the outcome of every run, skipped and missed tick, kept in the lock backend, so
that `pyjob status` and `pyjob history` show the whole fleet from any host (DESIGN §5).

The instance that handles a tick writes its record, from ``running`` to its result; a record is
keyed by (job, tick), so writing it again (the run ended, or two instances both noticed a missed
tick) replaces it. Each instance also registers the jobs it serves and refreshes a heartbeat, so a
reader sees which instances serve a job and which went quiet; a ``running`` record whose instance
went quiet is ``lost``. Retention is bounded: ``keep`` records per job, none older than
``max_age``. Every backend but ``none`` keeps them, through the connection its claims use; a
failed write is a BackendError for the coordinator, which keeps the record and writes it again
until it is written (DESIGN §5), never a delayed or skipped run. A record or registration that
does not parse is damage: readers skip it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import BackendError

RESULTS = (
    "running",
    "retrying",
    "success",
    "failure",
    "timeout",
    "stopped",
    "start-failed",
    "skipped",
    "missed",
    "lost",
)
FINISHED = ("success", "failure", "timeout", "stopped", "start-failed", "lost")
RECENT_MAX = 100  # records `recent` looks through for the newest finished run
HEARTBEAT_EVERY = 10.0  # seconds between an instance's heartbeats
QUIET_AFTER = 35.0  # an instance not seen for this long has gone quiet (its runs are lost)
OUTPUT_TAIL = 4096  # bytes of output kept with a run (--log-output)


@dataclass
class RunRecord:
    job: str
    tick_us: int
    run_id: str
    instance: str
    result: str
    fence: int | None = None
    attempt: int = 1
    started_us: int | None = None
    finished_us: int | None = None
    duration: float | None = None
    lateness: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    held_by: str | None = None
    output_tail: str | None = None
    next_attempt_us: int | None = None  # "retrying": when the next attempt is due
    attempts: list[dict[str, Any]] | None = None  # the earlier attempts of this run

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        """ValueError, TypeError or AttributeError when ``text`` is not a record (damaged)."""
        doc = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        record = cls(**{k: v for k, v in doc.items() if k in known})
        if not (isinstance(record.tick_us, int) and isinstance(record.result, str)):
            raise ValueError(f"not a run record: {str(text)[:60]!r}")
        return record


@dataclass
class JobInfo:
    """What an instance registers for a job it serves."""

    job: str
    schedule: str  # the normalized form, which parses back to the same schedule
    zone: str
    command: str
    instances: list[str] = field(default_factory=list)  # filled in by readers

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "instances"})

    @classmethod
    def from_json(cls, text: str | bytes) -> JobInfo:
        doc = json.loads(text)
        return cls(doc["job"], doc["schedule"], doc["zone"], doc["command"])


@dataclass
class InstanceInfo:
    instance: str
    host: str
    pid: int
    version: str
    seen_us: int = 0  # the writer's clock at its last heartbeat
    quiet_us: int = int(QUIET_AFTER * 1e6)  # gone quiet when not seen for this long
    # The zone database its ticks come from (DESIGN §3); "" from a pyjob that did not say.
    tzdata: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> InstanceInfo:
        doc = json.loads(text)
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


class RecordsNotWritten(BackendError):
    """Some records of a batch were written and these (job, tick µs) were not: a store that
    writes them one by one (file:, nfs:) says which, so that one job's broken directory does not
    hold back the records of the others."""

    def __init__(self, message: str, unwritten: set[tuple[str, int]]) -> None:
        super().__init__(message)
        self.unwritten = unwritten


class RecordStore(Protocol):
    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        """Write (replace) each record (a store that trims as it writes keeps ``keep``)."""
        ...

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        """``instance`` serves ``jobs``; also a heartbeat."""
        ...

    def heartbeat(self, instance: InstanceInfo) -> None: ...

    def jobs(self) -> list[JobInfo]:
        """Every job registered, with the instances that registered it."""
        ...

    def instances(self) -> dict[str, InstanceInfo]: ...

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        """The job's records, newest first."""
        ...

    def recent(self, job: str) -> list[RunRecord]:
        """The job's newest records, newest first, up to and including its newest finished run
        (what `pyjob status` needs: the last run, and what runs now)."""
        ...

    def prune(self, jobs: Sequence[str], keep: int, oldest_us: int) -> int:
        """Keep at most ``keep`` records per job, none with a tick before ``oldest_us``;
        instances quiet since before ``oldest_us`` are forgotten. How many were removed."""
        ...


# ------------------------------------------------------------------------------ file and nfs


def _safe(name: str) -> str:
    from .backends import safe_name

    return safe_name(name)


def _write(path: Path, text: str) -> None:
    from .backends.common import write_atomic

    write_atomic(path, text)


def _create(path: Path, text: str) -> None:
    """A file in a directory this process just made: created in place, without the temporary
    file and rename of _write (readers skip a file they cannot parse yet); replaced as _write
    does when another instance registering the same job wrote it meanwhile."""
    from .backends.common import create_new

    try:
        create_new(path, text)
    except FileExistsError:
        _write(path, text)


def _make_dirs(path: Path) -> bool:
    from .backends.common import make_private_dirs

    return make_private_dirs(path)


# What a damaged record, registration or heartbeat file raises when parsed (garbage, another
# JSON type, missing fields): readers skip it as they skip one being written.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError)


class DirectoryRecords:
    """file: and nfs: keep records beside the claims:

    <dir>/<job>/job.json                 the job's registration
    <dir>/<job>/instances/<instance>     instances serving it (empty files)
    <dir>/<job>/runs/<tick µs>.json      one record per tick
    <dir>/.instances/<instance>.json     each instance's heartbeat

    Every directory is made 0700 with its parents. When someone deletes the directory (or a
    job's) while instances run, what they registered is written again: at the next heartbeat
    (which finds ``.instances`` gone) or the job's next record (which finds ``runs`` gone), so
    that `pyjob status` and `pyjob history` list the jobs again without a restart.
    """

    def __init__(self, directory: Path, url: str, local: bool = False) -> None:
        self.directory = Path(directory)
        self.url = url
        self.local = local  # file: (one host's file system), where records are rewritten in place
        self._written: dict[str, int] = {}  # writes per job since its directory was trimmed
        self._made: set[str] = set()  # jobs whose runs directory is known to exist
        self._registered: dict[str, JobInfo] = {}  # what this process registered, to redo
        self._me: InstanceInfo | None = None
        self._beat = False  # a heartbeat was written (so .instances gone means deleted)

    def _fail(self, what: str, e: OSError) -> BackendError:
        return BackendError(f"{self.url}: {what}: {e.strerror or e}")

    def _runs_dir(self, job: str) -> Path:
        return self.directory / _safe(job) / "runs"

    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        """A tick's first record creates its file in place; readers skip a file they cannot
        parse, as one being written. The ones after it replace the file whole (renamed) or, on
        file:, are written over it in place when they fit in the blocks it already has (so that
        the write cannot fail for space half-way on ext4, xfs or tmpfs). Each record is written
        on its own: RecordsNotWritten names those that failed."""
        unwritten: set[tuple[str, int]] = set()
        first: OSError | None = None
        for r in records:
            try:
                try:
                    self._put(r)
                except FileNotFoundError:  # its directory was deleted since it was made
                    self._made.discard(r.job)
                    self._put(r)
            except OSError as e:
                unwritten.add((r.job, r.tick_us))
                first = first or e
                continue
            self._written[r.job] = self._written.get(r.job, 0) + 1
        for job in {r.job for r in records}:
            # At most ``keep`` per job: trimmed once every ``keep`` writes (a run writes two),
            # so a busy job lists its directory rarely, and holds at most twice ``keep``.
            if self._written.get(job, 0) < keep:
                continue
            self._written[job] = 0
            d = self._runs_dir(job)
            for tick in self._ticks(job)[keep:]:
                with contextlib.suppress(FileNotFoundError):
                    (d / f"{tick}.json").unlink()
        if first is not None:
            error = self._fail("run record not written", first)
            raise RecordsNotWritten(str(error), unwritten) from first

    def _put(self, r: RunRecord) -> None:
        from .backends.common import create_new, overwrite

        d = self._runs_dir(r.job)
        if r.job not in self._made:
            if _make_dirs(d) and r.job in self._registered:  # deleted since it registered
                self._register_one(self._registered[r.job])
            self._made.add(r.job)
        path = d / f"{r.tick_us}.json"
        text = r.to_json()
        # A run's final record goes over its first, in place on file:; every other is new.
        if self.local and r.result != "running" and overwrite(path, text.encode()):
            return
        try:
            create_new(path, text)
        except FileExistsError:
            if not (self.local and overwrite(path, text.encode())):
                _write(path, text)

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        self._me = instance
        try:
            for j in jobs:
                self._registered[j.job] = j
                self._register_one(j)
        except OSError as e:
            raise self._fail("jobs not registered", e) from e
        self.heartbeat(instance)

    def _register_one(self, j: JobInfo) -> None:
        assert self._me is not None
        d = self.directory / _safe(j.job)
        new = _make_dirs(d)  # the job's directory first: one mkdir for each of its directories
        _make_dirs(d / "instances")
        _make_dirs(d / "runs")  # so that the job's first record does not take it for a deletion
        if new:
            _create(d / "job.json", j.to_json())
        else:
            _write(d / "job.json", j.to_json())
        (d / "instances" / _safe(self._me.instance)).touch()

    def heartbeat(self, instance: InstanceInfo) -> None:
        d = self.directory / ".instances"
        try:
            if _make_dirs(d) and self._beat and self._registered:  # deleted: register again
                self._me = instance
                for j in self._registered.values():
                    self._register_one(j)
            _write(d / f"{_safe(instance.instance)}.json", instance.to_json())
            self._beat = True
        except OSError as e:
            raise self._fail("heartbeat not written", e) from e

    def jobs(self) -> list[JobInfo]:
        out = []
        try:
            paths = sorted(self.directory.glob("*/job.json"))
        except OSError as e:
            raise self._fail("jobs not read", e) from e
        for path in paths:
            try:
                info = JobInfo.from_json(path.read_text())
                info.instances = sorted(p.name for p in (path.parent / "instances").iterdir())
            except _UNREADABLE:
                continue  # half-written, damaged, or removed meanwhile
            out.append(info)
        return out

    def instances(self) -> dict[str, InstanceInfo]:
        out: dict[str, InstanceInfo] = {}
        for path in (self.directory / ".instances").glob("*.json"):
            try:
                info = InstanceInfo.from_json(path.read_text())
            except _UNREADABLE:
                continue
            out[_safe(info.instance)] = info
        return out

    def _ticks(self, job: str) -> list[int]:
        d = self._runs_dir(job)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._fail("history not read", e) from e
        return sorted(
            (int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()),
            reverse=True,
        )

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        out = []
        d = self._runs_dir(job)
        for tick in self._ticks(job):
            if since_us is not None and tick < since_us:
                break
            try:
                out.append(RunRecord.from_json((d / f"{tick}.json").read_text()))
            except _UNREADABLE:
                continue
            if len(out) >= limit:
                break
        return out

    def recent(self, job: str) -> list[RunRecord]:
        out: list[RunRecord] = []
        d = self._runs_dir(job)
        for tick in self._ticks(job)[:RECENT_MAX]:  # read one by one: usually one is enough
            try:
                record = RunRecord.from_json((d / f"{tick}.json").read_text())
            except _UNREADABLE:
                continue
            out.append(record)
            if record.result in FINISHED:
                break
        return out

    def prune(self, jobs: Sequence[str], keep: int, oldest_us: int) -> int:
        removed = 0
        for job in jobs:
            d = self._runs_dir(job)
            for i, tick in enumerate(self._ticks(job)):
                if i >= keep or tick < oldest_us:
                    with contextlib.suppress(FileNotFoundError):
                        (d / f"{tick}.json").unlink()
                        removed += 1
            with contextlib.suppress(OSError):
                for stray in d.glob(".*"):  # a writer killed between write and rename
                    if stray.stat().st_mtime * 1e6 < oldest_us:
                        stray.unlink()
        for path in (self.directory / ".instances").glob("*.json"):
            with contextlib.suppress(*_UNREADABLE):
                if InstanceInfo.from_json(path.read_text()).seen_us < oldest_us:
                    path.unlink()
        return removed


# ------------------------------------------------------------------------------ Redis

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


def _parsed(docs: Iterable[str | bytes | None]) -> list[RunRecord]:
    """The records of ``docs`` that parse; a damaged one is skipped, as on file:."""
    out = []
    for doc in docs:
        if doc:
            with contextlib.suppress(*_UNREADABLE):
                out.append(RunRecord.from_json(doc))
    return out


def _recent(store: RecordStore, job: str) -> list[RunRecord]:
    """``recent`` from ``runs``: 20 at first, more only when none of them is a finished run."""
    for limit in (20, RECENT_MAX):
        records = store.runs(job, limit)
        for i, r in enumerate(records):
            if r.result in FINISHED:
                return records[: i + 1]
        if len(records) < limit:
            return records
    return records


class RedisRecords:
    """Redis: per job a hash of records and a sorted set of their ticks (trimmed as written),
    the registration ``pyjob:<job>:info`` and ``pyjob:<job>:instances``; the set ``pyjob:jobs``;
    heartbeats ``pyjob:instance:<id>``, which expire by themselves."""

    def __init__(self, client: Any, url: str, errors: tuple[type[BaseException], ...]) -> None:
        self._r = client
        self.url = url
        self._errors = errors
        self._put = client.register_script(_PUT)

    def _k(self, job: str, part: str) -> str:
        return f"pyjob:{_safe(job)}:{part}"

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except self._errors as e:
            raise BackendError(f"{self.url}: {what}: {e}") from e

    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        args: list[Any] = []
        for r in records:
            args += [_safe(r.job), r.tick_us, r.to_json(), keep]
        self._call("run record not written", lambda: self._put(keys=[], args=args))

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        def go() -> None:
            pipe = self._r.pipeline(transaction=False)
            for j in jobs:
                pipe.sadd("pyjob:jobs", j.job)
                pipe.set(self._k(j.job, "info"), j.to_json())
                pipe.sadd(self._k(j.job, "instances"), instance.instance)
            pipe.set(f"pyjob:instance:{instance.instance}", instance.to_json(), ex=86400)
            pipe.execute()

        self._call("jobs not registered", go)

    def heartbeat(self, instance: InstanceInfo) -> None:
        key = f"pyjob:instance:{instance.instance}"
        self._call("heartbeat not written", lambda: self._r.set(key, instance.to_json(), ex=86400))

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
            return _parsed(docs)

        result: list[RunRecord] = self._call("history not read", go)
        return result

    def recent(self, job: str) -> list[RunRecord]:
        return _recent(self, job)

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


# ------------------------------------------------------------------------------ PostgreSQL

SCHEMA = """
CREATE TABLE IF NOT EXISTS pyjob_runs (
    job text NOT NULL,
    tick_us bigint NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (job, tick_us)
);
CREATE TABLE IF NOT EXISTS pyjob_jobs (job text PRIMARY KEY, info jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS pyjob_job_instances (
    job text NOT NULL, instance text NOT NULL, PRIMARY KEY (job, instance)
);
CREATE TABLE IF NOT EXISTS pyjob_instances (instance text PRIMARY KEY, info jsonb NOT NULL);
"""
_PRUNE = """
DELETE FROM pyjob_runs r USING (
    SELECT job, tick_us, row_number() OVER (PARTITION BY job ORDER BY tick_us DESC) AS n
    FROM pyjob_runs WHERE job = ANY(%(jobs)s)
) o
WHERE r.job = o.job AND r.tick_us = o.tick_us AND (o.n > %(keep)s OR o.tick_us < %(oldest)s)
"""


class PostgresRecords:
    """PostgreSQL: the tables of SCHEMA, created on first use. A batch of records is one
    statement (INSERT ... ON CONFLICT DO UPDATE over a VALUES list)."""

    def __init__(self, run: Callable[[str, str, Any], list[tuple[Any, ...]]], url: str) -> None:
        self._run = run  # the backend's: one statement on its connection, errors as BackendError
        self.url = url
        self._ready = False

    def _exec(self, what: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if not self._ready:
            self._run("records table not created", "SELECT pg_advisory_lock(7451847)", ())
            try:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._run("records table not created", statement, ())
            finally:
                self._run("records table not created", "SELECT pg_advisory_unlock(7451847)", ())
            self._ready = True
        return self._run(what, sql, params)

    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        if not records:
            return
        values = ", ".join(["(%s, %s, %s::jsonb)"] * len(records))
        params: list[Any] = []
        for r in records:
            params += [r.job, r.tick_us, r.to_json()]
        self._exec(
            "run record not written",
            f"INSERT INTO pyjob_runs (job, tick_us, record) VALUES {values} "
            "ON CONFLICT (job, tick_us) DO UPDATE SET record = EXCLUDED.record",
            params,
        )
        self._exec(
            "history not trimmed",
            _PRUNE,
            {"jobs": sorted({r.job for r in records}), "keep": keep, "oldest": -(2**62)},
        )

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        if jobs:
            values = ", ".join(["(%s, %s::jsonb)"] * len(jobs))
            params: list[Any] = []
            for j in jobs:
                params += [j.job, j.to_json()]
            self._exec(
                "jobs not registered",
                f"INSERT INTO pyjob_jobs (job, info) VALUES {values} "
                "ON CONFLICT (job) DO UPDATE SET info = EXCLUDED.info",
                params,
            )
            pairs = ", ".join(["(%s, %s)"] * len(jobs))
            params = []
            for j in jobs:
                params += [j.job, instance.instance]
            self._exec(
                "jobs not registered",
                f"INSERT INTO pyjob_job_instances (job, instance) VALUES {pairs} "
                "ON CONFLICT DO NOTHING",
                params,
            )
        self.heartbeat(instance)

    def heartbeat(self, instance: InstanceInfo) -> None:
        self._exec(
            "heartbeat not written",
            "INSERT INTO pyjob_instances (instance, info) VALUES (%s, %s::jsonb) "
            "ON CONFLICT (instance) DO UPDATE SET info = EXCLUDED.info",
            (instance.instance, instance.to_json()),
        )

    def jobs(self) -> list[JobInfo]:
        rows = self._exec(
            "jobs not read",
            "SELECT j.info::text, coalesce(array_agg(i.instance ORDER BY i.instance) "
            "FILTER (WHERE i.instance IS NOT NULL), '{}') FROM pyjob_jobs j "
            "LEFT JOIN pyjob_job_instances i ON i.job = j.job GROUP BY j.job, j.info "
            "ORDER BY j.job",
        )
        out = []
        for doc, members in rows:
            info = JobInfo.from_json(doc)
            info.instances = list(members)
            out.append(info)
        return out

    def instances(self) -> dict[str, InstanceInfo]:
        rows = self._exec("instances not read", "SELECT info::text FROM pyjob_instances")
        infos = [InstanceInfo.from_json(r[0]) for r in rows]
        return {i.instance: i for i in infos}

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        rows = self._exec(
            "history not read",
            "SELECT record::text FROM pyjob_runs WHERE job = %s AND tick_us >= %s "
            "ORDER BY tick_us DESC LIMIT %s",
            (job, -(2**62) if since_us is None else since_us, limit),
        )
        return _parsed(r[0] for r in rows)

    def recent(self, job: str) -> list[RunRecord]:
        return _recent(self, job)

    def prune(self, jobs: Sequence[str], keep: int, oldest_us: int) -> int:
        rows = self._exec(
            "history not pruned",
            _PRUNE + " RETURNING 1",
            {"jobs": list(jobs), "keep": keep, "oldest": oldest_us},
        )
        self._exec(
            "instances not pruned",
            "DELETE FROM pyjob_instances WHERE (info->>'seen_us')::bigint < %s",
            (oldest_us,),
        )
        return len(rows)


class RetryingReader:
    """A record store whose reads are each tried once more when they fail: `pyjob status` and
    `pyjob history` read through it, so that one dropped connection is not an error (exit 5),
    as it is not for `pyjob run`, whose clients make a broken connection again once. Writes go
    straight through (the coordinator retries those until they are written)."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store

    @staticmethod
    def _twice(read: Callable[[], Any]) -> Any:
        try:
            return read()
        except BackendError:
            return read()  # a new connection: the backends drop one that failed

    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        self.store.put_runs(records, keep)

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        self.store.register(jobs, instance)

    def heartbeat(self, instance: InstanceInfo) -> None:
        self.store.heartbeat(instance)

    def jobs(self) -> list[JobInfo]:
        out: list[JobInfo] = self._twice(self.store.jobs)
        return out

    def instances(self) -> dict[str, InstanceInfo]:
        out: dict[str, InstanceInfo] = self._twice(self.store.instances)
        return out

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        out: list[RunRecord] = self._twice(lambda: self.store.runs(job, limit, since_us))
        return out

    def recent(self, job: str) -> list[RunRecord]:
        out: list[RunRecord] = self._twice(lambda: self.store.recent(job))
        return out

    def prune(self, jobs: Sequence[str], keep: int, oldest_us: int) -> int:
        return self.store.prune(jobs, keep, oldest_us)


__all__ = [
    "HEARTBEAT_EVERY",
    "OUTPUT_TAIL",
    "QUIET_AFTER",
    "RESULTS",
    "InstanceInfo",
    "JobInfo",
    "RecordStore",
    "RecordsNotWritten",
    "RetryingReader",
    "RunRecord",
]


# ------------------------------------------------------------------------------ reading


def is_quiet(info: InstanceInfo | None, now_us: int) -> bool:
    return info is None or now_us - info.seen_us > info.quiet_us


def effective(record: RunRecord, instances: dict[str, InstanceInfo], now_us: int) -> RunRecord:
    """``record`` as a reader should see it: a ``running`` record whose instance has gone quiet
    (killed, host lost) is ``lost``; it never stays ``running`` for ever."""
    if record.result == "running" and is_quiet(_lookup(instances, record.instance), now_us):
        return RunRecord(**{**asdict(record), "result": "lost"})
    return record


def _lookup(instances: dict[str, InstanceInfo], name: str) -> InstanceInfo | None:
    return instances.get(name) or instances.get(_safe(name))


def run_document(record: RunRecord, zone: Any) -> dict[str, Any]:
    """A record as `pyjob history --format json` and `pyjob status` print it."""
    from datetime import UTC, datetime

    def when(us: int | None) -> str | None:
        if us is None:
            return None
        instant = datetime.fromtimestamp(us / 1e6, UTC).astimezone(zone)
        return instant.isoformat(timespec="microseconds" if us % 1_000_000 else "seconds")

    doc: dict[str, Any] = {
        "job": record.job,
        "tick": when(record.tick_us),
        "run_id": record.run_id,
        "instance": record.instance,
        "fence": record.fence,
        "attempt": record.attempt,
        "started": when(record.started_us),
        "finished": when(record.finished_us),
        "duration": record.duration,
        "lateness": record.lateness,
        "exit_code": record.exit_code,
        "result": record.result,
    }
    if record.next_attempt_us is not None:
        doc["next_attempt"] = when(record.next_attempt_us)
    if record.attempts:
        doc["attempts"] = [
            {**a, "started": when(a.get("started_us")), "finished": when(a.get("finished_us"))}
            for a in record.attempts
        ]
        for a in doc["attempts"]:
            a.pop("started_us", None)
            a.pop("finished_us", None)
    for extra in ("reason", "held_by", "output_tail"):
        value = getattr(record, extra)
        if value is not None:
            doc[extra] = value
    return doc


def zone_database_warning(
    instances: Mapping[str, InstanceInfo], now_us: int, here: str | None = None
) -> str | None:
    """Why the live ``instances`` (and this host, whose tzdata release is ``here``) may compute
    different ticks, or None: DESIGN §3 holds only when every host runs one tzdata release, and
    a zone whose rules changed between two releases moves its ticks by up to an hour."""
    hosts: dict[str, list[str]] = {}
    for info in instances.values():
        if not is_quiet(info, now_us):
            hosts.setdefault(info.tzdata or "unknown", []).append(info.instance)
    if here is not None:
        hosts.setdefault(here, []).append("this host")
    if len(hosts) < 2:
        return None
    said = []
    for release, names in sorted(hosts.items()):
        names.sort(key=lambda n: (n != "this host", n))
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        said.append(f"tzdata {release} on {', '.join(names[:3])}{more}")
    return (
        "instances of this fleet compute ticks with different zone databases ("
        + "; ".join(said)
        + "): ticks in a zone whose rules changed between them can run twice, an hour apart; "
        "install one tzdata release everywhere (pyjob --version shows it)"
    )


__all__ += ["effective", "is_quiet", "run_document", "zone_database_warning"]

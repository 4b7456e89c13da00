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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .errors import BackendError
from .names import safe_name
from .results import FINISHED, Result

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
        # Written for every job at start: the fields themselves, not asdict()'s deep copy.
        return json.dumps(
            {"job": self.job, "schedule": self.schedule, "zone": self.zone, "command": self.command}
        )

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
    # Its clock's offset to the backend's (the backend's minus its own, seconds), as it last
    # measured it (--spread); None when it did not.
    offset: float | None = None
    # How many times its registrations changed (new jobs, or new details of one), written with
    # each heartbeat: a reader of the registry reads the jobs again only when this, or the set
    # of instances, changed (--spread). None from a pyjob that did not say: read every time.
    registered: int | None = None

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


class RegistrationsNotWritten(BackendError):
    """The registrations of these jobs were not written, the others were: a store that writes
    them one by one (file:, nfs:) says which, so that one job's broken directory holds back
    neither the other jobs' registrations nor any record."""

    def __init__(self, message: str, jobs: set[str]) -> None:
        super().__init__(message)
        self.jobs = jobs


# Records per write on a store whose batch is one round trip (one statement, one pipeline).
RECORD_BATCH = 500


class RecordStore(Protocol):
    # Records per write: a write holds the backend's worker for its length, and a claim queued
    # meanwhile waits for it, so a store whose records are written one by one (a file each)
    # takes few at a time.
    batch: int

    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        """Write (replace) each record (a store that trims as it writes keeps ``keep``)."""
        ...

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        """``instance`` serves ``jobs``; also a heartbeat."""
        ...

    def heartbeat(self, instance: InstanceInfo) -> bool:
        """Write it; False when the instance's last one was not there to replace (deleted,
        flushed, a backup without it restored): what it registered may be gone as well."""
        ...

    def missing(self, jobs: Sequence[JobInfo], instance: str) -> list[JobInfo]:
        """Those of ``jobs`` whose registration by ``instance`` is gone or differs (a check
        that writes nothing, much cheaper than ``register``)."""
        ...

    def jobs(self) -> list[JobInfo]:
        """Every job registered, with the instances that registered it."""
        ...

    def instances(self) -> dict[str, InstanceInfo]: ...

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        """The job's records, newest first."""
        ...

    def newest(self, jobs: Sequence[str], limit: int) -> dict[str, list[RunRecord]]:
        """Each job's ``limit`` newest records, newest first, in a few round trips for all of
        ``jobs``; a job with no records is left out."""
        ...

    def recent(self, job: str) -> list[RunRecord]:
        """The job's newest records, newest first, up to and including its newest finished run
        (what `pyjob status` needs: the last run, and what runs now)."""
        ...

    def prune(self, jobs: Sequence[str], keep: int, oldest_us: int) -> int:
        """Keep at most ``keep`` records per job, none with a tick before ``oldest_us``;
        instances quiet since before ``oldest_us`` are forgotten. How many were removed."""
        ...


# --------------------------------------------------------------------- shared by the stores

# What a damaged record, registration or heartbeat file raises when parsed (garbage, another
# JSON type, missing fields): readers skip it as they skip one being written.
UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError)


def parse_records(docs: Iterable[str | bytes | None]) -> list[RunRecord]:
    """The records of ``docs`` that parse; a damaged one is skipped, as on file:."""
    out = []
    for doc in docs:
        if doc:
            with contextlib.suppress(*UNREADABLE):
                out.append(RunRecord.from_json(doc))
    return out


def newest_finished(store: RecordStore, job: str) -> list[RunRecord]:
    """``recent`` from ``runs``: 20 at first, more only when none of them is a finished run."""
    for limit in (20, RECENT_MAX):
        records = store.runs(job, limit)
        for i, r in enumerate(records):
            if r.result in FINISHED:
                return records[: i + 1]
        if len(records) < limit:
            return records
    return records


class RetryingReader:
    """A record store whose reads are each tried once more when they fail: `pyjob status` and
    `pyjob history` read through it, so that one dropped connection is not an error (exit 5),
    as it is not for `pyjob run`, whose clients make a broken connection again once. Writes go
    straight through (the coordinator retries those until they are written)."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self.batch = store.batch

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

    def heartbeat(self, instance: InstanceInfo) -> bool:
        return self.store.heartbeat(instance)

    def missing(self, jobs: Sequence[JobInfo], instance: str) -> list[JobInfo]:
        return self.store.missing(jobs, instance)

    def jobs(self) -> list[JobInfo]:
        out: list[JobInfo] = self._twice(self.store.jobs)
        return out

    def instances(self) -> dict[str, InstanceInfo]:
        out: dict[str, InstanceInfo] = self._twice(self.store.instances)
        return out

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        out: list[RunRecord] = self._twice(lambda: self.store.runs(job, limit, since_us))
        return out

    def newest(self, jobs: Sequence[str], limit: int) -> dict[str, list[RunRecord]]:
        out: dict[str, list[RunRecord]] = self._twice(lambda: self.store.newest(jobs, limit))
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
    "InstanceInfo",
    "JobInfo",
    "RecordStore",
    "RecordsNotWritten",
    "RegistrationsNotWritten",
    "RetryingReader",
    "RunRecord",
]


# ------------------------------------------------------------------------------ reading


def is_quiet(info: InstanceInfo | None, now_us: int) -> bool:
    return info is None or now_us - info.seen_us > info.quiet_us


def effective(record: RunRecord, instances: dict[str, InstanceInfo], now_us: int) -> RunRecord:
    """``record`` as a reader should see it: a ``running`` record whose instance has gone quiet
    (killed, host lost) is ``lost``; it never stays ``running`` for ever."""
    if record.result == Result.RUNNING and is_quiet(_lookup(instances, record.instance), now_us):
        return RunRecord(**{**asdict(record), "result": Result.LOST})
    return record


def _lookup(instances: dict[str, InstanceInfo], name: str) -> InstanceInfo | None:
    return instances.get(name) or instances.get(safe_name(name))


def run_document(record: RunRecord, zone: Any) -> dict[str, Any]:
    """A record as `pyjob history --format json` and `pyjob status` print it."""
    from .instants import local_iso

    def when(us: int | None) -> str | None:
        if us is None:
            return None
        return local_iso(us, zone)

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

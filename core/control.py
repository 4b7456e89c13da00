"""Fleet control: the jobs paused and the runs triggered by `pyjob pause`, `pyjob resume` and
`pyjob trigger`, kept in the lock backend beside the run records (DESIGN §5), so that every
instance sharing the backend sees them, and a paused job stays paused across restarts.

Every change also changes the store's *version*. A `pyjob run` process reads the version once
every CONTROL_EVERY seconds (one small read for all its jobs), and reads the whole state only
when the version changed: an idle fleet costs one key, row or file read a second per process.
On file: it reads it when the directory of the version changes instead (``DirectoryControl.watch``,
inotify): an idle process reads nothing. On Redis and PostgreSQL a writer also publishes each
change (PUBLISH, NOTIFY), and the worker reads when its subscription (``subscribe``) is told, and
every SUBSCRIBED_EVERY seconds besides (core/backendcalls.py).
A writer writes its change first and the new version after it, so a reader that saw the last
version also sees every change made before it.

A trigger is only a request: the instances serving its job claim it as a tick of their own
(``trigger_tick``), so the claim, as for any tick, lets exactly one of them run it; the winner
removes the request. One not taken within TRIGGER_EXPIRES is dropped by the next reader.

file: and nfs: keep ``<dir>/.control/{version,paused/<job>.json,triggers/<id>.json}``; Redis the
hashes ``pyjob-control:paused`` and ``pyjob-control:triggers`` and the counter
``pyjob-control:version``; PostgreSQL the tables of CONTROL_SCHEMA.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import BackendError

if TYPE_CHECKING:
    from .dirwatch import DirWatch

CONTROL_EVERY = 1.0  # seconds between a process's reads of the control version
TRIGGER_EXPIRES = 60.0  # seconds: a trigger no instance took by then is dropped


@dataclass(frozen=True)
class Pause:
    job: str
    by: str  # user@host of `pyjob pause`
    since_us: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Pause:
        doc = json.loads(text)
        return cls(str(doc["job"]), str(doc.get("by", "")), int(doc["since_us"]))


@dataclass(frozen=True)
class Trigger:
    id: str
    job: str
    by: str
    at_us: int  # when it was asked for, by the asker's clock

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Trigger:
        doc = json.loads(text)
        return cls(str(doc["id"]), str(doc["job"]), str(doc.get("by", "")), int(doc["at_us"]))

    @property
    def run_id(self) -> str:
        return f"{self.job}-trigger-{self.id}"


@dataclass
class ControlState:
    version: str
    paused: dict[str, Pause] = field(default_factory=dict)
    triggers: list[Trigger] = field(default_factory=list)


class ControlStore(Protocol):
    url: str

    def version(self) -> str:
        """A token that changes with every change (one small read)."""
        ...

    def read(self) -> ControlState: ...

    def pause(self, jobs: Sequence[str], by: str, now_us: int) -> None:
        """Pause ``jobs`` (one already paused keeps its first pause)."""
        ...

    def resume(self, jobs: Sequence[str]) -> None: ...

    def trigger(self, trigger: Trigger) -> None: ...

    def remove_triggers(self, ids: Sequence[str]) -> None: ...


def new_trigger(job: str, by: str, now_us: int) -> Trigger:
    return Trigger(uuid.uuid4().hex[:12], job, by, now_us)


def trigger_tick(trigger: Trigger, schedule: Any) -> datetime:
    """The instant a triggered run is claimed and recorded under: when it was asked for, moved
    on by a microsecond while that is one of the job's own ticks, so that it never shares a
    claim or a record with a tick. Every instance computes the same one."""
    tick = datetime.fromtimestamp(trigger.at_us // 1_000_000, UTC) + timedelta(
        microseconds=trigger.at_us % 1_000_000
    )
    step = timedelta(microseconds=1)
    for _ in range(1000):
        if schedule.next_tick(tick - step) != tick:
            break
        tick += step
    return tick


def poll(store: ControlStore, seen: str | None) -> ControlState | None:
    """The state when its version is not ``seen``, else None (one small read)."""
    version = store.version()
    if version == seen:
        return None
    state = store.read()
    state.version = version
    return state


# ------------------------------------------------------------------------------ file and nfs

_UNREADABLE = (OSError, ValueError, KeyError, TypeError)


class DirectoryControl:
    def __init__(self, directory: Path, url: str, local: bool = False) -> None:
        self.dir = Path(directory) / ".control"
        self.url = url
        self.local = local  # file:, where this host's kernel sees every change (not nfs:)

    def watch(self) -> DirWatch | None:
        """A watch that wakes the reader when the version may have changed (core/dirwatch.py),
        on file: where the kernel sees every write; None where the reader must poll (nfs:,
        no inotify, a directory that cannot be made)."""
        if not self.local:
            return None
        from .backends.common import make_private_dirs
        from .dirwatch import DirWatch

        try:
            make_private_dirs(self.dir)
        except OSError:
            return None
        return DirWatch.open(self.dir)

    def _fail(self, what: str, e: OSError) -> BackendError:
        return BackendError(f"{self.url}: {what}: {e.strerror or e}")

    def _bump(self) -> None:
        from .backends.common import make_private_dirs, write_atomic

        make_private_dirs(self.dir)
        write_atomic(self.dir / "version", uuid.uuid4().hex)

    def version(self) -> str:
        try:
            return (self.dir / "version").read_text()
        except FileNotFoundError:
            return ""
        except OSError as e:
            raise self._fail("control not read", e) from e

    def read(self) -> ControlState:
        state = ControlState("")
        try:
            for path in sorted(self.dir.glob("paused/*.json")):
                with contextlib.suppress(*_UNREADABLE):
                    p = Pause.from_json(path.read_text())
                    state.paused[p.job] = p
            for path in sorted(self.dir.glob("triggers/*.json")):
                with contextlib.suppress(*_UNREADABLE):
                    state.triggers.append(Trigger.from_json(path.read_text()))
        except OSError as e:
            raise self._fail("control not read", e) from e
        return state

    def _safe(self, job: str) -> str:
        from .backends import safe_name

        return safe_name(job)

    def pause(self, jobs: Sequence[str], by: str, now_us: int) -> None:
        from .backends.common import create_new, make_private_dirs

        try:
            make_private_dirs(self.dir / "paused")
            for job in jobs:
                path = self.dir / "paused" / f"{self._safe(job)}.json"
                with contextlib.suppress(FileExistsError):
                    create_new(path, Pause(job, by, now_us).to_json())
            self._bump()
        except OSError as e:
            raise self._fail("not paused", e) from e

    def resume(self, jobs: Sequence[str]) -> None:
        try:
            for job in jobs:
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / "paused" / f"{self._safe(job)}.json").unlink()
            self._bump()
        except OSError as e:
            raise self._fail("not resumed", e) from e

    def trigger(self, trigger: Trigger) -> None:
        from .backends.common import make_private_dirs, write_atomic

        try:
            make_private_dirs(self.dir / "triggers")
            write_atomic(self.dir / "triggers" / f"{trigger.id}.json", trigger.to_json())
            self._bump()
        except OSError as e:
            raise self._fail("trigger not written", e) from e

    def remove_triggers(self, ids: Sequence[str]) -> None:
        try:
            for i in ids:
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / "triggers" / f"{i}.json").unlink()
            self._bump()
        except OSError as e:
            raise self._fail("trigger not removed", e) from e


# ------------------------------------------------------------------------------ Redis

_VERSION = "pyjob-control:version"
_PAUSED = "pyjob-control:paused"
_TRIGGERS = "pyjob-control:triggers"


class RedisControl:
    def __init__(self, client: Any, url: str, errors: tuple[type[BaseException], ...]) -> None:
        self._r = client
        self.url = url
        self._errors = errors

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except self._errors as e:
            raise BackendError(f"{self.url}: {what}: {e}") from e

    def version(self) -> str:
        value = self._call("control not read", lambda: self._r.get(_VERSION))
        return "" if value is None else str(int(value))

    def read(self) -> ControlState:
        def go() -> tuple[dict[Any, Any], dict[Any, Any]]:
            pipe = self._r.pipeline(transaction=False)
            pipe.hgetall(_PAUSED)
            pipe.hgetall(_TRIGGERS)
            paused, triggers = pipe.execute()
            return paused, triggers

        paused, triggers = self._call("control not read", go)
        state = ControlState("")
        for doc in paused.values():
            with contextlib.suppress(*_UNREADABLE):
                p = Pause.from_json(doc)
                state.paused[p.job] = p
        for doc in triggers.values():
            with contextlib.suppress(*_UNREADABLE):
                state.triggers.append(Trigger.from_json(doc))
        return state

    def _channel(self) -> str:
        # Channels are the server's, not a database's: the number keeps databases apart.
        return f"{_VERSION}@{self._r.connection_pool.connection_kwargs.get('db', 0)}"

    def _write(self, what: str, build: Any) -> None:
        def go() -> None:
            pipe = self._r.pipeline(transaction=True)
            build(pipe)
            pipe.incr(_VERSION)
            pipe.execute()

        self._call(what, go)
        # Then told to the subscribers. Once the change is written it is done: a publish that
        # fails (a writer gone between the two, a server that forbids it) leaves the readers
        # to their next read, SUBSCRIBED_EVERY seconds away at most.
        with contextlib.suppress(*self._errors):
            self._r.publish(self._channel(), "")

    def subscribe(self) -> RedisFeed:
        """The control's channel, on a connection of its own (the backend keeps one for its
        calls): the worker waits on it, and reads the version when a writer publishes."""
        return RedisFeed(self._r.connection_pool, self._channel(), self.url)

    def pause(self, jobs: Sequence[str], by: str, now_us: int) -> None:
        def build(pipe: Any) -> None:
            for job in jobs:
                pipe.hsetnx(_PAUSED, job, Pause(job, by, now_us).to_json())

        self._write("not paused", build)

    def resume(self, jobs: Sequence[str]) -> None:
        self._write("not resumed", lambda pipe: pipe.hdel(_PAUSED, *jobs) if jobs else None)

    def trigger(self, trigger: Trigger) -> None:
        self._write(
            "trigger not written", lambda pipe: pipe.hset(_TRIGGERS, trigger.id, trigger.to_json())
        )

    def remove_triggers(self, ids: Sequence[str]) -> None:
        self._write("trigger not removed", lambda pipe: pipe.hdel(_TRIGGERS, *ids) if ids else None)


def _confirms(message: Any) -> bool:
    return isinstance(message, dict) and message.get("type") == "subscribe"


class RedisFeed:
    """A subscription to the control's channel. A broken connection ends the feed, and the
    worker reads, then subscribes anew: redis-py remakes it once before it raises, but a
    connection other than the first is never taken for this feed's (what was published
    between the two would be lost). TCP keepalive ends one whose server went away without a
    word. What a message says is never read: it only says that something changed."""

    def __init__(self, pool: Any, channel: str, url: str) -> None:
        import socket

        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[int, int] = {}
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                options[getattr(socket, name)] = value
        kwargs = {
            **pool.connection_kwargs,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,  # any payload, whoever published it
            "socket_keepalive": True,
            "socket_keepalive_options": options,
        }
        own = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        client: Any = redis.Redis(connection_pool=own)
        self._ps = client.pubsub()
        try:
            self._ps.subscribe(channel)
            self._sock = self._ps.connection._sock
            self.fd: int = self._sock.fileno()
            # The server's confirmation, waited for: the caller's read, on the other
            # connection, must come after the subscription took effect, or a change between
            # the two would be told to no one.
            # Nothing is published to it before that, so it is the first message.
            first = self._ps.get_message(timeout=kwargs.get("socket_timeout") or 2.0)
            if not _confirms(first):
                raise TimeoutError(f"no confirmation but {first!r}")
        except Exception as e:  # AttributeError too: ``_sock`` is redis-py's own attribute
            self.close()
            raise BackendError(f"{url}: control not subscribed: {e}") from e

    def drain(self) -> bool:
        try:
            conn = self._ps.connection
            while conn is not None and conn.can_read(timeout=0):
                self._ps.get_message(timeout=0)
            return conn is not None and conn._sock is self._sock
        except Exception:  # whatever came, it ends the feed (on the worker: never raised)
            return False

    def close(self) -> None:
        # Called on the worker when a feed ends, outside its error policy: whatever a broken
        # connection raises here must not end the worker (and with it the URL's claims).
        with contextlib.suppress(Exception):
            self._ps.close()
        with contextlib.suppress(Exception):
            self._ps.connection_pool.disconnect()


# ------------------------------------------------------------------------------ PostgreSQL

CONTROL_SCHEMA = """
CREATE TABLE IF NOT EXISTS pyjob_paused (job text PRIMARY KEY, info jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS pyjob_triggers (id text PRIMARY KEY, info jsonb NOT NULL);
CREATE SEQUENCE IF NOT EXISTS pyjob_control_version;
"""


_CHANNEL = "pyjob_control"


class PostgresControl:
    def __init__(self, backend: Any) -> None:
        self._b = backend
        self.url = backend.url
        self._ready = False

    def _exec(self, what: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if not self._ready:
            self._b._run("control tables not created", "SELECT pg_advisory_lock(7451848)", ())
            try:
                for statement in CONTROL_SCHEMA.split(";"):
                    if statement.strip():
                        self._b._run("control tables not created", statement, ())
            finally:
                self._b._run("control tables not created", "SELECT pg_advisory_unlock(7451848)", ())
            self._ready = True
        rows: list[tuple[Any, ...]] = self._b._run(what, sql, params)
        return rows

    def version(self) -> str:
        rows = self._exec(
            "control not read", "SELECT last_value, is_called FROM pyjob_control_version"
        )
        value, called = rows[0]
        return str(value) if called else ""

    def read(self) -> ControlState:
        state = ControlState("")
        for (doc,) in self._exec("control not read", "SELECT info::text FROM pyjob_paused"):
            with contextlib.suppress(*_UNREADABLE):
                p = Pause.from_json(doc)
                state.paused[p.job] = p
        for (doc,) in self._exec("control not read", "SELECT info::text FROM pyjob_triggers"):
            with contextlib.suppress(*_UNREADABLE):
                state.triggers.append(Trigger.from_json(doc))
        return state

    def _bump(self, what: str) -> None:
        # The news in the same statement: sent when it commits, so never one without the other.
        self._exec(what, f"SELECT nextval('pyjob_control_version'), pg_notify('{_CHANNEL}', '')")

    def subscribe(self) -> PostgresFeed:
        """LISTEN on the control's channel, on a connection of its own (the backend keeps one
        for its calls): the worker waits on it, and reads the version when a writer notifies."""
        return PostgresFeed(self._b)

    def pause(self, jobs: Sequence[str], by: str, now_us: int) -> None:
        for job in jobs:
            self._exec(
                "not paused",
                "INSERT INTO pyjob_paused (job, info) VALUES (%s, %s::jsonb) "
                "ON CONFLICT DO NOTHING",
                (job, Pause(job, by, now_us).to_json()),
            )
        self._bump("not paused")

    def resume(self, jobs: Sequence[str]) -> None:
        self._exec("not resumed", "DELETE FROM pyjob_paused WHERE job = ANY(%s)", (list(jobs),))
        self._bump("not resumed")

    def trigger(self, trigger: Trigger) -> None:
        self._exec(
            "trigger not written",
            "INSERT INTO pyjob_triggers (id, info) VALUES (%s, %s::jsonb)",
            (trigger.id, trigger.to_json()),
        )
        self._bump("trigger not written")

    def remove_triggers(self, ids: Sequence[str]) -> None:
        self._exec(
            "trigger not removed", "DELETE FROM pyjob_triggers WHERE id = ANY(%s)", (list(ids),)
        )
        self._bump("trigger not removed")


class PostgresFeed:
    """LISTEN on a connection of its own: notifications are the database's, sent at the commit
    of the change. A broken connection ends the feed (the worker reads, then listens anew);
    TCP keepalive ends one whose server went away without a word."""

    def __init__(self, backend: Any) -> None:
        self._conn: Any = None
        try:
            self._conn = backend.connect(
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3
            )
            self._conn.execute(f"LISTEN {_CHANNEL}")  # answered: in effect from here on
            self.fd: int = self._conn.fileno()
        except Exception as e:
            self.close()
            raise BackendError(f"{backend.url}: control not subscribed: {e}") from e

    def drain(self) -> bool:
        try:
            for _ in self._conn.notifies(timeout=0):
                pass
            return not (self._conn.closed or self._conn.broken)
        except Exception:  # whatever came, it ends the feed (on the worker: never raised)
            return False

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # on the worker, as RedisFeed.close
                self._conn.close()


def control_for(backend: Any) -> ControlStore | None:
    """The control store that lives in ``backend`` (None where it keeps no shared records:
    ``--lock none``)."""
    from .backends.file import FileBackend
    from .backends.nfs import NfsBackend

    if isinstance(backend, FileBackend | NfsBackend):
        return DirectoryControl(backend.directory, backend.url, isinstance(backend, FileBackend))
    kind = type(backend).__name__
    if kind == "RedisBackend":
        return RedisControl(backend._r, backend.url, backend._errors)
    if kind == "PostgresBackend":
        return PostgresControl(backend)
    if kind == "EtcdBackend":
        from .backends.etcd_control import EtcdControl

        return EtcdControl(backend)
    return None


__all__ = [
    "CONTROL_EVERY",
    "TRIGGER_EXPIRES",
    "ControlState",
    "ControlStore",
    "Pause",
    "Trigger",
    "control_for",
    "new_trigger",
    "poll",
    "trigger_tick",
]

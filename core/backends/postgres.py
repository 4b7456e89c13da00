"""`postgresql://` — coordination through PostgreSQL (psycopg 3, `pyjob[postgres]`).

Tables, created on first use:

    pyjob_claims (job, tick_us) primary key, instance, fence, keep_until
    pyjob_fences (job) primary key, fence               -- the last fence handed out per job
    pyjob_leases (job) primary key, instance, token, expires

A claim is one statement: take the next fence and insert the claim; ON CONFLICT DO NOTHING makes
exactly one claimer win (a racing insert waits for the first to commit, then does nothing). A
losing claim still advances the job's fence, so fences have gaps, but every claim's fence is larger
than all earlier ones. Lease expiry and claim retention are judged by the database's own clock
(clock_timestamp()), never by comparing hosts' wall clocks.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import datetime
from typing import Any

from ..errors import BackendError
from .common import redact
from .protocol import Batched, ClaimResult, Lease

SCHEMA = """
CREATE TABLE IF NOT EXISTS pyjob_claims (
    job text NOT NULL,
    tick_us bigint NOT NULL,
    instance text NOT NULL,
    fence bigint NOT NULL,
    keep_until timestamptz NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job, tick_us)
);
CREATE TABLE IF NOT EXISTS pyjob_fences (job text PRIMARY KEY, fence bigint NOT NULL);
CREATE TABLE IF NOT EXISTS pyjob_leases (
    job text PRIMARY KEY,
    instance text NOT NULL,
    token text NOT NULL,
    expires timestamptz NOT NULL
);
"""

_CLAIM = """
WITH f AS (
    INSERT INTO pyjob_fences AS t (job, fence) VALUES (%(job)s, 1)
    ON CONFLICT (job) DO UPDATE SET fence = t.fence + 1
    RETURNING fence
)
INSERT INTO pyjob_claims (job, tick_us, instance, fence, keep_until)
SELECT %(job)s, %(tick)s, %(instance)s, f.fence,
       clock_timestamp() + make_interval(secs => %(keep)s)
FROM f
ON CONFLICT (job, tick_us) DO NOTHING
RETURNING instance, fence
"""
_HOLDER = "SELECT instance, fence FROM pyjob_claims WHERE job = %s AND tick_us = %s"
_ACQUIRE = """
INSERT INTO pyjob_leases AS l (job, instance, token, expires)
VALUES (%(job)s, %(instance)s, %(token)s, clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (job) DO UPDATE
    SET instance = EXCLUDED.instance, token = EXCLUDED.token, expires = EXCLUDED.expires
    WHERE l.expires < clock_timestamp()
RETURNING token
"""
_RENEW = """
UPDATE pyjob_leases SET expires = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE job = %(job)s AND token = %(token)s AND expires >= clock_timestamp()
RETURNING 1
"""


class PostgresBackend(Batched):
    def __init__(self, url: str, timeout: float = 3.0) -> None:
        try:
            import psycopg
        except ImportError as e:
            raise BackendError(
                f"{redact(url)}: the PostgreSQL backend needs psycopg: "
                "pip install 'pyjob[postgres]'"
            ) from e
        self._psycopg = psycopg
        self._dsn = url
        self.url = redact(url)
        self.timeout = timeout
        self._conn: Any = None
        self._schema_ready = False

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=max(1, int(self.timeout))
            )
            self._conn.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")
        if not self._schema_ready:
            try:
                # Concurrent CREATE TABLE IF NOT EXISTS can collide in the catalog: serialize
                # first uses with a transaction-scoped advisory lock.
                with self._conn.transaction():
                    self._conn.execute("SELECT pg_advisory_xact_lock(7451846)")
                    self._conn.execute(SCHEMA)
            except self._psycopg.errors.InsufficientPrivilege as e:
                reason = e.diag.message_primary
                raise BackendError(
                    f"{self.url}: the role may not create pyjob's tables ({reason}); "
                    "create them once with a role that may (the statements are in "
                    "pyjob.core.backends.postgres.SCHEMA), or grant CREATE on the schema"
                ) from e
            self._schema_ready = True
        return self._conn

    def _run(self, what: str, sql: str, params: Any) -> list[tuple[Any, ...]]:
        try:
            cur = self._connection().execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
        except BackendError:
            raise
        except (self._psycopg.Error, OSError) as e:
            self._drop()
            raise BackendError(f"{self.url}: {what}: {str(e).strip().splitlines()[0]}") from e

    def _drop(self) -> None:
        """Forget a broken connection: the next call reconnects."""
        if self._conn is not None:
            with contextlib.suppress(self._psycopg.Error):
                self._conn.close()
        self._conn = None

    def check(self) -> None:
        self._run("cannot reach PostgreSQL", "SELECT 1", ())

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        from .common import to_us

        keep = max(1.0, (keep_until - now).total_seconds())
        params = {"job": job, "tick": to_us(tick), "instance": instance, "keep": keep}
        rows = self._run("claim failed", _CLAIM, params)
        if rows:
            return ClaimResult(True, instance, int(rows[0][1]))
        held = self._run("claim lookup failed", _HOLDER, (job, to_us(tick)))
        if not held:  # removed by retention between the two statements: try once more
            return self.claim(job, tick, instance, keep_until, now)
        holder, fence = held[0]
        return ClaimResult(holder == instance, holder, int(fence))

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        token = uuid.uuid4().hex
        rows = self._run(
            "lease failed", _ACQUIRE, {"job": job, "instance": instance, "token": token, "ttl": ttl}
        )
        return Lease(job, instance, token, ttl) if rows else None

    def lease_holder(self, job: str) -> str | None:
        rows = self._run(
            "lease lookup failed",
            "SELECT instance FROM pyjob_leases WHERE job = %s AND expires >= clock_timestamp()",
            (job,),
        )
        return rows[0][0] if rows else None

    def renew_lease(self, lease: Lease) -> bool:
        rows = self._run(
            "lease renewal failed",
            _RENEW,
            {"job": lease.job, "token": lease.token, "ttl": lease.ttl},
        )
        return bool(rows)

    def release_lease(self, lease: Lease) -> None:
        self._run(
            "lease release failed",
            "DELETE FROM pyjob_leases WHERE job = %s AND token = %s",
            (lease.job, lease.token),
        )

    def cleanup(self, job: str, now: datetime) -> int:
        rows = self._run(
            "cleanup failed",
            "DELETE FROM pyjob_claims WHERE job = %s AND keep_until < clock_timestamp() "
            "RETURNING 1",
            (job,),
        )
        return len(rows)

    def server_time(self) -> tuple[float, float]:
        rows = self._run(
            "clock_timestamp() failed", "SELECT extract(epoch FROM clock_timestamp())::float8", ()
        )
        return float(rows[0][0]), 1e-6

    def close(self) -> None:
        self._drop()

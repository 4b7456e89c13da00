"""`postgresql://` — coordination through PostgreSQL (psycopg 3, `pyjob[postgres]`).

Tables and functions, created on first use:

    pyjob_claims (job, tick_us) primary key, instance, fence, keep_until
    pyjob_fences (job) primary key, fence, tick_us  -- per job: the last fence handed out and the
                                                    -- latest tick claimed (the mark; never removed)
    pyjob_leases (job) primary key, instance, token, expires, client_until
    pyjob_claim_batch(...)                          -- a batch of claims, one statement
    pyjob_renew_leases(...)                         -- a batch of renewals, one statement

A batch of claims (every job due at one instant, each optionally with its run lease) is one call
of ``pyjob_claim_batch``, so one round trip. For each job, in job order (so that two batches never
deadlock), it locks the job's ``pyjob_fences`` row, then applies the claim protocol (DESIGN §8),
every time judged by the database's clock (clock_timestamp()): an existing claim answers who
holds the tick; a tick more than AHEAD_LIMIT ahead of that clock is refused to its claimer
("clock-ahead") and changes nothing; a tick older than its keep_until plus the skew limit is
refused; a tick at or before the mark with no claim is refused once that clock says its claim
would be gone anyway (claims are kept until keep_until by it); otherwise the fence grows, the mark
rises to the tick, the claim is inserted, and the run lease is taken when asked for. Fences have no
gaps. A batch that reaches the database after its client gave up on it (past its deadline by the
database's clock, see BackendClock) does nothing. A run lease expires by the database's clock and,
so that a step of that clock alone takes no lease from a holder that renews it, by the holder's
and the taker's clocks too (up to the skew limit); a renewal re-asserts the lease while it still
bears the holder's token.

One backend object is one connection. Every call is bounded on the client side: psycopg waits
for the server with a deadline (``timeout`` seconds), so a connection whose server stopped
answering gives BackendError then and is dropped; the next call reconnects. statement_timeout
bounds the statement on the server side as well.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..clock import SystemClock
from ..errors import BackendError
from ..instants import to_us
from .common import (
    BackendClock,
    redact,
    refused_behind_mark,
    refused_clock_ahead,
    refused_too_old,
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
    from .pgstore import PostgresRecords

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
ALTER TABLE pyjob_fences ADD COLUMN IF NOT EXISTS tick_us bigint;
CREATE TABLE IF NOT EXISTS pyjob_leases (
    job text PRIMARY KEY,
    instance text NOT NULL,
    token text NOT NULL,
    expires timestamptz NOT NULL
);
ALTER TABLE pyjob_leases ADD COLUMN IF NOT EXISTS client_until bigint;
-- A lease has expired when the database's clock is past ``expires`` and, so that a step of that
-- clock alone expires no lease whose holder still renews it, the taker's clock (p_now, µs) is
-- past the holder's clock at its last renewal plus the TTL (``client_until``); past ``expires``
-- plus the skew limit, the database's clock alone decides (a holder whose clock was far ahead
-- blocks no longer than that).
CREATE OR REPLACE FUNCTION pyjob_lease_expired(
    p_expires timestamptz, p_client_until bigint, p_now bigint, p_skew_us bigint)
RETURNS boolean LANGUAGE sql AS $$
    SELECT p_expires < clock_timestamp() AND (
        p_client_until IS NULL OR p_now > p_client_until
        OR clock_timestamp() > p_expires + make_interval(secs => p_skew_us / 1e6))
$$;
CREATE OR REPLACE FUNCTION pyjob_take_lease2(
    p_job text, p_instance text, p_token text, p_ttl float8, p_now bigint, p_skew_us bigint)
RETURNS boolean
LANGUAGE sql AS $$
    INSERT INTO pyjob_leases AS l (job, instance, token, expires, client_until)
    VALUES (p_job, p_instance, p_token, clock_timestamp() + make_interval(secs => p_ttl),
            p_now + (p_ttl * 1000000)::bigint)
    ON CONFLICT (job) DO UPDATE
        SET instance = EXCLUDED.instance, token = EXCLUDED.token, expires = EXCLUDED.expires,
            client_until = EXCLUDED.client_until
        WHERE l.token = EXCLUDED.token
           OR pyjob_lease_expired(l.expires, l.client_until, p_now, p_skew_us)
    RETURNING true
$$;
-- The claim protocol (DESIGN §8), every time judged by clock_timestamp(). A batch that arrives
-- after p_deadline (µs by this clock; 0: none) does nothing: its client gave up on it. Status: 0
-- held, 1 won, 2 too old, 3 behind the mark, 4 clock-ahead, 5 (one row, r_i 0) past its
-- deadline. Every row carries the database's clock (r_now, µs).
CREATE OR REPLACE FUNCTION pyjob_claim_batch(
    p_jobs text[], p_ticks bigint[], p_keep_until bigint[], p_lease_ttl float8[],
    p_tokens text[], p_instance text, p_now bigint, p_deadline bigint, p_skew_us bigint,
    p_ahead_us bigint, p_margin_us bigint)
RETURNS TABLE (r_i int, r_status int, r_holder text, r_fence bigint, r_info bigint,
               r_lease boolean, r_lease_holder text, r_now bigint)
LANGUAGE plpgsql AS $$
DECLARE
    k int;
    v_mark bigint;
    v_fence bigint;
BEGIN
    r_now := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    IF p_deadline > 0 AND r_now > p_deadline THEN
        r_i := 0; r_status := 5;
        RETURN NEXT;
        RETURN;
    END IF;
    FOR k IN SELECT u.o FROM unnest(p_jobs) WITH ORDINALITY AS u(j, o) ORDER BY u.j, u.o LOOP
        r_i := k; r_holder := NULL; r_fence := NULL; r_info := NULL;
        r_lease := NULL; r_lease_holder := NULL;
        INSERT INTO pyjob_fences AS f (job, fence) VALUES (p_jobs[k], 0)
            ON CONFLICT (job) DO NOTHING;
        SELECT f.fence, f.tick_us INTO v_fence, v_mark
            FROM pyjob_fences AS f WHERE f.job = p_jobs[k] FOR UPDATE;
        SELECT c.instance, c.fence INTO r_holder, r_fence
            FROM pyjob_claims AS c WHERE c.job = p_jobs[k] AND c.tick_us = p_ticks[k];
        r_now := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
        IF FOUND THEN
            r_status := 0;
            IF r_holder = p_instance AND p_lease_ttl[k] IS NOT NULL THEN
                -- our own repeated claim (a retry after a lost reply): the lease it took
                -- already, or one free now
                PERFORM pyjob_take_lease2(
                    p_jobs[k], p_instance, p_tokens[k], p_lease_ttl[k], p_now, p_skew_us);
                SELECT l.token = p_tokens[k], l.instance INTO r_lease, r_lease_holder
                    FROM pyjob_leases AS l WHERE l.job = p_jobs[k];
            END IF;
        ELSIF p_ticks[k] > r_now + p_ahead_us THEN
            r_status := 4; r_info := r_now;
        ELSIF r_now > p_keep_until[k] + p_skew_us THEN
            r_status := 2; r_info := r_now;
        ELSIF v_mark IS NOT NULL AND v_mark >= p_ticks[k]
              AND r_now >= p_keep_until[k] - p_margin_us THEN
            r_status := 3; r_info := v_mark;
        ELSE
            r_status := 1; r_holder := p_instance; r_fence := v_fence + 1;
            UPDATE pyjob_fences AS f
                SET fence = r_fence, tick_us = greatest(f.tick_us, p_ticks[k])
                WHERE f.job = p_jobs[k];
            -- kept until keep_until by this clock: a claim gone before then was never made
            INSERT INTO pyjob_claims (job, tick_us, instance, fence, keep_until)
                VALUES (p_jobs[k], p_ticks[k], p_instance, r_fence,
                        greatest(to_timestamp(p_keep_until[k] / 1e6),
                                 clock_timestamp() + interval '1 second'));
            IF p_lease_ttl[k] IS NOT NULL THEN
                r_lease := coalesce(pyjob_take_lease2(
                    p_jobs[k], p_instance, p_tokens[k], p_lease_ttl[k], p_now, p_skew_us), false);
                IF NOT r_lease THEN
                    SELECT l.instance INTO r_lease_holder
                        FROM pyjob_leases AS l WHERE l.job = p_jobs[k];
                END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
-- Renewal re-asserts: a lease still under the holder's token is extended whatever the clocks
-- did meanwhile (only a taker replaces the token, and only once the lease expired by every
-- clock). The first row carries the database's clock (µs); nothing is renewed past p_deadline.
CREATE OR REPLACE FUNCTION pyjob_renew_leases(
    p_jobs text[], p_tokens text[], p_ttl float8[], p_now bigint, p_deadline bigint)
RETURNS TABLE (r_job text, r_token text, r_now bigint)
LANGUAGE plpgsql AS $$
BEGIN
    r_now := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    r_job := NULL; r_token := NULL;
    RETURN NEXT;
    IF p_deadline > 0 AND r_now > p_deadline THEN
        RETURN;
    END IF;
    RETURN QUERY
        UPDATE pyjob_leases AS l
            SET expires = clock_timestamp() + make_interval(secs => u.ttl),
                client_until = p_now + (u.ttl * 1000000)::bigint
            FROM unnest(p_jobs, p_tokens, p_ttl) AS u(job, token, ttl)
            WHERE l.job = u.job AND l.token = u.token
            RETURNING l.job, l.token, r_now;
END
$$;
"""

_CLAIM_MANY = """
SELECT * FROM pyjob_claim_batch(
    %(jobs)s::text[], %(ticks)s::bigint[], %(keep_until)s::bigint[], %(lease_ttl)s::float8[],
    %(tokens)s::text[], %(instance)s, %(now)s, %(deadline)s, %(skew)s, %(ahead)s, %(margin)s)
"""
_ACQUIRE = """
SELECT pyjob_take_lease2(%(job)s, %(instance)s, %(token)s, %(ttl)s, %(now)s, %(skew)s)
"""
_RENEW_MANY = """
SELECT * FROM pyjob_renew_leases(
    %s::text[], %s::text[], %s::float8[], %s::bigint, %s::bigint)
"""
_RELEASE_MANY = """
DELETE FROM pyjob_leases AS l USING unnest(%s::text[], %s::text[]) AS u(job, token)
WHERE l.job = u.job AND l.token = u.token
"""
_CLEANUP_MANY = """
DELETE FROM pyjob_claims WHERE job = ANY(%s::text[]) AND keep_until < clock_timestamp()
RETURNING 1
"""

_bounded: dict[int, type] = {}


def _bounded_connection(psycopg: Any) -> Any:
    """A psycopg Connection class whose every wait for the server has a deadline
    (``call_timeout``): psycopg itself waits for as long as the socket stays open."""
    cls = _bounded.get(id(psycopg))
    if cls is None:
        import inspect

        if "timeout" not in inspect.signature(psycopg.Connection.wait).parameters:
            raise BackendError(
                f"psycopg {psycopg.__version__} cannot bound its waits for the server: "
                "pip install 'psycopg[binary]>=3.2'"
            )

        class BoundedConnection(psycopg.Connection):  # type: ignore[misc]
            call_timeout: float = 2.0

            def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
                return super().wait(
                    gen, interval, self.call_timeout if timeout is None else timeout
                )

        cls = _bounded[id(psycopg)] = BoundedConnection
    return cls


class PostgresBackend:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
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
        self._cls = _bounded_connection(psycopg)
        self.timeout = timeout
        self._conn: Any = None
        self._schema_ready = False
        self._nonce = uuid.uuid4().hex
        # Real time, whatever clock the scheduler is given: deadlines are about the network, and
        # a lease's second clock is this host's.
        self._clock = SystemClock()
        self._server = BackendClock(timeout)

    def connect(self, **options: Any) -> Any:
        """A new connection, autocommit, every wait for the server bounded by the timeout
        (``options``: more libpq parameters)."""
        conn = self._cls.connect(
            self._dsn, autocommit=True, connect_timeout=max(1, round(self.timeout)), **options
        )
        conn.call_timeout = self.timeout
        return conn

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
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
            self._drop()
            raise
        except (self._psycopg.Error, OSError) as e:
            self._drop()
            if type(e).__name__ in ("_WaitTimeout", "ConnectionTimeout"):
                raise BackendError(f"{self.url}: {what}: no answer within {self.timeout:g}s") from e
            raise BackendError(f"{self.url}: {what}: {str(e).strip().splitlines()[0]}") from e

    def _drop(self) -> None:
        """Forget a broken connection: the next call reconnects."""
        if self._conn is not None:
            with contextlib.suppress(self._psycopg.Error, OSError):
                self._conn.close()
        self._conn = None

    def check(self) -> None:
        self._run("cannot reach PostgreSQL", "SELECT 1", ())
        with contextlib.suppress(BackendError):
            self.server_time()  # the first reading of its clock: requests get deadlines

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
        # the same token when a claim is repeated, so that a retry gets back its lease
        tokens = [lease_token(self._nonce, to_us(r.tick)) for r in requests]
        params = {
            "jobs": [r.job for r in requests],
            "ticks": [to_us(r.tick) for r in requests],
            "keep_until": [to_us(r.keep_until) for r in requests],
            "lease_ttl": [r.lease_ttl for r in requests],
            "tokens": tokens,
            "instance": instance,
            "now": to_us(now),
            "skew": int(SKEW_LIMIT * 1e6),
            "ahead": int(AHEAD_LIMIT * 1e6),
            "margin": int(KEPT_MARGIN * 1e6),
        }
        for _ in (1, 2):
            sent = self._clock.monotonic()
            params["deadline"] = self._server.deadline_us(sent)
            try:
                rows = self._run("claim failed", _CLAIM_MANY, params)
            except BackendError as e:
                # It may have been done all the same (a timeout, a dropped connection): the
                # leases it may have taken are named, so that the caller can release them.
                maybe = [
                    Lease(r.job, instance, token, r.lease_ttl)
                    for r, token in zip(requests, tokens, strict=True)
                    if r.lease_ttl is not None
                ]
                raise LostAnswer(str(e), maybe) from e
            if rows:
                self._server.learn(int(rows[0][7]), sent, self._clock.monotonic())
            if len(rows) != 1 or rows[0][1] != 5:
                break  # else: past its deadline by a clock that stepped: again, on time
        else:
            raise BackendError(f"{self.url}: claim failed: the database's clock jumps")
        by_index = {int(row[0]): row for row in rows}
        if len(by_index) != len(requests):
            raise BackendError(f"{self.url}: claim failed: {len(rows)} answers to {len(requests)}")
        out = []
        for i, (r, token) in enumerate(zip(requests, tokens, strict=True), start=1):
            _, status, holder, fence, info, leased, lease_holder, db_now = by_index[i]
            tick_us, keep_us = to_us(r.tick), to_us(r.keep_until)
            if status == 2:
                why = refused_too_old(tick_us, keep_us, int(info), SKEW_LIMIT)
                out.append(ClaimOutcome(ClaimResult(False, "unknown", None, refused=why)))
                continue
            if status == 3:
                why = refused_behind_mark(tick_us, int(info), keep_us, int(db_now), SKEW_LIMIT)
                out.append(ClaimOutcome(ClaimResult(False, "unknown", None, refused=why)))
                continue
            if status == 4:
                ahead = max(0.0, (to_us(now) - int(db_now)) / 1e6)
                why = refused_clock_ahead(tick_us, int(db_now), ahead, AHEAD_LIMIT)
                refused = ClaimResult(False, "unknown", None, refused=why, ahead=ahead)
                out.append(ClaimOutcome(refused))
                continue
            claim = ClaimResult(holder == instance, str(holder), int(fence))
            if r.lease_ttl is None or not claim.won:
                out.append(ClaimOutcome(claim))
            elif leased:
                out.append(ClaimOutcome(claim, Lease(r.job, instance, token, r.lease_ttl)))
            else:
                out.append(ClaimOutcome(claim, None, lease_holder or "unknown"))
        return out

    def cleanup_many(self, jobs: Sequence[str], now: datetime) -> int:
        if not jobs:
            return 0
        return len(self._run("cleanup failed", _CLEANUP_MANY, (list(jobs),)))

    # ---------------------------------------------------------------- run lease

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        token = uuid.uuid4().hex
        params = {
            "job": job,
            "instance": instance,
            "token": token,
            "ttl": ttl,
            "now": self._now_us(),
            "skew": int(SKEW_LIMIT * 1e6),
        }
        rows = self._run("lease failed", _ACQUIRE, params)
        return Lease(job, instance, token, ttl) if rows and rows[0][0] else None

    def _now_us(self) -> int:
        return to_us(self._clock.now())

    def lease_holder(self, job: str) -> str | None:
        rows = self._run(
            "lease lookup failed",
            "SELECT instance FROM pyjob_leases "
            "WHERE job = %s AND NOT pyjob_lease_expired(expires, client_until, %s, %s)",
            (job, self._now_us(), int(SKEW_LIMIT * 1e6)),
        )
        return rows[0][0] if rows else None

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []
        jobs, tokens, ttls = (
            [x.job for x in leases],
            [x.token for x in leases],
            [x.ttl for x in leases],
        )
        for _ in (1, 2):
            sent = self._clock.monotonic()
            deadline = self._server.deadline_us(sent)
            params = (jobs, tokens, ttls, self._now_us(), deadline)
            rows = self._run("lease renewal failed", _RENEW_MANY, params)
            db_now = int(rows[0][2])
            self._server.learn(db_now, sent, self._clock.monotonic())
            if not deadline or db_now <= deadline:
                break  # else: past its deadline by a clock that stepped: again, on time
        else:
            raise BackendError(f"{self.url}: lease renewal failed: the database's clock jumps")
        renewed = {(job, token) for job, token, _ in rows[1:]}
        return [(x.job, x.token) in renewed for x in leases]

    def release_many(self, leases: Sequence[Lease]) -> None:
        if leases:
            self._run(
                "lease release failed",
                _RELEASE_MANY,
                ([x.job for x in leases], [x.token for x in leases]),
            )

    def server_time(self) -> tuple[float, float]:
        sent = self._clock.monotonic()
        rows = self._run(
            "clock_timestamp() failed", "SELECT extract(epoch FROM clock_timestamp())::float8", ()
        )
        self._server.learn(int(float(rows[0][0]) * 1e6), sent, self._clock.monotonic())
        return float(rows[0][0]), 1e-6

    def records(self) -> PostgresRecords:
        from .pgstore import PostgresRecords

        return PostgresRecords(self._run, self.url)

    def close(self) -> None:
        self._drop()

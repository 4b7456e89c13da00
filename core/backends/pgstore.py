"""The run records and registry of `postgresql://`: tables beside the claims."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..records import (
    RECORD_BATCH,
    InstanceInfo,
    JobInfo,
    RunRecord,
    newest_finished,
    parse_records,
)

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

    batch = RECORD_BATCH

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

    def missing(self, jobs: Sequence[JobInfo], instance: str) -> list[JobInfo]:
        if not jobs:
            return []
        rows = self._exec(
            "registrations not read",
            "SELECT n FROM unnest(%s::text[], %s::jsonb[]) WITH ORDINALITY AS v(job, info, n) "
            "WHERE NOT EXISTS (SELECT 1 FROM pyjob_jobs j WHERE j.job = v.job AND j.info = v.info)"
            " OR NOT EXISTS (SELECT 1 FROM pyjob_job_instances i"
            " WHERE i.job = v.job AND i.instance = %s)",
            ([j.job for j in jobs], [j.to_json() for j in jobs], instance),
        )
        return [jobs[int(n) - 1] for (n,) in rows]

    def heartbeat(self, instance: InstanceInfo) -> bool:
        rows = self._exec(
            "heartbeat not written",
            "INSERT INTO pyjob_instances (instance, info) VALUES (%s, %s::jsonb) "
            "ON CONFLICT (instance) DO UPDATE SET info = EXCLUDED.info "
            "RETURNING xmax <> 0",  # 0: a row inserted, not one updated
            (instance.instance, instance.to_json()),
        )
        return bool(rows and rows[0][0])

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
        return parse_records(r[0] for r in rows)

    def newest(self, jobs: Sequence[str], limit: int) -> dict[str, list[RunRecord]]:
        # One statement: each job's newest rows by its primary key's index.
        rows = self._exec(
            "history not read",
            "SELECT j.job, r.record::text FROM unnest(%s::text[]) AS j(job) CROSS JOIN LATERAL "
            "(SELECT record, tick_us FROM pyjob_runs WHERE job = j.job "
            "ORDER BY tick_us DESC LIMIT %s) r ORDER BY j.job, r.tick_us DESC",
            (list(jobs), limit),
        )
        docs: dict[str, list[str]] = {}
        for job, doc in rows:
            docs.setdefault(job, []).append(doc)
        out = {job: parse_records(d) for job, d in docs.items()}
        return {job: records for job, records in out.items() if records}

    def recent(self, job: str) -> list[RunRecord]:
        return newest_finished(self, job)

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

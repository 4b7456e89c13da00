"""Run records and the instance registry in etcd, through the etcd backend's connection.

Keys, under the backend's prefix:

    <prefix>/job/<job>/runs/<tick µs, 20 digits>  a run record (JSON); fixed width, so that key
                                                  order is tick order
    <prefix>/registry/job/<job>                   what an instance registered for the job (JSON)
    <prefix>/registry/serves/<job>/<instance>     that ``instance`` serves the job
    <prefix>/registry/instance/<instance>         its heartbeat (JSON)

A batch of records is one transaction; a job's records past ``keep`` are trimmed after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..records import (
    RECORD_BATCH,
    InstanceInfo,
    JobInfo,
    RunRecord,
    newest_finished,
    parse_records,
)
from .common import safe_name
from .etcd_http import b64, range_end, unb64

if TYPE_CHECKING:
    from .etcd import EtcdBackend

TXN_OPS = 100  # operations per transaction (etcd's --max-txn-ops is 128 by default)


def _range(start: str, end: str | None = None, **options: Any) -> dict[str, Any]:
    return {"key": b64(start), "range_end": b64(end or range_end(start)), **options}


class EtcdRecords:
    batch = RECORD_BATCH

    def __init__(self, backend: EtcdBackend) -> None:
        self._b = backend
        self.url = backend.url
        self._p = backend.prefix

    def _runs(self, job: str) -> str:
        return self._b.key(job, "runs") + "/"

    def _txn(self, ops: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for first in range(0, len(ops), TXN_OPS):
            chunk = ops[first : first + TXN_OPS]
            reply = self._b.call("/v3/kv/txn", {"success": chunk}, what)
            out += reply.get("responses") or []
        return out

    def _kvs(self, body: dict[str, Any], what: str) -> list[dict[str, Any]]:
        kvs: list[dict[str, Any]] = self._b.call("/v3/kv/range", body, what).get("kvs") or []
        return kvs

    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        if not records:
            return
        ops = []
        for r in {(r.job, r.tick_us): r for r in records}.values():  # one put per key
            key = f"{self._runs(r.job)}{r.tick_us:020d}"
            ops.append({"request_put": {"key": b64(key), "value": b64(r.to_json())}})
        self._txn(ops, "run record not written")
        self._trim(sorted({r.job for r in records}), keep, "history not trimmed")

    def _trim(self, jobs: list[str], keep: int, what: str) -> int:
        """Remove each job's oldest records beyond ``keep``; how many."""
        counts = self._txn(
            [{"request_range": _range(self._runs(j), count_only=True)} for j in jobs], what
        )
        removed = 0
        for job, response in zip(jobs, counts, strict=True):
            extra = int(response["response_range"].get("count") or 0) - keep
            if extra <= 0:
                continue
            old = self._kvs(_range(self._runs(job), keys_only=True, limit=str(extra)), what)
            if old:
                last = unb64(old[-1]["key"])
                body = _range(self._runs(job), last + "\0")
                self._b.call("/v3/kv/deleterange", body, what)
                removed += len(old)
        return removed

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        ops = []
        for j in jobs:
            name = safe_name(j.job)
            info = f"{self._p}/registry/job/{name}"
            serves = f"{self._p}/registry/serves/{name}/{instance.instance}"
            ops.append({"request_put": {"key": b64(info), "value": b64(j.to_json())}})
            ops.append({"request_put": {"key": b64(serves), "value": b64(instance.instance)}})
        self._txn(ops, "jobs not registered")
        self.heartbeat(instance)

    def heartbeat(self, instance: InstanceInfo) -> bool:
        key = f"{self._p}/registry/instance/{instance.instance}"
        reply = self._b.call(
            "/v3/kv/put",
            {"key": b64(key), "value": b64(instance.to_json()), "prev_kv": True},
            "heartbeat not written",
        )
        return bool(reply.get("prev_kv"))

    def missing(self, jobs: Sequence[JobInfo], instance: str) -> list[JobInfo]:
        """Two range reads over the names of ``jobs`` (a share of the registrations, a run of
        them in name order: the range holds little else but other instances' jobs that sort
        among them), where writing them again would be a transaction for every 50 jobs and a
        new revision of each key."""
        if not jobs:
            return []
        names = sorted(safe_name(j.job) for j in jobs)
        info, serves = f"{self._p}/registry/job/", f"{self._p}/registry/serves/"
        what = "registrations not read"
        docs = {
            unb64(kv["key"])[len(info) :]: unb64(kv.get("value"))
            for kv in self._kvs(_range(info + names[0], info + names[-1] + "\0"), what)
        }
        # "backup-db/" sorts before "backup/" ('-' and '.' before '/'): the bounds are those of
        # the prefixes themselves, not of the names.
        prefixes = sorted(f"{serves}{n}/" for n in names)
        body = _range(prefixes[0], range_end(prefixes[-1]), keys_only=True)
        keys = {unb64(kv["key"]) for kv in self._kvs(body, what)}
        return [
            j
            for j in jobs
            if docs.get(name := safe_name(j.job)) != j.to_json()
            or f"{serves}{name}/{instance}" not in keys
        ]

    def jobs(self) -> list[JobInfo]:
        infos = self._kvs(_range(f"{self._p}/registry/job/"), "jobs not read")
        start = f"{self._p}/registry/serves/"
        members: dict[str, list[str]] = {}
        for kv in self._kvs(_range(start), "jobs not read"):
            name = unb64(kv["key"])[len(start) :].partition("/")[0]  # safe names have no "/"
            members.setdefault(name, []).append(unb64(kv.get("value")))
        out = []
        for kv in infos:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                info = JobInfo.from_json(unb64(kv["value"]))
                info.instances = sorted(members.get(safe_name(info.job), []))
                out.append(info)
        return sorted(out, key=lambda j: j.job)

    def instances(self) -> dict[str, InstanceInfo]:
        out = {}
        for kv in self._kvs(_range(f"{self._p}/registry/instance/"), "instances not read"):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                info = InstanceInfo.from_json(unb64(kv["value"]))
                out[info.instance] = info
        return out

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        start = self._runs(job)
        body = _range(
            start if since_us is None else f"{start}{max(0, since_us):020d}",
            range_end(start),
            sort_order="DESCEND",
            sort_target="KEY",
            limit=str(limit),
        )
        return parse_records(unb64(kv.get("value")) for kv in self._kvs(body, "history not read"))

    def newest(self, jobs: Sequence[str], limit: int) -> dict[str, list[RunRecord]]:
        # A range a job, TXN_OPS of them a transaction.
        ops = [
            {
                "request_range": _range(
                    self._runs(job), sort_order="DESCEND", sort_target="KEY", limit=str(limit)
                )
            }
            for job in jobs
        ]
        out = {}
        for job, response in zip(jobs, self._txn(ops, "history not read"), strict=True):
            kvs = response.get("response_range", {}).get("kvs") or []
            records = parse_records(unb64(kv.get("value")) for kv in kvs)
            if records:
                out[job] = records
        return out

    def recent(self, job: str) -> list[RunRecord]:
        return newest_finished(self, job)

    def prune(self, jobs: Sequence[str], keep: int, oldest_us: int) -> int:
        what = "history not pruned"
        removed = 0
        for job in jobs:
            start = self._runs(job)
            body = _range(start, f"{start}{max(0, oldest_us):020d}")
            removed += int(self._b.call("/v3/kv/deleterange", body, what).get("deleted") or 0)
        removed += self._trim(list(jobs), keep, what)
        quiet = []
        for kv in self._kvs(_range(f"{self._p}/registry/instance/"), "instances not pruned"):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if InstanceInfo.from_json(unb64(kv["value"])).seen_us < oldest_us:
                    quiet.append({"request_delete_range": {"key": kv["key"]}})
        self._txn(quiet, "instances not pruned")
        return removed


__all__ = ["EtcdRecords"]

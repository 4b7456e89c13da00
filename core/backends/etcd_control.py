"""Fleet control (pause, resume, trigger) in etcd, through the etcd backend's connection.

Keys, under the backend's prefix:

    <prefix>/control/paused/<job>      a pause (JSON); created only where none is (the first stays)
    <prefix>/control/trigger/<id>      a trigger (JSON)
    <prefix>/control/version           written with every change: its revision is the version

Each change is one transaction with its version write, so a reader that saw the version saw the
change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..control import ControlState, Pause, Trigger
from .common import safe_name
from .etcd_http import b64, range_end, unb64

if TYPE_CHECKING:
    from .etcd import EtcdBackend

TXN_OPS = 100  # operations per transaction (etcd's --max-txn-ops is 128 by default)


class EtcdControl:
    def __init__(self, backend: EtcdBackend) -> None:
        self._b = backend
        self.url = backend.url
        self._p = f"{backend.prefix}/control"

    def _write(self, ops: list[dict[str, Any]], what: str) -> None:
        bump = {"request_put": {"key": b64(f"{self._p}/version"), "value": b64("")}}
        for first in range(0, max(1, len(ops)), TXN_OPS - 1):
            chunk = [*ops[first : first + TXN_OPS - 1], bump]
            self._b.call("/v3/kv/txn", {"success": chunk}, what)

    def version(self) -> str:
        reply = self._b.call("/v3/kv/range", {"key": b64(f"{self._p}/version")}, "control not read")
        kvs = reply.get("kvs") or []
        return str(kvs[0]["mod_revision"]) if kvs else ""

    def read(self) -> ControlState:
        state = ControlState("")
        for part in ("paused", "trigger"):
            start = f"{self._p}/{part}/"
            body = {"key": b64(start), "range_end": b64(range_end(start))}
            for kv in self._b.call("/v3/kv/range", body, "control not read").get("kvs") or []:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    if part == "paused":
                        p = Pause.from_json(unb64(kv["value"]))
                        state.paused[p.job] = p
                    else:
                        state.triggers.append(Trigger.from_json(unb64(kv["value"])))
        return state

    def pause(self, jobs: Sequence[str], by: str, now_us: int) -> None:
        ops = []
        for job in jobs:
            key = b64(f"{self._p}/paused/{safe_name(job)}")
            put = {"request_put": {"key": key, "value": b64(Pause(job, by, now_us).to_json())}}
            absent = {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            ops.append({"request_txn": {"compare": [absent], "success": [put], "failure": []}})
        self._write(ops, "not paused")

    def resume(self, jobs: Sequence[str]) -> None:
        keys = [b64(f"{self._p}/paused/{safe_name(job)}") for job in jobs]
        self._write([{"request_delete_range": {"key": k}} for k in keys], "not resumed")

    def trigger(self, trigger: Trigger) -> None:
        key = b64(f"{self._p}/trigger/{trigger.id}")
        put = {"request_put": {"key": key, "value": b64(trigger.to_json())}}
        self._write([put], "trigger not written")

    def remove_triggers(self, ids: Sequence[str]) -> None:
        keys = [b64(f"{self._p}/trigger/{i}") for i in ids]
        self._write([{"request_delete_range": {"key": k}} for k in keys], "trigger not removed")


__all__ = ["EtcdControl"]

"""`--lock none`: no coordination; every claim is won, leases are local to this process."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime

from .protocol import Batched, ClaimResult, Lease


class NullBackend(Batched):
    url = "none"

    def __init__(self) -> None:
        self._leases: dict[str, str] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        return None

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        return ClaimResult(True, instance, None)

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        with self._lock:
            if job in self._leases:
                return None
            token = uuid.uuid4().hex
            self._leases[job] = instance
            return Lease(job, instance, token, ttl)

    def lease_holder(self, job: str) -> str | None:
        return self._leases.get(job)

    def renew_lease(self, lease: Lease) -> bool:
        return self._leases.get(lease.job) == lease.instance

    def release_lease(self, lease: Lease) -> None:
        with self._lock:
            if self._leases.get(lease.job) == lease.instance:
                del self._leases[lease.job]

    def cleanup(self, job: str, now: datetime) -> int:
        return 0

    def server_time(self) -> None:
        return None  # no backend, no clock of its own

    def records(self) -> None:
        return None  # no backend, nowhere to keep them

    def close(self) -> None:
        return None

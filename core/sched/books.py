"""The records a backend keeps for the fleet: run and tick records (bounded by --history-keep
and --history-max-age), this instance's registration of its jobs, and its heartbeat.
"""

from __future__ import annotations

from datetime import datetime

from ..backendcalls import RegisterCall
from ..coordinator import Coordinator
from ..instants import to_us
from ..records import HEARTBEAT_EVERY, JobInfo, RunRecord
from .model import Job, JobState, run_id
from .shared import Shared
from .timers import Cleanup, Heartbeat

# Jobs per registration call: while a large file's jobs are added, the backend's thread writes
# each batch as the next is made.
REGISTER_BATCH = 2_000


class Books:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.register: dict[str, list[JobInfo]] = {}  # by lock URL: jobs not yet registered
        self.sent: list[RegisterCall] = []  # registrations the backends may not have tried yet
        self.recorded: dict[str, set[str]] = {}  # by lock URL: jobs written since the last prune
        self.heartbeat_every = HEARTBEAT_EVERY
        self._heartbeat_set = False
        self._cleanup_set = False

    def added(self, job: Job) -> None:
        """A job was added: clean-up every minute, and its registration and heartbeats where
        its backend keeps records."""
        sh = self.sh
        if not self._cleanup_set:
            self._cleanup_set = True
            sh.mono.push(Cleanup(sh.clock.monotonic()))
        if not sh.coordinator.has_records(job.lock):
            return
        info = JobInfo(
            job.job_id,
            str(job.schedule.spec),
            job.schedule.spec.zone or "UTC",
            str(job.command),
        )
        key = Coordinator.key(job.lock)
        batch = self.register.setdefault(key, [])
        batch.append(info)
        if len(batch) >= REGISTER_BATCH:  # the backend writes it while the next are added
            self._send(key, self.register.pop(key))
        # Heartbeats often enough that a quiet instance is noticed within its leases' TTL.
        every = min(self.heartbeat_every, job.settings.lease_ttl / 3)
        if every < self.heartbeat_every or not self._heartbeat_set:
            self.heartbeat_every = every
            sh.me.quiet_us = int(every * 3.5e6)
            self._heartbeat_set = True
            sh.mono.push(Heartbeat(sh.clock.monotonic() + every, every))

    def heartbeat(self) -> None:
        self.sh.me.seen_us = to_us(self.sh.clock.now())
        self.sh.coordinator.heartbeat(self.sh.me)

    def record(self, state: JobState, record: RunRecord) -> None:
        url = Coordinator.key(state.job.lock)
        self.recorded.setdefault(url, set()).add(state.id)
        self.sh.coordinator.record(state.job.lock, record, state.s.history_keep)

    def record_tick(
        self, state: JobState, tick: datetime, result: str, reason: str, held_by: str | None = None
    ) -> None:
        """A tick that did not run here although this instance handled it (skipped, missed)."""
        sh = self.sh
        if sh.coordinator.has_records(state.job.lock):
            rid = sh.fleet.run_id(state, tick) or run_id(state.id, tick, tick)
            self.record(
                state,
                RunRecord(
                    state.id,
                    to_us(tick),
                    rid,
                    sh.instance,
                    result,
                    reason=reason,
                    held_by=held_by,
                ),
            )

    def _send(self, url: str, infos: list[JobInfo]) -> None:
        sh = self.sh
        sh.me.seen_us = to_us(sh.clock.now())
        call = RegisterCall(infos, sh.me)
        self.sent = [c for c in self.sent if not c.tried.is_set()]
        self.sent.append(call)
        sh.coordinator.register(url or None, call)

    def flush_registrations(self, wait: float = 0.0) -> None:
        """Register the jobs added and not registered yet: one call per backend (per
        REGISTER_BATCH jobs). With ``wait``, return once each backend's worker has tried every
        write (or after ``wait`` seconds, or at a stop): a slow backend is written to in the
        background after that."""
        sh = self.sh
        pending, self.register = self.register, {}
        for url, infos in pending.items():
            self._send(url, infos)
        deadline = sh.clock.monotonic() + wait
        for call in self.sent if wait > 0 else ():
            while not sh.stop and not call.tried.wait(min(0.1, deadline - sh.clock.monotonic())):
                if sh.clock.monotonic() >= deadline:
                    return

    def cleanup(self) -> None:
        self.prune_records()
        self.sh.claims.clean_up()

    def prune_records(self) -> None:
        """Bound the records of the jobs written to since the last prune (--history-keep,
        --history-max-age): every minute, and at the stop."""
        sh = self.sh
        recorded, self.recorded = self.recorded, {}
        now_us = to_us(sh.clock.now())
        for url, ids in recorded.items():
            groups: dict[tuple[int, float], list[str]] = {}
            for job_id in ids:
                state = sh.jobs.get(job_id)
                if state is not None:
                    key = (state.s.history_keep, state.s.history_max_age)
                    groups.setdefault(key, []).append(job_id)
            for (keep, age), members in groups.items():
                sh.coordinator.prune(url or None, members, keep, now_us - int(age * 1e6))

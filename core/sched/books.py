"""The records a backend keeps for the fleet: run and tick records (bounded by --history-keep
and --history-max-age), this instance's registration of its jobs, and its heartbeat.

The heartbeat has two paces. While the instance has something the fleet must hear of soon if
it died — a run or an attempt of its own in flight (its record says ``running`` or
``retrying``), a record not written yet, another instance's run to watch, a job with --retries
to look after, a peer on the fast pace to judge — it beats every third of its leases' TTL (at
most HEARTBEAT_EVERY), so that a run lost with it is noticed within about 1.5 × the TTL. With
none of these it beats every IDLE_BEAT, saying so in its heartbeat (its quiet time is 3.5 beats
either way): an idle instance wakes about once a minute. The first record of a run in flight
switches to the fast pace at once, with a heartbeat that goes out before that record.
"""

from __future__ import annotations

from datetime import datetime

from ..backendcalls import RegisterCall
from ..coordinator import Coordinator
from ..instants import to_us
from ..records import HEARTBEAT_EVERY, JobInfo, RunRecord
from ..results import Result
from .model import CLEANUP_EVERY, Job, JobState, run_id
from .shared import Shared
from .timers import Cleanup, Heartbeat

# Jobs per registration call: while a large file's jobs are added, the backend's thread writes
# each batch as the next is made.
REGISTER_BATCH = 2_000
IDLE_BEAT = 60.0  # seconds between the heartbeats of an instance with nothing in flight
IN_FLIGHT = (Result.RUNNING, Result.RETRYING)  # the records that need the fast pace


class Books:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.register: dict[str, list[JobInfo]] = {}  # by lock URL: jobs not yet registered
        self.sent: list[RegisterCall] = []  # registrations the backends may not have tried yet
        self.recorded: dict[str, set[str]] = {}  # by lock URL: jobs written since the last prune
        self.heartbeat_every = HEARTBEAT_EVERY  # the fast pace
        self.beat_every = HEARTBEAT_EVERY  # the pace now: heartbeat_every, or IDLE_BEAT
        self.beat_gen = 0  # the live Heartbeat timer's; an older one finds itself replaced
        self._heartbeat_set = False
        self._cleanup_set = False

    def added(self, job: Job) -> None:
        """A job was added: its registration and heartbeats where its backend keeps records."""
        sh = self.sh
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
        # The fast pace: often enough that a quiet instance is noticed within its leases' TTL.
        every = min(self.heartbeat_every, job.settings.lease_ttl / 3)
        if every < self.heartbeat_every or not self._heartbeat_set:
            self.heartbeat_every = every
            self._heartbeat_set = True
            # Fast from the start: the registration is written with it, before anything is
            # known of the peers; the first beat that finds nothing in flight slows it.
            self._pace(every, sh.clock.monotonic() + every)

    def _pace(self, every: float, due: float) -> None:
        """Beat every ``every`` seconds from ``due`` on; the quiet time said from now on."""
        sh = self.sh
        self.beat_every = every
        sh.me.quiet_us = int(every * 3.5e6)
        self.beat_gen += 1
        sh.mono.push(Heartbeat(due, self.beat_gen))

    def beat(self, mono: float) -> None:
        """The Heartbeat timer: beat, at the pace that what is in flight asks for."""
        sh = self.sh
        every = self.heartbeat_every if self.in_flight() else max(IDLE_BEAT, self.heartbeat_every)
        self._pace(every, mono + every)
        self.heartbeat()
        sh.retries.adopt_orphans()
        sh.spread.beat()

    def hurry(self) -> bool:
        """Something came that needs the fast pace: beat at it from now on. True when the pace
        was the idle one."""
        if not self._heartbeat_set or self.beat_every <= self.heartbeat_every:
            return False
        self._pace(self.heartbeat_every, self.sh.clock.monotonic() + self.heartbeat_every)
        return True

    def in_flight(self) -> bool:
        """Whether the fleet must hear of this instance's death within about 1.5 × the TTL
        (or this instance must judge others' that soon): see the module's docstring."""
        sh = self.sh
        return bool(
            sh.retries.jobs
            or sh.retries.watched
            or sh.coordinator.pending()
            or sh.hookrun.busy()
            or sh.spread.peers_fast()
            or any(state.busy() for state in sh.jobs.values())
        )

    def heartbeat(self) -> None:
        self.sh.me.seen_us = to_us(self.sh.clock.now())
        self.sh.coordinator.heartbeat(self.sh.me)

    def farewell(self) -> None:
        """The last heartbeat, at the stop: a quiet time of 0, so that readers count this
        instance out at once (`pyjob status`, `trigger`, --spread's ranking) instead of after
        3.5 of its beats (3.5 minutes for an idle one)."""
        if self._heartbeat_set:
            self.sh.me.quiet_us = 0
            self.beat_gen += 1  # no beat after it
            self.heartbeat()

    def record(self, state: JobState, record: RunRecord) -> None:
        if record.result in IN_FLIGHT and self.hurry():
            # Readers must find this instance quiet within the fast pace's quiet time: the
            # heartbeat that says so goes out before the record (one queue, in order).
            self.heartbeat()
        url = Coordinator.key(state.job.lock)
        self.recorded.setdefault(url, set()).add(state.id)
        self.clean_up_later()
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

    def clean_up_later(self) -> None:
        """Records were written or claims made: the clean-up runs every minute from now on,
        until nothing is left for it (an idle process does not wake for it)."""
        if not self._cleanup_set:
            self._cleanup_set = True
            self.sh.mono.push(Cleanup(self.sh.clock.monotonic() + CLEANUP_EVERY))

    def cleanup(self) -> bool:
        """Prune records, remove expired claims; False when nothing is left to clean up."""
        self.prune_records()
        self.sh.claims.clean_up()
        self._cleanup_set = any(self.sh.claims.kept.values())
        return self._cleanup_set

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

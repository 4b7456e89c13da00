"""The scheduler of `pyjob run`: every job of a process on one timer, served by one thread.

A one-liner is a process with one job; `pyjob run --file` is the same process with many. The
thread sleeps (through the injected Clock) until the earliest thing that is due, and does it:

- wall-clock timers: claiming a job's next tick shortly before it, and the tick itself;
- monotonic timers: a run's timeout and kill deadline, lease renewals, the end of a ``--jitter``
  wait, claim clean-up, retrying lease releases that an outage left behind.

Both are heaps, so a process holding 10,000 jobs that are not due costs nothing but memory, and
the work at an instant grows with what is due then. Children are waited for without a thread per
job: the runner's pidfds and output pipes are waited on beside the timers. Every backend call goes
through the Coordinator, on its own thread, in batches (the claims of all jobs due at one instant
are one round trip); its results come back here, so no backend call ever blocks this thread.

Each job keeps its own overlap, queue, jitter, timeout, lease and ``--max-runs`` state. What to do
when a tick meets a running job is a pure function, ``overlap_action``, that tests table. Ticks
are computed from the previous tick, so nothing drifts; a tick already handled is never handled
again, whatever the wall clock does.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import events
from .backends.protocol import ClaimOutcome, ClaimRequest, ClaimResult, Lease
from .clock import MAX_SLEEP_SLICE, Clock, Waker
from .coordinator import Coordinator
from .errors import BackendError
from .hooks import hook_env, hooks_to_run
from .process import Command, FailedStart, Found, Handle, Runner
from .records import HEARTBEAT_EVERY, OUTPUT_TAIL, InstanceInfo, JobInfo, RunRecord
from .schedule import Schedule, iso, to_us
from .settings import JobSettings, OnBackendError, Overlap

CLAIM_LEAD = 0.5  # claim a tick this long before it (at most a quarter of its interval)
CLEANUP_EVERY = 60.0
OVERLAPPING = "overlap: the previous run is still going"
HOOK_KILL_AFTER = 5.0  # seconds from a hook's SIGTERM (--hook-timeout) to its SIGKILL
POLL = 0.05  # the longest sleep while a child has no pidfd (non-Linux)
_STOPPING = -1  # a turn's answer: the stop was asked for


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the scheduler runs it."""

    job_id: str
    schedule: Schedule
    command: Command
    settings: JobSettings = field(default_factory=JobSettings)
    env: Mapping[str, str] = field(default_factory=dict)  # the job's own, on the process's
    fingerprint: Any = None  # equal for two definitions a reload may keep running

    @property
    def lock(self) -> str | None:
        return self.settings.lock


def run_id(job: str, tick: datetime | None, started: datetime) -> str:
    """`<job>-<tick>`, the same on every host (like a Kubernetes Job's name)."""
    instant = tick or started
    stamp = instant.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    if instant.microsecond:
        stamp += f".{instant.microsecond:06d}"
    return f"{job}-{stamp}Z" + ("" if tick else "-now")


def overlap_action(policy: Overlap, queued: bool) -> str:
    """What a tick does when a run of its job is still going on this instance: ``skip``,
    ``queue``, ``skip-queued`` (one is already waiting), ``replace`` or ``start``."""
    if policy is Overlap.SKIP:
        return "skip"
    if policy is Overlap.QUEUE:
        return "skip-queued" if queued else "queue"
    if policy is Overlap.REPLACE:
        return "replace"
    return "start"


def keep_until(schedule: Schedule, tick: datetime, following: datetime | None = None) -> datetime:
    """How long a claim of ``tick`` must be kept: until well after the following tick, so that
    an instance whose clock lags cannot run it again."""
    following = following or schedule.next_tick(tick) or tick
    return following + max(following - tick, timedelta(minutes=10))


@dataclass(eq=False, slots=True)
class _Run:
    job: _JobState
    tick: datetime | None  # None for --run-now
    run_id: str
    fence: int | None
    lease: Lease | None
    started_wall: datetime
    started_mono: float
    handle: Handle | None = None
    terminated: str | None = None  # "timeout", "replace", "stop"
    deadline_gen: int = 0  # bumped to cancel the pending timeout/kill timers
    record: RunRecord | None = None
    tail: list[str] | None = None  # the last lines of output (--log-output), for the record
    tail_bytes: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1
    prior: list[dict[str, Any]] = field(default_factory=list)  # the earlier attempts


@dataclass(eq=False, slots=True)
class _Retry:
    """The next attempt of a failed run (--retries), waiting for its delay."""

    tick: datetime
    claim: ClaimResult | None
    attempt: int
    prior: list[dict[str, Any]]
    record: RunRecord | None
    cancelled: bool = False
    run: _Run | None = None  # the attempt that failed (hooks on a cancel see its result)
    code: int = 0
    duration: float = 0.0


@dataclass(eq=False, slots=True)
class _Hook:
    """A hook command running after a run (core/hooks.py)."""

    job: _JobState
    name: str
    run_id: str
    started_mono: float
    handle: Handle | None = None
    gen: int = 0
    timed_out: bool = False


@dataclass(eq=False, slots=True)
class _Deferred:
    tick: datetime
    claim: ClaimResult | None
    lease: Lease | None


@dataclass(eq=False, slots=True)
class _JobState:
    job: Job
    next_tick: datetime | None = None
    prev: datetime | None = None
    gen: int = 0  # bumped whenever the pending wall timers of the job are obsolete
    outcomes: dict[datetime, ClaimOutcome | BackendError | None] = field(default_factory=dict)
    waiting: set[datetime] = field(default_factory=set)  # ticks due whose claim is not back yet
    runs: list[_Run] = field(default_factory=list)
    deferred: list[_Deferred] = field(default_factory=list)
    queued: tuple[datetime, ClaimResult | None] | None = None
    replacing: tuple[datetime, ClaimResult | None] | None = None
    leasing: int = 0  # claims with a lease request under way
    ticks_run: int = 0  # by this instance or another (for --max-runs)
    runs_started: int = 0
    failures: int = 0
    last_result: str | None = None  # of this instance's last run (--notify-on change fallback)
    catchup: list[tuple[datetime, ClaimResult]] = field(default_factory=list)  # won, to run
    catching_up: bool = False  # a --catch-up look-up or claim is under way
    retries: list[_Retry] = field(default_factory=list)  # attempts waiting for their delay
    attempts: dict[datetime, tuple[int, list[dict[str, Any]]]] = field(default_factory=dict)
    adopting: bool = False  # a look for another instance's orphaned attempts is under way
    ahead: tuple[datetime, datetime | None] | None = None  # (tick, its following), at its claim
    # (tick, run id, environment, where its program is), made at its claim
    ready: tuple[datetime, str, dict[str, str], Found] | None = None
    retiring: bool = False  # removed or changed by a reload: finishes its run, then goes
    ended: bool = False

    @property
    def id(self) -> str:
        return self.job.job_id

    @property
    def s(self) -> JobSettings:
        return self.job.settings

    def busy(self) -> bool:
        return bool(
            self.runs
            or self.deferred
            or self.queued
            or self.replacing
            or self.waiting
            or self.catchup
            or self.catching_up
            or self.retries
            or self.attempts
        )


class Scheduler:
    def __init__(
        self,
        clock: Clock,
        runner: Runner,
        emit: events.Emit,
        *,
        instance: str,
        coordinator: Coordinator | None = None,
        env: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        threaded: bool = True,
        opener: Callable[[str | None], Any] | None = None,
    ) -> None:
        self.clock = clock
        self.runner = runner
        self._emit = emit
        self.instance = instance
        self.rng = rng or random.Random()
        self.waker = Waker()
        self.coordinator = coordinator or Coordinator(
            clock, instance, self.waker, self._report, env=env, threaded=threaded, opener=opener
        )
        self.jobs: dict[str, _JobState] = {}
        # Every job's commands get this environment plus the job's own (Job.env): one copy of
        # the process environment, not one per job (10,000 jobs held 50 MiB of copies).
        self._base_env: Mapping[str, str] = dict(env) if env else {}
        self.retiring: list[_JobState] = []
        self._by_handle: dict[int, _Run] = {}
        self._hooks: dict[int, _Hook] = {}
        self._hooks_pending = 0  # --notify-on change: hooks waiting for the previous result
        self._down: set[str] = set()  # lock URLs whose last claim failed (an outage)
        self._retry_jobs: set[str] = set()  # jobs with --retries: heartbeats look for orphans
        self._wall: list[tuple[int, int, str, _JobState, int, datetime]] = []
        self._mono: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._stop = False
        self._force = False
        self._reload = False
        self._loader: Callable[[], Sequence[Job]] | None = None
        self._cleanup_scheduled = False
        self._register: dict[str, list[JobInfo]] = {}  # by lock URL: jobs not yet registered
        self._recorded: dict[str, set[str]] = {}  # by lock URL: jobs written since the last prune
        # by lock URL: job -> the latest keep_until (µs) of its claims not yet cleaned up
        self._claims_kept: dict[str, dict[str, int]] = {}
        self._heartbeat_scheduled = False
        self._heartbeat_every = HEARTBEAT_EVERY
        # The events of one turn of the loop, written at its end: writing a log line (or a
        # record) between two spawns of one tick would make every later command of it late.
        # In a turn: its events, in order, as (kind, job, tick, at, fields), and its runs whose
        # bookkeeping waits until the turn's spawns are done (see run()).
        self._held: list[tuple[str, str, datetime | None, datetime, dict[str, Any]] | None] | None
        self._held = None
        self._spawned: list[tuple[_Run, int]] = []
        self._loop_thread: int | None = None
        import socket

        from . import __version__
        from .zones import tzdata_version

        self.me = InstanceInfo(
            instance, socket.gethostname(), os.getpid(), __version__, tzdata=tzdata_version()
        )

    # ------------------------------------------------------------------ events

    def _holding(self) -> list[Any] | None:
        """The turn's held events, when called in a turn of the loop (on its thread)."""
        held = self._held
        return held if held is not None and threading.get_ident() == self._loop_thread else None

    def emit(self, kind: str, job: str, tick: datetime | None, **fields: Any) -> None:
        held = self._holding()
        if held is not None:
            # Stamped now; made and written once the turn's spawns are done.
            held.append((kind, job, tick, self.clock.now(), fields))
        else:
            self._emit(events.make(kind, job, self.instance, tick, self.clock.now(), **fields))

    def _report(self, job: str, tick: datetime | None, kind: str, **fields: Any) -> None:
        """Events of the coordinator's worker threads."""
        self.emit(kind, job, tick, **fields)

    @property
    def process_job(self) -> str:
        """The job named by process-wide events: the one job of a one-liner, else ``*``."""
        return next(iter(self.jobs)) if len(self.jobs) == 1 and not self.retiring else "*"

    # ------------------------------------------------------------------ jobs

    def open(self, jobs: Sequence[Job]) -> None:
        """Open and check the backend of every job (BackendError: unusable)."""
        for job in jobs:
            self.coordinator.open(job.lock)

    def add(self, job: Job, start: datetime | None = None) -> None:
        """Schedule ``job`` (its backend must be open) from ``start`` (default: now)."""
        start = start or self.clock.now()
        state = _JobState(job)
        self.jobs[job.job_id] = state
        self.emit(
            "started",
            job.job_id,
            None,
            schedule=str(job.schedule.spec),
            command=str(job.command),
            backend=self.coordinator.backend(job.lock).url,
            overlap=job.settings.overlap.value,
        )
        if job.settings.run_now:
            self._start(state, None, None, None)
        state.prev = start
        self._set_next(state, job.schedule.next_tick(start))
        if job.settings.catch_up:
            self._check_catch_up(state)
        if job.settings.retries:
            self._retry_jobs.add(job.job_id)
        if not self._cleanup_scheduled:
            self._cleanup_scheduled = True
            self._push_mono(self.clock.monotonic(), "cleanup", None)
        if self.coordinator.has_records(job.lock):
            info = JobInfo(
                job.job_id,
                str(job.schedule.spec),
                job.schedule.spec.zone or "UTC",
                str(job.command),
            )
            self._register.setdefault(Coordinator.key(job.lock), []).append(info)
            # Heartbeats often enough that a quiet instance is noticed within its leases' TTL.
            every = min(self._heartbeat_every, job.settings.lease_ttl / 3)
            if every < self._heartbeat_every or not self._heartbeat_scheduled:
                self._heartbeat_every = every
                self.me.quiet_us = int(every * 3.5e6)
                self._heartbeat_scheduled = True
                self._push_mono(self.clock.monotonic() + every, "heartbeat", every)

    def _set_next(self, state: _JobState, tick: datetime | None) -> None:
        state.gen += 1
        state.next_tick = tick
        if tick is None:
            return
        assert state.prev is not None
        lead = min(CLAIM_LEAD, (tick - state.prev).total_seconds() / 4)
        # One entry per job: the claim pushes its tick (a job not due costs one heap entry).
        self._push_wall(tick - timedelta(seconds=max(0.0, lead)), "claim", state, tick)
        self.emit(
            "next-tick",
            state.id,
            tick,
            in_seconds=round((tick - self.clock.now()).total_seconds(), 6),
        )

    def _push_wall(self, at: datetime, kind: str, state: _JobState, tick: datetime) -> None:
        heapq.heappush(self._wall, (to_us(at), next(self._seq), kind, state, state.gen, tick))

    def _push_mono(self, at: float, kind: str, ref: Any) -> None:
        heapq.heappush(self._mono, (at, next(self._seq), kind, ref))

    # ------------------------------------------------------------------ requests (signal-safe)

    def request_stop(self, force: bool = False) -> None:
        """From a signal handler: sets flags only, wakes the loop."""
        self._force = self._force or force
        self._stop = True
        self.waker.wake()

    def request_reload(self) -> None:
        self._reload = True
        self.waker.wake()

    # ------------------------------------------------------------------ the loop

    def run(self, reload: Callable[[], Sequence[Job]] | None = None) -> int:
        """Until stopped (0; 130 when forced) or until every job's schedule has ended (0 if every
        run succeeded, else 1). ``reload`` gives the jobs anew on SIGHUP."""
        self._loader = reload
        self._loop_thread = threading.get_ident()
        ready: list[int] = []
        while True:
            # A turn's log lines, record writes and the bookkeeping of its runs wait until its
            # spawns are done (the coordinator's claims, renewals and releases do not wait):
            # between two spawns of a tick of many jobs, each step costs several times what it
            # costs in a row afterwards, the caches being cold after each spawn.
            self._held = []
            self.coordinator.hold()
            try:
                code = self._turn(ready)
            finally:
                spawned, self._spawned = self._spawned, []
                for run, slot in spawned:
                    self._started(run, slot)
                held, self._held = self._held, None
                self.runner.flush()
                self.coordinator.flush()
                for entry in held:
                    if entry is not None:
                        kind, job, tick, at, fields = entry
                        self._emit(events.make(kind, job, self.instance, tick, at, **fields))
            if code == _STOPPING:
                return self._shutdown()
            if code is not None:
                return code
            ready = self.clock.wait_for(self.waker, self._sleep_for(), self.runner.fds())

    def _turn(self, ready: Sequence[int]) -> int | None:
        """One turn of the loop: what is due now. An exit code when the run is over, else None."""
        self.coordinator.drain()
        self._reap(ready)
        if self._stop:
            return _STOPPING
        if self._reload:
            self._reload = False
            self._do_reload()
        now = self.clock.now()
        mono = self.clock.monotonic()
        self._due_mono(mono)
        self._due_wall(now)
        if self._register:
            self._flush_registrations()
        self.coordinator.drain()
        if self._finished():
            self._prune_records()
            failures = sum(j.failures for j in self.jobs.values())
            if len(self.jobs) > 1:
                self.emit("exhausted", "*", None, jobs=len(self.jobs))
            return 0 if failures == 0 else 1
        return None

    def _finished(self) -> bool:
        if not self.jobs or self.retiring or self._hooks or self._hooks_pending > 0:
            return False
        return not any(not j.ended for j in self.jobs.values())  # stops at the first live one

    def _sleep_for(self) -> float:
        candidates = [MAX_SLEEP_SLICE]  # wake a few times a minute to notice clock steps
        now = self.clock.now()
        mono = self.clock.monotonic()
        while self._wall and self._stale_wall(self._wall[0]):
            heapq.heappop(self._wall)
        if self._wall:
            candidates.append((self._wall[0][0] - to_us(now)) / 1e6)
        if self._mono:
            candidates.append(self._mono[0][0] - mono)
        due = self.runner.next_due()
        if due is not None:
            candidates.append(due - mono)
        polling = getattr(self.runner, "polling", None)
        if polling is not None and polling():
            candidates.append(POLL)
        return max(0.0, min(candidates))

    def _stale_wall(self, entry: tuple[int, int, str, _JobState, int, datetime]) -> bool:
        _, _, _, state, gen, _ = entry
        return gen != state.gen or state.ended or state.retiring

    def _due_wall(self, now: datetime) -> None:
        now_us = to_us(now)
        claims: dict[str | None, list[tuple[_JobState, datetime]]] = {}
        ticks: list[tuple[_JobState, datetime]] = []
        while self._wall and self._wall[0][0] <= now_us:
            entry = heapq.heappop(self._wall)
            if self._stale_wall(entry):
                continue
            _, _, kind, state, _, tick = entry
            if kind == "claim":
                if tick not in state.outcomes:
                    claims.setdefault(state.job.lock, []).append((state, tick))
                # The following tick, the run id, the environment and the program's place on
                # PATH, made now rather than between the spawns of this one.
                state.ahead = (tick, state.job.schedule.next_tick(tick))
                rid = run_id(state.id, tick, tick)
                env = self._env(state, tick, rid, None)
                found = self.runner.resolve(state.job.command, env)
                state.ready = (tick, rid, env, found)
                self._push_wall(tick, "tick", state, tick)  # popped below when already due
            else:
                ticks.append((state, tick))
        for url, items in claims.items():
            self._claim(url, items)
        after: list[tuple[_JobState, datetime | None]] = []
        for state, tick in ticks:
            self._tick(state, tick, now, after)
        for state, following in after:  # once every due tick is decided and started
            self._tick_done(state, following)

    def _due_mono(self, mono: float) -> None:
        renew: dict[str | None, list[_Run]] = {}
        while self._mono and self._mono[0][0] <= mono:
            _, _, kind, ref = heapq.heappop(self._mono)
            if kind == "deadline":
                run, gen = ref
                if run.deadline_gen == gen and run in run.job.runs:
                    self._terminate(run, "timeout")
            elif kind == "kill":
                run, gen = ref
                if run.deadline_gen == gen and run in run.job.runs and run.handle is not None:
                    run.handle.signal_group(signal.SIGKILL)
            elif kind == "renew":
                run = ref
                if run in run.job.runs and run.lease is not None:
                    renew.setdefault(run.job.job.lock, []).append(run)
            elif kind == "jitter":
                state, d = ref
                if d in state.deferred:
                    state.deferred.remove(d)
                    if not self._stop:
                        self._start(state, d.tick, d.claim, d.lease)
            elif kind == "retry":
                state, retry = ref
                self._retry_now(state, retry)
            elif kind == "hook-timeout":
                hook, gen = ref
                if hook.gen == gen and hook.handle is not None and id(hook.handle) in self._hooks:
                    hook.timed_out = True
                    hook.gen += 1
                    hook.handle.signal_group(signal.SIGTERM)
                    self._push_mono(mono + HOOK_KILL_AFTER, "hook-timeout", (hook, -1))
                elif gen == -1 and hook.handle is not None and id(hook.handle) in self._hooks:
                    hook.handle.signal_group(signal.SIGKILL)
            elif kind == "heartbeat":
                if ref != self._heartbeat_every:
                    continue  # replaced by a shorter interval
                self._push_mono(mono + self._heartbeat_every, "heartbeat", self._heartbeat_every)
                self.me.seen_us = to_us(self.clock.now())
                self.coordinator.heartbeat(self.me)
                self._adopt_orphans()
            elif kind == "cleanup":
                self._push_mono(mono + CLEANUP_EVERY, "cleanup", None)
                self._cleanup()
        for url, runs in renew.items():
            self._renew(url, runs, mono)

    # ------------------------------------------------------------------ claims

    def _claim(self, url: str | None, items: list[tuple[_JobState, datetime]]) -> None:
        requests = []
        now = self.clock.now()
        useful = float("inf")  # seconds until the first of the following ticks is due
        for state, tick in items:
            state.outcomes[tick] = None  # under way
            # No lease while an earlier request for one is under way: its answer may hold the
            # lease (a tick that went by meanwhile), and is released only when it is back.
            lease = (
                state.s.overlap is Overlap.SKIP
                and not state.runs
                and not state.deferred
                and not state.leasing
            )
            state.leasing += lease
            following = state.job.schedule.next_tick(tick)
            if following is not None:
                useful = min(useful, (following - now).total_seconds())
            until = keep_until(state.job.schedule, tick, following)
            kept = self._claims_kept.setdefault(Coordinator.key(url), {})
            kept[state.id] = max(kept.get(state.id, 0), to_us(until))
            ttl = state.s.lease_ttl if lease else None
            requests.append(ClaimRequest(state.id, tick, until, ttl))

        def done(result: list[ClaimOutcome] | BackendError) -> None:
            self._backend_state(url, isinstance(result, BackendError))
            for i, (state, tick) in enumerate(items):
                outcome = result if isinstance(result, BackendError) else result[i]
                if requests[i].lease_ttl is not None:
                    state.leasing -= 1
                self._claimed(state, tick, outcome)

        expires = None if useful == float("inf") else self.clock.monotonic() + useful
        self.coordinator.claim(url, requests, done, expires)

    def _claimed(
        self, state: _JobState, tick: datetime, outcome: ClaimOutcome | BackendError
    ) -> None:
        """A claim's outcome is back (on this thread)."""
        if tick in state.waiting and (
            state.ended or (state.prev is not None and tick < state.prev)
        ):
            # Due, and overtaken by a later tick while the backend kept the answer waiting.
            state.waiting.discard(tick)
            state.outcomes.pop(tick, None)
            self._late_answer(state, tick, outcome)
            self._after_tick(state)
            return
        if tick not in state.outcomes or state.ended:
            self._drop_lease(state, outcome)  # the tick went by meanwhile (missed, retired)
            return
        state.outcomes[tick] = outcome
        if isinstance(outcome, ClaimOutcome) and outcome.claim.won:
            self.emit("claimed", state.id, tick, fence=outcome.claim.fence)
        if tick in state.waiting:
            state.waiting.discard(tick)
            self._decide(state, tick, self.clock.now())

    def _late_answer(
        self, state: _JobState, tick: datetime, outcome: ClaimOutcome | BackendError
    ) -> None:
        """The answer to a due tick's claim came after the following tick was due: the tick is
        not run (it is no longer the most recent one); say why."""
        self._drop_lease(state, outcome)
        if isinstance(outcome, BackendError):
            self.emit("backend-error", state.id, tick, error=str(outcome), action="skip")
        elif outcome.claim.refused:
            self.emit("refused", state.id, tick, reason=outcome.claim.refused)
        elif not outcome.claim.won:
            state.ticks_run += 1
            self.emit(
                "lost", state.id, tick, holder=outcome.claim.holder, fence=outcome.claim.fence
            )
        else:
            state.ticks_run += 1
            self._missed(
                state, [tick], "the backend answered the claim after the next tick was due"
            )

    # ------------------------------------------------------------------ catch-up

    def _backend_state(self, url: str | None, failed: bool) -> None:
        """Track outages per lock URL: when claims succeed again after failing, jobs with
        --catch-up look for ticks the fleet missed meanwhile."""
        key = Coordinator.key(url)
        if failed:
            self._down.add(key)
        elif key in self._down:
            self._down.discard(key)
            for state in list(self.jobs.values()):
                if state.s.catch_up and Coordinator.key(state.job.lock) == key:
                    self._check_catch_up(state)

    def _check_catch_up(self, state: _JobState) -> None:
        """Ask the backend for the latest tick anyone handled, then plan the catch-up."""
        if state.catching_up or state.ended or state.retiring:
            return

        def done(latest: tuple[int, int | None] | BackendError | None) -> None:
            state.catching_up = False
            if isinstance(latest, BackendError):
                self.emit(
                    "backend-error",
                    state.id,
                    None,
                    error=str(latest),
                    action="catch-up when the backend answers again",
                )
                self._down.add(Coordinator.key(state.job.lock))
            elif latest is not None:  # a fresh job has no proof that anything was missed
                self._plan_catch_up(state, *latest)
            self._maybe_end(state)

        state.catching_up = True
        if not self.coordinator.latest(state.job.lock, state.id, done):
            state.catching_up = False  # no records (--lock none): nothing to judge by

    def _plan_catch_up(self, state: _JobState, latest_us: int, backend_us: int | None) -> None:
        from datetime import UTC

        now = self.clock.now()
        # The window is judged by the backend's clock where it has one (the fleet's time).
        judged = now if backend_us is None else datetime.fromtimestamp(backend_us / 1e6, UTC)
        schedule = state.job.schedule
        window = state.s.catch_up or 0.0
        first = datetime.fromtimestamp(latest_us / 1e6, UTC)
        until = state.next_tick  # from this one on, the ticks are handled as usual
        missed: list[datetime] = []
        t = schedule.next_tick(first)
        while t is not None and t <= now and (until is None or t < until) and len(missed) < 10**5:
            missed.append(t)
            t = schedule.next_tick(t)
        if not missed:
            return
        recent = [t for t in missed if (judged - t).total_seconds() <= window]
        run = recent[-state.s.catch_up_max :] if state.s.catch_up_all else recent[-1:]
        chosen = set(run)
        outside = [t for t in missed if t not in chosen and t not in recent]
        passed_over = [t for t in recent if t not in chosen]
        if outside:
            self._missed(state, outside, "missed by the whole fleet, before the --catch-up window")
        if passed_over:
            why = "--catch-up-max" if state.s.catch_up_all else "only the most recent"
            self._missed(state, passed_over, f"missed by the whole fleet; --catch-up runs {why}")
        if not run:
            return
        keep = [keep_until(schedule, t) for t in run]
        requests = [ClaimRequest(state.id, t, k, None) for t, k in zip(run, keep, strict=True)]

        def claimed(result: list[ClaimOutcome] | BackendError) -> None:
            state.catching_up = False
            if isinstance(result, BackendError):
                self.emit(
                    "backend-error",
                    state.id,
                    run[-1],
                    error=str(result),
                    action="catch-up when the backend answers again",
                )
                self._down.add(Coordinator.key(state.job.lock))
                return
            for tick, outcome in zip(run, result, strict=True):
                c = outcome.claim
                if c.refused:
                    self.emit("refused", state.id, tick, reason=c.refused)
                elif not c.won:
                    self.emit("lost", state.id, tick, holder=c.holder, fence=c.fence)
                else:
                    state.catchup.append((tick, c))
                    self.emit("claimed", state.id, tick, fence=c.fence)
            self._next_catch_up(state, len(missed))

        state.catching_up = True
        kept = self._claims_kept.setdefault(Coordinator.key(state.job.lock), {})
        kept[state.id] = max(kept.get(state.id, 0), to_us(max(keep)))
        self.coordinator.claim(state.job.lock, requests, claimed)

    def _next_catch_up(self, state: _JobState, missed: int | None = None) -> None:
        """Start the oldest caught-up tick won, once nothing of the job runs here."""
        if not state.catchup or state.runs or state.deferred or self._stop or state.ended:
            return
        tick, claim = state.catchup.pop(0)
        state.ticks_run += 1
        late = (self.clock.now() - tick).total_seconds()
        self.emit(
            "caught-up",
            state.id,
            tick,
            late=round(late, 6),
            missed=missed if missed is not None else len(state.catchup) + 1,
            window=state.s.catch_up,
        )
        if state.s.overlap is Overlap.SKIP:
            self._lease_then_start(state, tick, claim)
        else:
            self._start(state, tick, claim, None)

    def _drop_lease(self, state: _JobState, outcome: ClaimOutcome | BackendError | None) -> None:
        if isinstance(outcome, ClaimOutcome) and outcome.lease is not None:
            self.coordinator.release(state.job.lock, [outcome.lease])

    # ------------------------------------------------------------------ ticks

    def _tick(
        self,
        state: _JobState,
        tick: datetime,
        now: datetime,
        after: list[tuple[_JobState, datetime | None]],
    ) -> None:
        """``tick`` of ``state`` is due: find the most recent due tick, decide it, and only then
        schedule the following one, which waits in ``after`` until every tick due now is decided
        (nothing but the decisions stands before the spawns)."""
        tick, following = self._catch_up(state, tick, now)
        state.prev = tick
        state.gen += 1  # this tick's timers are spent
        state.next_tick = following  # provisional: --max-runs may still end the job here
        late = (now - tick).total_seconds()
        grace = state.s.misfire_grace
        if grace is not None and late > grace:
            self._drop_lease(state, state.outcomes.pop(tick, None))
            self._missed(state, [tick], f"{late:.3f}s late, over --misfire-grace {grace:g}s")
        else:
            if tick not in state.outcomes:
                self._claim(state.job.lock, [(state, tick)])
                self.coordinator.drain()  # inline coordinators answer at once
            if state.outcomes.get(tick) is None:
                state.waiting.add(tick)  # decided when the claim is back
            else:
                self._decide_tick(state, tick)
        after.append((state, following))

    def _tick_done(self, state: _JobState, following: datetime | None) -> None:
        if state.next_tick is not None and state.next_tick == following:
            self._set_next(state, following)
        self._after_tick(state)

    def _after_tick(self, state: _JobState) -> None:
        if state.s.max_runs is not None and state.ticks_run >= state.s.max_runs:
            self._set_next(state, None)
        self._maybe_end(state)

    def _catch_up(
        self, state: _JobState, first: datetime, now: datetime
    ) -> tuple[datetime, datetime | None]:
        """The most recent tick that is due; older passed ticks are reported as missed."""
        schedule = state.job.schedule
        tick = first
        missed: list[datetime] = []
        ahead, state.ahead = state.ahead, None
        following = ahead[1] if ahead is not None and ahead[0] == tick else schedule.next_tick(tick)
        while following is not None and following <= now:
            missed.append(tick)
            tick, following = following, schedule.next_tick(following)
            if len(missed) > 1_000_000:  # pragma: no cover - absurd suspend on a 1µs schedule
                break
        if missed:
            self._missed(state, missed, "late: a later tick was already due")
        for old in [t for t in state.outcomes if t < tick]:
            self._drop_lease(state, state.outcomes.pop(old))
        return tick, following

    def _decide(self, state: _JobState, tick: datetime, now: datetime) -> None:
        """The claim of a due tick is known: run it, or say why not."""
        self._decide_tick(state, tick)
        self._after_tick(state)

    def _decide_tick(self, state: _JobState, tick: datetime) -> None:
        outcome = state.outcomes.pop(tick, None)
        if state.ended or self._stop:
            self._drop_lease(state, outcome)
            return
        limit = state.s.max_runs
        if limit is not None and state.ticks_run >= limit:
            self._drop_lease(state, outcome)
            return
        claim: ClaimResult | None = None
        lease: Lease | None = None
        if isinstance(outcome, BackendError) or outcome is None:
            fail_open = state.s.on_backend_error is OnBackendError.RUN
            self.emit(
                "backend-error",
                state.id,
                tick,
                error=str(outcome or "no answer"),
                action="run" if fail_open else "skip",
            )
            if not fail_open:
                return
        elif outcome.claim.refused:
            self.emit("refused", state.id, tick, reason=outcome.claim.refused)
            return
        elif not outcome.claim.won:
            state.ticks_run += 1
            self.emit(
                "lost", state.id, tick, holder=outcome.claim.holder, fence=outcome.claim.fence
            )
            return
        else:
            claim, lease = outcome.claim, outcome.lease
        state.ticks_run += 1
        if state.runs or state.deferred:
            if lease is not None:
                self.coordinator.release(state.job.lock, [lease])
            self._overlap(state, tick, claim)
            return
        if state.s.overlap is Overlap.SKIP and isinstance(outcome, ClaimOutcome):
            if lease is None and outcome.lease_holder is not None:
                self._skipped(state, tick, OVERLAPPING, outcome.lease_holder)
                return
            if lease is None:
                # The job was busy here when it claimed, and is not any more: take the lease now.
                self._lease_then_start(state, tick, claim)
                return
        self._jitter_or_start(state, tick, claim, lease)

    def _lease_then_start(
        self, state: _JobState, tick: datetime, claim: ClaimResult | None, jitter: bool = True
    ) -> None:
        until = keep_until(state.job.schedule, tick)
        request = ClaimRequest(state.id, tick, until, state.s.lease_ttl)
        state.leasing += 1

        def done(result: list[ClaimOutcome] | BackendError) -> None:
            state.leasing -= 1
            if isinstance(result, BackendError):
                self.emit("backend-error", state.id, tick, error=str(result), action="skip")
                return
            got = result[0]
            if state.ended or self._stop or state.runs or state.deferred:
                self._drop_lease(state, got)
                if not (state.ended or self._stop):
                    self._overlap(state, tick, claim)
                return
            if got.lease is None:
                self._skipped(state, tick, OVERLAPPING, got.lease_holder or "unknown")
                return
            if jitter:
                self._jitter_or_start(state, tick, claim, got.lease)
            else:
                self._start(state, tick, claim, got.lease)

        # Claiming a tick this instance already holds is idempotent: it only takes the lease.
        self.coordinator.claim(state.job.lock, [request], done)

    def _skipped(
        self,
        state: _JobState,
        tick: datetime,
        reason: str,
        running_on: str | None,
        running: list[str] | None = None,
    ) -> None:
        fields: dict[str, Any] = {"reason": reason}
        if running is not None:
            fields["running"] = running
        if running_on is not None:
            fields["running_on"] = running_on
        self.emit("skipped", state.id, tick, **fields)
        self._record_tick(state, tick, "skipped", reason, running_on)

    def _missed(self, state: _JobState, ticks: list[datetime], reason: str) -> None:
        self.emit(
            "missed",
            state.id,
            ticks[-1],
            count=len(ticks),
            first=iso(ticks[0]),
            last=iso(ticks[-1]),
            reason=reason,
        )
        for tick in ticks[-state.s.history_keep :]:
            self._record_tick(state, tick, "missed", reason)

    def _jitter_or_start(
        self, state: _JobState, tick: datetime, claim: ClaimResult | None, lease: Lease | None
    ) -> None:
        if state.s.jitter:
            delay = self.rng.uniform(0, state.s.jitter)
            d = _Deferred(tick, claim, lease)
            state.deferred.append(d)
            self._push_mono(self.clock.monotonic() + delay, "jitter", (state, d))
            self.emit("jitter", state.id, tick, delay=round(delay, 6))
            return
        self._start(state, tick, claim, lease)

    def _overlap(self, state: _JobState, tick: datetime, claim: ClaimResult | None) -> None:
        """Apply --overlap while a run of the job is going on here."""
        running = [iso(r.tick) if r.tick else "run-now" for r in state.runs]
        action = overlap_action(state.s.overlap, state.queued is not None)
        if action == "skip":
            self._skipped(state, tick, OVERLAPPING, self.instance, running)
        elif action == "skip-queued":
            self._skipped(state, tick, "overlap: one run is already queued", None, running)
        elif action == "queue":
            state.queued = (tick, claim)
            self.emit("queued", state.id, tick, running=running)
        elif action == "replace":
            for r in state.runs:
                self._terminate(r, "replace")
            state.replacing = (tick, claim)
        else:
            self._jitter_or_start(state, tick, claim, None)

    # ------------------------------------------------------------------ runs

    def _env(
        self, state: _JobState, tick: datetime | None, rid: str, fence: int | None
    ) -> dict[str, str]:
        env = {**self._base_env, **state.job.env}
        instant = tick or self.clock.now()
        env.update(
            PYJOB_JOB=state.id,
            PYJOB_TICK=iso(instant, state.job.schedule.zone),
            PYJOB_TICK_UNIX=_unix_text(instant),
            PYJOB_RUN_ID=rid,
            PYJOB_INSTANCE=self.instance,
        )
        if fence is not None:
            env["PYJOB_FENCE"] = str(fence)
        else:
            env.pop("PYJOB_FENCE", None)
        return env

    def _start(
        self,
        state: _JobState,
        tick: datetime | None,
        claim: ClaimResult | None,
        lease: Lease | None,
    ) -> None:
        started = self.clock.now()
        fence = claim.fence if claim else None
        ready = state.ready
        found: Found = None
        if ready is not None and tick is not None and ready[0] == tick:
            state.ready = None
            _, rid, env, found = ready  # made at its claim
            if fence is not None:
                env["PYJOB_FENCE"] = str(fence)
        else:
            rid = run_id(state.id, tick, started)
            env = self._env(state, tick, rid, fence)
        attempt, prior = state.attempts.pop(tick, (1, [])) if tick is not None else (1, [])
        env["PYJOB_ATTEMPT"] = str(attempt)
        mono = self.clock.monotonic()
        run = _Run(state, tick, rid, fence, lease, started, mono, env=env, attempt=attempt)
        run.prior = prior
        on_line = None
        if state.s.log_output:
            run.tail = []

            def on_line(stream: str, line: str) -> None:
                self.emit("output", state.id, tick, stream=stream, line=line, run_id=rid)
                _keep_tail(run, line)

        handle = self.runner.start(state.job.command, env, on_line, found)
        run.handle = handle
        state.runs.append(run)
        state.runs_started += 1
        self._by_handle[id(handle)] = run
        held = self._holding()
        if held is not None:
            self._spawned.append((run, len(held)))
            held.append(None)  # the place of its run-started event
        else:  # outside a turn (--run-now at start): nothing batches, the reaper hears now
            self.runner.flush()
            self._started(run, None)

    def _started(self, run: _Run, slot: int | None) -> None:
        """A run's timers, first record and run-started event (in ``slot`` of the turn's
        events when given), once the spawns of its turn are done."""
        state, tick, started, mono = run.job, run.tick, run.started_wall, run.started_mono
        fence, rid, attempt, prior, lease = run.fence, run.run_id, run.attempt, run.prior, run.lease
        handle = run.handle
        if state.s.timeout is not None and run.terminated is None:  # not replaced meanwhile
            self._push_mono(mono + state.s.timeout, "deadline", (run, run.deadline_gen))
        if lease is not None and lease.ttl:
            self._push_mono(mono + lease.ttl / 3, "renew", run)
        lateness = round((started - tick).total_seconds(), 6) if tick else 0.0
        run.record = RunRecord(
            state.id,
            to_us(tick or started),
            rid,
            self.instance,
            "running",
            fence=fence,
            started_us=to_us(started),
            lateness=lateness,
            attempt=attempt,
            attempts=prior or None,
        )
        self._record(state, run.record)
        fields: dict[str, Any] = {"run_id": rid, "pid": None, "lateness": lateness}
        if isinstance(handle, FailedStart):
            fields.update(attempt=attempt, error=handle.start_error)
        else:
            assert handle is not None
            fields.update(pid=handle.pid, fence=fence, attempt=attempt)
        if slot is not None and self._held is not None:
            self._held[slot] = ("run-started", state.id, tick, started, fields)
        else:
            self.emit("run-started", state.id, tick, **fields)

    def _reap(self, ready: Sequence[int]) -> None:
        for handle, code in self.runner.service(ready):
            hook = self._hooks.pop(id(handle), None)
            if hook is not None:
                self._hook_done(hook, code)
                continue
            run = self._by_handle.pop(id(handle), None)
            if run is None:  # pragma: no cover - a handle this scheduler did not start
                continue
            self._finish(run, code)

    def _finish(self, run: _Run, code: int) -> None:
        state = run.job
        state.runs.remove(run)
        duration = self.clock.monotonic() - run.started_mono
        lateness = (run.started_wall - run.tick).total_seconds() if run.tick else 0.0
        result = _result(run, code)
        delay = self._retry_delay(run, result, code)
        if code != 0 and run.terminated != "stop" and delay is None:
            state.failures += 1
        fields: dict[str, Any] = {
            "run_id": run.run_id,
            "exit_code": code,
            "duration": round(duration, 6),
            "lateness": round(lateness, 6),
        }
        if run.attempt > 1:
            fields["attempt"] = run.attempt
        if delay is not None:
            fields["retry_in"] = round(delay, 6)  # not the run's end: consumers wait for it
        if run.terminated:
            fields["terminated"] = run.terminated
        if isinstance(run.handle, FailedStart):
            fields["error"] = run.handle.start_error
        self.emit("run-finished", state.id, run.tick, **fields)
        if run.lease is not None:  # first: the next tick of the fleet waits for it
            self.coordinator.release(state.job.lock, [run.lease])
        if run.record is not None:
            r = run.record
            r.result = result
            r.exit_code = code
            r.finished_us = to_us(self.clock.now())
            r.duration = round(duration, 6)
            if run.tail:
                r.output_tail = "\n".join(run.tail)
            if delay is not None:
                r.result = "retrying"
                r.next_attempt_us = to_us(self.clock.now()) + int(delay * 1e6)
                r.attempts = [*run.prior, _attempt_doc(run, code, result, r.finished_us)]
            self._record(state, r)
        if delay is not None:
            self._schedule_retry(run, code, result, delay)
        else:
            self._after_run(run, code, duration)
        if not state.runs and state.catchup and not self._stop:
            self._next_catch_up(state)
        if not state.runs and not self._stop:
            # --overlap replace / queue: the waiting tick starts once nothing else runs.
            pending, state.replacing = state.replacing, None
            if pending is None:
                pending, state.queued = state.queued, None
            if pending is not None:
                self._start(state, pending[0], pending[1], None)
        self._maybe_end(state)

    # ------------------------------------------------------------------ retries

    def _retry_delay(self, run: _Run, result: str, code: int) -> float | None:
        """The delay before the run's next attempt, or None when it is not retried."""
        s = run.job.s
        if not s.retries or run.attempt > s.retries or run.tick is None:
            return None
        if result not in ("failure", "timeout") or self._stop or run.job.retiring:
            return None
        if s.retry_on is not None:
            key = "timeout" if result == "timeout" else str(code)
            if key not in s.retry_on:
                return None
        delay = min(s.retry_max_delay, s.retry_delay * s.retry_backoff ** (run.attempt - 1))
        following = run.job.job.schedule.next_tick(run.tick)
        due = self.clock.now() + timedelta(seconds=delay)
        if following is not None and due >= following and s.overlap not in _SHARE_TIME:
            self.emit(
                "retry-dropped",
                run.job.id,
                run.tick,
                run_id=run.run_id,
                attempt=run.attempt + 1,
                reason=f"it would start after the following tick ({iso(following)}) is due",
            )
            return None
        return delay

    def _schedule_retry(self, run: _Run, code: int, result: str, delay: float) -> None:
        state = run.job
        assert run.tick is not None
        prior = [*run.prior, _attempt_doc(run, code, result, to_us(self.clock.now()))]
        claim = ClaimResult(True, self.instance, run.fence)
        retry = _Retry(run.tick, claim, run.attempt + 1, prior, run.record, run=run, code=code)
        retry.duration = round(self.clock.monotonic() - run.started_mono, 6)
        state.retries.append(retry)
        self._push_mono(self.clock.monotonic() + delay, "retry", (state, retry))
        self.emit(
            "retrying",
            state.id,
            run.tick,
            run_id=run.run_id,
            attempt=run.attempt + 1,
            delay=round(delay, 6),
            exit_code=code,
            result=result,
        )

    def _retry_now(self, state: _JobState, retry: _Retry) -> None:
        if retry not in state.retries:
            return
        state.retries.remove(retry)
        if retry.cancelled or self._stop or state.ended or state.retiring:
            return
        state.attempts[retry.tick] = (retry.attempt, retry.prior)
        if state.s.overlap is Overlap.SKIP and not state.runs:
            self._lease_then_start(state, retry.tick, retry.claim, jitter=False)
        else:
            self._start(state, retry.tick, retry.claim, None)

    def _cancel_retries(self, state: _JobState) -> None:
        """A stop cancels the attempts still waiting: each run's result is its last attempt's,
        recorded as such, and its hooks see it."""
        for retry in state.retries:
            retry.cancelled = True
            last = retry.prior[-1] if retry.prior else {}
            result = str(last.get("result", "failure"))
            # With exit_code and result, this is the run's end for pings and metrics.
            self.emit(
                "retry-dropped",
                state.id,
                retry.tick,
                run_id=run_id(state.id, retry.tick, retry.tick),
                attempt=retry.attempt,
                reason="cancelled by the stop",
                exit_code=retry.code,
                result=result,
            )
            if retry.record is not None:
                retry.record.result = result
                retry.record.next_attempt_us = None
                self._record(state, retry.record)
            if retry.run is not None:
                self._after_run(retry.run, retry.code, retry.duration)
        state.retries.clear()
        state.attempts.clear()

    def _adopt_orphans(self) -> None:
        """Continue the attempts of a run whose instance went quiet while it had retries left
        (killed during an attempt or while waiting for the next): once its heartbeat is older
        than its leases' TTL, one instance claims the next attempt and runs it."""
        for job_id in list(self._retry_jobs):
            state = self.jobs.get(job_id)
            if state is None:
                self._retry_jobs.discard(job_id)
                continue
            if state.adopting or state.busy() or state.ended or state.retiring:
                continue
            if not self.coordinator.has_records(state.job.lock):
                continue

            def found(answer: Any, state: _JobState = state) -> None:
                state.adopting = False
                if isinstance(answer, BackendError) or answer is None:
                    return
                self._adopt(state, *answer)

            state.adopting = True
            self.coordinator.orphan(state.job.lock, state.id, found)

    def _adopt(self, state: _JobState, record: RunRecord, instances: dict[str, Any]) -> None:
        from .records import is_quiet

        s = state.s
        if record.instance == self.instance or record.result not in ("running", "retrying"):
            return
        info = instances.get(record.instance)
        now_us = to_us(self.clock.now())
        if not is_quiet(info, now_us) or record.attempt > s.retries:
            return
        if record.result == "retrying" and (record.next_attempt_us or 0) > now_us:
            return
        from datetime import UTC

        tick = datetime.fromtimestamp(record.tick_us / 1e6, UTC)
        following = state.job.schedule.next_tick(tick)
        if following is not None and following <= self.clock.now() and s.overlap not in _SHARE_TIME:
            return  # the attempts stay within their tick
        prior = list(record.attempts or [])
        if record.result == "running":  # killed during the attempt: that attempt was lost
            prior.append(
                {
                    "attempt": record.attempt,
                    "instance": record.instance,
                    "started_us": record.started_us,
                    "result": "lost",
                }
            )
        attempt = record.attempt + 1
        # One instance takes the attempt over: a claim of its own, just after the tick, with the
        # run lease (the dead holder's expires by its TTL; until then this waits for the next
        # look). Claiming it again is idempotent for the instance that won it.
        key = tick + timedelta(microseconds=attempt)
        ttl = s.lease_ttl if s.overlap is Overlap.SKIP else None
        request = ClaimRequest(state.id, key, keep_until(state.job.schedule, tick), ttl)

        def claimed(result: list[ClaimOutcome] | BackendError) -> None:
            if isinstance(result, BackendError) or not result[0].claim.won:
                return
            got = result[0]
            if state.busy() or self._stop or state.ended or (ttl is not None and got.lease is None):
                self._drop_lease(state, got)
                return
            self.emit(
                "retrying",
                state.id,
                tick,
                run_id=record.run_id,
                attempt=attempt,
                delay=0.0,
                exit_code=record.exit_code,
                result="lost" if record.result == "running" else prior[-1].get("result", "failure"),
                taken_over_from=record.instance,
            )
            state.attempts[tick] = (attempt, prior)
            # The same run: its first attempt's fence (the take-over claim only elects the taker).
            fence = record.fence if record.fence is not None else got.claim.fence
            self._start(state, tick, ClaimResult(True, self.instance, fence), got.lease)

        self.coordinator.claim(state.job.lock, [request], claimed)

    # ------------------------------------------------------------------ hooks

    def _after_run(self, run: _Run, code: int, duration: float) -> None:
        """Fire the run's hooks (core/hooks.py); with --notify-on change, once the job's
        previous result across the fleet is known."""
        state = run.job
        s = state.s
        if not (s.on_failure or s.on_success or s.on_finish):
            return
        result = _result(run, code)
        local_previous, state.last_result = state.last_result, result

        def fire(previous: str | None) -> None:
            for name, line in hooks_to_run(s, result, previous):
                self._start_hook(run, name, line, _hooks_env(run, name, result, code, duration))

        from .settings import NotifyOn

        if s.notify_on is NotifyOn.CHANGE and run.tick is not None:

            def known(previous: str | BackendError | None) -> None:
                self._hooks_pending -= 1
                if isinstance(previous, BackendError) or previous is None:
                    previous = local_previous
                if not self._force:
                    fire(previous)

            self._hooks_pending += 1
            asked = self.coordinator.previous(state.job.lock, state.id, to_us(run.tick), known)
            if asked:
                return
            self._hooks_pending -= 1
        fire(local_previous)

    def _start_hook(self, run: _Run, name: str, line: str, env: dict[str, str]) -> None:
        hook = _Hook(run.job, name, run.run_id, self.clock.monotonic())
        handle = self.runner.start(Command((line,), shell=True), env, None)
        hook.handle = handle
        self._hooks[id(handle)] = hook
        self._push_mono(hook.started_mono + run.job.s.hook_timeout, "hook-timeout", (hook, 0))

    def _hook_done(self, hook: _Hook, code: int) -> None:
        duration = round(self.clock.monotonic() - hook.started_mono, 6)
        fields: dict[str, Any] = {"hook": hook.name, "run_id": hook.run_id, "exit_code": code}
        fields["duration"] = duration
        if isinstance(hook.handle, FailedStart):
            fields["error"] = hook.handle.start_error
        elif hook.timed_out:
            fields["error"] = f"ran past --hook-timeout {hook.job.s.hook_timeout:g}s"
        if code == 0 and "error" not in fields:
            self.emit("hook-finished", hook.job.id, None, **fields)
        else:
            fields.setdefault("error", f"exit code {code}")
            self.emit("hook-failed", hook.job.id, None, **fields)

    def _terminate(self, run: _Run, why: str) -> None:
        if run.terminated is not None or run.handle is None:
            return
        run.terminated = why
        run.handle.signal_group(signal.SIGTERM)
        s = run.job.s
        grace = s.stop_timeout if why == "stop" else s.kill_after
        run.deadline_gen += 1
        self._push_mono(self.clock.monotonic() + grace, "kill", (run, run.deadline_gen))
        if why == "timeout":
            self.emit(
                "timeout",
                run.job.id,
                run.tick,
                run_id=run.run_id,
                after=s.timeout,
                action=f"SIGTERM to the process group, SIGKILL in {grace:g}s",
            )

    def _renew(self, url: str | None, runs: list[_Run], mono: float) -> None:
        leases = [r.lease for r in runs if r.lease is not None]
        for r in runs:
            assert r.lease is not None
            self._push_mono(mono + r.lease.ttl / 3, "renew", r)

        def done(result: list[bool] | BackendError) -> None:
            for i, r in enumerate(runs):
                if isinstance(result, BackendError):
                    self.emit(
                        "backend-error",
                        r.job.id,
                        r.tick,
                        error=str(result),
                        action="the run goes on; its lease expires if this lasts",
                    )
                elif not result[i]:
                    self.emit(
                        "backend-error",
                        r.job.id,
                        r.tick,
                        error="run lease lost",
                        action="the run goes on",
                    )

        self.coordinator.renew(url, leases, done)

    def _record(self, state: _JobState, record: RunRecord) -> None:
        url = Coordinator.key(state.job.lock)
        self._recorded.setdefault(url, set()).add(state.id)
        self.coordinator.record(state.job.lock, record, state.s.history_keep)

    def _record_tick(
        self, state: _JobState, tick: datetime, result: str, reason: str, held_by: str | None = None
    ) -> None:
        """A tick that did not run here although this instance handled it (skipped, missed)."""
        if self.coordinator.has_records(state.job.lock):
            rid = run_id(state.id, tick, tick)
            self._record(
                state,
                RunRecord(
                    state.id,
                    to_us(tick),
                    rid,
                    self.instance,
                    result,
                    reason=reason,
                    held_by=held_by,
                ),
            )

    def _flush_registrations(self) -> None:
        pending, self._register = self._register, {}
        self.me.seen_us = to_us(self.clock.now())
        for url, infos in pending.items():
            self.coordinator.register(url or None, infos, self.me)

    def _cleanup(self) -> None:
        self._prune_records()
        # Claims: only jobs that claimed since their last claims expired have any to remove, so
        # an idle process with 10,000 jobs sweeps nothing.
        now_us = to_us(self.clock.now())
        for url, kept in self._claims_kept.items():
            if kept:
                self.coordinator.cleanup(url or None, sorted(kept))
                for job_id in [j for j, until in kept.items() if until < now_us]:
                    del kept[job_id]

    def _prune_records(self) -> None:
        """Bound the records of the jobs written to since the last prune (--history-keep,
        --history-max-age): every minute, and at the stop."""
        recorded, self._recorded = self._recorded, {}
        now_us = to_us(self.clock.now())
        for url, ids in recorded.items():
            groups: dict[tuple[int, float], list[str]] = {}
            for job_id in ids:
                state = self.jobs.get(job_id)
                if state is not None:
                    key = (state.s.history_keep, state.s.history_max_age)
                    groups.setdefault(key, []).append(job_id)
            for (keep, age), members in groups.items():
                self.coordinator.prune(url or None, members, keep, now_us - int(age * 1e6))

    def _maybe_end(self, state: _JobState) -> None:
        """A job whose schedule is over ends once nothing of it is left."""
        if state.ended or state.busy() or (state.next_tick is not None and not state.retiring):
            return
        state.ended = True
        if state.retiring:
            if state in self.retiring:
                self.retiring.remove(state)
            return
        self.emit("exhausted", state.id, None, runs=state.runs_started, failures=state.failures)

    # ------------------------------------------------------------------ reload

    def _do_reload(self) -> None:
        from .errors import PyjobError

        if self._loader is None:
            return
        try:
            new = {j.job_id: j for j in self._loader()}
            for job in new.values():
                self.coordinator.open(job.lock)
        except PyjobError as e:
            problems = getattr(e, "problems", None) or [str(e)]
            self.emit(
                "reload-failed",
                "*",
                None,
                problems=problems,
                action="the previous jobs keep running",
            )
            return
        added, changed, removed, kept = [], [], [], []
        for job_id, job in new.items():
            old = self.jobs.get(job_id)
            if old is None:
                added.append(job_id)
            elif old.job.fingerprint != job.fingerprint or job.fingerprint is None:
                changed.append(job_id)
            else:
                kept.append(job_id)
        removed = [j for j in self.jobs if j not in new]
        self.emit("reloaded", "*", None, added=added, changed=changed, removed=removed, kept=kept)
        for job_id in removed + changed:
            self._retire(self.jobs.pop(job_id))
        for job_id in added + changed:
            self.add(new[job_id])

    def _retire(self, state: _JobState) -> None:
        """Stop scheduling ``state``; its running commands finish first (a drain)."""
        state.retiring = True
        state.gen += 1
        for d in state.deferred:
            if d.lease is not None:
                self.coordinator.release(state.job.lock, [d.lease])
        state.deferred.clear()
        state.queued = state.replacing = None
        state.waiting.clear()
        for outcome in state.outcomes.values():
            self._drop_lease(state, outcome)
        state.outcomes.clear()
        self.emit(
            "stopping",
            state.id,
            None,
            running=len(state.runs),
            forced=False,
            stop_timeout=state.s.stop_timeout,
            drain=True,
        )
        if state.runs:
            self.retiring.append(state)
        else:
            state.ended = True
            self.emit("stopped", state.id, None, runs=state.runs_started, failures=state.failures)

    # ------------------------------------------------------------------ stopping

    def _shutdown(self) -> int:
        everything = list(self.jobs.values()) + self.retiring
        running = sum(len(s.runs) for s in everything)
        longest = max((s.s.stop_timeout for s in everything), default=10.0)
        who = self.process_job
        self.emit("stopping", who, None, running=running, forced=self._force, stop_timeout=longest)
        for state in everything:
            for d in state.deferred:
                if d.lease is not None:
                    self.coordinator.release(state.job.lock, [d.lease])
            state.deferred.clear()
            state.queued = state.replacing = None
            for outcome in state.outcomes.values():
                self._drop_lease(state, outcome)
            state.outcomes.clear()
            state.waiting.clear()
            state.catchup.clear()
            self._cancel_retries(state)
        forced_sent = False
        for state in everything:
            for run in state.runs:
                if self._force and run.handle is not None:
                    run.handle.signal_group(signal.SIGKILL)
                else:
                    self._terminate(run, "stop")
        forced_sent = self._force
        ready: list[int] = []
        # Hooks of runs that ended (also those the stop ended) may finish within the stop
        # timeout; whatever still runs after it is killed.
        hooks_deadline = self.clock.monotonic() + longest

        def busy() -> bool:
            return any(s.runs for s in everything) or bool(self._hooks) or self._hooks_pending > 0

        while busy():
            self._reap(ready)
            self.runner.flush()  # the reaper hears of hooks started and runs ended meanwhile
            self.coordinator.drain()
            if not busy():
                break
            if self._force and not forced_sent:
                forced_sent = True
                for state in everything:
                    for run in state.runs:
                        if run.handle is not None:
                            run.handle.signal_group(signal.SIGKILL)
            mono = self.clock.monotonic()
            if mono >= hooks_deadline or self._force:
                for hook in self._hooks.values():
                    if hook.handle is not None:
                        hook.handle.signal_group(signal.SIGKILL)
                self._hooks_pending = 0
            while self._mono and self._mono[0][0] <= mono:
                _, _, kind, ref = heapq.heappop(self._mono)
                if kind == "kill":
                    run, gen = ref
                    if run.deadline_gen == gen and run in run.job.runs and run.handle is not None:
                        run.handle.signal_group(signal.SIGKILL)
                elif kind == "hook-timeout":
                    hook, _gen = ref
                    if hook.handle is not None and id(hook.handle) in self._hooks:
                        hook.timed_out = True
                        hook.handle.signal_group(signal.SIGKILL)
            waits = [e[0] - mono for e in self._mono if e[2] in ("kill", "hook-timeout")]
            waits.append(hooks_deadline - mono)
            due = self.runner.next_due()
            if due is not None:
                waits.append(due - mono)
            ready = self.clock.wait_for(
                self.waker, max(0.0, min(waits, default=MAX_SLEEP_SLICE)), self.runner.fds()
            )
        self.coordinator.drain()
        self._prune_records()
        runs = sum(s.runs_started for s in everything)
        failures = sum(s.failures for s in everything)
        self.emit("stopped", who, None, runs=runs, failures=failures)
        return 130 if self._force else 0

    def close(self) -> None:
        """Let the last lease releases go out (bounded), and free the wake-up pipe."""
        self.coordinator.close()
        self.waker.close()


def _hooks_env(run: _Run, name: str, result: str, code: int, duration: float) -> dict[str, str]:
    tail = "\n".join(run.tail) if run.tail is not None else None
    return hook_env(run.env, name, result, code, duration, tail, run.attempt)


_SHARE_TIME = (Overlap.ALLOW, Overlap.QUEUE)  # policies under which a retry may overlap a tick


def _attempt_doc(run: _Run, code: int, result: str, finished_us: int | None) -> dict[str, Any]:
    return {
        "attempt": run.attempt,
        "instance": run.record.instance if run.record else None,
        "started_us": to_us(run.started_wall),
        "finished_us": finished_us,
        "exit_code": code,
        "result": result,
    }


def _keep_tail(run: _Run, line: str) -> None:
    """The last OUTPUT_TAIL bytes of a run's output, in whole lines."""
    assert run.tail is not None
    run.tail.append(line)
    run.tail_bytes += len(line) + 1
    while run.tail_bytes > OUTPUT_TAIL and len(run.tail) > 1:
        run.tail_bytes -= len(run.tail.pop(0)) + 1


def _result(run: _Run, code: int) -> str:
    """The result of a run that ended (run records, hooks)."""
    if run.terminated == "timeout":
        return "timeout"
    if run.terminated in ("stop", "replace"):
        return "stopped"
    if isinstance(run.handle, FailedStart):
        return "start-failed"
    return "success" if code == 0 else "failure"


def _unix_text(instant: datetime) -> str:
    us = to_us(instant)
    return str(us // 1_000_000) if us % 1_000_000 == 0 else f"{us / 1e6:.6f}"


__all__ = ["Job", "Scheduler", "keep_until", "overlap_action", "run_id"]

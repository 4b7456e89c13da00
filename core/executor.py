"""The run loop of `pyjob run` (DESIGN §4-5).

One thread owns all state: it sleeps (through the injected Clock) until the earliest thing that is
due — claiming the next tick shortly before it, firing it, a run's timeout or kill deadline, a
lease renewal, claim clean-up, the end of a stop — and does it. Threads that wait for children only
report "run R ended with code C" and wake the loop. Ticks are computed from the previous tick, so
nothing drifts; a tick already handled is never handled again, whatever the wall clock does.
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from queue import Empty, SimpleQueue
from typing import Any

from .backends import Backend, ClaimResult, Lease
from .clock import MAX_SLEEP_SLICE, Clock, Waker
from .errors import BackendError
from .process import Command, FailedStart, Handle, Runner
from .schedule import Schedule, iso, to_us


@dataclass
class JobConfig:
    job_id: str
    schedule: Schedule
    command: Command
    instance: str
    overlap: str = "skip"
    misfire_grace: float | None = None  # seconds; None: until the following tick is due
    timeout: float | None = None
    kill_after: float = 10.0
    stop_timeout: float = 10.0
    run_now: bool = False
    jitter: float = 0.0
    max_runs: int | None = None
    log_output: bool = False
    on_backend_error: str = "skip"  # or "run" (fail open)
    env: Mapping[str, str] = field(default_factory=dict)
    claim_lead: float = 0.5  # claim a tick this long before it (at most a quarter interval)
    lease_ttl: float = 30.0
    cleanup_every: float = 60.0


@dataclass(frozen=True)
class Event:
    kind: str
    job: str
    instance: str
    tick: datetime | None
    at: datetime
    fields: dict[str, Any]


@dataclass(eq=False)
class Run:
    tick: datetime | None  # None for --run-now
    run_id: str
    fence: int | None
    lease: Lease | None
    started_wall: datetime
    started_mono: float
    handle: Handle | None = None
    deadline: float | None = None  # monotonic: SIGTERM (timeout)
    kill_at: float | None = None  # monotonic: SIGKILL
    terminated: str | None = None  # "timeout", "replace", "stop"
    next_renew: float | None = None


@dataclass
class _Deferred:
    due: float  # monotonic
    tick: datetime
    claim: ClaimResult | None
    lease: Lease | None


def run_id(job: str, tick: datetime | None, started: datetime) -> str:
    """`<job>-<tick>`, the same on every host (like a Kubernetes Job's name)."""
    instant = tick or started
    stamp = instant.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    if instant.microsecond:
        stamp += f".{instant.microsecond:06d}"
    return f"{job}-{stamp}Z" + ("" if tick else "-now")


class Executor:
    def __init__(
        self,
        config: JobConfig,
        backend: Backend,
        clock: Clock,
        runner: Runner,
        emit: Callable[[Event], None],
        rng: random.Random | None = None,
    ) -> None:
        self.c = config
        self.backend = backend
        self.clock = clock
        self.runner = runner
        self._emit = emit
        self.rng = rng or random.Random()
        self.waker = Waker()
        self.runs: list[Run] = []
        self.failures = 0
        self.runs_started = 0
        self.ticks_run = 0  # ticks run by this instance or another (for --max-runs)
        self._done: SimpleQueue[tuple[Run, int]] = SimpleQueue()
        self._stop = False
        self._force = False
        self._drain = False
        self._preclaimed: dict[datetime, ClaimResult | BackendError] = {}
        self._preleased: dict[datetime, Lease] = {}
        self._queued: tuple[datetime, ClaimResult | None] | None = None
        self._replacing: tuple[datetime, ClaimResult | None] | None = None
        self._deferred: list[_Deferred] = []
        self._next_cleanup = 0.0
        self.handled: datetime | None = None

    # ------------------------------------------------------------------ public

    def request_stop(self, force: bool = False, drain: bool = False) -> None:
        """Ask the loop to stop (from a signal handler: sets flags only, wakes the loop). With
        ``drain`` running commands are left to finish (a job removed by a reload); otherwise
        they get SIGTERM, then SIGKILL after ``stop_timeout``."""
        self._force = self._force or force
        if not self._stop:
            self._drain = drain
        elif not drain:
            self._drain = False  # a stop overrides an earlier drain
        self._stop = True
        self.waker.wake()

    def emit(self, kind: str, tick: datetime | None, **fields: Any) -> None:
        self._emit(Event(kind, self.c.job_id, self.c.instance, tick, self.clock.now(), fields))

    def run(self, start: datetime) -> int:
        """Run until the schedule ends (exit 0 if every run succeeded, else 1) or a stop is
        requested (0; 130 when forced)."""
        sched = self.c.schedule
        self.emit(
            "started",
            None,
            schedule=str(sched.spec),
            command=str(self.c.command),
            backend=self.backend.url,
            overlap=self.c.overlap,
        )
        if self.c.run_now:
            self._start(None, None, None)
        next_tick = sched.next_tick(start)
        prev = start
        self._announce(next_tick)
        while True:
            self._reap()
            if self._stop:
                break
            now = self.clock.now()
            mono = self.clock.monotonic()
            self._enforce_deadlines(mono)
            self._start_deferred(mono)
            self._maybe_cleanup(now, mono)
            if next_tick is None and not self.runs and not self._deferred and not self._queued:
                self.emit("exhausted", None, runs=self.runs_started, failures=self.failures)
                return 0 if self.failures == 0 else 1
            if next_tick is not None:
                lead = min(self.c.claim_lead, (next_tick - prev).total_seconds() / 4)
                if next_tick not in self._preclaimed and now >= next_tick - timedelta(seconds=lead):
                    self._preclaim(next_tick)
                    continue  # the claim took time: look at the clock again
                if now >= next_tick:
                    tick, following = self._catch_up(next_tick, now)
                    self._handle(tick, now)
                    prev, next_tick = tick, following
                    if self.c.max_runs is not None and self.ticks_run >= self.c.max_runs:
                        next_tick = None
                    self._announce(next_tick)
                    continue
            self.clock.wait(self.waker, self._sleep_for(now, mono, next_tick, prev))
        return self._shutdown()

    # ------------------------------------------------------------------ ticks

    def _announce(self, tick: datetime | None) -> None:
        if tick is not None:
            wait = (tick - self.clock.now()).total_seconds()
            self.emit("next-tick", tick, in_seconds=round(wait, 6))

    def _sleep_for(
        self, now: datetime, mono: float, next_tick: datetime | None, prev: datetime
    ) -> float:
        candidates = [MAX_SLEEP_SLICE]  # wake a few times a minute to notice clock steps
        if next_tick is not None:
            until = (next_tick - now).total_seconds()
            if next_tick not in self._preclaimed:
                until -= min(self.c.claim_lead, (next_tick - prev).total_seconds() / 4)
            candidates.append(until)
        for r in self.runs:
            for t in (r.deadline, r.kill_at, r.next_renew):
                if t is not None:
                    candidates.append(t - mono)
        candidates.extend(d.due - mono for d in self._deferred)
        return max(0.0, min(candidates))

    def _catch_up(self, first: datetime, now: datetime) -> tuple[datetime, datetime | None]:
        """The most recent tick that is due; older passed ticks are reported as missed."""
        tick = first
        missed: list[datetime] = []
        following = self.c.schedule.next_tick(tick)
        while following is not None and following <= now:
            missed.append(tick)
            tick, following = following, self.c.schedule.next_tick(following)
            if len(missed) > 1_000_000:  # pragma: no cover - absurd suspend on a 1µs schedule
                break
        if missed:
            self.emit(
                "missed",
                missed[-1],
                count=len(missed),
                first=iso(missed[0]),
                last=iso(missed[-1]),
                reason="late: a later tick was already due",
            )
        for old in [t for t in self._preclaimed if t < tick]:
            del self._preclaimed[old]
            self._drop_prelease(old)
        return tick, following

    def _keep_until(self, tick: datetime) -> datetime:
        following = self.c.schedule.next_tick(tick) or tick
        margin = max(following - tick, timedelta(minutes=10))
        return following + margin

    def _preclaim(self, tick: datetime) -> None:
        """Claim shortly before the tick (and take the run lease when it will be needed), so that
        nothing slow stands between the tick and the spawn."""
        outcome = self._claim(tick)
        self._preclaimed[tick] = outcome
        if (
            isinstance(outcome, ClaimResult)
            and outcome.won
            and self.c.overlap == "skip"
            and not self.runs
            and not self._deferred
        ):
            try:
                lease = self.backend.acquire_lease(self.c.job_id, self.c.instance, self.c.lease_ttl)
            except BackendError:
                lease = None  # tried again at the tick, where a failure is logged
            if lease is not None:
                self._preleased[tick] = lease

    def _drop_prelease(self, tick: datetime) -> None:
        lease = self._preleased.pop(tick, None)
        if lease is not None:
            try:
                self.backend.release_lease(lease)
            except BackendError as e:
                self.emit("backend-error", tick, error=str(e), action="lease expires")

    def _claim(self, tick: datetime) -> ClaimResult | BackendError:
        try:
            return self.backend.claim(
                self.c.job_id, tick, self.c.instance, self._keep_until(tick), self.clock.now()
            )
        except BackendError as e:
            return e

    def _handle(self, tick: datetime, now: datetime) -> None:
        self.handled = tick
        late = (now - tick).total_seconds()
        if self.c.misfire_grace is not None and late > self.c.misfire_grace:
            self._preclaimed.pop(tick, None)
            self._drop_prelease(tick)
            self.emit(
                "missed",
                tick,
                count=1,
                first=iso(tick),
                last=iso(tick),
                reason=f"{late:.3f}s late, over --misfire-grace {self.c.misfire_grace}s",
            )
            return
        outcome = self._preclaimed.pop(tick, None) or self._claim(tick)
        claim: ClaimResult | None = None
        if not (isinstance(outcome, ClaimResult) and outcome.won):
            self._drop_prelease(tick)
        if isinstance(outcome, BackendError):
            self.emit(
                "backend-error",
                tick,
                error=str(outcome),
                action="run" if self.c.on_backend_error == "run" else "skip",
            )
            if self.c.on_backend_error != "run":
                return
        elif not outcome.won:
            self.ticks_run += 1
            self.emit("lost", tick, holder=outcome.holder, fence=outcome.fence)
            return
        else:
            claim = outcome  # "claimed" is logged after the start: nothing slow before the spawn
        self.ticks_run += 1
        # The claim is logged after the spawn when the run starts now (nothing slow before the
        # spawn); every path that does not start it now logs the claim first.
        if (self.runs or self._deferred) and self._overlap(tick, claim):
            self._drop_prelease(tick)
            return
        lease = self._preleased.pop(tick, None)
        if self.c.overlap == "skip" and lease is None:
            try:
                lease = self.backend.acquire_lease(self.c.job_id, self.c.instance, self.c.lease_ttl)
            except BackendError as e:
                self._claimed(tick, claim)
                self.emit("backend-error", tick, error=str(e), action="skip")
                return
            if lease is None:
                self._claimed(tick, claim)
                holder = self.backend.lease_holder(self.c.job_id)
                self.emit(
                    "skipped",
                    tick,
                    reason="overlap: the previous run is still going",
                    running_on=holder,
                )
                return
        if self.c.jitter > 0:
            self._claimed(tick, claim)
            delay = self.rng.uniform(0, self.c.jitter)
            self._deferred.append(_Deferred(self.clock.monotonic() + delay, tick, claim, lease))
            self.emit("jitter", tick, delay=round(delay, 6))
            return
        self._start(tick, claim, lease)

    def _claimed(self, tick: datetime, claim: ClaimResult | None) -> None:
        if claim is not None:
            self.emit("claimed", tick, fence=claim.fence)

    def _overlap(self, tick: datetime, claim: ClaimResult | None) -> bool:
        """Apply --overlap while a run is active; True when the tick was dealt with here."""
        policy = self.c.overlap
        if policy != "allow":
            self._claimed(tick, claim)
        running = [iso(r.tick) if r.tick else "run-now" for r in self.runs]
        if policy == "skip":
            self.emit(
                "skipped",
                tick,
                reason="overlap: the previous run is still going",
                running=running,
                running_on=self.c.instance,
            )
            return True
        if policy == "queue":
            if self._queued is not None:
                self.emit(
                    "skipped", tick, reason="overlap: one run is already queued", running=running
                )
                return True
            self._queued = (tick, claim)
            self.emit("queued", tick, running=running)
            return True
        if policy == "replace":
            mono = self.clock.monotonic()
            for r in self.runs:
                self._terminate(r, "replace", mono)
            self._replacing = (tick, claim)
            return True
        return False  # allow

    # ------------------------------------------------------------------ runs

    def _env(self, tick: datetime | None, rid: str, fence: int | None) -> dict[str, str]:
        env = dict(self.c.env)
        instant = tick or self.clock.now()
        env.update(
            PYJOB_JOB=self.c.job_id,
            PYJOB_TICK=iso(instant, self.c.schedule.zone),
            PYJOB_TICK_UNIX=_unix_text(instant),
            PYJOB_RUN_ID=rid,
            PYJOB_INSTANCE=self.c.instance,
        )
        if fence is not None:
            env["PYJOB_FENCE"] = str(fence)
        else:
            env.pop("PYJOB_FENCE", None)
        return env

    def _start(
        self,
        tick: datetime | None,
        claim: ClaimResult | None,
        lease: Lease | None,
        log_claim: bool = True,
    ) -> None:
        started = self.clock.now()
        rid = run_id(self.c.job_id, tick, started)
        fence = claim.fence if claim else None
        env = self._env(tick, rid, fence)
        mono = self.clock.monotonic()
        run = Run(tick, rid, fence, lease, started, mono)
        on_line = None
        if self.c.log_output:

            def on_line(stream: str, line: str, _tick: datetime | None = tick) -> None:
                self.emit("output", _tick, stream=stream, line=line, run_id=rid)

        handle = self.runner.start(self.c.command, env, on_line)
        run.handle = handle
        if tick is not None and log_claim:
            self._claimed(tick, claim)
        if self.c.timeout is not None:
            run.deadline = mono + self.c.timeout
        if lease is not None and lease.ttl:
            run.next_renew = mono + lease.ttl / 3
        self.runs.append(run)
        self.runs_started += 1
        lateness = (started - tick).total_seconds() if tick else 0.0
        if isinstance(handle, FailedStart):
            self.emit(
                "run-started",
                tick,
                run_id=rid,
                pid=None,
                lateness=round(lateness, 6),
                error=handle.start_error,
            )
        else:
            self.emit(
                "run-started",
                tick,
                run_id=rid,
                pid=handle.pid,
                lateness=round(lateness, 6),
                fence=fence,
            )
        threading.Thread(target=self._wait_child, args=(run, handle), daemon=True).start()

    def _wait_child(self, run: Run, handle: Handle) -> None:
        code = handle.wait()
        self._done.put((run, code))
        self.waker.wake()

    def _reap(self) -> None:
        while True:
            try:
                run, code = self._done.get_nowait()
            except Empty:
                break
            self.runs.remove(run)
            duration = self.clock.monotonic() - run.started_mono
            lateness = (run.started_wall - run.tick).total_seconds() if run.tick else 0.0
            if code != 0:
                self.failures += 1
            fields: dict[str, Any] = {
                "run_id": run.run_id,
                "exit_code": code,
                "duration": round(duration, 6),
                "lateness": round(lateness, 6),
            }
            if run.terminated:
                fields["terminated"] = run.terminated
            if isinstance(run.handle, FailedStart):
                fields["error"] = run.handle.start_error
            self.emit("run-finished", run.tick, **fields)
            if run.lease is not None:
                try:
                    self.backend.release_lease(run.lease)
                except BackendError as e:
                    self.emit("backend-error", run.tick, error=str(e), action="lease expires")
        if not self.runs and not self._stop:
            # --overlap replace / queue: the waiting tick starts once nothing else runs.
            pending, self._replacing = self._replacing, None
            if pending is None:
                pending, self._queued = self._queued, None
            if pending is not None:
                self._start(pending[0], pending[1], None, log_claim=False)

    def _terminate(self, run: Run, why: str, mono: float) -> None:
        if run.terminated is None and run.handle is not None:
            run.terminated = why
            run.handle.signal_group(signal.SIGTERM)
            grace = self.c.stop_timeout if why == "stop" else self.c.kill_after
            run.kill_at = mono + grace
            run.deadline = None
            if why == "timeout":
                self.emit(
                    "timeout",
                    run.tick,
                    run_id=run.run_id,
                    after=self.c.timeout,
                    action=f"SIGTERM to the process group, SIGKILL in {grace}s",
                )

    def _enforce_deadlines(self, mono: float) -> None:
        for run in self.runs:
            if run.deadline is not None and mono >= run.deadline:
                self._terminate(run, "timeout", mono)
            if run.kill_at is not None and mono >= run.kill_at and run.handle is not None:
                run.handle.signal_group(signal.SIGKILL)
                run.kill_at = None
            if run.next_renew is not None and run.lease is not None and mono >= run.next_renew:
                run.next_renew = mono + run.lease.ttl / 3
                try:
                    if not self.backend.renew_lease(run.lease):
                        self.emit(
                            "backend-error",
                            run.tick,
                            error="run lease lost",
                            action="the run goes on",
                        )
                except BackendError as e:
                    self.emit("backend-error", run.tick, error=str(e), action="the run goes on")

    def _start_deferred(self, mono: float) -> None:
        due = [d for d in self._deferred if d.due <= mono]
        for d in due:
            self._deferred.remove(d)
            self._start(d.tick, d.claim, d.lease, log_claim=False)

    def _maybe_cleanup(self, now: datetime, mono: float) -> None:
        if mono < self._next_cleanup:
            return
        self._next_cleanup = mono + self.c.cleanup_every
        try:
            removed = self.backend.cleanup(self.c.job_id, now)
            if removed:
                self.emit("cleanup", None, removed=removed)
        except BackendError as e:
            self.emit("backend-error", None, error=str(e), action="cleanup later")

    # ------------------------------------------------------------------ stopping

    def _shutdown(self) -> int:
        mono = self.clock.monotonic()
        self.emit(
            "stopping",
            None,
            running=len(self.runs),
            forced=self._force,
            stop_timeout=self.c.stop_timeout,
            **({"drain": True} if self._drain else {}),
        )
        for d in self._deferred:
            if d.lease is not None:
                self.backend.release_lease(d.lease)
        self._deferred.clear()
        self._queued = self._replacing = None
        for tick in list(self._preleased):
            self._drop_prelease(tick)
        for run in self.runs:
            if self._force and run.handle is not None:
                run.handle.signal_group(signal.SIGKILL)
            elif not self._drain:
                self._terminate(run, "stop", mono)
        while self.runs:
            self._reap()
            if not self.runs:
                break
            mono = self.clock.monotonic()
            if self._force:
                for run in self.runs:
                    if run.handle is not None:
                        run.handle.signal_group(signal.SIGKILL)
            if not self._drain:  # a drain may have turned into a stop meanwhile
                for run in self.runs:
                    self._terminate(run, "stop", mono)
            self._enforce_deadlines(mono)
            waits = [
                t - mono
                for r in self.runs
                for t in (r.kill_at, r.deadline, r.next_renew)
                if t is not None
            ]
            self.clock.wait(self.waker, max(0.0, min(waits, default=MAX_SLEEP_SLICE)))
        self.emit("stopped", None, runs=self.runs_started, failures=self.failures)
        self.waker.close()
        return 130 if self._force else 0


def _unix_text(instant: datetime) -> str:
    us = to_us(instant)
    return str(us // 1_000_000) if us % 1_000_000 == 0 else f"{us / 1e6:.6f}"

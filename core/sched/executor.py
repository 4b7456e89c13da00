"""How a job runs: its environment, the spawn, the run's timers and first record once the spawns
of the turn are done, --overlap while a run goes on, --jitter, --timeout and the kill, and the
end of a run (its record, lease, retry or hooks, and what waited for it).

Children are waited for without a thread per job: the runner's pidfds and output pipes are waited
on beside the timers, and ``reap`` hears of what ended.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..backends.protocol import ClaimResult, Lease
from ..instants import iso, to_us, unix_text
from ..process import FailedStart, Found
from ..records import RunRecord
from ..results import Result
from .model import (
    OVERLAPPING,
    PAUSED,
    Deferred,
    JobState,
    Run,
    attempt_doc,
    keep_tail,
    overlap_action,
    run_id,
    run_result,
)
from .shared import Shared
from .timers import Deadline, JitterEnd, Kill, Renew


class Executor:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.by_handle: dict[int, Run] = {}
        # The runs spawned in this turn, with the place of their run-started event: their
        # bookkeeping waits until the turn's spawns are done (see Scheduler.run).
        self.spawned: list[tuple[Run, int]] = []

    def env(
        self, state: JobState, tick: datetime | None, rid: str, fence: int | None
    ) -> dict[str, str]:
        env = {**self.sh.base_env, **state.job.env}
        instant = tick or self.sh.clock.now()
        env.update(
            PYJOB_JOB=state.id,
            PYJOB_TICK=iso(instant, state.job.schedule.zone),
            PYJOB_TICK_UNIX=unix_text(to_us(instant)),
            PYJOB_RUN_ID=rid,
            PYJOB_INSTANCE=self.sh.instance,
        )
        if fence is not None:
            env["PYJOB_FENCE"] = str(fence)
        else:
            env.pop("PYJOB_FENCE", None)
        env.pop("PYJOB_TRIGGERED", None)  # only a triggered run has it (not from the parent)
        return env

    def jitter_or_start(
        self, state: JobState, tick: datetime, claim: ClaimResult | None, lease: Lease | None
    ) -> None:
        sh = self.sh
        if state.s.jitter:
            delay = sh.rng.uniform(0, state.s.jitter)
            d = Deferred(tick, claim, lease)
            state.deferred.append(d)
            sh.mono.push(JitterEnd(sh.clock.monotonic() + delay, state, d))
            sh.emit("jitter", state.id, tick, delay=round(delay, 6))
            return
        self.start(state, tick, claim, lease)

    def overlap(self, state: JobState, tick: datetime, claim: ClaimResult | None) -> None:
        """Apply --overlap while a run of the job is going on here."""
        sh = self.sh
        running = [iso(r.tick) if r.tick else "run-now" for r in state.runs]
        action = overlap_action(state.s.overlap, state.queued is not None)
        if action == "skip":
            sh.ticking.skipped(state, tick, OVERLAPPING, sh.instance, running)
        elif action == "skip-queued":
            sh.ticking.skipped(state, tick, "overlap: one run is already queued", None, running)
        elif action == "queue":
            state.queued = (tick, claim)
            sh.emit("queued", state.id, tick, running=running)
        elif action == "replace":
            for r in state.runs:
                self.terminate(r, "replace")
            state.replacing = (tick, claim)
        else:
            self.jitter_or_start(state, tick, claim, None)

    def start(
        self,
        state: JobState,
        tick: datetime | None,
        claim: ClaimResult | None,
        lease: Lease | None,
    ) -> None:
        """Start a run now, or once it has a slot of its job's --pool."""
        if state.s.pool is not None:
            self.sh.pools.acquire(state, tick, claim, lease)
        else:
            self.spawn(state, tick, claim, lease, None)

    def spawn(
        self,
        state: JobState,
        tick: datetime | None,
        claim: ClaimResult | None,
        lease: Lease | None,
        slot: Lease | None,
    ) -> None:
        sh = self.sh
        started = sh.clock.now()
        fence = claim.fence if claim else None
        ready = state.ready
        found: Found = None
        if ready is not None and tick is not None and ready[0] == tick:
            state.ready = None
            _, rid, env, found = ready  # made at its claim
            if fence is not None:
                env["PYJOB_FENCE"] = str(fence)
        else:
            triggered = sh.fleet.run_id(state, tick)
            rid = triggered or run_id(state.id, tick, started)
            env = self.env(state, tick, rid, fence)
            if triggered:
                env["PYJOB_TRIGGERED"] = "1"  # `pyjob trigger`, not a tick
        first: tuple[int, list[dict[str, Any]], datetime | None] = (1, [], tick)
        attempt, prior, key = state.attempts.pop(tick, first) if tick is not None else first
        env["PYJOB_ATTEMPT"] = str(attempt)
        mono = sh.clock.monotonic()
        run = Run(state, tick, rid, fence, lease, started, mono, env=env, attempt=attempt)
        run.prior, run.key, run.slot = prior, key, slot
        on_line = None
        if state.s.log_output:
            run.tail = []

            def on_line(stream: str, line: str) -> None:
                sh.emit("output", state.id, tick, stream=stream, line=line, run_id=rid)
                keep_tail(run, line)

        handle = sh.runner.start(state.job.command, env, on_line, found)
        run.handle = handle
        state.runs.append(run)
        state.runs_started += 1
        self.by_handle[id(handle)] = run
        held = sh.holding()
        if held is not None:
            self.spawned.append((run, len(held)))
            held.append(None)  # the place of its run-started event
        else:  # outside a turn (--run-now at start): nothing batches, the reaper hears now
            sh.runner.flush()
            self.started(run, None)

    def started(self, run: Run, slot: int | None) -> None:
        """A run's timers, first record and run-started event (in ``slot`` of the turn's
        events when given), once the spawns of its turn are done."""
        sh = self.sh
        state, tick, started, mono = run.job, run.tick, run.started_wall, run.started_mono
        fence, rid, attempt, prior, lease = run.fence, run.run_id, run.attempt, run.prior, run.lease
        handle = run.handle
        if state.s.timeout is not None and run.terminated is None:  # not replaced meanwhile
            sh.mono.push(Deadline(mono + state.s.timeout, run, run.deadline_gen))
        held = lease if lease is not None and lease.ttl else run.slot
        if held is not None:
            sh.mono.push(Renew(mono + held.ttl / 3, run))
        lateness = round((started - tick).total_seconds(), 6) if tick else 0.0
        if sh.coordinator.has_records(state.job.lock):  # else no one reads it
            run.record = RunRecord(
                state.id,
                to_us(tick or started),
                rid,
                sh.instance,
                Result.RUNNING,
                fence=fence,
                started_us=to_us(started),
                lateness=lateness,
                attempt=attempt,
                attempts=prior or None,
            )
            sh.books.record(state, run.record)
        fields: dict[str, Any] = {"run_id": rid, "pid": None, "lateness": lateness}
        if isinstance(handle, FailedStart):
            fields.update(attempt=attempt, error=handle.start_error)
        else:
            assert handle is not None
            fields.update(pid=handle.pid, fence=fence, attempt=attempt)
        if slot is not None and sh.held is not None:
            sh.held[slot] = ("run-started", state.id, tick, started, fields)
        else:
            sh.emit("run-started", state.id, tick, **fields)

    def started_all(self) -> None:
        """The bookkeeping of the turn's spawns, once they are all done."""
        spawned, self.spawned = self.spawned, []
        for run, slot in spawned:
            self.started(run, slot)

    def reap(self, ready: Sequence[int]) -> None:
        """Hear of the children that ended (``ready``: the fds the wait found readable)."""
        for handle, code in self.sh.runner.service(ready):
            if self.sh.hookrun.done(handle, code):
                continue
            run = self.by_handle.pop(id(handle), None)
            if run is None:  # pragma: no cover - a handle this scheduler did not start
                continue
            self.finish(run, code)

    def finish(self, run: Run, code: int) -> None:
        sh = self.sh
        state = run.job
        state.runs.remove(run)
        duration = sh.clock.monotonic() - run.started_mono
        result = run_result(run, code)
        delay = sh.retries.delay(run, result, code)
        if code != 0 and run.terminated != "stop" and delay is None:
            state.failures += 1
        sh.emit("run-finished", state.id, run.tick, **_finished_fields(run, code, duration, delay))
        held = [lease for lease in (run.lease, run.slot) if lease is not None]
        if held:  # first: the next tick of the fleet (or of the pool) waits for them
            sh.claims.release_ended(state, held)
        if run.record is not None:
            self._record_end(run, run.record, code, result, duration, delay)
        if delay is not None:
            sh.schedule_retry(run, code, result, delay)
        else:
            sh.hookrun.after_run(run, code, duration)
        if not state.runs and state.catchup and not sh.stop:
            sh.catchup.next(state)
        if not state.runs and not sh.stop:
            # --overlap replace / queue: the waiting tick starts once nothing else runs.
            pending, state.replacing = state.replacing, None
            if pending is None:
                pending, state.queued = state.queued, None
            if pending is not None and sh.fleet.is_paused(state):
                sh.ticking.skipped(state, pending[0], PAUSED, None)
            elif pending is not None:
                self.start(state, pending[0], pending[1], None)
        sh.lifecycle.maybe_end(state)

    def _record_end(
        self,
        run: Run,
        r: RunRecord,
        code: int,
        result: str,
        duration: float,
        delay: float | None,
    ) -> None:
        now_us = to_us(self.sh.clock.now())
        r.result = result
        r.exit_code = code
        r.finished_us = now_us
        r.duration = round(duration, 6)
        if run.tail:
            r.output_tail = "\n".join(run.tail)
        if delay is not None:
            r.result = Result.RETRYING
            r.next_attempt_us = to_us(self.sh.clock.now()) + int(delay * 1e6)
            doc = attempt_doc(run, code, result, r.finished_us, self.sh.instance)
            r.attempts = [*run.prior, doc]
        self.sh.books.record(run.job, r)

    def terminate(self, run: Run, why: str) -> None:
        """SIGTERM to the run's process group, SIGKILL after its grace ("timeout", "replace",
        "stop")."""
        sh = self.sh
        if run.terminated is not None or run.handle is None:
            return
        run.terminated = why
        run.handle.signal_group(signal.SIGTERM)
        s = run.job.s
        grace = s.stop_timeout if why == "stop" else s.kill_after
        run.deadline_gen += 1
        sh.mono.push(Kill(sh.clock.monotonic() + grace, run, run.deadline_gen))
        if why == "timeout":
            sh.emit(
                "timeout",
                run.job.id,
                run.tick,
                run_id=run.run_id,
                after=s.timeout,
                action=f"SIGTERM to the process group, SIGKILL in {grace:g}s",
            )

    def kill(self, runs: Sequence[Run]) -> None:
        """SIGKILL at once (a forced stop)."""
        for run in runs:
            if run.handle is not None:
                run.handle.signal_group(signal.SIGKILL)


def _finished_fields(run: Run, code: int, duration: float, delay: float | None) -> dict[str, Any]:
    lateness = (run.started_wall - run.tick).total_seconds() if run.tick else 0.0
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
    return fields

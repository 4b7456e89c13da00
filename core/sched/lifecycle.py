"""A job's life in the scheduler: added (at the start, or by a reload), retired by a reload (its
runs finish first), ended when its schedule is over and nothing of it is left, and the stop.

Retiring a job and stopping the process drop a job's pending work the same way
(``drop_pending``); the stop also cancels what a retired job would let finish (caught-up ticks,
retries), then waits for the children, whose kill timers are the same as in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from ..clock import MAX_SLEEP_SLICE
from ..errors import PyjobError
from .model import Job, JobPhase, JobState
from .shared import Shared


class Lifecycle:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.loader: Callable[[], Sequence[Job]] | None = None  # the jobs anew, on SIGHUP

    def add(self, job: Job, start: datetime | None = None) -> None:
        """Schedule ``job`` (its backend must be open) from ``start`` (default: now)."""
        sh = self.sh
        start = start or sh.clock.now()
        state = JobState(job)
        sh.jobs[job.job_id] = state
        sh.emit(
            "started",
            job.job_id,
            None,
            schedule=str(job.schedule.spec),
            command=str(job.command),
            backend=sh.coordinator.backend(job.lock).url,
            overlap=job.settings.overlap.value,
        )
        if job.settings.run_now:
            sh.executor.start(state, None, None, None)
        state.prev = start
        sh.ticking.set_next(state, job.schedule.next_tick(start))
        if job.settings.catch_up:
            sh.catchup.check(state)
        if job.settings.retries:
            sh.retries.jobs.add(job.job_id)
        sh.retries.watch(state)  # once at its start: a run of it lost before this instance came
        sh.books.added(job)
        sh.fleet.added(state)

    def maybe_end(self, state: JobState) -> None:
        """A job whose schedule is over ends once nothing of it is left."""
        if state.ended or state.busy() or (state.next_tick is not None and not state.retiring):
            return
        retired = state.retiring
        state.phase = JobPhase.ENDED
        if retired:
            if state in self.sh.retiring:
                self.sh.retiring.remove(state)
            return
        self.sh.emit("exhausted", state.id, None, runs=state.runs_started, failures=state.failures)

    def drop_pending(self, state: JobState, *, stopping: bool = False) -> None:
        """Drop what waits to run for ``state`` (its ticks, claims, jitter waits, queued and
        replacing ticks), releasing the leases they hold. ``stopping``: the process stops, so
        the caught-up ticks and the retries waiting go too."""
        sh = self.sh
        state.gen += 1  # its wall timers are obsolete
        for d in state.deferred:
            if d.lease is not None:
                sh.coordinator.release(state.job.lock, [d.lease])
        state.deferred.clear()
        state.queued = state.replacing = None
        for outcome in state.outcomes.values():
            sh.claims.drop_lease(state, outcome)
        state.outcomes.clear()
        state.waiting.clear()
        if stopping:
            state.catchup.clear()
            sh.retries.cancel(state)

    # ------------------------------------------------------------------ reload

    def reload(self) -> None:
        sh = self.sh
        if self.loader is None:
            return
        try:
            new = {j.job_id: j for j in self.loader()}
            for job in new.values():
                sh.coordinator.open(job.lock)
        except PyjobError as e:
            problems = getattr(e, "problems", None) or [str(e)]
            sh.emit(
                "reload-failed",
                "*",
                None,
                problems=problems,
                action="the previous jobs keep running",
            )
            return
        added, changed, kept = [], [], []
        for job_id, job in new.items():
            old = sh.jobs.get(job_id)
            if old is None:
                added.append(job_id)
            elif old.job.fingerprint != job.fingerprint or job.fingerprint is None:
                changed.append(job_id)
            else:
                kept.append(job_id)
        removed = [j for j in sh.jobs if j not in new]
        sh.emit("reloaded", "*", None, added=added, changed=changed, removed=removed, kept=kept)
        for job_id in removed + changed:
            self.retire(sh.jobs.pop(job_id))
        for job_id in added + changed:
            self.add(new[job_id])

    def retire(self, state: JobState) -> None:
        """Stop scheduling ``state``; its running commands finish first (a drain)."""
        sh = self.sh
        state.phase = JobPhase.RETIRING
        self.drop_pending(state)
        sh.emit(
            "stopping",
            state.id,
            None,
            running=len(state.runs),
            forced=False,
            stop_timeout=state.s.stop_timeout,
            drain=True,
        )
        if state.runs:
            sh.retiring.append(state)
        else:
            state.phase = JobPhase.ENDED
            sh.emit("stopped", state.id, None, runs=state.runs_started, failures=state.failures)

    # ------------------------------------------------------------------ the stop

    def shutdown(self) -> int:
        """Drop what waits, end the runs (SIGTERM, SIGKILL after --stop-timeout; at once when
        forced), let the hooks of the runs that ended finish within the stop timeout. 0, or
        130 when forced."""
        sh = self.sh
        everything = list(sh.jobs.values()) + sh.retiring
        running = sum(len(s.runs) for s in everything)
        longest = max((s.s.stop_timeout for s in everything), default=10.0)
        who = sh.process_job
        stop_deadline = sh.clock.monotonic() + longest
        sh.emit("stopping", who, None, running=running, forced=sh.force, stop_timeout=longest)
        for state in everything:
            self.drop_pending(state, stopping=True)
        for state in everything:
            if sh.force:
                sh.executor.kill(state.runs)
            else:
                for run in state.runs:
                    sh.executor.terminate(run, "stop")
        self._wait_for_children(everything, longest, forced_sent=sh.force)
        sh.close_wait = 1.0 if sh.force else max(1.0, stop_deadline - sh.clock.monotonic())
        sh.coordinator.drain()
        sh.books.prune_records()
        runs = sum(s.runs_started for s in everything)
        failures = sum(s.failures for s in everything)
        sh.emit("stopped", who, None, runs=runs, failures=failures)
        return 130 if sh.force else 0

    def _wait_for_children(
        self, everything: list[JobState], longest: float, forced_sent: bool
    ) -> None:
        sh = self.sh
        ready: list[int] = []
        # Hooks of runs that ended (also those the stop ended) may finish within the stop
        # timeout; whatever still runs after it is killed.
        hooks_deadline = sh.clock.monotonic() + longest

        def busy() -> bool:
            return any(s.runs for s in everything) or sh.hookrun.busy()

        while busy():
            sh.executor.reap(ready)
            sh.runner.flush()  # the reaper hears of hooks started and runs ended meanwhile
            sh.coordinator.drain()
            if not busy():
                break
            if sh.force and not forced_sent:  # a second signal: kill what is left
                forced_sent = True
                for state in everything:
                    sh.executor.kill(state.runs)
            mono = sh.clock.monotonic()
            if mono >= hooks_deadline or sh.force:
                sh.hookrun.kill_all()
            for timer in sh.mono.pop_due(mono):
                timer.fire_stopping(sh)
            waits = sh.mono.stop_waits(mono)
            waits.append(hooks_deadline - mono)
            due = sh.runner.next_due()
            if due is not None:
                waits.append(due - mono)
            ready = sh.clock.wait_for(
                sh.waker, max(0.0, min(waits, default=MAX_SLEEP_SLICE)), sh.runner.fds()
            )

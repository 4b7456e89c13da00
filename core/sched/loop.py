"""The loop of `pyjob run`: every job of a process on one timer, served by one thread.

A one-liner is a process with one job; `pyjob run --file` is the same process with many. The
thread sleeps (through the injected Clock) until the earliest thing that is due, and does it, in
turns: a turn drains the coordinator's answers, reaps the children that ended, fires the
monotonic timers then the wall-clock ones (core/sched/timers.py), and writes its events once its
spawns are done. Both timer kinds are heaps, so a process holding 10,000 jobs that are not due
costs nothing but memory, and the work at an instant grows with what is due then.

The parts, each made with the one ``Shared`` state (core/sched/shared.py):

- ``Ticking`` (when: next tick, claim-ahead, misfire, late ticks, the decision once claimed) and
  ``CatchUp`` (--catch-up after a start or an outage);
- ``Claims`` (batched claims, late answers, lease-then-start, renewals, claims to clean up);
- ``Executor`` (run: environment, spawn, overlap, jitter, timeout and kill, the end of a run),
  ``HookRunner`` (hooks after a run) and ``Retries`` (--retries, take-over of orphans);
- ``Books`` (records, registration, heartbeat) and ``Lifecycle`` (add, reload, retire, end,
  the stop).

Every backend call goes through the Coordinator, on its own thread, in batches; its results come
back here, so no backend call ever blocks this thread.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .. import __version__, events
from ..clock import Clock, Waker
from ..coordinator import Coordinator
from ..instants import to_us
from ..process import Runner
from ..records import InstanceInfo
from ..zones import tzdata_version
from .books import Books
from .catchup import CatchUp
from .claims import Claims
from .executor import Executor
from .fleet import Fleet
from .hookrun import HookRunner
from .lifecycle import Lifecycle
from .model import POLL, Job, JobState, Run
from .pools import Pools
from .retries import Retries
from .shared import Shared
from .spread import Spreading
from .ticking import Ticking
from .timers import MonoTurn

_STOPPING = -1  # a turn's answer: the stop was asked for
# How far the wall clock must go back against the monotonic one, between two turns, to count as
# stepped back (less is NTP slewing, or the time a turn takes).
STEPPED_BACK = 1.0
# How long the start waits for its jobs' registration (100,000 jobs on file: seconds).
REGISTER_WAIT = 60.0


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
        wants: events.Wants = events.wants_all,
    ) -> None:
        self.clock = clock
        self.runner = runner
        self.instance = instance
        self.waker = Waker()
        self.me = InstanceInfo(
            instance, socket.gethostname(), os.getpid(), __version__, tzdata=tzdata_version()
        )
        sh = self._sh = Shared(
            clock,
            runner,
            emit,
            instance=instance,
            rng=rng or random.Random(),
            waker=self.waker,
            env=dict(env) if env else {},
            me=self.me,
            wants=wants,
        )
        self.coordinator = coordinator or Coordinator(
            clock, instance, self.waker, sh.report, env=env, threaded=threaded, opener=opener
        )
        sh.coordinator = self.coordinator
        sh.ticking = Ticking(sh)
        sh.catchup = CatchUp(sh)
        sh.claims = Claims(sh)
        sh.executor = Executor(sh)
        sh.fleet = Fleet(sh)
        sh.pools = Pools(sh)
        sh.hookrun = HookRunner(sh)
        sh.retries = Retries(sh)
        sh.books = Books(sh)
        sh.lifecycle = Lifecycle(sh)
        sh.spread = Spreading(sh)
        # Through the method, looked up at each call: tests wrap it to act at that moment.
        sh.schedule_retry = lambda *args: self._schedule_retry(*args)
        self.jobs: dict[str, JobState] = sh.jobs
        self._offset: float | None = None  # wall minus monotonic time at the last turn

    # ------------------------------------------------------------------ the interface

    def emit(self, kind: str, job: str, tick: datetime | None, **fields: Any) -> None:
        self._sh.emit(kind, job, tick, **fields)

    @property
    def process_job(self) -> str:
        """The job named by process-wide events: the one job of a one-liner, else ``*``."""
        return self._sh.process_job

    def open(self, jobs: Sequence[Job]) -> None:
        """Open and check the backend of every job (BackendError: unusable), and read what is
        paused there."""
        for job in jobs:
            self.coordinator.open(job.lock)
            self._sh.fleet.open(job.lock)

    def add(self, job: Job, start: datetime | None = None) -> None:
        """Schedule ``job`` (its backend must be open) from ``start`` (default: now)."""
        self._sh.lifecycle.add(job, start)

    def register(self, wait: float = REGISTER_WAIT) -> None:
        """Register the jobs added so far, before the process says it started: from then on
        `pyjob status` lists them all. At most ``wait`` seconds: a backend slower than that is
        written to in the background."""
        self._sh.books.flush_registrations(wait)

    def request_stop(self, force: bool = False) -> None:
        """From a signal handler: sets flags only, wakes the loop."""
        self._sh.force = self._sh.force or force
        self._sh.stop = True
        self.waker.wake()

    def request_reload(self) -> None:
        self._sh.reload = True
        self.waker.wake()

    def close(self) -> None:
        """Let the last lease releases and record writes go out (within what is left of the
        stop timeout), and free the wake-up pipe."""
        self._sh.books.farewell()
        self.coordinator.close(wait=self._sh.close_wait)
        self._sh.fleet.close()
        self.waker.close()

    # ------------------------------------------------------------------ the loop

    def run(self, reload: Callable[[], Sequence[Job]] | None = None) -> int:
        """Until stopped (0; 130 when forced) or until every job's schedule has ended (0 if every
        run succeeded, else 1). ``reload`` gives the jobs anew on SIGHUP."""
        sh = self._sh
        sh.lifecycle.loader = reload
        sh.loop_thread = threading.get_ident()
        ready: list[int] = []
        while True:
            # A turn's log lines, record writes and the bookkeeping of its runs wait until its
            # spawns are done (the coordinator's claims, renewals and releases do not wait):
            # between two spawns of a tick of many jobs, each step costs several times what it
            # costs in a row afterwards, the caches being cold after each spawn.
            sh.held = []
            self.coordinator.hold()
            try:
                code = self._turn(ready)
            finally:
                sh.executor.started_all()
                held, sh.held = sh.held, None
                self.runner.flush()
                self.coordinator.flush()
                for entry in held:
                    if entry is not None:
                        sh.write(*entry)
            if code == _STOPPING:
                return sh.lifecycle.shutdown()
            if code is not None:
                return code
            fds = self.runner.fds()
            if sh.fleet.watches:
                fds = [*fds, *sh.fleet.fds()]
            ready = self.clock.wait_for(self.waker, self._sleep_for(), fds)

    def _turn(self, ready: Sequence[int]) -> int | None:
        """One turn of the loop: what is due now. An exit code when the run is over, else None."""
        sh = self._sh
        self.coordinator.drain()
        sh.executor.reap(sh.fleet.woken(list(ready)))
        if sh.stop:
            return _STOPPING
        if sh.reload:
            sh.reload = False
            sh.lifecycle.reload()
        now = self.clock.now()
        mono = self.clock.monotonic()
        offset = now.timestamp() - mono
        if self._offset is not None and offset < self._offset - STEPPED_BACK:
            sh.ticking.stepped_back(now)
        self._offset = offset
        self._due_mono(mono)
        sh.ticking.due_wall(now)
        sh.books.flush_registrations()
        self.coordinator.drain()
        if self._finished():
            sh.books.prune_records()
            failures = sum(j.failures for j in self.jobs.values())
            if len(self.jobs) > 1:
                self.emit("exhausted", "*", None, jobs=len(self.jobs))
            return 0 if failures == 0 else 1
        return None

    def _due_mono(self, mono: float) -> None:
        """Fire the monotonic timers due at ``mono``; the renewals they gather go out in one
        call per lock URL."""
        sh = self._sh
        turn = MonoTurn(mono)
        for timer in sh.mono.pop_due(mono):
            timer.fire(sh, turn)
        for url, runs in turn.renew.items():
            sh.claims.renew(url, runs, mono)

    def _finished(self) -> bool:
        sh = self._sh
        if not self.jobs or sh.retiring or sh.hookrun.busy():
            return False
        return not any(not j.ended for j in self.jobs.values())  # stops at the first live one

    def _sleep_for(self) -> float:
        sh = self._sh
        # Before the time is read: a step of the wall clock after this ends the wait (or, where
        # nothing tells of steps, the wait is cut into slices that re-read the clock).
        candidates = [self.clock.longest_wait()]
        now = self.clock.now()
        mono = self.clock.monotonic()
        wall_us = sh.wall.next_due_us()
        if wall_us is not None:
            candidates.append((wall_us - to_us(now)) / 1e6)
        mono_due = sh.mono.next_due()
        if mono_due is not None:
            candidates.append(mono_due - mono)
        due = self.runner.next_due()
        if due is not None:
            candidates.append(due - mono)
        polling = getattr(self.runner, "polling", None)
        if polling is not None and polling():
            candidates.append(POLL)
        return max(0.0, min(candidates))

    # ------------------------------------------------------------------ seams for the tests

    def _env(
        self, state: JobState, tick: datetime | None, rid: str, fence: int | None
    ) -> dict[str, str]:
        """The environment of a job's command (tests check what a spawn gets)."""
        return self._sh.executor.env(state, tick, rid, fence)

    def _plan_catch_up(self, state: JobState, latest_us: int, backend_us: int | None) -> None:
        """Plan --catch-up as if the backend had answered (tests judge the window)."""
        self._sh.catchup.plan(state, latest_us, backend_us)

    def _schedule_retry(self, run: Run, code: int, result: str, delay: float) -> None:
        """Schedule a failed run's next attempt (tests wrap this to act at that moment)."""
        self._sh.retries.schedule(run, code, result, delay)

"""The one state object the parts of the scheduler share.

Every part (ticking, claims, the executor, retries, hooks, records, lifecycle) is made with it
and reaches the others through it; the state that more than one part reads lives here, each
part keeps its own. All of it is touched by the loop's thread only, except ``emit`` (the
coordinator's threads report through it) and the request flags (set from signal handlers).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .. import events
from ..clock import Clock, Waker
from ..instants import to_us
from ..process import Runner
from ..records import InstanceInfo
from .model import JobState, Run
from .timers import MonoTimers, WallTimers

if TYPE_CHECKING:
    from ..coordinator import Coordinator
    from .books import Books
    from .catchup import CatchUp
    from .claims import Claims
    from .executor import Executor
    from .fleet import Fleet
    from .hookrun import HookRunner
    from .lifecycle import Lifecycle
    from .pools import Pools
    from .retries import Retries
    from .spread import Spreading
    from .ticking import Ticking

# An event of a turn, held until the turn's spawns are done: (kind, job, tick, at, fields).
HeldEvent = tuple[str, str, datetime | None, datetime, dict[str, Any]]


class Shared:
    # The parts, set once by the Scheduler that makes them.
    coordinator: Coordinator
    ticking: Ticking
    catchup: CatchUp
    claims: Claims
    executor: Executor
    fleet: Fleet
    pools: Pools
    hookrun: HookRunner
    retries: Retries
    books: Books
    lifecycle: Lifecycle
    spread: Spreading
    # How a failed run's retry is scheduled: Retries.schedule, through the Scheduler (a seam the
    # tests use to act between a failure and its retry).
    schedule_retry: Callable[[Run, int, str, float], None]

    def __init__(
        self,
        clock: Clock,
        runner: Runner,
        emit: events.Emit,
        *,
        instance: str,
        rng: random.Random,
        waker: Waker,
        env: Mapping[str, str],
        me: InstanceInfo,
        wants: events.Wants = events.wants_all,
    ) -> None:
        self.clock = clock
        self.runner = runner
        self._emit = emit
        # The kinds of event some consumer takes: the others are not made at all (a debug
        # event below --log-level cost a tick of 1,000 jobs as much as a logged one).
        self.wants = wants
        self.instance = instance
        self.rng = rng
        self.waker = waker
        # Every job's commands get this environment plus the job's own (Job.env): one copy of
        # the process environment, not one per job (10,000 jobs held 50 MiB of copies).
        self.base_env = env
        self.me = me
        # Runs recorded under this instance's name that started before this process did are a
        # predecessor's (an instance started again under the same --instance-id): dead with it.
        self.started_us = to_us(clock.now())
        self.jobs: dict[str, JobState] = {}
        self.retiring: list[JobState] = []  # retired by a reload, their runs still going
        self.stop = False
        self.force = False
        self.reload = False
        # What is left of the stop timeout once the runs ended: the last record writes and
        # lease releases may take that long at the exit (at least a second).
        self.close_wait = 1.0
        self.wall = WallTimers()
        self.mono = MonoTimers()
        # The events of one turn of the loop, written at its end: writing a log line (or a
        # record) between two spawns of one tick would make every later command of it late.
        # None for a run-started event whose place is kept until its run's bookkeeping is done.
        self.held: list[HeldEvent | None] | None = None
        self.loop_thread: int | None = None

    def holding(self) -> list[HeldEvent | None] | None:
        """The turn's held events, when called in a turn of the loop (on its thread)."""
        held = self.held
        return held if held is not None and threading.get_ident() == self.loop_thread else None

    def emit(self, kind: str, job: str, tick: datetime | None, **fields: Any) -> None:
        if not self.wants(kind):
            return
        held = self.holding()
        if held is not None:
            # Stamped now; made and written once the turn's spawns are done.
            held.append((kind, job, tick, self.clock.now(), fields))
        else:
            self.write(kind, job, tick, self.clock.now(), fields)

    def write(
        self, kind: str, job: str, tick: datetime | None, at: datetime, fields: dict[str, Any]
    ) -> None:
        self._emit(events.make(kind, job, self.instance, tick, at, **fields))

    def report(self, job: str, tick: datetime | None, kind: str, **fields: Any) -> None:
        """Events of the coordinator's worker threads."""
        self.emit(kind, job, tick, **fields)

    @property
    def process_job(self) -> str:
        """The job named by process-wide events: the one job of a one-liner, else ``*``."""
        return next(iter(self.jobs)) if len(self.jobs) == 1 and not self.retiring else "*"

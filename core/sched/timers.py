"""The scheduler's timers: one small class per kind, each with its instant and what it does.

Two heaps: wall-clock timers (a tick's claim shortly before it, the tick itself), ordered by the
instant in µs, and monotonic ones (a run's timeout and kill, lease renewals, the end of a
``--jitter`` wait, a retry's delay, a hook's timeout, heartbeats, clean-up). A timer made
obsolete is not removed: it finds out when it fires (a wall timer by its job's ``gen``, a run's
by the run's ``deadline_gen``), so cancelling costs nothing. Timers of one instant fire in the
order they were set.

During the stop only the timers that end children count (``fire_stopping``): a run's kill and a
hook's timeout; the others are dropped.
"""

from __future__ import annotations

import heapq
import itertools
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from ..instants import to_us
from ..settings import HOOK_KILL_AFTER
from .model import CLEANUP_EVERY, Deferred, Hook, JobState, Retry, Run

if TYPE_CHECKING:
    from .pools import PoolWait
    from .shared import Shared


@dataclass(slots=True)
class MonoTurn:
    """What the monotonic timers of one turn gather: lease renewals, one batch per lock URL."""

    mono: float
    renew: dict[str | None, list[Run]] = field(default_factory=dict)


@dataclass(slots=True)
class WallTurn:
    """What the wall-clock timers of one turn gather: claims per lock URL, and the due ticks."""

    claims: dict[str | None, list[tuple[JobState, datetime]]] = field(default_factory=dict)
    ticks: list[tuple[JobState, datetime]] = field(default_factory=list)


class MonoTimer:
    """A monotonic timer: ``due`` in seconds of the Clock's monotonic time."""

    __slots__ = ()
    ends_children: ClassVar[bool] = False  # fires during the stop (else it is dropped then)
    due: float

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        raise NotImplementedError

    def fire_stopping(self, sh: Shared) -> None:
        """During the stop: only the timers that end children do anything."""


@dataclass(slots=True)
class Deadline(MonoTimer):
    """A run's --timeout."""

    due: float
    run: Run
    gen: int

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        if self.run.deadline_gen == self.gen and self.run in self.run.job.runs:
            sh.executor.terminate(self.run, "timeout")


@dataclass(slots=True)
class Kill(MonoTimer):
    """The SIGKILL that follows a run's SIGTERM (--kill-after, --stop-timeout)."""

    ends_children: ClassVar[bool] = True
    due: float
    run: Run
    gen: int

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        run = self.run
        if run.deadline_gen == self.gen and run in run.job.runs and run.handle is not None:
            run.handle.signal_group(signal.SIGKILL)

    def fire_stopping(self, sh: Shared) -> None:
        self.fire(sh, MonoTurn(self.due))


@dataclass(slots=True)
class Renew(MonoTimer):
    """A run's lease renewal, a third of its TTL after the previous one."""

    due: float
    run: Run

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        run = self.run
        if run in run.job.runs and (run.lease is not None or run.slot is not None):
            turn.renew.setdefault(run.job.job.lock, []).append(run)


@dataclass(slots=True)
class JitterEnd(MonoTimer):
    """The end of a tick's --jitter wait: it starts."""

    due: float
    state: JobState
    deferred: Deferred

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        state, d = self.state, self.deferred
        if d in state.deferred:
            state.deferred.remove(d)
            if not sh.stop:
                sh.executor.start(state, d.tick, d.claim, d.lease)


@dataclass(slots=True)
class RetryDue(MonoTimer):
    """The end of a retry's delay (--retry-delay): its attempt starts."""

    due: float
    state: JobState
    retry: Retry

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        sh.retries.retry_now(self.state, self.retry)


def _hook_alive(sh: Shared, hook: Hook) -> bool:
    return hook.handle is not None and sh.hookrun.running(hook.handle)


@dataclass(slots=True)
class HookTimeout(MonoTimer):
    """A hook's --hook-timeout: SIGTERM, and a HookKill a little later."""

    ends_children: ClassVar[bool] = True
    due: float
    hook: Hook
    gen: int

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        hook = self.hook
        if hook.gen == self.gen and hook.handle is not None and _hook_alive(sh, hook):
            hook.timed_out = True
            hook.gen += 1
            hook.handle.signal_group(signal.SIGTERM)
            sh.mono.push(HookKill(turn.mono + HOOK_KILL_AFTER, hook))

    def fire_stopping(self, sh: Shared) -> None:
        _kill_hook(sh, self.hook)


@dataclass(slots=True)
class HookKill(MonoTimer):
    """The SIGKILL of a hook that outlived its SIGTERM."""

    ends_children: ClassVar[bool] = True
    due: float
    hook: Hook

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        if self.hook.handle is not None and _hook_alive(sh, self.hook):
            self.hook.handle.signal_group(signal.SIGKILL)

    def fire_stopping(self, sh: Shared) -> None:
        _kill_hook(sh, self.hook)


def _kill_hook(sh: Shared, hook: Hook) -> None:
    """During the stop a hook's timeout kills it at once."""
    if hook.handle is not None and _hook_alive(sh, hook):
        hook.timed_out = True
        hook.handle.signal_group(signal.SIGKILL)


@dataclass(slots=True)
class Heartbeat(MonoTimer):
    """This instance's heartbeat (core/sched/books.py: its pace); a newer one replaces it."""

    due: float
    gen: int

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        if self.gen == sh.books.beat_gen:
            sh.books.beat(turn.mono)


@dataclass(slots=True)
class SpreadRead(MonoTimer):
    """A read of the registry and the backend's clock (--spread) soon after the start, then at
    doubling intervals until they reach the fast heartbeat's: from then on the heartbeats read."""

    due: float
    every: float

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        every = self.every * 2
        if every < sh.books.heartbeat_every:
            sh.mono.push(SpreadRead(turn.mono + every, every))
        else:
            sh.spread.doubling = False
        sh.spread.read()


@dataclass(slots=True)
class PoolRetry(MonoTimer):
    """A run waiting for a slot of its pool asks again."""

    due: float
    state: JobState
    wait: PoolWait

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        if self.wait in self.state.deferred and not sh.stop:
            sh.pools.ask(self.state, self.wait)


@dataclass(slots=True)
class ControlPoll(MonoTimer):
    """The read of the fleet's control (pauses, triggers) that is not watched, every
    CONTROL_EVERY seconds."""

    due: float

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        from ..control import CONTROL_EVERY

        if sh.fleet.poll():
            sh.mono.push(ControlPoll(turn.mono + CONTROL_EVERY))


@dataclass(slots=True)
class Cleanup(MonoTimer):
    """Every minute while there is something to clean up: prune records, remove expired
    claims."""

    due: float

    def fire(self, sh: Shared, turn: MonoTurn) -> None:
        if sh.books.cleanup():
            sh.mono.push(Cleanup(turn.mono + CLEANUP_EVERY))


class WallTimer:
    """A wall-clock timer of one job's tick; obsolete once the job's ``gen`` moved on."""

    __slots__ = ()
    due: datetime
    state: JobState
    gen: int
    tick: datetime

    def stale(self) -> bool:
        return self.gen != self.state.gen or self.state.gone

    def fire(self, sh: Shared, turn: WallTurn) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class ClaimAhead(WallTimer):
    """Shortly before a tick (CLAIM_LEAD): its claim, and what its spawn needs, made now."""

    due: datetime
    state: JobState
    gen: int
    tick: datetime

    def fire(self, sh: Shared, turn: WallTurn) -> None:
        sh.ticking.claim_ahead(self.state, self.tick, turn)


@dataclass(slots=True)
class TickDue(WallTimer):
    """A tick is due."""

    due: datetime
    state: JobState
    gen: int
    tick: datetime

    def fire(self, sh: Shared, turn: WallTurn) -> None:
        turn.ticks.append((self.state, self.tick))


class MonoTimers:
    """The heap of monotonic timers."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, MonoTimer]] = []
        self._seq = itertools.count()

    def push(self, timer: MonoTimer) -> None:
        heapq.heappush(self._heap, (timer.due, next(self._seq), timer))

    def pop_due(self, mono: float) -> Iterator[MonoTimer]:
        """The timers due at ``mono``, in order, including those set meanwhile."""
        while self._heap and self._heap[0][0] <= mono:
            yield heapq.heappop(self._heap)[2]

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def stop_waits(self, mono: float) -> list[float]:
        """Seconds until each timer that counts during the stop."""
        return [due - mono for due, _, t in self._heap if t.ends_children]


class WallTimers:
    """The heap of wall-clock timers, by instant in µs."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, WallTimer]] = []
        self._seq = itertools.count()

    def push(self, timer: WallTimer) -> None:
        heapq.heappush(self._heap, (to_us(timer.due), next(self._seq), timer))

    def pop_due(self, now_us: int) -> Iterator[WallTimer]:
        """The live timers due at ``now_us``, in order, including those set meanwhile."""
        while self._heap and self._heap[0][0] <= now_us:
            timer = heapq.heappop(self._heap)[2]
            if not timer.stale():
                yield timer

    def next_due_us(self) -> int | None:
        """The instant of the first live timer (obsolete ones on top are dropped)."""
        while self._heap and self._heap[0][2].stale():
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

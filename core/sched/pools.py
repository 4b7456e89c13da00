"""Pools (--pool NAME --pool-size N): at most N runs of the jobs in pool NAME at once across
every instance sharing the backend.

A pool is N slots, each a run lease of the backend on a name of its own (``slot_name``), held
by the run for its whole length with the run's TTL (--lease-ttl) and renewed with its run lease:
a slot of a dead holder comes back when its lease expires (at once on file:, whose leases the
kernel drops with their process). Every backend's leases already guarantee one holder each, so
a pool needs nothing more of a backend.

A run about to start asks for a slot (the first free of the N, in one call on the backend's
worker). A tick that finds the pool full waits (its job counts as busy meanwhile, like a
--jitter wait, keeping its run lease, renewed) and asks again every POOL_RETRY seconds, up to
its --misfire-grace (default: until its following tick is due); then it is skipped and recorded
``skipped`` (reason ``pool full``). Slots are not handed out in order: a freed slot goes to the
waiting run that asks first after it is freed, on whatever instance (no queue, so not first come
first served). A retry's attempt and --run-now wait without a limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, cast

from ..backends.protocol import ClaimResult, Lease
from ..errors import BackendError
from .model import Deferred, JobState
from .shared import Shared

if TYPE_CHECKING:
    from ..backends.protocol import Backend

POOL_RETRY = 0.2  # seconds between a waiting run's asks for a slot (plus up to half as much)
SLOT = "\x1epool"  # slot names start with a character no job id has (they are printable)


def slot_name(pool: str, i: int) -> str:
    return f"{SLOT}/{pool}/{i}"


class LeaseTaker(Protocol):
    """What a pool needs of a backend beyond its protocol: one lease taken on its own (every
    backend has it: the run lease of a tick is the same lease, taken with its claim)."""

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None: ...


def take_slot(backend: Backend, pool: str, size: int, holder: str, ttl: float) -> Lease | None:
    """The first free slot of ``pool`` as a lease (None: all ``size`` are held)."""
    if not hasattr(backend, "acquire_lease"):
        raise BackendError(f"{backend.url}: has no leases for --pool")
    taker = cast(LeaseTaker, backend)
    for i in range(size):
        lease = taker.acquire_lease(slot_name(pool, i), holder, ttl)
        if lease is not None:
            return lease
    return None


@dataclass(eq=False, slots=True)
class PoolWait(Deferred):
    """A run waiting for a slot of its pool (in ``state.deferred``, as a --jitter wait)."""

    deadline: float | None = None  # monotonic: skipped after this (None: waits on)
    since: float = 0.0  # monotonic: when it began to wait
    renewed: float = 0.0  # monotonic: its run lease's last renewal
    asked: int = 0  # asks so far


class Pools:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh

    def acquire(
        self,
        state: JobState,
        tick: datetime | None,
        claim: ClaimResult | None,
        lease: Lease | None,
    ) -> None:
        """Start the run once it has a slot of its job's pool (or skip its tick after the
        wait: see the module's docstring)."""
        sh = self.sh
        mono = sh.clock.monotonic()
        w = PoolWait(tick, claim, lease, self._deadline(state, tick, mono), mono, mono)
        state.deferred.append(w)
        self.ask(state, w)

    def _deadline(self, state: JobState, tick: datetime | None, mono: float) -> float | None:
        if tick is None or tick in state.attempts:
            return None  # --run-now, a retry's attempt: wait on
        now = self.sh.clock.now()
        grace = state.s.misfire_grace
        if grace is not None:
            return mono + max(0.0, grace - (now - tick).total_seconds())
        following = state.job.schedule.next_tick(tick)
        return None if following is None else mono + (following - now).total_seconds()

    def ask(self, state: JobState, w: PoolWait) -> None:
        sh = self.sh
        pool, size = state.s.pool, state.s.pool_size
        assert pool is not None and size is not None
        backend = sh.coordinator.backend(state.job.lock)
        holder, ttl = sh.coordinator.claimer, state.s.lease_ttl
        w.asked += 1

        def done(result: Lease | BackendError | None) -> None:
            if w not in state.deferred or sh.stop:  # dropped (stop, reload) meanwhile
                if isinstance(result, Lease):
                    sh.coordinator.release(state.job.lock, [result])
                return
            if isinstance(result, Lease):
                state.deferred.remove(w)
                waited = sh.clock.monotonic() - w.since
                if w.asked > 1:
                    sh.emit("pool-waited", state.id, w.tick, pool=pool, waited=round(waited, 6))
                sh.executor.spawn(state, w.tick, w.claim, w.lease, result)
                return
            if w.asked == 1:
                sh.emit("pool-full", state.id, w.tick, pool=pool, size=size)
            self.later(state, w)

        sh.coordinator.call(
            state.job.lock, lambda: take_slot(backend, pool, size, holder, ttl), done
        )

    def later(self, state: JobState, w: PoolWait) -> None:
        """Ask again shortly, or skip the tick once its wait is over."""
        from .timers import PoolRetry

        sh = self.sh
        mono = sh.clock.monotonic()
        if w.deadline is not None and mono >= w.deadline:
            self.give_up(state, w)
            return
        if w.lease is not None and mono - w.renewed > w.lease.ttl / 3:
            w.renewed = mono  # the run lease is kept while the run waits
            sh.coordinator.renew(state.job.lock, [w.lease], lambda _: None)
        delay = POOL_RETRY * (1 + sh.rng.random() / 2)  # instances do not ask in step
        if w.deadline is not None:
            delay = max(0.0, min(delay, w.deadline - mono))
        sh.mono.push(PoolRetry(mono + delay, state, w))

    def give_up(self, state: JobState, w: PoolWait) -> None:
        sh = self.sh
        state.deferred.remove(w)
        if w.lease is not None:
            sh.coordinator.release(state.job.lock, [w.lease])
        assert w.tick is not None
        reason = f"pool full: {state.s.pool} ({state.s.pool_size} running)"
        sh.ticking.skipped(state, w.tick, reason, None)
        if not state.runs and not state.deferred and state.queued is not None and not sh.stop:
            pending, state.queued = state.queued, None
            sh.executor.start(state, pending[0], pending[1], None)
        sh.lifecycle.maybe_end(state)

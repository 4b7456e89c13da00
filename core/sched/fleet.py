"""Fleet control in `pyjob run` (core/control.py): the jobs paused and the runs triggered from any
host.

One read per lock URL every CONTROL_EVERY seconds, whatever the number of jobs: the control
version, and the whole state only when it changed. The backend's worker makes that read on its own
(``Coordinator.every``) and wakes the scheduler's thread only when the version changed, so an idle
process costs one small read a second on one thread (on Redis and PostgreSQL, where the worker
subscribes to the writers' news, two a minute). On file: the read is made when the control's
directory changes instead (a watch the loop waits on beside its children's descriptors), so an
idle process reads nothing; a read that failed, or a watch that ended (the directory removed),
goes back to a read every CONTROL_EVERY seconds until one works and the watch is set again. At the
start the first read is made before any tick (a job paused while its instance was down stays
paused). A paused job claims no tick and starts no run; each tick it would have run is recorded
``skipped`` (reason ``paused``); runs already going on, and the retries of a run started before
the pause, go on. A trigger is claimed as a tick of its own (``trigger_tick``) by every instance
serving its job: the claim lets exactly one run it, which then follows the job's --overlap like
any tick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..backends.protocol import ClaimOutcome, ClaimRequest
from ..control import (
    CONTROL_EVERY,
    TRIGGER_EXPIRES,
    ControlState,
    ControlStore,
    Pause,
    Trigger,
    control_for,
    poll,
    trigger_tick,
)
from ..coordinator import Coordinator
from ..dirwatch import DirWatch
from ..errors import BackendError
from ..instants import from_us, to_us
from ..settings import Overlap
from .model import PAUSED, JobState, keep_until
from .shared import Shared

RIDS_KEPT = 1000  # triggered runs whose run ids are remembered (for their retries)


class Fleet:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.stores: dict[str, ControlStore] = {}  # by lock URL key
        self.seen: dict[str, str | None] = {}  # the version last read, by lock URL key
        self.reading: set[str] = set()  # reads under way
        self.paused: dict[str, Pause] = {}  # the jobs of this process that are paused
        self.resumed: dict[str, datetime] = {}  # job -> when this process logged its resume
        self.taken: dict[str, int] = {}  # trigger id -> when it was asked for (µs): handled
        # (job, tick) of a triggered run -> its run id: its start, its retries and its record
        self.rids: dict[tuple[str, datetime], str] = {}
        self.known: dict[str, dict[str, Pause]] = {}  # by lock URL key: every pause read there
        self.watches: dict[int, tuple[str, DirWatch]] = {}  # by fd: the lock URL key it watches
        self.watched: set[str] = set()  # the lock URL keys whose control is watched
        self.again: set[str] = set()  # a watch woke while its read was under way: read again
        self.failed: set[str] = set()  # watched, but the last read failed: polled until one works
        self.standing: set[str] = set()  # the lock URL keys their worker reads on its own
        self.set_up: set[str] = set()  # the lock URL keys whose watch or reads were set up
        self._timer_set = False

    # ------------------------------------------------------------------ set-up

    def _store(self, url: str | None) -> ControlStore | None:
        k = Coordinator.key(url)
        if k not in self.stores:
            store = control_for(self.sh.coordinator.backend(url))
            if store is None:
                return None
            self.stores[k] = store
            self.seen[k] = None
        return self.stores[k]

    def open(self, url: str | None) -> None:
        """At the start: the first read, made here before any tick, so that a job paused while
        this instance was down claims none. A backend that fails it is read again at the next
        poll (the job runs meanwhile: a read that failed is no pause)."""
        store = self._store(url)
        k = Coordinator.key(url)
        if store is None or k in self.set_up:
            return
        self.set_up.add(k)
        self._watch(k, store)  # before the first read: a change after it wakes the loop
        try:
            state = poll(store, None)
        except BackendError as e:
            self.sh.emit("backend-error", "*", None, error=str(e), action="control read later")
            state = None
        if state is not None:
            self.seen[k] = state.version
            self._paused(k, state)
        # After this thread's read, and only once (a later open of the URL reads nothing
        # here): the worker's reads never run beside one of this thread.
        self._stand(k, store)

    def _stand(self, k: str, store: ControlStore) -> None:
        """A control that is not watched is read by its worker on its own, when it has one."""
        if k in self.standing or k in self.watched:
            return
        poller, feed = self._poller(store, k), getattr(store, "subscribe", None)
        if self.sh.coordinator.every(k or None, CONTROL_EVERY, poller, self._changed(k), feed):
            self.standing.add(k)

    def added(self, state: JobState) -> None:
        """A job was added: its URL's control is read from now on; a pause known applies."""
        from .timers import ControlPoll

        store = self._store(state.job.lock)
        if store is None:
            return
        k = Coordinator.key(state.job.lock)
        if k not in self.set_up:  # a URL a reload brought: watched or read as open() sets up
            self.set_up.add(k)
            self._watch(k, store)
            self._stand(k, store)
        if not self._timer_set and self._polled():
            self._timer_set = True
            self.sh.mono.push(ControlPoll(self.sh.clock.monotonic() + CONTROL_EVERY))
        pause = self.known.get(Coordinator.key(state.job.lock), {}).get(state.id)
        if pause is not None and state.id not in self.paused:  # a job added by a reload
            self.paused[state.id] = pause
            self._say_paused(pause)

    # ------------------------------------------------------------------ reads

    def _watch(self, k: str, store: ControlStore) -> None:
        watch = getattr(store, "watch", None)
        got = None if watch is None or k in self.watched else watch()
        if got is not None:
            self.watches[got.fd] = (k, got)
            self.watched.add(k)

    def _polled(self) -> list[str]:
        """The lock URL keys this thread reads every CONTROL_EVERY seconds: neither watched nor
        read by their worker on its own, or watched but failed."""
        return [
            k
            for k in self.stores
            if (k not in self.watched and k not in self.standing) or k in self.failed
        ]

    def close(self) -> None:
        for _, watch in self.watches.values():
            watch.close()
        self.watches.clear()
        self.watched.clear()

    def fds(self) -> list[int]:
        """The watches' descriptors, for the loop's wait."""
        return list(self.watches)

    def woken(self, ready: list[int]) -> list[int]:
        """``ready`` without the watches' descriptors; each watch among them has its control
        read now."""
        if not self.watches:
            return ready
        rest = []
        for fd in ready:
            entry = self.watches.get(fd)
            if entry is None:
                rest.append(fd)
                continue
            k, watch = entry
            if not watch.drain():  # the directory went away: polled until it is watched again
                del self.watches[fd]
                self.watched.discard(k)
                watch.close()
                self.polling()
            self.read([k])
        return rest

    def polling(self) -> None:
        """Some control is read every CONTROL_EVERY seconds now: see that the timer runs."""
        from .timers import ControlPoll

        if not self._timer_set:
            self._timer_set = True
            self.sh.mono.push(ControlPoll(self.sh.clock.monotonic() + CONTROL_EVERY))

    def poll(self) -> bool:
        """The ControlPoll timer: read what is not watched (a watch that ended is set again
        first); False when nothing is polled any more (the timer stops)."""
        keys = self._polled()
        for k in keys:
            if k not in self.watched:
                self._watch(k, self.stores[k])
        self.read(keys)
        self._timer_set = bool(self._polled())
        return self._timer_set

    def read(self, keys: list[str] | None = None) -> None:
        """Read the control version of every URL, or of ``keys`` (the state too when it
        changed)."""
        for k in self.stores if keys is None else keys:
            if k in self.reading:
                self.again.add(k)  # a change may have come after the read under way looked
                continue
            self.reading.add(k)
            self.sh.coordinator.call(k or None, self._poller(self.stores[k], k), self._answer(k))

    def _poller(self, store: ControlStore, k: str) -> Callable[[], ControlState | None]:
        # The version last seen when the read is made (a worker's own reads outlive this call).
        return lambda: poll(store, self.seen.get(k))

    def _answer(self, k: str) -> Callable[[Any], None]:
        def done(result: ControlState | BackendError | None) -> None:
            self.reading.discard(k)
            if k in self.again:
                self.again.discard(k)
                self.read([k])
            if isinstance(result, BackendError):
                if k in self.watched:  # no event says when to try again: poll until it works
                    self.failed.add(k)
                    self.polling()
                return  # an outage is told by backend-down; the state stays as it was
            self.failed.discard(k)
            if result is not None:
                self._apply(k, result)

        return done

    def _changed(self, k: str) -> Callable[[Any], None]:
        """The answer to the worker's own reads: only a new version, or a failure (told by
        backend-down; the state stays as it was, and the worker reads again)."""

        def done(result: ControlState | BackendError) -> None:
            if self.sh.stop:  # the worker reads until it ends: a trigger now would be lost
                return
            if not isinstance(result, BackendError) and result.version != self.seen.get(k):
                self._apply(k, result)

        return done

    def _apply(self, k: str, state: ControlState) -> None:
        self.seen[k] = state.version
        self._paused(k, state)
        self._triggers(k, state)

    def _serves(self, k: str, job: str) -> JobState | None:
        state = self.sh.jobs.get(job)
        if state is None or state.gone or Coordinator.key(state.job.lock) != k:
            return None
        return state

    def _paused(self, k: str, control: ControlState) -> None:
        sh = self.sh
        self.known[k] = dict(control.paused)
        for job in [j for j in sh.jobs if self._serves(k, j)]:
            new, old = control.paused.get(job), self.paused.get(job)
            if new is not None and old is None:
                self.paused[job] = new
                self._say_paused(new)
            elif new is None and old is not None:
                del self.paused[job]
                self.resumed[job] = sh.clock.now()
                paused_for = (to_us(sh.clock.now()) - old.since_us) / 1e6
                sh.emit("resumed", job, None, paused_for=round(max(0.0, paused_for), 3))

    def _say_paused(self, pause: Pause) -> None:
        since = from_us(pause.since_us).isoformat()
        self.sh.emit("paused", pause.job, None, by=pause.by, since=since)

    def is_paused(self, state: JobState, tick: datetime | None = None) -> bool:
        """Whether the job is paused; with ``tick``, also whether that tick was due before the
        resume was logged (a resume read just as the tick fell due: the tick was passed by
        paused, and is skipped as the ones before it)."""
        if state.id in self.paused:
            return True
        resumed = self.resumed.get(state.id)
        if tick is None or resumed is None:
            return False
        if tick >= resumed:  # the first tick after it: the instant is needed no more
            del self.resumed[state.id]
            return False
        return True

    # ------------------------------------------------------------------ triggers

    def _triggers(self, k: str, control: ControlState) -> None:
        sh = self.sh
        now_us = to_us(sh.clock.now())
        expired = []
        for t in control.triggers:
            if now_us - t.at_us > TRIGGER_EXPIRES * 1e6:
                expired.append(t.id)  # nobody took it (no live instance served the job)
                continue
            state = self._serves(k, t.job)
            if t.id in self.taken or state is None:
                continue
            self.taken[t.id] = t.at_us
            if self.is_paused(state):
                tick = self._remember(state, t)
                sh.emit("skipped", state.id, tick, reason=f"{PAUSED}: trigger not run")
                self._remove(k, [t.id])
                continue
            self._claim(k, state, t)
        if expired:
            self._remove(k, expired)
        for old in [i for i, at in self.taken.items() if now_us - at > 2 * TRIGGER_EXPIRES * 1e6]:
            del self.taken[old]

    def _remember(self, state: JobState, t: Trigger) -> datetime:
        tick = trigger_tick(t, state.job.schedule)
        self.rids[(state.id, tick)] = t.run_id
        while len(self.rids) > RIDS_KEPT:
            del self.rids[next(iter(self.rids))]
        return tick

    def run_id(self, state: JobState, tick: datetime | None) -> str | None:
        """The run id of a triggered run (None for a tick's)."""
        return None if tick is None else self.rids.get((state.id, tick))

    def _remove(self, k: str, ids: list[str]) -> None:
        store = self.stores[k]
        self.sh.coordinator.call(k or None, lambda: store.remove_triggers(ids), lambda _: None)

    def _claim(self, k: str, state: JobState, t: Trigger) -> None:
        """Claim the trigger as a tick: the instance that wins runs it, as --overlap says."""
        sh = self.sh
        tick = self._remember(state, t)
        lease = bool(
            state.s.overlap is Overlap.SKIP
            and not state.runs
            and not state.deferred
            and not state.leasing
        )
        until = keep_until(state.job.schedule, tick)
        sh.claims.keep(state.job.lock, state.id, until)
        request = ClaimRequest(state.id, tick, until, state.s.lease_ttl if lease else None)
        state.leasing += lease

        def done(result: list[ClaimOutcome] | BackendError) -> None:
            state.leasing -= lease
            if isinstance(result, BackendError):
                self.taken.pop(t.id, None)  # claimed again after the next read
                sh.emit("backend-error", state.id, tick, error=str(result), action="trigger later")
                return
            got = result[0]
            if state.gone or sh.stop:
                sh.claims.drop_lease(state, got)
                return
            if got.claim.refused:
                sh.emit("refused", state.id, tick, reason=got.claim.refused)
                return
            if not got.claim.won:
                sh.emit("lost", state.id, tick, holder=got.claim.holder, fence=got.claim.fence)
                return
            sh.emit("triggered", state.id, tick, run_id=t.run_id, by=t.by)
            self._remove(k, [t.id])
            if self.is_paused(state):  # paused since the trigger was read
                sh.claims.drop_lease(state, got)
                sh.ticking.skipped(state, tick, f"{PAUSED}: trigger not run", None)
                return
            sh.ticking.run_won(state, tick, *self._own_lease(state, got))

        sh.coordinator.claim(state.job.lock, [request], done)

    def _own_lease(self, state: JobState, got: ClaimOutcome) -> tuple[ClaimOutcome, Any, Any]:
        """(outcome, claim, lease) to run a won trigger with. The run lease may be held by this
        instance's own claim of the job's next tick (taken with it, just before the tick): the
        triggered run takes that lease over, so that the tick, when it comes, finds the run
        going on here (--overlap skip) and no other instance can start the job meanwhile."""
        if got.lease is not None or got.lease_holder != self.sh.instance:
            return got, got.claim, got.lease
        if state.runs or state.deferred:
            return got, got.claim, got.lease
        for tick, outcome in state.outcomes.items():
            if isinstance(outcome, ClaimOutcome) and outcome.lease is not None:
                # The tick takes the lease again when it comes, if the run is over.
                state.outcomes[tick] = replace(outcome, lease=None, lease_holder=None)
                got = replace(got, lease=outcome.lease, lease_holder=None)
                break
        return got, got.claim, got.lease

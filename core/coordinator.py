"""The one place a `pyjob run` process reaches its lock backends (DESIGN §5).

Every job of the process shares one backend object per lock URL, so one connection, and every
call (one typed class per kind, core/backendcalls.py) goes through here with one error policy:

- A call runs on the backend's own worker thread, never on the scheduler's: a slow or hung
  backend (every call is bounded on the client side, about 2 s) delays nothing else, and SIGTERM
  is honoured at once. Results come back to the scheduler's thread through ``drain()``.
- Calls queued together go together: the claims of every job due at one instant are one
  ``claim_many`` round trip, the lease renewals due together one ``renew_many``. The run
  leases of runs that end are gathered into one ``release_many``: a release waits at most its
  ``wait`` (RELEASE_GATHER at most, and nothing when the job's next claim is near, see
  Claims.release_ended), and never behind another call of the process on that backend (a claim,
  renewal, pool slot or fleet read goes after every release gathered before it), so a gathered
  release delays no tick; it keeps a lease from another instance's pool wait or take-over for
  RELEASE_GATHER at most.
- A ``BackendError`` never escapes: the caller's callback receives it (the scheduler skips the
  tick, or runs it with ``--on-backend-error run``), or it is reported as a ``backend-error``
  event (at debug level: the outage is told once, by ``backend-down`` and ``backend-up``, see
  pyjob.core.outage). A lease whose release failed is kept and released again before the next
  call, as soon as the backend answers (so an outage does not leave a lease that blocks the job
  for its TTL); so is every lease a claim batch may have taken when its answer was lost
  (``LostAnswer``).
- Run records are written until they are written (DESIGN §5): a write that fails keeps its
  records pending, one per run, where a newer state of the run replaces the older (the final
  record wins over ``running``), and tries them again with backoff (RECORD_RETRY up to
  RECORD_RETRY_MAX) once the time comes, when no claim, renewal or release is waiting. The
  pending records are bounded (PENDING_MAX, each under 5 KiB: the output tail is 4 KiB at most):
  past it the oldest is dropped, and said so. A registration that failed is retried with them,
  and every registration is checked once every REREGISTER_EVERY seconds, a share at each
  heartbeat, and written again when gone or changed; all of them are written again at once when
  a heartbeat finds the instance's last one gone (the backend lost what it kept). ``close``
  tries what is pending until its ``wait`` is over. No record of a tick more than AHEAD_LIMIT
  ahead of the backend's clock is written (DESIGN §8).

With ``threaded=False`` (tests with a fake clock) calls run at once on the caller's thread, and
their results are still delivered by ``drain()``, so the order of events does not depend on it.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

from .backendcalls import (
    BACKGROUND,
    Call,
    ClaimCall,
    CleanupCall,
    FleetCall,
    HeartbeatCall,
    LatestCall,
    OrphanCall,
    Orphans,
    PollCall,
    PreviousCall,
    PruneCall,
    RecordsCall,
    RegisterCall,
    ReleaseCall,
    RenewCall,
    Subscription,
)
from .backends import Backend, open_backend
from .backends.protocol import ClaimOutcome, ClaimRequest, Lease, LostAnswer
from .clock import Clock, Waker
from .errors import BackendError
from .outage import Outage
from .records import (
    InstanceInfo,
    RunRecord,
)
from .recordwrites import Link, RecordWrites
from .releases import RELEASE_GATHER, RELEASE_RETRY, Releases
from .results import Result

LAST = 9  # the stop, after everything queued

# report(job, tick, kind, **fields): an event on behalf of the coordinator.
Report = Callable[..., None]
Answer = Callable[[Any], None]  # what gets a call's answer
Work = Callable[[], Any]  # what a call does on the worker
Feed = Callable[[], Subscription] | None  # what subscribes to a store's changes
_T = TypeVar("_T")


INCARNATION = "~"  # between an instance's name and its process's token, in claims and leases


def holder_name(holder: str) -> str:
    """The instance name of a claim's or a lease's holder (without its process's token)."""
    name, sep, token = holder.rpartition(INCARNATION)
    return (
        name if sep and len(token) == 8 and all(c in "0123456789abcdef" for c in token) else holder
    )


def _shown(outcome: ClaimOutcome) -> ClaimOutcome:
    """``outcome`` with its holders named as instances, as logs and records show them."""
    claim = replace(outcome.claim, holder=holder_name(outcome.claim.holder))
    other = outcome.lease_holder
    return replace(outcome, claim=claim, lease_holder=None if other is None else holder_name(other))


# The calls whose caller waits for the answer: a failure goes to it as the answer.
ANSWERED = (ClaimCall, RenewCall, OrphanCall, LatestCall, PreviousCall, FleetCall, PollCall)


def _waits_for_none(call: Call) -> bool:
    """A call no tick waits for: a background one, or the worker's own look at what it owes."""
    return isinstance(call, BACKGROUND) or (isinstance(call, ReleaseCall) and not call.leases)


def _holdable(call: Call) -> bool:
    """A call no tick waits for, held during a turn's spawns (``Coordinator.hold``)."""
    return isinstance(call, BACKGROUND) or (isinstance(call, FleetCall) and call.held)


class Coordinator:
    def __init__(
        self,
        clock: Clock,
        instance: str,
        waker: Waker,
        report: Report,
        *,
        env: Mapping[str, str] | None = None,
        threaded: bool = True,
        opener: Callable[[str | None], Backend] | None = None,
    ) -> None:
        self.clock = clock
        self.instance = instance
        # Claims and leases are held by this process, not by its name: a restarted instance
        # with the same --instance-id must not take its predecessor's claims for its own and
        # run their ticks again (a claim's holder is shown without the suffix).
        self.claimer = f"{instance}{INCARNATION}{secrets.token_hex(4)}"
        self.waker = waker  # the scheduler's: woken when a result is ready
        self.report = report
        self.env = env
        self.threaded = threaded
        self._open = opener or (lambda url: open_backend(url, env, clock))
        self._links: dict[str, Link] = {}
        self.writes = RecordWrites(clock, report)  # the records and registrations owed
        self.releases = Releases(clock, report)  # the run leases to give back
        self._results: SimpleQueue[Callable[[], None]] = SimpleQueue()  # done(answer), ready
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._held: list[tuple[str | None, Call]] | None = None  # background calls, see hold()

    # ---------------------------------------------------------------- set-up

    @staticmethod
    def key(url: str | None) -> str:
        return url or ""

    def open(self, url: str | None) -> Backend:
        """The backend for ``url``, opened and checked once (BackendError: unusable, which at
        start is exit 5). Every job with the same URL shares it."""
        k = self.key(url)
        link = self._links.get(k)
        if link is not None:
            return link.backend
        backend = self._open(url)
        try:
            backend.check()
        except BaseException:
            backend.close()
            raise
        link = Link(
            k, backend, Outage(backend.url, self.clock, self.report), records=backend.records()
        )
        self._links[k] = link
        if self.threaded:
            link.waker = Waker()
            name, work = f"pyjob-backend-{len(self._links)}", self._worker
            link.thread = threading.Thread(target=work, args=(link,), name=name, daemon=True)
            link.thread.start()
        return backend

    def backend(self, url: str | None) -> Backend:
        return self._links[self.key(url)].backend

    # ---------------------------------------------------------------- calls

    def claim(
        self,
        url: str | None,
        requests: Sequence[ClaimRequest],
        done: Callable[[list[ClaimOutcome] | BackendError], None],
        expires: float | None = None,
    ) -> None:
        """Claim ``requests`` in one round trip. A batch still queued at ``expires`` (the
        following tick is due: a backend that hangs has kept the queue waiting) is not sent;
        ``done`` gets a BackendError saying so."""
        self._submit(url, ClaimCall(list(requests), done, expires))

    def renew(
        self,
        url: str | None,
        leases: Sequence[Lease],
        done: Callable[[list[bool] | BackendError], None],
    ) -> None:
        self._submit(url, RenewCall(list(leases), done))

    def release(self, url: str | None, leases: Sequence[Lease], wait: float = 0.0) -> None:
        """Release ``leases``, within ``wait`` seconds (at most RELEASE_GATHER), together with
        the releases gathered meanwhile. Unthreaded, at once."""
        if leases:
            wait = min(wait, RELEASE_GATHER) if self.threaded else 0.0
            by = self.clock.monotonic() + wait if wait > 0 else None
            self._submit(url, ReleaseCall(list(leases), by))

    def cleanup(self, url: str | None, jobs: Sequence[str]) -> None:
        self._submit(url, CleanupCall(list(jobs)))

    def has_records(self, url: str | None) -> bool:
        return self._links[self.key(url)].records is not None

    def record(self, url: str | None, record: RunRecord, keep: int) -> None:
        """Write a run record (batched with the others queued; a failure is reported)."""
        if self._links[self.key(url)].records is not None:
            self._submit(url, RecordsCall([record], keep))

    def register(self, url: str | None, call: RegisterCall) -> None:
        if call.jobs and self._links[self.key(url)].records is not None:
            self._submit(url, call)

    def heartbeat(self, me: InstanceInfo) -> None:
        for link in self._links.values():
            if link.records is not None:
                self._submit(link.url or None, HeartbeatCall(me))

    def prune(self, url: str | None, jobs: Sequence[str], keep: int, oldest_us: int) -> None:
        if jobs and self._links[self.key(url)].records is not None:
            self._submit(url, PruneCall(list(jobs), keep, oldest_us))

    def previous(
        self,
        url: str | None,
        job: str,
        before_us: int,
        done: Callable[[str | BackendError | None], None],
    ) -> bool:
        """The result of ``job``'s last finished run before ``before_us`` across the fleet, to
        ``done`` (None when there is none, or the backend could not say). False when the backend
        keeps no records (the caller knows only its own runs)."""
        if self._links[self.key(url)].records is None:
            return False
        self._submit(url, PreviousCall(job, before_us, done))
        return True

    def latest(
        self,
        url: str | None,
        job: str,
        done: Callable[[tuple[int, int | None] | BackendError | None], None],
    ) -> bool:
        """(the tick (µs) of the latest record of ``job`` — the latest tick anyone in the fleet
        handled —, the backend's own clock in µs or None) to ``done``; None when there is no
        record; a BackendError when the backend could not say. False when the backend keeps no
        records."""
        if self._links[self.key(url)].records is None:
            return False
        self._submit(url, LatestCall(job, done))
        return True

    def orphans(
        self,
        url: str | None,
        jobs: Sequence[str],
        done: Callable[[Orphans | BackendError], None],
        newest: int = 1,
        heartbeats: bool = False,
    ) -> None:
        """The ``newest`` records of each of ``jobs`` (newest first; a job with none is left
        out) and the instances' heartbeats (read only when some job has records, or when
        ``heartbeats`` asks for them all the same), to ``done``, in one call: what an instance
        needs to take over another's attempts, or to end a run lost with its host."""
        self._submit(url, OrphanCall(list(jobs), newest, done, heartbeats))

    def call(self, url: str | None, fn: Work, done: Answer, held: bool = False) -> None:
        """``fn()`` on the backend's worker, under the one error policy: its result, or the
        BackendError it raised, to ``done``. For state that lives beside the records (pauses,
        triggers, core/control.py); ``fn`` is bounded, as every backend call is. ``held``: no
        tick waits for it, so it goes with the background calls (see ``hold``)."""
        self._submit(url, FleetCall(fn, done, held))

    def every(
        self, url: str | None, period: float, fn: Work, done: Answer, subscribe: Feed = None
    ) -> bool:
        """``fn()`` on the backend's worker every ``period`` seconds from now on, until the
        process ends, under the one error policy: a result that is not None, or the
        BackendError, to ``done`` (``PollCall``; ``subscribe``: a feed of changes that makes
        the reads rare). False when there is no worker (unthreaded): the caller times them."""
        if not self.threaded:
            return False
        self._submit(url, PollCall(fn, done, period, subscribe=subscribe))
        return True

    def drain(self) -> int:
        """Deliver the results that are ready (on the caller's thread); how many."""
        n = 0
        while True:
            try:
                deliver = self._results.get_nowait()
            except Empty:
                return n
            deliver()
            n += 1

    def pending(self) -> int:
        """Run records not written yet (a backend that failed them), across backends."""
        return sum(len(link.pending) for link in self._links.values())

    def close(self, wait: float = 1.0) -> None:
        """Stop the workers, letting queued calls (the last lease releases and record writes,
        the records a failure left pending tried again) finish for at most ``wait`` seconds: a
        hung backend must not hold up the exit."""
        deadline = self.clock.monotonic() + wait
        for link in self._links.values():
            link.deadline = deadline
            if not self.threaded:
                self.writes.last_writes(link)
            link.put((LAST, next(self._order), None))
        for link in self._links.values():
            if link.thread is not None:
                link.thread.join(max(0.0, deadline - self.clock.monotonic()))
            if link.thread is None or not link.thread.is_alive():
                link.backend.close()
                if link.waker is not None:
                    link.waker.close()
            # Said here, not by the worker, which may still be inside a write when the wait ends.
            # list() of a dict is one step under the GIL, safe while the worker changes it.
            left = list(link.pending)
            if left:
                jobs = sorted({job for job, _ in left})
                self.report(
                    "*",
                    None,
                    "backend-error",
                    error=f"{len(left)} run records of {', '.join(jobs)} not written",
                    action="the stop came before the backend answered",
                )

    # ---------------------------------------------------------------- the worker

    def hold(self) -> None:
        """Keep the calls no tick waits for (records, registrations, heartbeats, clean-up)
        until ``flush``: the scheduler holds them while it spawns, so that the worker does not
        take the GIL from it between two spawns of one tick. Claims, renewals and releases
        are never held."""
        if self._held is None:
            self._held = []

    def flush(self) -> None:
        held, self._held = self._held, None
        for url, call in held or ():
            self._submit(url, call)

    def _submit(self, url: str | None, call: Call) -> None:
        if self._held is not None and _holdable(call):
            self._held.append((url, call))
            return
        link = self._links[self.key(url)]
        if self.threaded:
            link.put((call.priority, next(self._order), call))
        else:
            self._do(link, call)

    def _worker(self, link: Link) -> None:
        while True:
            if link.carry is not None:
                call: Call | None = link.carry
                link.carry = None
            else:
                call = link.next_call(self.clock, RELEASE_RETRY)
            if call is None:
                for poll in link.polls:
                    poll.end()
                self.releases.send(link, at_once=True)
                self.writes.last_writes(link)
                return
            if isinstance(call, PollCall) and call not in link.polls:
                # Queued by ``every``: kept, its first read a period away (no round trip now).
                call.at = self.clock.monotonic() + call.every
                link.polls.append(call)
                continue
            if isinstance(call, RecordsCall):
                call = self.writes.gather(link, call)
            self._do(link, call)

    def _do(self, link: Link, call: Call) -> None:
        if isinstance(call, ReleaseCall):
            self.releases.gather(link, call)
            if not self.releases.due(link) and not (
                (link.pending or link.unregistered) and self.writes.owed_due(link)
            ):
                return  # no round trip, so nothing to say of the backend
        link.outage.begin()
        self._call(link, call)
        link.outage.end()

    def _call(self, link: Link, call: Call) -> None:
        if not self._ready(link, call):
            return
        try:
            self._send(link, call)
        except Exception as e:  # a backend bug must not end the process: it is an error too
            self._failed(link, call, e)

    def _send(self, link: Link, call: Call) -> None:
        """``call`` on the backend (or its record store); the answer to its ``done``."""
        if isinstance(call, ClaimCall):
            got = link.backend.claim_many(call.requests, self.claimer, self.clock.now())
            self._deliver(call.done, [_shown(outcome) for outcome in got])
        elif isinstance(call, RenewCall):
            self._deliver(call.done, link.backend.renew_many(call.leases))
        elif isinstance(call, FleetCall):
            self._deliver(call.done, call.fn())
        elif isinstance(call, PollCall):
            got = call.read(self.clock.monotonic())
            if got is not None:
                self._deliver(call.done, got)
        elif isinstance(call, OrphanCall):
            self._deliver(call.done, self._orphans(link, call))
        elif isinstance(call, LatestCall):
            self._deliver(call.done, self._latest(link, call))
        elif isinstance(call, PreviousCall):
            self._deliver(call.done, self._previous(link, call))
        elif isinstance(call, ReleaseCall):
            self.releases.send(link)
        elif isinstance(call, CleanupCall):
            removed = link.backend.cleanup_many(call.jobs, self.clock.now())
            if removed:
                self.report("*", None, "cleanup", removed=removed)
        else:
            self.writes.records(link, call)

    def _ready(self, link: Link, call: Call) -> bool:
        """What an outage left behind goes first; False when ``call`` was answered already (a
        claim still queued when the following tick was due: said before anything is sent, so
        that its ticks count in the outage that kept it waiting)."""
        if (
            isinstance(call, ClaimCall)
            and call.expires is not None
            and self.clock.monotonic() > call.expires
        ):
            late = BackendError(
                f"{link.backend.url}: claim not sent: the backend kept it waiting until the "
                "following tick was due"
            )
            link.outage.unsent(len(call.requests))
            self._deliver(call.done, late)
            return False
        if not isinstance(call, ReleaseCall) and (
            link.unreleased or link.maybe or (link.releasing and not isinstance(call, BACKGROUND))
        ):
            # First what an outage left behind, and the releases gathered, before whatever may
            # need their leases free (a claim of the job's next tick, a pool slot).
            self.releases.send(link, at_once=True)
        if (
            (link.pending or link.unregistered)
            and self.writes.owed_due(link)
            and _waits_for_none(call)
        ):
            self.writes.write_owed(link)  # then the records it left behind, when no tick waits
        return True

    # The fleet's records a take-over, a catch-up or --notify-on change asks for.

    @staticmethod
    def _orphans(link: Link, call: OrphanCall) -> Orphans:
        assert link.records is not None
        newest = link.records.newest(call.jobs, call.newest)
        return newest, (link.records.instances() if newest or call.heartbeats else {})

    @staticmethod
    def _latest(link: Link, call: LatestCall) -> tuple[int, int | None] | None:
        assert link.records is not None
        newest = link.records.runs(call.job, 1, None)
        reading = link.backend.server_time()  # the window is judged by this clock
        # at the latest it may read (etcd's reads to the second at first): a missed tick is
        # caught up only when it is surely within the window
        backend_now = None if reading is None else int((reading[0] + reading[1] / 2) * 1e6)
        return (newest[0].tick_us, backend_now) if newest else None

    @staticmethod
    def _previous(link: Link, call: PreviousCall) -> str | None:
        assert link.records is not None
        not_ended = (Result.RUNNING, Result.SKIPPED, Result.MISSED)
        finished = [
            r.result
            for r in link.records.runs(call.job, 20, None)
            if r.tick_us < call.before_us and r.result not in not_ended
        ]
        return finished[0] if finished else None

    def _failed(self, link: Link, call: Call, e: Exception) -> None:
        """The one error policy: the error to ``call``'s ``done``, or reported when nobody
        waits for it."""
        if not isinstance(e, BackendError):  # a backend bug is an error of the backend too
            e = BackendError(f"{link.backend.url}: {type(e).__name__}: {e}")
        elif isinstance(e, LostAnswer):
            # The batch may have taken run leases all the same: release them (by their
            # tokens) as soon as the backend answers, so that none blocks the job (DESIGN §8).
            link.maybe += e.leases
        link.outage.failed(str(e), len(call.requests) if isinstance(call, ClaimCall) else 0)
        if isinstance(call, ANSWERED):
            done: Callable[[BackendError], None] = call.done
            self._deliver(done, e)
        else:
            self.report("*", None, "backend-error", error=str(e), action="cleanup later")

    def _deliver(self, done: Callable[[_T], None], answer: _T) -> None:
        self._results.put(partial(done, answer))
        if self.threaded:
            self.waker.wake()


__all__ = ["Coordinator"]

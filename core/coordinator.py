"""The one place a `pyjob run` process reaches its lock backends (DESIGN §5).

Every job of the process shares one backend object per lock URL, so one connection, and every
call goes through here with one error policy:

- A call runs on the backend's own worker thread, never on the scheduler's: a slow or hung
  backend (every call is bounded on the client side, about 2 s) delays nothing else, and SIGTERM
  is honoured at once. Results come back to the scheduler's thread through ``drain()``.
- Calls queued together go together: the claims of every job due at one instant are one
  ``claim_many`` round trip, the lease renewals due together one ``renew_many``.
- A ``BackendError`` never escapes: the caller's callback receives it (the scheduler skips the
  tick, or runs it with ``--on-backend-error run``), or it is reported as a ``backend-error``
  event (at debug level: the outage is told once, by ``backend-down`` and ``backend-up``, see
  pyjob.core.outage). A lease whose release failed is kept and released again before the next
  call, as soon as the backend answers (so an outage does not leave a lease that blocks the job
  for its TTL).

With ``threaded=False`` (tests with a fake clock) calls run at once on the caller's thread, and
their results are still delivered by ``drain()``, so the order of events does not depend on it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from queue import Empty, PriorityQueue, SimpleQueue
from typing import Any

from .backends import Backend, open_backend
from .backends.protocol import ClaimOutcome, ClaimRequest, Lease
from .clock import Clock, Waker
from .errors import BackendError
from .outage import Outage
from .records import InstanceInfo, JobInfo, RecordStore, RunRecord, records_for

_PRIORITY = {"claim": 0, "renew": 0, "release": 0, "previous": 1, "latest": 1, "orphan": 1}
_BACKGROUND = frozenset({"records", "register", "heartbeat", "prune", "cleanup"})
LAST = 9  # the stop, after everything queued
RELEASE_RETRY = 1.0  # seconds between retries of lease releases an outage left behind

# report(job, tick, kind, **fields): an event on behalf of the coordinator.
Report = Callable[..., None]


@dataclass
class _Call:
    what: str  # claim, renew, release, cleanup
    args: tuple[Any, ...]
    done: Callable[[Any], None] | None  # called on the scheduler's thread with result or error
    expires: float | None = None  # monotonic: not sent after this (its answer is no use then)


@dataclass
class _Link:
    """One backend URL: its backend object, its worker, its queue of calls."""

    url: str
    backend: Backend
    outage: Outage  # its down and up edges
    # (priority, order, call): claims and leases first; what no tick waits for (records,
    # heartbeats, clean-up) after them, so a batch of record writes never delays a claim.
    calls: PriorityQueue[tuple[int, int, _Call | None]] = field(default_factory=PriorityQueue)
    thread: threading.Thread | None = None
    unreleased: list[Lease] = field(default_factory=list)  # releases that failed: retried
    busy: bool = False
    records: RecordStore | None = None
    carry: _Call | None = None  # a call taken from the queue while batching records


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
        self.waker = waker  # the scheduler's: woken when a result is ready
        self.report = report
        self.env = env
        self.threaded = threaded
        self._open = opener or (lambda url: open_backend(url, env, clock))
        self._links: dict[str, _Link] = {}
        self._results: SimpleQueue[tuple[Callable[[Any], None], Any]] = SimpleQueue()
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._held: list[tuple[str | None, _Call]] | None = None  # background calls, see hold()

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
        link = _Link(
            k, backend, Outage(backend.url, self.clock, self.report), records=records_for(backend)
        )
        self._links[k] = link
        if self.threaded:
            link.thread = threading.Thread(
                target=self._worker,
                args=(link,),
                name=f"pyjob-backend-{len(self._links)}",
                daemon=True,
            )
            link.thread.start()
        return backend

    def backend(self, url: str | None) -> Backend:
        return self._links[self.key(url)].backend

    def urls(self) -> list[str]:
        return list(self._links)

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
        self._submit(url, _Call("claim", (list(requests),), done, expires))

    def renew(self, url: str | None, leases: Sequence[Lease], done: Callable[[Any], None]) -> None:
        self._submit(url, _Call("renew", (list(leases),), done))

    def release(self, url: str | None, leases: Sequence[Lease]) -> None:
        if leases:
            self._submit(url, _Call("release", (list(leases),), None))

    def cleanup(self, url: str | None, jobs: Sequence[str]) -> None:
        self._submit(url, _Call("cleanup", (list(jobs),), None))

    def has_records(self, url: str | None) -> bool:
        return self._links[self.key(url)].records is not None

    def record(self, url: str | None, record: RunRecord, keep: int) -> None:
        """Write a run record (batched with the others queued; a failure is reported)."""
        if self._links[self.key(url)].records is not None:
            self._submit(url, _Call("records", ([record], keep), None))

    def register(self, url: str | None, jobs: Sequence[JobInfo], me: InstanceInfo) -> None:
        if jobs and self._links[self.key(url)].records is not None:
            self._submit(url, _Call("register", (list(jobs), me), None))

    def heartbeat(self, me: InstanceInfo) -> None:
        for link in self._links.values():
            if link.records is not None:
                self._submit(link.url or None, _Call("heartbeat", (me,), None))

    def prune(self, url: str | None, jobs: Sequence[str], keep: int, oldest_us: int) -> None:
        if jobs and self._links[self.key(url)].records is not None:
            self._submit(url, _Call("prune", (list(jobs), keep, oldest_us), None))

    def previous(
        self, url: str | None, job: str, before_us: int, done: Callable[[str | None], None]
    ) -> bool:
        """The result of ``job``'s last finished run before ``before_us`` across the fleet, to
        ``done`` (None when there is none, or the backend could not say). False when the backend
        keeps no records (the caller knows only its own runs)."""
        if self._links[self.key(url)].records is None:
            return False
        self._submit(url, _Call("previous", (job, before_us), done))
        return True

    def latest(self, url: str | None, job: str, done: Callable[[Any], None]) -> bool:
        """(the tick (µs) of the latest record of ``job`` — the latest tick anyone in the fleet
        handled —, the backend's own clock in µs or None) to ``done``; None when there is no
        record; a BackendError when the backend could not say. False when the backend keeps no
        records."""
        if self._links[self.key(url)].records is None:
            return False
        self._submit(url, _Call("latest", (job,), done))
        return True

    def orphan(
        self, url: str | None, job: str, done: Callable[[Any], None], newest: int = 1
    ) -> None:
        """The ``newest`` records of ``job`` (newest first) and the instances' heartbeats, to
        ``done`` (None when the job has no records): what an instance needs to take over
        another's attempts, or to end a run lost with its host."""
        self._submit(url, _Call("orphan", (job, newest), done))

    def drain(self) -> int:
        """Deliver the results that are ready (on the caller's thread); how many."""
        n = 0
        while True:
            try:
                done, result = self._results.get_nowait()
            except Empty:
                return n
            done(result)
            n += 1

    def idle(self) -> bool:
        """Nothing queued or under way (for a stop that waits for the last releases)."""
        return all(link.calls.empty() and not link.busy for link in self._links.values())

    def close(self, wait: float = 1.0) -> None:
        """Stop the workers, letting queued calls (the last lease releases) finish for at most
        ``wait`` seconds: a hung backend must not hold up the exit."""
        deadline = self.clock.monotonic() + wait
        for link in self._links.values():
            link.calls.put((LAST, next(self._order), None))
        for link in self._links.values():
            if link.thread is not None:
                link.thread.join(max(0.0, deadline - self.clock.monotonic()))
            if link.thread is None or not link.thread.is_alive():
                link.backend.close()

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

    def _submit(self, url: str | None, call: _Call) -> None:
        if self._held is not None and call.what in _BACKGROUND:
            self._held.append((url, call))
            return
        link = self._links[self.key(url)]
        if self.threaded:
            link.calls.put((_PRIORITY.get(call.what, 2), next(self._order), call))
        else:
            self._do(link, call)

    def _worker(self, link: _Link) -> None:
        while True:
            if link.carry is not None:
                call: _Call | None = link.carry
                link.carry = None
            else:
                try:
                    # While releases are owed, look again every RELEASE_RETRY seconds even when
                    # nothing else is asked: they must go out as soon as the backend answers.
                    _, _, call = link.calls.get(timeout=RELEASE_RETRY if link.unreleased else None)
                except Empty:
                    call = _Call("release", ([],), None)
            if call is None:
                return
            if call.what == "records":
                call = self._gather(link, call)
            link.busy = True
            try:
                self._do(link, call)
            finally:
                link.busy = False

    def _gather(self, link: _Link, first: _Call) -> _Call:
        """The record writes queued behind ``first``, as one call (one round trip)."""
        records = list(first.args[0])
        keep = first.args[1]
        while len(records) < 500:
            try:
                entry = link.calls.get_nowait()
            except Empty:
                break
            nxt = entry[2]
            if nxt is None or nxt.what != "records" or nxt.args[1] != keep:
                if nxt is None:
                    link.calls.put(entry)  # the stop: after this batch
                else:
                    link.carry = nxt
                break
            records += nxt.args[0]
        # A run's "running" record and its result may meet in one batch: the last one wins.
        latest = {(r.job, r.tick_us): r for r in records}
        return _Call("records", (list(latest.values()), keep), None)

    def _do(self, link: _Link, call: _Call) -> None:
        link.outage.begin()
        self._call(link, call)
        link.outage.end()

    def _call(self, link: _Link, call: _Call) -> None:
        if link.unreleased and call.what != "release":
            self._release(link, [])  # first what an outage left behind
        if call.expires is not None and self.clock.monotonic() > call.expires:
            assert call.done is not None
            late = BackendError(
                f"{link.backend.url}: claim not sent: the backend kept it waiting until the "
                "following tick was due"
            )
            link.outage.unsent(len(call.args[0]))
            self._deliver(call.done, late)
            return
        try:
            if call.what == "claim":
                result: Any = link.backend.claim_many(call.args[0], self.instance, self.clock.now())
            elif call.what == "renew":
                result = link.backend.renew_many(call.args[0])
            elif call.what == "release":
                self._release(link, call.args[0])
                return
            elif call.what == "orphan":
                assert link.records is not None
                newest = link.records.runs(call.args[0], call.args[1], None)
                result = (newest, link.records.instances()) if newest else None
            elif call.what == "latest":
                assert link.records is not None
                newest = link.records.runs(call.args[0], 1, None)
                reading = link.backend.server_time()  # the window is judged by this clock
                backend_now = None if reading is None else int(reading[0] * 1e6)
                result = (newest[0].tick_us, backend_now) if newest else None
            elif call.what == "previous":
                assert link.records is not None
                job, before = call.args
                finished = [
                    r.result
                    for r in link.records.runs(job, 20, None)
                    if r.tick_us < before and r.result not in ("running", "skipped", "missed")
                ]
                result = finished[0] if finished else None
            elif call.what in ("records", "register", "heartbeat", "prune"):
                self._records(link, call)
                return
            else:
                removed = link.backend.cleanup_many(call.args[0], self.clock.now())
                if removed:
                    self.report("*", None, "cleanup", removed=removed)
                return
        except BackendError as e:
            link.outage.failed(str(e), len(call.args[0]) if call.what == "claim" else 0)
            if call.done is None:
                self.report("*", None, "backend-error", error=str(e), action="cleanup later")
                return
            result = e
        except Exception as e:  # a backend bug must not end the process: it is an error too
            error = BackendError(f"{link.backend.url}: {type(e).__name__}: {e}")
            link.outage.failed(str(error), len(call.args[0]) if call.what == "claim" else 0)
            if call.done is None:
                self.report("*", None, "backend-error", error=str(error), action="cleanup later")
                return
            result = error
        assert call.done is not None
        self._deliver(call.done, result)

    def _records(self, link: _Link, call: _Call) -> None:
        store = link.records
        assert store is not None
        try:
            if call.what == "records":
                store.put_runs(call.args[0], call.args[1])
            elif call.what == "register":
                store.register(call.args[0], call.args[1])
            elif call.what == "heartbeat":
                store.heartbeat(call.args[0])
            else:
                store.prune(*call.args)
        except Exception as e:
            link.outage.failed(str(e))
            what = {"records": "runs not recorded", "register": "jobs not registered"}
            for job in sorted({r.job for r in call.args[0]}) if call.what == "records" else ["*"]:
                self.report(
                    job,
                    None,
                    "backend-error",
                    error=str(e),
                    action=what.get(call.what, f"{call.what} later") + "; runs go on",
                )

    def _release(self, link: _Link, leases: list[Lease]) -> None:
        retry = link.unreleased + leases
        link.unreleased = []
        if not retry:
            return
        try:
            link.backend.release_many(retry)
        except Exception as e:
            link.unreleased = retry
            link.outage.failed(str(e))
            if leases:  # reported once per lease, not at every retry
                for lease in leases:
                    self.report(
                        lease.job,
                        None,
                        "backend-error",
                        error=str(e),
                        action="run lease released again once the backend answers",
                    )
            return
        link.outage.answered()  # before what the answer released
        if len(retry) > len(leases):
            self.report(
                "*",
                None,
                "backend-recovered",
                released=sorted({lease.job for lease in retry[: len(retry) - len(leases)]}),
            )

    def _deliver(self, done: Callable[[Any], None], result: Any) -> None:
        self._results.put((done, result))
        if self.threaded:
            self.waker.wake()

    def unreleased(self) -> int:
        return sum(len(link.unreleased) for link in self._links.values())


__all__ = ["Coordinator"]

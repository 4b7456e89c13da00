"""The run records and registrations a process owes its backends, and the state of each link.

A write that fails keeps its records pending, one per run: a newer state of the run replaces the
older (the final record wins over ``running``), and they are tried again with backoff
(RECORD_RETRY up to RECORD_RETRY_MAX) when no claim, renewal or release waits. The pending
records are bounded (PENDING_MAX): past it the oldest is dropped, and said so. Every
registration is checked once every REREGISTER_EVERY seconds, a share at each heartbeat, and
written again when it is missing or differs; all are written again when a heartbeat finds the
instance's last one gone. All of it runs on the link's worker thread (or, unthreaded, the
caller's), through the coordinator, which owns the one error policy.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from queue import Empty, PriorityQueue

from .backendcalls import (
    Call,
    HeartbeatCall,
    PollCall,
    PruneCall,
    RecordsCall,
    RegisterCall,
    ReleaseCall,
)
from .backends import Backend
from .backends.protocol import AHEAD_LIMIT, Lease
from .clock import Clock, Waker
from .outage import Outage
from .records import (
    RECORD_BATCH,
    InstanceInfo,
    JobInfo,
    RecordsNotWritten,
    RecordStore,
    RegistrationsNotWritten,
    RunRecord,
)

BACKEND_CLOCK_EVERY = 10.0  # seconds between readings of the backend's clock for records
RECORD_RETRY = 0.5  # seconds before a failed record write is tried again, doubled each time
RECORD_RETRY_MAX = 8.0  # ... up to this
REREGISTER_EVERY = 1800.0  # seconds in which every registration is checked (RecordWrites.recheck)
PENDING_MAX = 10_000  # run records kept for a later write per backend (at most ~50 MB)


@dataclass
class Link:
    """One backend URL: its backend object, its worker, its queue of calls."""

    url: str
    backend: Backend
    outage: Outage  # its down and up edges
    # (priority, order, call), the call's own priority
    calls: PriorityQueue[tuple[int, int, Call | None]] = field(default_factory=PriorityQueue)
    thread: threading.Thread | None = None
    # The worker waits on this pipe (select), woken by ``put`` while it waits (``idle``): a
    # timed wait on a lock (Queue.get with a timeout, sem_clockwait) is one that libfaketime,
    # which the tests use for a skewed host, turns into a wait without end.
    waker: Waker | None = None
    idle: bool = False
    unreleased: list[Lease] = field(default_factory=list)  # releases that failed: retried
    # releases gathered for one round trip, not sent yet, and when they go at the latest
    releasing: list[Lease] = field(default_factory=list)
    release_at: float | None = None  # monotonic
    # leases a claim batch may have taken when its answer was lost (LostAnswer): released like
    # the failed releases, but not announced (none may have been taken)
    maybe: list[Lease] = field(default_factory=list)
    # (monotonic, the backend's clock in µs or None) at the last reading of that clock
    clock_read: tuple[float, int | None] | None = None
    records: RecordStore | None = None
    carry: Call | None = None  # a call taken from the queue while batching records
    polls: list[PollCall] = field(default_factory=list)  # the worker's own repeated reads
    # Record writes not yet written, oldest first, one per run ((job, tick µs) → (record, keep)):
    # touched only by the worker (or, unthreaded, the caller), so no lock.
    pending: dict[tuple[str, int], tuple[RunRecord, int]] = field(default_factory=dict)
    unregistered: dict[str, JobInfo] = field(default_factory=dict)  # registrations to redo
    registered: dict[str, JobInfo] = field(default_factory=dict)  # every one asked for
    written: dict[str, JobInfo] = field(default_factory=dict)  # every one written once
    generation: int = 0  # InstanceInfo.registered: how many writes brought something new
    # The registrations' check: the jobs in the order checked, the next one's index, when the
    # last share was checked (monotonic), and the fraction of a job owed to the next share.
    check_order: list[str] = field(default_factory=list)
    check_next: int = 0
    checked_at: float = 0.0
    check_credit: float = 0.0
    me: InstanceInfo | None = None
    retry_at: float | None = None  # monotonic: when what is pending is tried again
    backoff: float = RECORD_RETRY
    failing: set[str] = field(default_factory=set)  # jobs whose unwritten records were reported
    dropped: int = 0  # records dropped past PENDING_MAX since it was last said
    deadline: float | None = None  # monotonic: the end of ``close``'s wait

    def next_call(self, clock: Clock, release_retry: float) -> Call | None:
        """The next queued call, waited for on the pipe. While releases or records are owed,
        an empty ReleaseCall when they are due even if nothing else is asked: they must go out
        as soon as the backend answers (failed releases are tried every ``release_retry``).
        When nothing is queued, a repeated read that is due (``polls``)."""
        assert self.waker is not None
        poll_due = False  # a wait for a poll ran out (by the real time a fake clock may not follow)
        while True:
            owed = self._owed_in(clock, release_retry)
            poll = min(self.polls, key=lambda p: p.at, default=None)
            poll_in = None if poll is None else poll.at - clock.monotonic()
            self.idle = True
            try:
                try:
                    return self.calls.get_nowait()[2]  # first what is queued, a claim above all
                except Empty:
                    pass
                if owed is not None and owed <= 0:
                    return ReleaseCall([])
                if poll is not None and (poll_due or (poll_in is not None and poll_in <= 0)):
                    return poll
                waits = [w for w in (owed, poll_in) if w is not None]
                # On the pipe in real time, not clock.wait: a fake clock's wait would move the
                # test's time from this thread; beside it, the feeds the polls subscribed to.
                feeds = {p.feed.fd: p for p in self.polls if p.feed is not None}
                ready = self.waker.poll(list(feeds), min(waits, default=float("inf")))
            finally:
                self.idle = False
            if ready is not None:  # woken, or told of a change
                for fd in ready:
                    feeds[fd].told(clock.monotonic())
                continue
            # The wait ran out: what it was for is due now, though a fake clock may say not.
            if owed is not None and (poll_in is None or owed <= poll_in):
                return ReleaseCall([])
            poll_due = poll is not None

    def _owed_in(self, clock: Clock, release_retry: float) -> float | None:
        """Seconds until the worker must look again for what it owes (None: nothing owed)."""
        waits = [release_retry] if self.unreleased or self.maybe else []
        now = clock.monotonic()
        for at in (self.release_at, self.retry_at):
            if at is not None:
                waits.append(max(0.0, at - now))
        return min(waits, default=None)

    def put(self, entry: tuple[int, int, Call | None]) -> None:
        """Queue a call for the worker, waking it if it waits. The worker marks ``idle`` before
        it looks at the queue a last time, and this looks at ``idle`` after the put: one of the
        two sees the other, so no call waits for the worker's timeout."""
        self.calls.put(entry)
        if self.idle and self.waker is not None:
            self.waker.wake()


# report(job, tick, kind, **fields): an event on behalf of the coordinator.
Report = Callable[..., None]


class RecordWrites:
    """What each link owes in records and registrations, written as the backend allows."""

    def __init__(self, clock: Clock, report: Report) -> None:
        self.clock = clock
        self.report = report

    def gather(self, link: Link, first: RecordsCall) -> RecordsCall:
        """The record writes queued behind ``first``, as one call (one round trip)."""
        records = list(first.records)
        keep = first.keep
        while len(records) < RECORD_BATCH:
            try:
                entry = link.calls.get_nowait()
            except Empty:
                break
            nxt = entry[2]
            if not isinstance(nxt, RecordsCall) or nxt.keep != keep:
                if nxt is None:
                    link.calls.put(entry)  # the stop: after this batch (the worker is awake)
                else:
                    link.carry = nxt
                break
            records += nxt.records
        return RecordsCall(records, keep)

    def add_pending(self, link: Link, records: Sequence[RunRecord], keep: int) -> None:
        """Queue ``records`` for writing: a newer state of a run replaces the one pending (and
        goes to the end, written after what was pending before it)."""
        for r in records:
            key = (r.job, r.tick_us)
            link.pending.pop(key, None)
            link.pending[key] = (r, keep)
        while len(link.pending) > PENDING_MAX:
            del link.pending[next(iter(link.pending))]
            link.dropped += 1

    def owed_due(self, link: Link) -> bool:
        return link.retry_at is not None and self.clock.monotonic() >= link.retry_at

    def write_owed(self, link: Link) -> bool:
        """Write the registrations owed and the oldest batch of the records pending; False when
        a write failed (tried again after the backoff). With more pending after the batch, the
        next is due at once, after whatever claims the queue holds meanwhile."""
        store = link.records
        assert store is not None
        if link.dropped:
            self.report(
                "*",
                None,
                "backend-error",
                error=f"{link.dropped} run records were dropped: over {PENDING_MAX} were waiting",
                action="the newest are kept and written once the backend answers; runs go on",
            )
            link.dropped = 0
        try:
            if link.unregistered and link.me is not None:
                jobs = link.unregistered
                new = any(link.written.get(job) != info for job, info in jobs.items())
                generation = link.generation + new
                refused: set[str] = set()
                try:
                    store.register(list(jobs.values()), replace(link.me, registered=generation))
                except RegistrationsNotWritten as e:  # the others were: their jobs' own paths
                    refused = e.jobs
                    self.report_refused(e)
                link.generation = generation
                link.written.update((k, v) for k, v in jobs.items() if k not in refused)
                link.unregistered = {}  # the refused: tried again when the check finds them
            batch = list(itertools.islice(link.pending.values(), store.batch))
            for record in self.invented(link, [r for r, _ in batch]):
                del link.pending[(record.job, record.tick_us)]
            batch = [(r, k) for r, k in batch if (r.job, r.tick_us) in link.pending]
            unwritten, failure = self.put_batch(store, batch)
            for record, _ in batch:
                key = (record.job, record.tick_us)
                if key not in unwritten:
                    del link.pending[key]
                else:  # behind the others: one job's broken directory holds back no other's
                    link.pending[key] = link.pending.pop(key)
            if failure is not None:
                raise failure
        except Exception as e:  # a backend bug must not end the process: it is an error too
            if not isinstance(e, RecordsNotWritten):  # else the backend answered, for the others
                link.outage.failed(str(e))
            link.retry_at = self.clock.monotonic() + link.backoff
            link.backoff = min(link.backoff * 2, RECORD_RETRY_MAX)
            self.report_unwritten(link, e)
            return False
        link.backoff = RECORD_RETRY
        if link.pending:
            link.retry_at = self.clock.monotonic()
            return True
        link.retry_at = None
        if link.failing:
            self.report("*", None, "backend-recovered", recorded=sorted(link.failing))
            link.failing.clear()
        return True

    @staticmethod
    def put_batch(
        store: RecordStore, batch: list[tuple[RunRecord, int]]
    ) -> tuple[set[tuple[str, int]], Exception | None]:
        """Write ``batch`` ((record, keep) pairs); the (job, tick) of those not written, and the
        first failure. A store that says which of its records failed (RecordsNotWritten) has
        written the others; after any other failure the rest of the batch waits too."""
        by_keep: dict[int, list[RunRecord]] = {}
        for record, keep in batch:
            by_keep.setdefault(keep, []).append(record)
        unwritten: set[tuple[str, int]] = set()
        failure: Exception | None = None
        for keep, records in by_keep.items():
            if failure is None or isinstance(failure, RecordsNotWritten):
                try:
                    store.put_runs(records, keep)
                    continue
                except RecordsNotWritten as e:
                    unwritten |= e.unwritten
                    failure = failure or e
                    continue
                except Exception as e:  # a backend bug too: said by the caller
                    failure = e
            unwritten |= {(r.job, r.tick_us) for r in records}
        return unwritten, failure

    def report_refused(self, e: RegistrationsNotWritten) -> None:
        for job in sorted(e.jobs):
            self.report(
                job,
                None,
                "backend-error",
                error=str(e),
                action="registration written again when a check finds it missing; runs go on",
            )

    def report_unwritten(self, link: Link, e: Exception) -> None:
        """A backend-error per job whose records wait, once until they are written."""
        jobs = {job for job, _ in link.pending} | set(link.unregistered)
        for job in sorted(jobs - link.failing):
            self.report(
                job,
                None,
                "backend-error",
                error=str(e),
                action="runs not recorded yet: written once the backend answers; runs go on",
            )
        link.failing |= jobs

    def last_writes(self, link: Link) -> None:
        """At close: what is pending, tried again until ``close``'s deadline."""
        if link.records is None:
            return
        assert link.deadline is not None
        while link.pending or link.unregistered:
            written = self.write_owed(link)
            left = link.deadline - self.clock.monotonic()
            if left <= 0:
                return
            if not written and link.retry_at is not None:
                self.clock.sleep(min(left, max(0.0, link.retry_at - self.clock.monotonic())))

    def records(
        self, link: Link, call: RecordsCall | RegisterCall | HeartbeatCall | PruneCall
    ) -> None:
        store = link.records
        assert store is not None
        if isinstance(call, RecordsCall):
            self.add_pending(link, call.records, call.keep)
            if link.retry_at is None:  # else they wait for the retry (the backend is failing)
                self.write_owed(link)
            else:  # nothing went to the backend: this call says nothing of its outage
                link.outage.unsent(0)
            return
        if isinstance(call, RegisterCall):
            link.me = call.me
            for j in call.jobs:
                link.unregistered[j.job] = j
                link.registered[j.job] = j
            link.check_order = sorted(link.registered)
            link.checked_at = self.clock.monotonic()
            if link.retry_at is None:
                self.write_owed(link)
            else:
                link.outage.unsent(0)
            call.tried.set()
            return
        what = "heartbeat" if isinstance(call, HeartbeatCall) else "prune"
        try:
            if isinstance(call, HeartbeatCall):
                found = store.heartbeat(replace(call.me, registered=link.generation))
                if not found and link.written:
                    # Its last heartbeat was gone (a FLUSHDB, the tables or the directory
                    # emptied): what it registered is written again now, not at the periodic
                    # check, and counts as new (``generation`` moves on), so that a reader who
                    # read the registry in the gap reads it again once it is back.
                    self.owe(link, call.me, link.registered.values())
                elif link.registered:
                    self.recheck(link, call)
            else:
                store.prune(call.jobs, call.keep, call.oldest_us)
        except Exception as e:
            link.outage.failed(str(e))
            self.report(
                "*", None, "backend-error", error=str(e), action=f"{what} later; runs go on"
            )

    def recheck(self, link: Link, call: HeartbeatCall) -> None:
        """After a heartbeat written: check the share of the registrations due since the last,
        so that each is checked once every REREGISTER_EVERY seconds and the cost is even (a
        whole rewrite at once cost an instance of 10,000 jobs on file: 6 s of CPU); those gone
        or damaged (a file, a key, a row someone deleted or wrote over) are written again with
        the owed writes. A check that fails is said, and its share waits for the next period:
        it never keeps a heartbeat from being written, nor piles up a larger share."""
        store = link.records
        assert store is not None
        now = self.clock.monotonic()
        order = link.check_order
        due = link.check_credit + len(order) * max(0.0, now - link.checked_at) / REREGISTER_EVERY
        link.checked_at = now
        count = min(int(due), len(order))
        link.check_credit = due - count if count < len(order) else 0.0  # none twice a period
        if not count:
            return
        first = link.check_next % len(order)
        link.check_next = (first + count) % len(order)
        # In two runs where the share wraps, each a run of names in order (etcd reads a range).
        runs = [order[first : first + count], order[: max(0, first + count - len(order))]]
        try:
            damaged = [
                j
                for names in runs
                if names
                for j in store.missing([link.registered[n] for n in names], call.me.instance)
            ]
        except Exception as e:  # a backend bug too
            self.report(
                "*",
                None,
                "backend-error",
                error=str(e),
                action="registrations checked again later; runs go on",
            )
            return
        if damaged:
            self.owe(link, call.me, damaged)

    def owe(self, link: Link, me: InstanceInfo, jobs: Iterable[JobInfo]) -> None:
        """Registrations to write again with the owed writes: at once, or at the retry. They
        count as new (``generation`` moves on): a reader who read the registry while they were
        gone reads it again once they are back."""
        link.me = me
        for j in jobs:
            link.unregistered[j.job] = j
            link.written.pop(j.job, None)
        if link.retry_at is None:
            link.retry_at = self.clock.monotonic()

    def invented(self, link: Link, records: list[RunRecord]) -> list[RunRecord]:
        """The records of unclaimed ticks (skipped, missed) more than AHEAD_LIMIT ahead of the
        backend's clock: ticks a wrong clock invented (this host's stepped ahead: the ticks it
        passed over are logged as missed), whose records would push the fleet's real ones out of
        the history kept (DESIGN §8). They are not written; one warning per job says so."""
        mono = self.clock.monotonic()
        if link.clock_read is None or mono - link.clock_read[0] > BACKEND_CLOCK_EVERY:
            reading = link.backend.server_time()
            mono = self.clock.monotonic()
            link.clock_read = (mono, None if reading is None else int(reading[0] * 1e6))
        at, backend_us = link.clock_read
        if backend_us is None:
            return []
        now_us = backend_us + int((mono - at) * 1e6)
        # A run's record (it has a fence: its tick was claimed) is real whatever the clocks say
        # now: the backend's clock may have stepped back since the claim.
        invented = [
            r for r in records if r.fence is None and r.tick_us > now_us + AHEAD_LIMIT * 1e6
        ]
        for job in sorted({r.job for r in invented}):
            mine = [r.tick_us for r in invented if r.job == job]
            self.report(
                job,
                None,
                "warning",
                problem=f"{len(mine)} record(s) of ticks up to {(max(mine) - now_us) / 1e6:.1f}s "
                "ahead of the backend's clock (clock-ahead: this host's clock is ahead of it)",
                action="not written, so that the history keeps the fleet's real runs",
            )
        return invented

"""The calls a `pyjob run` process queues for the worker of each of its lock backends
(core/coordinator.py): one class per kind, so that each carries its own typed arguments and the
type of the answer its ``done`` gets.

``done`` (the calls a tick waits for) is called on the scheduler's thread with the answer or a
BackendError. ``priority``: claims and leases first; the fleet's records a tick asks for next;
what no tick waits for (records, registrations, heartbeats, clean-up: the background calls) after
them, so that a batch of record writes never delays a claim.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from .backends.protocol import ClaimOutcome, ClaimRequest, Lease
from .errors import BackendError
from .records import InstanceInfo, JobInfo, RunRecord

# A take-over's answer: each job's newest records (newest first; a job with none is left
# out) and the instances' heartbeats.
Orphans = tuple[dict[str, list[RunRecord]], dict[str, InstanceInfo]]


@dataclass
class ClaimCall:
    requests: list[ClaimRequest]
    done: Callable[[list[ClaimOutcome] | BackendError], None]
    expires: float | None = None  # monotonic: not sent after this (its answer is no use then)
    priority: ClassVar[int] = 0


@dataclass
class RenewCall:
    leases: list[Lease]
    done: Callable[[list[bool] | BackendError], None]
    priority: ClassVar[int] = 0


@dataclass
class ReleaseCall:
    leases: list[Lease]  # none: the worker's own look at the releases it owes
    # monotonic: sent by then at the latest, with the releases gathered meanwhile (None: at once)
    by: float | None = None
    priority: ClassVar[int] = 0


@dataclass
class PreviousCall:
    job: str
    before_us: int
    done: Callable[[str | BackendError | None], None]
    priority: ClassVar[int] = 1


@dataclass
class LatestCall:
    job: str
    done: Callable[[tuple[int, int | None] | BackendError | None], None]
    priority: ClassVar[int] = 1


@dataclass
class OrphanCall:
    """The newest records of many jobs in one call: a start looks at every job once, so that a
    run lost before this instance came is heard of, and a call per job would cost a 10,000-job
    crontab a round trip each."""

    jobs: list[str]
    newest: int
    done: Callable[[Orphans | BackendError], None]
    heartbeats: bool = False  # the heartbeats even when no job has records
    priority: ClassVar[int] = 1


@dataclass
class FleetCall:
    """A read or write of the fleet's shared state beside the records (pauses, triggers, pool
    slots: core/control.py, core/sched/pools.py); ``fn`` is bounded as every backend call is."""

    fn: Callable[[], Any]
    done: Callable[[Any], None]
    held: bool = False  # no tick waits for it: held with the background calls (Coordinator.hold)
    priority: ClassVar[int] = 1


class Subscription(Protocol):
    """A change feed a backend pushes to (Redis: the control's channel): the worker waits on
    ``fd`` beside its queue."""

    fd: int

    def drain(self) -> bool:
        """Take what came; False when the feed ended (its connection broke)."""
        ...

    def close(self) -> None: ...


# Seconds between the reads of a poll whose store pushes its changes (``subscribe``): what a
# feed broken without a word (a host gone from the network) can hide, at most.
SUBSCRIBED_EVERY = 30.0


@dataclass(eq=False)
class PollCall:
    """A read the worker repeats on its own every ``every`` seconds (the fleet control's
    version: core/sched/fleet.py). ``done`` hears only of an answer that is not None, or of
    the BackendError: the reads that find nothing new never wake the scheduler's thread, so an
    idle process costs one round trip a period on one thread. Where the store pushes its
    changes (``subscribe``), the read is made when one is told, and only every
    SUBSCRIBED_EVERY seconds besides: an idle process then makes almost none."""

    fn: Callable[[], Any]
    done: Callable[[Any], None]
    every: float
    at: float = 0.0  # monotonic: when the worker makes the read again
    subscribe: Callable[[], Subscription] | None = None
    feed: Subscription | None = None
    subscribe_at: float = 0.0  # monotonic: when a subscription that failed is tried again
    priority: ClassVar[int] = 1

    def read(self, now: float) -> Any:
        """The read; then, when there is no subscription yet, the subscription and a read
        again (what changed before it took effect). In that order a backend that does not
        answer costs one bounded call, as any read that fails (it is made again ``every``
        seconds later, told or not). A subscription that cannot be made leaves the reads
        every ``every`` seconds, and is tried again SUBSCRIBED_EVERY seconds later: a server
        that refuses it (an ACL, no connection left) is not asked every second."""
        self.at = now + self.every  # first: a read that fails is repeated
        got = self.fn()
        if self.subscribe is not None and self.feed is None and now >= self.subscribe_at:
            try:
                self.feed = self.subscribe()
            except Exception:  # a bug in it too: the reads go on without it
                self.subscribe_at = now + SUBSCRIBED_EVERY
            else:
                try:
                    again = self.fn()
                except BackendError:  # the first answer stands; read again a period later
                    return got
                got = got if again is None else again
        if self.feed is not None:
            self.at = now + SUBSCRIBED_EVERY
        return got

    def told(self, now: float) -> None:
        """Its feed is readable: the read is due now (a feed that ended is dropped first, and
        made again by that read)."""
        assert self.feed is not None
        if not self.feed.drain():
            self.end()
        self.at = now

    def end(self) -> None:
        if self.feed is not None:
            self.feed.close()
            self.feed = None


@dataclass
class RecordsCall:
    records: list[RunRecord]
    keep: int
    priority: ClassVar[int] = 2


@dataclass
class RegisterCall:
    jobs: list[JobInfo]
    me: InstanceInfo
    # Set once the worker has tried the write (a failed one is owed and retried): a process
    # says it started only after its jobs are registered, so `status` lists every one.
    tried: threading.Event = field(default_factory=threading.Event)
    priority: ClassVar[int] = 2


@dataclass
class HeartbeatCall:
    me: InstanceInfo
    priority: ClassVar[int] = 2


@dataclass
class PruneCall:
    jobs: list[str]
    keep: int
    oldest_us: int
    priority: ClassVar[int] = 2


@dataclass
class CleanupCall:
    jobs: list[str]
    priority: ClassVar[int] = 2


Call = (
    ClaimCall
    | RenewCall
    | ReleaseCall
    | PreviousCall
    | LatestCall
    | OrphanCall
    | FleetCall
    | PollCall
    | RecordsCall
    | RegisterCall
    | HeartbeatCall
    | PruneCall
    | CleanupCall
)
BACKGROUND = (RecordsCall, RegisterCall, HeartbeatCall, PruneCall, CleanupCall)


__all__ = [
    "BACKGROUND",
    "SUBSCRIBED_EVERY",
    "Call",
    "ClaimCall",
    "CleanupCall",
    "FleetCall",
    "HeartbeatCall",
    "LatestCall",
    "OrphanCall",
    "Orphans",
    "PollCall",
    "PreviousCall",
    "PruneCall",
    "RecordsCall",
    "RegisterCall",
    "ReleaseCall",
    "RenewCall",
    "Subscription",
]

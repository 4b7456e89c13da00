"""The run leases a process gives back to each backend (DESIGN §8, a run lease): the releases of
runs that end about together go in one ``release_many`` round trip, and a release that fails is
kept and made again, with the next, as soon as the backend answers. All of it runs on the link's
worker thread (or, unthreaded, the caller's), through the coordinator, which owns the one error
policy and decides when the gathered releases must go at once (before any call that may need
their leases free).
"""

from __future__ import annotations

from collections.abc import Callable

from .backendcalls import ReleaseCall
from .clock import Clock
from .recordwrites import Link

RELEASE_RETRY = 1.0  # seconds between retries of lease releases an outage left behind
# Seconds a run's lease release may wait for others to go in the same round trip: a burst of
# 1,000 short runs that end over a second or two costs a few release round trips, not 1,000.
RELEASE_GATHER = 0.25

# report(job, tick, kind, **fields): an event on behalf of the coordinator.
Report = Callable[..., None]


class Releases:
    def __init__(self, clock: Clock, report: Report) -> None:
        self.clock = clock
        self.report = report

    def gather(self, link: Link, call: ReleaseCall) -> None:
        """Add ``call``'s leases to the releases gathered (no round trip)."""
        if call.leases:
            link.releasing += call.leases
            at = call.by if call.by is not None else self.clock.monotonic()
            link.release_at = at if link.release_at is None else min(link.release_at, at)

    def due(self, link: Link) -> bool:
        """Releases to send now: those an outage left behind, or the gathered, once due."""
        return bool(
            link.unreleased
            or link.maybe
            or (link.release_at is not None and self.clock.monotonic() >= link.release_at)
        )

    def send(self, link: Link, at_once: bool = False) -> None:
        """Send the releases gathered and those an outage left behind in one round trip: at
        once, or when they are due."""
        if not at_once and not self.due(link):
            return
        leases, link.releasing, link.release_at = link.releasing, [], None
        retry = link.unreleased + leases
        maybe, link.unreleased, link.maybe = link.maybe, [], []
        if not retry and not maybe:
            return
        try:
            link.backend.release_many(retry + maybe)
        except Exception as e:
            link.unreleased, link.maybe = retry, maybe
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


__all__ = ["RELEASE_GATHER", "RELEASE_RETRY", "Releases"]

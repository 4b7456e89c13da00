"""A backend outage is told twice, not once per failed call (DESIGN §5): ``backend-down`` at the
first call that fails after the backend had answered, ``backend-up`` at the first call that
succeeds after that, with what the outage cost: the calls that failed, the ticks that had no
claim, how long it lasted. Each failed call is still a ``backend-error`` event, at debug level:
an outage of 1,000 jobs would otherwise log thousands of lines a second.

One ``Outage`` per lock URL, fed by the coordinator (the one place a backend is reached) on the
one thread that makes that URL's calls.
"""

from __future__ import annotations

from collections.abc import Callable

from .clock import Clock

# report(job, tick, kind, **fields): an event on behalf of the coordinator.
Report = Callable[..., None]


class Outage:
    def __init__(self, url: str, clock: Clock, report: Report) -> None:
        self.url = url
        self.clock = clock
        self.report = report
        self._clean = False  # between begin() and end(): nothing failed or went unsent
        self._since: float | None = None  # monotonic: the first failure of the outage
        self._calls = 0
        self._ticks = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def begin(self) -> None:
        """A call is made (with the releases owed, which go first)."""
        self._clean = True

    def end(self) -> None:
        """The call is done: the backend answered, unless something failed or was not sent."""
        if self._clean:
            self.answered()
        self._clean = False

    def failed(self, error: str, ticks: int = 0) -> None:
        """A call failed; ``ticks``: the ticks it was to claim (they have no claim now)."""
        self._clean = False
        if self._since is None:
            self._since = self.clock.monotonic()
            self._calls = self._ticks = 0
            self.report("*", None, "backend-down", backend=self.url, error=error)
        self._calls += 1
        self._ticks += ticks

    def unsent(self, ticks: int) -> None:
        """Claims of ``ticks`` were not sent: the backend kept the queue waiting until their
        following ticks were due. Not a call that failed, so no edge: right after an outage
        they are the claims queued during it (counted in it, when it has not ended yet); with a
        backend that answers too slowly, its late answers are ``missed`` events already."""
        self._clean = False
        if self._since is not None:
            self._ticks += ticks

    def answered(self) -> None:
        """A call succeeded: the backend answers."""
        if self._since is None:
            return
        down_for = self.clock.monotonic() - self._since
        self._since = None
        self.report(
            "*",
            None,
            "backend-up",
            backend=self.url,
            failed_calls=self._calls,
            unclaimed_ticks=self._ticks,
            down_for=round(down_for, 3),
        )


__all__ = ["Outage"]

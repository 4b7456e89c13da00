"""The one place that reads wall time, monotonic time, or sleeps.

Everything else takes a ``Clock`` so that tests can pass a ``FakeClock`` and drive time by hand.
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, an aware datetime in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never steps (for durations)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` of real time (may return early when interrupted)."""
        ...


class SystemClock:
    """The host's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return _time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds)


class FakeClock:
    """A clock for tests: time moves only when the code sleeps or the test steps it."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware start")
        self._now = start.astimezone(UTC)
        self._mono = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds > 0:
            self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of real time pass (wall and monotonic move together)."""
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def step(self, seconds: float) -> None:
        """Step the wall clock only, as NTP or an operator would; monotonic time is unmoved."""
        self._now += timedelta(seconds=seconds)


# The longest single sleep while waiting for an instant: waking a few times a minute lets a wait
# notice that the wall clock was stepped (suspend, NTP step, operator) without polling.
MAX_SLEEP_SLICE = 20.0


def sleep_until(clock: Clock, instant: datetime, max_slice: float = MAX_SLEEP_SLICE) -> None:
    """Sleep until the wall clock reaches ``instant``, re-reading it every ``max_slice`` at most."""
    while True:
        remaining = (instant - clock.now()).total_seconds()
        if remaining <= 0:
            return
        clock.sleep(min(remaining, max_slice))

"""The one place that reads wall time, monotonic time, or sleeps.

Everything else takes a ``Clock`` so that tests can pass a ``FakeClock`` and drive time by hand.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time as _time
from collections.abc import Sequence
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

    def wait(self, waker: Waker, seconds: float) -> bool:
        """Block until ``waker`` is woken or ``seconds`` pass; True if it was woken."""
        ...

    def wait_for(self, waker: Waker, seconds: float, fds: Sequence[int]) -> list[int]:
        """Block until ``waker`` is woken, one of ``fds`` is readable, or ``seconds`` pass;
        the readable ones among ``fds``."""
        ...


FINE_SLEEP = 0.002


class SystemClock:
    """The host's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return _time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds)

    def wait(self, waker: Waker, seconds: float) -> bool:
        # select() oversleeps by about a millisecond here while nanosleep is precise, so wait on
        # the pipe until shortly before the deadline and sleep the rest: a wake-up in that last
        # stretch is late by at most FINE_SLEEP, and the deadline itself is met precisely.
        deadline = _time.monotonic() + max(0.0, seconds)
        if seconds > FINE_SLEEP and waker.block(seconds - FINE_SLEEP):
            return True
        rest = deadline - _time.monotonic()
        if rest > 0:
            _time.sleep(rest)
        return waker.block(0)

    def wait_for(self, waker: Waker, seconds: float, fds: Sequence[int]) -> list[int]:
        if not fds:
            self.wait(waker, seconds)
            return []
        deadline = _time.monotonic() + max(0.0, seconds)
        ready = waker.poll(fds, seconds - FINE_SLEEP if seconds > FINE_SLEEP else 0.0)
        if ready is not None:
            return ready
        rest = deadline - _time.monotonic()
        if rest > 0:
            _time.sleep(rest)
        return waker.poll(fds, 0.0) or []


class WrappedClock:
    """Another clock, each call passed on to it: the base of clocks that change one thing."""

    def __init__(self, base: Clock) -> None:
        self.base = base

    def now(self) -> datetime:
        return self.base.now()

    def monotonic(self) -> float:
        return self.base.monotonic()

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)

    def wait(self, waker: Waker, seconds: float) -> bool:
        return self.base.wait(waker, seconds)

    def wait_for(self, waker: Waker, seconds: float, fds: Sequence[int]) -> list[int]:
        return self.base.wait_for(waker, seconds, fds)


class OffsetClock(WrappedClock):
    """Another clock corrected by a measured offset: ``now()`` is the base clock's time plus
    ``offset`` seconds (NTP's sign: positive when the base clock is behind). Monotonic time and
    sleeping are the base clock's. ``offset`` may be updated from another thread at any time."""

    def __init__(self, base: Clock, offset: float = 0.0) -> None:
        super().__init__(base)
        self.offset = offset

    def now(self) -> datetime:
        return self.base.now() + timedelta(seconds=self.offset)


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

    def wait(self, waker: Waker, seconds: float) -> bool:
        if waker.block(0):
            return True
        self.sleep(seconds)
        return waker.block(0)

    def wait_for(self, waker: Waker, seconds: float, fds: Sequence[int]) -> list[int]:
        """Fake time has no file descriptors: a fake runner's children end at fake instants
        the caller includes in ``seconds``."""
        self.wait(waker, seconds)
        return []

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of real time pass (wall and monotonic move together)."""
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def step(self, seconds: float) -> None:
        """Step the wall clock only, as NTP or an operator would; monotonic time is unmoved."""
        self._now += timedelta(seconds=seconds)


class Waker:
    """A self-pipe that ends a wait early: threads call ``wake()``; for signals, pass ``fd`` to
    ``signal.set_wakeup_fd`` and the interpreter writes to it from C the moment a signal arrives
    (a Python handler that took a lock could deadlock against the thread it interrupted)."""

    def __init__(self) -> None:
        self._r, self.fd = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self.fd, False)
        # Re-entrant: a signal handler that wakes runs on the thread it interrupted.
        self._guard = threading.RLock()
        self._closed = False
        # One poll set for every wait, told only what changed since the last: a tick of 1,000
        # jobs waits on some 3,000 descriptors, hundreds of times while its runs end. poll(2)
        # takes descriptor numbers afresh at each call, so a number closed and given to a new
        # descriptor in between is watched as the new one, as a new set would.
        self._poller = select.poll()
        self._poller.register(self._r, select.POLLIN)
        self._polled: set[int] = set()

    def wake(self) -> None:
        """Safe from any thread, and after close() (a closed descriptor's number may already
        belong to another file: it is never written to)."""
        with self._guard:
            if self._closed:
                return
            with contextlib.suppress(OSError):  # a full pipe is already a pending wake-up
                os.write(self.fd, b"!")

    def block(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a wake-up; drain it; True if there was one."""
        ready, _, _ = select.select([self._r], [], [], max(0.0, seconds))
        if not ready:
            return False
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        return True

    def poll(self, fds: Sequence[int], seconds: float) -> list[int] | None:
        """Wait up to ``seconds`` for a wake-up or for one of ``fds`` to be readable (poll(2):
        no FD_SETSIZE limit). None when nothing happened; else the readable ``fds`` (a wake-up
        alone gives an empty list, and is drained)."""
        p, polled, wanted = self._poller, self._polled, set(fds)
        wanted.discard(self._r)
        for fd in polled - wanted:
            p.unregister(fd)
        for fd in wanted - polled:
            p.register(fd, select.POLLIN)
        self._polled = wanted
        events = p.poll(max(0.0, seconds) * 1000)
        if not events:
            return None
        ready = [fd for fd, _ in events if fd != self._r]
        if len(ready) < len(events):
            self.block(0)
        return ready

    def close(self) -> None:
        with self._guard:
            if self._closed:
                return
            self._closed = True
            for fd in (self._r, self.fd):
                with contextlib.suppress(OSError):
                    os.close(fd)


# The longest single sleep while waiting for an instant: waking a few times a minute lets a wait
# notice that the wall clock was stepped (suspend, NTP step, operator) without polling.
MAX_SLEEP_SLICE = 20.0


def sleep_until(
    clock: Clock, instant: datetime, max_slice: float = MAX_SLEEP_SLICE, waker: Waker | None = None
) -> None:
    """Sleep until the wall clock reaches ``instant``, re-reading it every ``max_slice`` at most.

    With a ``waker`` whose fd is the process's ``signal.set_wakeup_fd``, a signal always ends the
    wait at once: a plain sleep entered just after the signal arrived would not be interrupted
    (the interpreter checks for signals between bytecodes), and could sleep a whole slice."""
    while True:
        remaining = (instant - clock.now()).total_seconds()
        if remaining <= 0:
            return
        if waker is None:
            clock.sleep(min(remaining, max_slice))
        else:
            clock.wait(waker, min(remaining, max_slice))


_CLOCK_REALTIME_COARSE = 5  # Linux's clockid; Python's time module does not name it


def coarse_tick() -> float:
    """The resolution (seconds) of the kernel's coarse clock, which stamps file times: one timer
    tick. Not a reading of the time."""
    try:
        return _time.clock_getres(_CLOCK_REALTIME_COARSE)
    except OSError:
        return 0.01  # not Linux: assume a coarse 100 Hz stamp

"""Fakes for unit tests: a runner whose children end at chosen fake times; backends that fail."""

from __future__ import annotations

import signal
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pyjob.core.backends import ClaimResult, Lease
from pyjob.core.backends.null import NullBackend
from pyjob.core.clock import FakeClock
from pyjob.core.errors import BackendError
from pyjob.core.process import Command


@dataclass(eq=False)
class FakeChild:
    """A fake command: it ends ``duration`` fake seconds after its start with ``code``; SIGTERM
    ends it at once (143) unless it ``ignores_term``; SIGKILL always does (137)."""

    clock: FakeClock
    ends_at: float
    code: int
    ignores_term: bool = False
    pid: int | None = 4242
    signals: list[int] = field(default_factory=list)

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGKILL or (signum == signal.SIGTERM and not self.ignores_term):
            self.ends_at = min(self.ends_at, self.clock.monotonic())
            self.code = 128 + signum


@dataclass
class FakeRunner:
    """Records every start. ``duration``/``code`` (or ``durations``, one per start) say how each
    child ends; ``on_start(n)`` lets a test act (step the clock) at the n-th start."""

    clock: FakeClock
    code: int = 0
    duration: float = 0.0
    durations: Sequence[float] = ()
    ignores_term: bool = False
    started: list[dict[str, str]] = field(default_factory=list)
    children: list[FakeChild] = field(default_factory=list)
    on_start: Callable[[int], None] | None = None
    _live: list[FakeChild] = field(default_factory=list)
    flushes: int = 0  # turns of the scheduler that ended

    def resolve(self, command: Command, env: Mapping[str, str]) -> None:
        return None  # nothing to look up

    def start(
        self,
        command: Command,
        env: Mapping[str, str],
        on_line: Callable[[str, str], None] | None,
        found: object = None,
    ) -> FakeChild:
        n = len(self.started)
        self.started.append(dict(env))
        duration = self.durations[n] if n < len(self.durations) else self.duration
        child = FakeChild(
            self.clock, self.clock.monotonic() + duration, self.code, self.ignores_term
        )
        self.children.append(child)
        self._live.append(child)
        if self.on_start is not None:
            self.on_start(len(self.started))
        return child

    def fds(self) -> list[int]:
        return []

    def next_due(self) -> float | None:
        return min((c.ends_at for c in self._live), default=None)

    def service(self, ready: Collection[int]) -> list[tuple[FakeChild, int]]:
        now = self.clock.monotonic()
        ended = [c for c in self._live if c.ends_at <= now]
        self._live = [c for c in self._live if c.ends_at > now]
        return [(c, c.code) for c in ended]

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        return None


class FlakyBackend(NullBackend):
    """Claims fail for the ticks in ``down``; lease releases fail until ``clock`` reaches
    ``releases_down_until``."""

    def __init__(
        self,
        down: set[datetime] | None = None,
        clock: FakeClock | None = None,
        releases_down_until: datetime | None = None,
    ) -> None:
        super().__init__()
        self.down = down or set()
        self.clock = clock
        self.releases_down_until = releases_down_until
        self.released: list[str] = []

    @property
    def releases_down(self) -> bool:
        until = self.releases_down_until
        return until is not None and self.clock is not None and self.clock.now() < until

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        if tick in self.down:
            raise BackendError("backend unreachable (test)")
        return super().claim(job, tick, instance, keep_until, now)

    def release_lease(self, lease: Lease) -> None:
        if self.releases_down:
            raise BackendError("backend unreachable (test)")
        self.released.append(lease.job)
        super().release_lease(lease)


class RecordingBackend(NullBackend):
    """Counts the batch calls; ``lose`` is a set of ticks another instance wins."""

    def __init__(self, lose: set[datetime] | None = None) -> None:
        super().__init__()
        self.lose = lose or set()
        self.batches: list[int] = []
        self.renewals: list[int] = []
        self.cleanups: list[int] = []

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        if tick in self.lose:
            return ClaimResult(False, "other:1", 7)
        return super().claim(job, tick, instance, keep_until, now)

    def claim_many(self, requests, instance, now):  # type: ignore[no-untyped-def]
        self.batches.append(len(requests))
        return super().claim_many(requests, instance, now)

    def renew_many(self, leases):  # type: ignore[no-untyped-def]
        self.renewals.append(len(leases))
        return super().renew_many(leases)

    def cleanup_many(self, jobs, now):  # type: ignore[no-untyped-def]
        self.cleanups.append(len(jobs))
        return super().cleanup_many(jobs, now)

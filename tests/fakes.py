"""Fakes for unit tests: a runner whose commands end at once; a backend whose claims fail."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pyjob.core.backends import ClaimResult
from pyjob.core.backends.null import NullBackend
from pyjob.core.errors import BackendError
from pyjob.core.process import Command


@dataclass
class FakeHandle:
    code: int
    pid: int | None = 4242
    signals: list[int] = field(default_factory=list)

    def wait(self) -> int:
        return self.code

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)


@dataclass
class FakeRunner:
    """Records every start; ``on_start(n)`` lets a test act (step the clock) at the n-th run."""

    code: int = 0
    started: list[dict[str, str]] = field(default_factory=list)
    on_start: Callable[[int], None] | None = None

    def start(
        self,
        command: Command,
        env: Mapping[str, str],
        on_line: Callable[[str, str], None] | None,
    ) -> FakeHandle:
        self.started.append(dict(env))
        if self.on_start is not None:
            self.on_start(len(self.started))
        return FakeHandle(self.code)


class FlakyBackend(NullBackend):
    """Claims fail for the ticks in ``down``."""

    def __init__(self, down: set[datetime]) -> None:
        super().__init__()
        self.down = down

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        if tick in self.down:
            raise BackendError("backend unreachable (test)")
        return super().claim(job, tick, instance, keep_until, now)

"""Judging clocks (DESIGN §6): impact classes, limits, the report of `pyjob check-clock`, and the
checks `pyjob run` makes before and while it schedules.

Signs follow NTP: an offset is *other clock − this host's clock*, so +2.5 s means this host is
2.5 s behind the server (add the offset to local time to get the server's time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .backends import Backend
from .backends.protocol import SKEW_LIMIT
from .clock import Clock, OffsetClock, Waker
from .durations import format_seconds as _dur
from .errors import ClockError, ClockOffsetError
from .ntp import Measurement, Sample, best_sample, measure_all, unusable
from .ntp import falsetickers as find_falsetickers
from .schedule import Schedule
from .settings import DEFAULT_LIMIT, MIN_LIMIT


@dataclass(frozen=True)
class Impact:
    name: str  # negligible, minor, noticeable, severe
    advice: str


_IMPACTS = (
    (0.1, Impact("negligible", "")),
    (1.0, Impact("minor", "acceptable for jobs of a minute or longer")),
    (
        5.0,
        Impact(
            "noticeable",
            "fix soon: check that NTP runs on this host (chronyc tracking, or timedatectl)",
        ),
    ),
    (
        math.inf,
        Impact(
            "severe",
            "fix now: instances disagree on which tick is due; start NTP and step the clock "
            "(chronyc makestep)",
        ),
    ),
)


def impact(seconds: float) -> Impact:
    """The impact class of an offset or a skew of ``seconds`` (either sign)."""
    size = abs(seconds)
    for bound, found in _IMPACTS:
        if size < bound:
            return found
    return _IMPACTS[-1][1]  # pragma: no cover - inf bounds every float but NaN


def interval_limit(interval: float) -> float:
    """The skew a job of this interval tolerates: D/60, at least 100 ms (1 s → 100 ms,
    1 min → 1 s, 5 min → 5 s, 1 h → 1 min)."""
    return max(MIN_LIMIT, interval / 60)


def offset_limit(max_offset: float | None, interval: float | None) -> tuple[float, str]:
    """The offset limit and where it came from, for messages."""
    if max_offset is not None:
        return max_offset, "--max-offset"
    if interval is not None:
        return interval_limit(interval), f"1/60 of the {_dur(interval)} interval"
    return DEFAULT_LIMIT, "default"


def schedule_interval(schedule: Schedule, after: datetime, count: int = 6) -> float | None:
    """The shortest gap between the next ``count`` ticks (None when fewer than two remain)."""
    ticks: list[datetime] = []
    tick = schedule.next_tick(after)
    while tick is not None and len(ticks) < count:
        ticks.append(tick)
        tick = schedule.next_tick(tick)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    return min(gaps) if gaps else None


def signed(seconds: float) -> str:
    """+0.012345s / -2.500000s: offsets in messages."""
    return f"{seconds:+.6f}s"


# ---------------------------------------------------------------------------------- kernel


@dataclass(frozen=True)
class KernelState:
    """What Linux says of its own clock (adjtimex, read only)."""

    synchronised: bool
    state: str  # ok, insert-leap, delete-leap, leap-in-progress, leap-done, unsynchronised
    est_error: float  # seconds
    max_error: float  # seconds


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


_STATES = {
    0: "ok",
    1: "insert-leap",
    2: "delete-leap",
    3: "leap-in-progress",
    4: "leap-done",
    5: "unsynchronised",
}
_STA_UNSYNC = 0x0040


def kernel_state() -> KernelState | None:
    """The kernel's synchronisation state and error estimates, or None where there is no
    adjtimex (not Linux) or it fails. ``modes = 0`` only reads: no privilege is needed and
    nothing is changed."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        code = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if code < 0:
        return None
    synchronised = code != 5 and not tx.status & _STA_UNSYNC
    return KernelState(
        synchronised,
        _STATES.get(code, f"state {code}"),
        tx.esterror / 1e6,
        tx.maxerror / 1e6,
    )


# ---------------------------------------------------------------------------------- backend


@dataclass(frozen=True)
class BackendClock:
    url: str
    offset: float  # backend − this host, seconds
    error: float  # ± seconds


# A reading bracketed within half a millisecond either way (a loopback round trip, a local
# file's stamp) is not narrowed usefully by more samples: the first such one is kept, so a
# heartbeat's reading of a fast backend costs one round trip, not ``samples``.
TIGHT_BRACKET = 0.0005


def backend_clock(
    backend: Backend, clock: Clock, samples: int = 5, calibrate: bool = True
) -> BackendClock | None:
    """The lock backend's clock against this host's: each reading is bracketed by two local
    readings; the tightest bracket wins and its half-width (plus half the backend's resolution)
    is the error bound; sampling stops at a bracket within TIGHT_BRACKET. None for a backend
    without a clock of its own. A backend whose clock reads coarsely (etcd's, to the second)
    first narrows what it knows of it (``calibrate``, seconds of probes: for check-clock, never
    on a running scheduler's backend thread, where it would hold up the claims)."""
    narrow = getattr(backend, "calibrate", None)
    if calibrate and narrow is not None:
        narrow()
    best: BackendClock | None = None
    for _ in range(samples):
        before = clock.now().timestamp()
        start = clock.monotonic()
        reading = backend.server_time()
        elapsed = clock.monotonic() - start
        if reading is None:
            return None
        value, resolution = reading
        sample = BackendClock(
            backend.url, value - (before + elapsed / 2), elapsed / 2 + resolution / 2
        )
        if best is None or sample.error < best.error:
            best = sample
        if elapsed / 2 <= TIGHT_BRACKET:
            break  # as tight as a reading gets: more samples cannot narrow it usefully
    return best


# ---------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Skew:
    value: float  # seconds between the two clocks furthest apart
    between: tuple[str, str]
    error: float


def skew_of(local: str, peers: Sequence[Measurement]) -> Skew | None:
    """The largest difference between any two clocks: this host (offset 0) and each peer that
    was measured."""
    clocks = [(local, 0.0, 0.0)] + [
        (m.server, m.best.offset, m.best.error) for m in peers if m.best is not None
    ]
    if len(clocks) < 2:
        return None
    low = min(clocks, key=lambda c: c[1])
    high = max(clocks, key=lambda c: c[1])
    return Skew(high[1] - low[1], (low[0], high[0]), low[2] + high[2])


@dataclass
class ClockReport:
    servers: list[Measurement]
    limit: float
    limit_reason: str
    peers: list[Measurement] = field(default_factory=list)
    max_skew: float | None = None
    backend: BackendClock | None = None
    backend_url: str | None = None
    kernel: KernelState | None = None
    local: str = "local"

    # Derived once: the measurements do not change after check_clock() returns.
    @functools.cached_property
    def falsetickers(self) -> set[str]:
        return find_falsetickers(self.servers)

    @functools.cached_property
    def best(self) -> Sample | None:
        return best_sample(self.servers)

    @functools.cached_property
    def skew(self) -> Skew | None:
        return skew_of(self.local, self.peers) if self.peers else None

    @property
    def skew_limit(self) -> float:
        return self.max_skew if self.max_skew is not None else self.limit

    def unknown(self) -> list[str]:
        """What was asked for and could not be measured."""
        missing = []
        if self.best is None:
            missing.append(f"no usable NTP reply ({unusable(self.servers)})")
        lost = [m for m in self.peers if m.best is None]
        if lost:
            missing.append(f"peer not measured ({unusable(lost)})")
        if self.backend_url is not None and self.backend is None:
            missing.append(f"{self.backend_url} keeps no clock")
        return missing

    def over(self) -> list[str]:
        """Every measured offset or skew over its limit, described."""
        problems = []
        best = self.best
        if best is not None and abs(best.offset) > self.limit:
            problems.append(
                f"offset {signed(best.offset)} from {best.server} is over {_dur(self.limit)} "
                f"({self.limit_reason})"
            )
        skew = self.skew
        skew_limit = self.skew_limit
        if skew is not None and skew.value > skew_limit:
            problems.append(
                f"skew {skew.value:.6f}s between {skew.between[0]} and {skew.between[1]} is "
                f"over {_dur(skew_limit)}"
            )
        if self.backend is not None and abs(self.backend.offset) > SKEW_LIMIT:
            problems.append(
                f"the backend's clock is {signed(self.backend.offset)} from this host's, beyond "
                f"the skew limit {_dur(SKEW_LIMIT)} under which claims hold: this host's ticks "
                "will be refused (or win every claim), fix the clocks"
            )
        elif self.backend is not None and abs(self.backend.offset) > self.limit:
            problems.append(
                f"the backend's clock is {signed(self.backend.offset)} from this host's, over "
                f"{_dur(self.limit)}"
            )
        return problems

    @property
    def status(self) -> str:
        """ok, over (an offset or skew over its limit) or unknown (nothing usable measured);
        a measured problem outranks a missing measurement."""
        if self.over():
            return "over"
        return "unknown" if self.unknown() else "ok"


def check_clock(
    servers: Sequence[str],
    clock: Clock,
    *,
    limit: float,
    limit_reason: str,
    peers: Sequence[str] = (),
    max_skew: float | None = None,
    backend: Backend | None = None,
    samples: int = 4,
    timeout: float = 1.0,
    kernel: bool = True,
) -> ClockReport:
    """Measure everything `pyjob check-clock` reports (servers and peers at once)."""
    measured = measure_all([*servers, *peers], clock, samples, timeout)
    report = ClockReport(
        measured[: len(servers)],
        limit,
        limit_reason,
        peers=measured[len(servers) :],
        max_skew=max_skew,
    )
    if backend is not None:
        report.backend_url = backend.url
        report.backend = backend_clock(backend, clock)
    if kernel:
        report.kernel = kernel_state()
    return report


# ---------------------------------------------------------------------------------- run


Emit = Callable[..., None]  # emit(kind, **fields)


class ClockWatch:
    """The clock checks of `pyjob run`: one measurement before the first tick, bounded by
    ``budget`` seconds whatever the servers do, then one every ``every`` seconds on a thread of
    its own, so that re-measuring never delays a tick. With ``correct`` (``--clock ntp``) each
    good measurement becomes that clock's offset."""

    def __init__(
        self,
        servers: Sequence[str],
        clock: Clock,
        emit: Emit,
        *,
        limit: float,
        limit_reason: str,
        policy: str = "refuse",
        require: bool = False,
        every: float = 600.0,
        budget: float = 3.0,
        samples: int = 4,
        timeout: float = 1.0,
        correct: OffsetClock | None = None,
    ) -> None:
        self.servers = list(servers)
        self.clock = clock  # the uncorrected clock: measuring against a corrected one drifts
        self.emit = emit
        self.limit = limit
        self.limit_reason = limit_reason
        self.policy = policy
        self.require = require
        self.every = every
        self.budget = budget
        self.samples = samples
        self.timeout = min(timeout, budget)
        self.correct = correct
        self._waker = Waker()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._closed = False
        self._lock = threading.Lock()

    def _measure(self) -> tuple[Sample | None, list[Measurement]]:
        measured = measure_all(self.servers, self.clock, self.samples, self.timeout, self.budget)
        return best_sample(measured), measured

    def _fields(self, best: Sample) -> dict[str, Any]:
        return {
            "offset": round(best.offset, 6),
            "error": round(best.error, 6),
            "server": best.server,
            "stratum": best.stratum,
            "limit": round(self.limit, 6),
            "impact": impact(best.offset).name,
        }

    def check_start(self) -> Sample | None:
        """Measure before scheduling. Raises ClockError when nothing usable answered and the
        clock is required, ClockOffsetError when the offset is over the limit (policy refuse,
        not corrected)."""
        return self._check(at_start=True)

    def start(self) -> None:
        """Re-measure every ``every`` seconds until ``stop()``."""
        self._thread = threading.Thread(target=self._loop, name="pyjob-clock", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stopped:
                if self.clock.wait(self._waker, self.every) or self._stopped:
                    return
                self.recheck()
        finally:
            with self._lock:
                self._waker.close()
                self._closed = True

    def recheck(self) -> Sample | None:
        return self._check(at_start=False)

    def _check(self, at_start: bool) -> Sample | None:
        """Measure, apply the result, log it; only the check at start may refuse or fail."""
        best, measured = self._measure()
        if self._stopped:
            return best
        if best is None:
            reasons = unusable(measured)
            if at_start and self.require:
                raise ClockError(f"no usable NTP reply ({reasons}); --require-clock is set")
            if at_start:
                action = "scheduling by the local clock unmeasured"
            else:
                action = "keeping the last correction" if self.correct else "going on"
            self.emit("clock-warning", problem=f"no usable NTP reply ({reasons})", action=action)
            return None
        fields = self._fields(best)
        if self.correct is not None:
            self.correct.offset = best.offset
            self.emit("clock", **fields, action="corrected (--clock ntp)")
        elif abs(best.offset) <= self.limit:
            self.emit("clock", **fields)
        elif at_start and self.policy == "refuse":
            raise ClockOffsetError(
                f"clock offset {signed(best.offset)} ±{best.error:.6f}s (from {best.server}) is "
                f"over the limit {_dur(self.limit)} ({self.limit_reason}): fix this host's clock, "
                "or pass --clock ntp to correct for it, or --clock-policy warn to run anyway"
            )
        else:
            advice = impact(best.offset).advice
            if at_start:
                action = "running anyway (--clock-policy warn)" + (f"; {advice}" if advice else "")
            else:
                action = advice or "going on"
            self.emit(
                "clock-warning",
                **fields,
                problem=f"offset over the limit ({self.limit_reason})",
                action=action,
            )
        return best

    def stop(self) -> None:
        """Ask the thread to end; it may be measuring, so it is not waited for."""
        with self._lock:
            self._stopped = True
            if not self._closed:
                self._waker.wake()
            if self._thread is None and not self._closed:
                self._waker.close()
                self._closed = True

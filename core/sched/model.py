"""What the scheduler holds about a job and its runs: plain data, and the pure decisions on it.

A job's lifecycle is one value, ``JobPhase``; everything else about a job (is it busy, what
waits) is derived from what it holds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..backends.protocol import ClaimOutcome, ClaimResult, Lease
from ..errors import BackendError
from ..hooks import hook_env
from ..instants import to_us
from ..jobsettings import JobSettings
from ..process import Command, FailedStart, Found, Handle
from ..records import OUTPUT_TAIL, RunRecord
from ..results import Result, result_of
from ..schedule import Schedule
from ..settings import Overlap

CLAIM_LEAD = 0.5  # claim a tick this long before it (at most a quarter of its interval)
CLEANUP_EVERY = 60.0
OVERLAPPING = "overlap: the previous run is still going"
PAUSED = "paused"  # a tick of a job paused by `pyjob pause`
POLL = 0.05  # the longest sleep while a child has no pidfd (non-Linux)
SHARE_TIME = (Overlap.ALLOW, Overlap.QUEUE)  # policies under which a retry may overlap a tick


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the scheduler runs it."""

    job_id: str
    schedule: Schedule
    command: Command
    settings: JobSettings = field(default_factory=JobSettings)
    env: Mapping[str, str] = field(default_factory=dict)  # the job's own, on the process's
    fingerprint: Any = None  # equal for two definitions a reload may keep running

    @property
    def lock(self) -> str | None:
        return self.settings.lock


def run_id(job: str, tick: datetime | None, started: datetime) -> str:
    """`<job>-<tick>`, the same on every host (like a Kubernetes Job's name)."""
    instant = tick or started
    stamp = instant.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    if instant.microsecond:
        stamp += f".{instant.microsecond:06d}"
    return f"{job}-{stamp}Z" + ("" if tick else "-now")


def overlap_action(policy: Overlap, queued: bool) -> str:
    """What a tick does when a run of its job is still going on this instance: ``skip``,
    ``queue``, ``skip-queued`` (one is already waiting), ``replace`` or ``start``."""
    if policy is Overlap.SKIP:
        return "skip"
    if policy is Overlap.QUEUE:
        return "skip-queued" if queued else "queue"
    if policy is Overlap.REPLACE:
        return "replace"
    return "start"


def keep_until(schedule: Schedule, tick: datetime, following: datetime | None = None) -> datetime:
    """How long a claim of ``tick`` must be kept: until well after the following tick, so that
    an instance whose clock lags cannot run it again."""
    following = following or schedule.next_tick(tick) or tick
    return following + max(following - tick, timedelta(minutes=10))


class JobPhase(enum.Enum):
    """Where a job is in its life. ``CATCHING_UP`` and ``ADOPTING`` are ``ACTIVE`` with a
    look-up under way (--catch-up; another instance's orphaned attempts); they are entered only
    from ``ACTIVE`` and left back to it, and retiring or ending a job overrides them."""

    ACTIVE = "active"
    CATCHING_UP = "catching-up"  # a --catch-up look-up or claim is under way
    ADOPTING = "adopting"  # a look for another instance's orphaned attempts is under way
    RETIRING = "retiring"  # removed or changed by a reload: finishes its runs, then ends
    ENDED = "ended"


@dataclass(eq=False, slots=True)
class Run:
    job: JobState
    tick: datetime | None  # None for --run-now
    run_id: str
    fence: int | None
    lease: Lease | None
    started_wall: datetime
    started_mono: float
    handle: Handle | None = None
    terminated: str | None = None  # "timeout", "replace", "stop"
    deadline_gen: int = 0  # bumped to cancel the pending timeout/kill timers
    record: RunRecord | None = None
    tail: list[str] | None = None  # the last lines of output (--log-output), for the record
    tail_bytes: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1
    prior: list[dict[str, Any]] = field(default_factory=list)  # the earlier attempts
    key: datetime | None = None  # the claim this instance holds for the run (None: its tick)
    slot: Lease | None = None  # its slot of the job's --pool


@dataclass(eq=False, slots=True)
class Retry:
    """The next attempt of a failed run (--retries), waiting for its delay."""

    tick: datetime
    claim: ClaimResult | None
    attempt: int
    prior: list[dict[str, Any]]
    record: RunRecord | None
    cancelled: bool = False
    run: Run | None = None  # the attempt that failed (hooks on a cancel see its result)
    code: int = 0
    duration: float = 0.0
    # The claim this instance holds for the run: its tick, or the take-over claim of an attempt
    # taken over from another instance (claiming it again is won, and takes the run lease).
    key: datetime | None = None


@dataclass(eq=False, slots=True)
class Hook:
    """A hook command running after a run (core/hooks.py)."""

    job: JobState
    name: str
    run_id: str
    started_mono: float
    handle: Handle | None = None
    gen: int = 0
    timed_out: bool = False


@dataclass(eq=False, slots=True)
class Deferred:
    """A tick waiting for the end of its --jitter delay (or for a slot of its pool: None is
    --run-now's)."""

    tick: datetime | None
    claim: ClaimResult | None
    lease: Lease | None


@dataclass(eq=False, slots=True)
class JobState:
    job: Job
    phase: JobPhase = JobPhase.ACTIVE
    next_tick: datetime | None = None
    prev: datetime | None = None
    gen: int = 0  # bumped whenever the pending wall timers of the job are obsolete
    outcomes: dict[datetime, ClaimOutcome | BackendError | None] = field(default_factory=dict)
    waiting: set[datetime] = field(default_factory=set)  # ticks due whose claim is not back yet
    runs: list[Run] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)
    queued: tuple[datetime, ClaimResult | None] | None = None
    replacing: tuple[datetime, ClaimResult | None] | None = None
    leasing: int = 0  # claims with a lease request under way
    ticks_run: int = 0  # by this instance or another (for --max-runs)
    runs_started: int = 0
    failures: int = 0
    last_result: str | None = None  # of this instance's last run (--notify-on change fallback)
    catchup: list[tuple[datetime, ClaimResult]] = field(default_factory=list)  # won, to run
    retries: list[Retry] = field(default_factory=list)  # attempts waiting for their delay
    # by tick: (the attempt about to start, the earlier ones, the claim this instance holds)
    attempts: dict[datetime, tuple[int, list[dict[str, Any]], datetime]] = field(
        default_factory=dict
    )
    ahead: tuple[datetime, datetime | None] | None = None  # (tick, its following), at its claim
    # The latest tick whose claim this process had answered (won, lost or refused), or ran on
    # a backend error: --catch-up never claims it again.
    claimed_to: datetime | None = None
    # The latest tick this process won (or ran on a backend error): a tick at or before it is
    # never claimed again, whatever the wall clock does, since claiming its own tick again is
    # won again.
    won_to: datetime | None = None
    # --catch-up: the most recent ticks whose claim failed (backend down) and that did not run;
    # claimed again, before the tick then due, in the first batch the backend answers.
    failed: list[datetime] = field(default_factory=list)
    # (tick, run id, environment, where its program is), made at its claim
    ready: tuple[datetime, str, dict[str, str], Found] | None = None

    @property
    def id(self) -> str:
        return self.job.job_id

    @property
    def s(self) -> JobSettings:
        return self.job.settings

    @property
    def ended(self) -> bool:
        return self.phase is JobPhase.ENDED

    @property
    def retiring(self) -> bool:
        return self.phase is JobPhase.RETIRING

    @property
    def gone(self) -> bool:
        """Retiring or ended: nothing new is scheduled for it."""
        return self.phase in (JobPhase.RETIRING, JobPhase.ENDED)

    def look_up(self, phase: JobPhase) -> bool:
        """Enter a look-up phase (CATCHING_UP, ADOPTING) if the job is plainly active; a
        catch-up look-up also takes over from an orphan look-up (it is the one that runs)."""
        if self.phase is JobPhase.ACTIVE or (
            phase is JobPhase.CATCHING_UP and self.phase is JobPhase.ADOPTING
        ):
            self.phase = phase
            return True
        return False

    def looked_up(self, phase: JobPhase) -> None:
        """A look-up is back: the job is plainly active again, unless it moved on meanwhile."""
        if self.phase is phase:
            self.phase = JobPhase.ACTIVE

    def busy(self) -> bool:
        return bool(
            self.runs
            or self.deferred
            or self.queued
            or self.replacing
            or self.waiting
            or self.catchup
            or self.phase is JobPhase.CATCHING_UP
            or self.retries
            or self.attempts
        )


def hooks_env(run: Run, name: str, result: str, code: int, duration: float) -> dict[str, str]:
    tail = "\n".join(run.tail) if run.tail is not None else None
    return hook_env(run.env, name, result, code, duration, tail, run.attempt)


def attempt_doc(
    run: Run, code: int, result: str, finished_us: int | None, instance: str
) -> dict[str, Any]:
    return {
        "attempt": run.attempt,
        "instance": instance,
        "started_us": to_us(run.started_wall),
        "finished_us": finished_us,
        "exit_code": code,
        "result": result,
    }


def keep_tail(run: Run, line: str) -> None:
    """The last OUTPUT_TAIL bytes of a run's output, in whole lines."""
    assert run.tail is not None
    run.tail.append(line)
    run.tail_bytes += len(line) + 1
    while run.tail_bytes > OUTPUT_TAIL and len(run.tail) > 1:
        run.tail_bytes -= len(run.tail.pop(0)) + 1


def run_result(run: Run, code: int) -> Result:
    """The result of a run that ended (run records, hooks)."""
    return result_of(run.terminated, isinstance(run.handle, FailedStart), code)

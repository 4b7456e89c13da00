"""The lock backend protocol (DESIGN §5): the types every backend speaks, in a module of its own so
that ``core/backends/`` has no import circle (backends import this, never the package).

A process reaches its backend through one coordinator (``core/coordinator.py``), which batches:
claims of every job due at the same instant go in one ``claim_many`` call, lease renewals in one
``renew_many``. Backends answer a batch in one round trip where they can (a Redis script, one SQL
statement, one lock acquisition on ``file:``/``nfs:``); ``Batched`` gives the plain per-item
loop to a backend that has nothing better.

Every call is bounded in time on the client side and raises ``BackendError`` (never anything else)
when it fails or takes too long; the coordinator alone decides what a failure means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from ..errors import BackendError

if TYPE_CHECKING:
    from ..records import RecordStore

# How far apart two clocks (a host's and the backend's, or two hosts') may be while claims still
# guarantee that no tick runs twice (DESIGN §5, "Claims hold under skew").
SKEW_LIMIT = 3600.0

# How far ahead of the backend's clock a tick may be when it is claimed (DESIGN §8): claims are
# made at most CLAIM_LEAD (0.5 s) before their tick, so only a claimer whose clock is ahead of the
# backend's by more than about this is refused ("clock-ahead"). Such a claim changes nothing in
# the backend: the wrong clock costs its own host its ticks, never another host's.
AHEAD_LIMIT = 5.0

# A tick at or before the job's mark whose claim is not kept is won only while the backend's clock
# is this far before the tick's keep_until: claims are kept until keep_until by the backend's
# clock, so then the claim would still be there had anyone made it (the margin covers the coarse
# file-system stamps that file: and nfs: keep time with).
KEPT_MARGIN = 1.0

# The most claims a backend sends in one round trip: a larger batch goes in several, so that no
# single statement or script comes near the client-side bound (5,000 claims take about 0.2 s).
BATCH_LIMIT = 2000


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of claiming (job, tick): who holds it, and the fence it was given."""

    won: bool
    holder: str  # the instance that holds the claim (this one when won)
    fence: int | None  # grows with every claim of a job; None where the backend has none
    refused: str | None = None  # set when the tick must not run at all: why (won is False)
    # With refused: how far (seconds) the claimer's clock was ahead of the backend's when the
    # claim was refused as too early ("clock-ahead"); None for every other refusal.
    ahead: float | None = None

    @property
    def clock_ahead(self) -> bool:
        return self.ahead is not None


@dataclass
class Lease:
    """A time-limited hold on a job (the run lease of ``--overlap skip``)."""

    job: str
    instance: str
    token: str
    ttl: float  # seconds; a holder that stops renewing loses it after this long
    handle: object = None  # backend-private


@dataclass(frozen=True)
class ClaimRequest:
    """One item of a ``claim_many`` batch. With ``lease_ttl``, a won claim also takes the job's
    run lease in the same round trip (``--overlap skip``)."""

    job: str
    tick: datetime
    keep_until: datetime  # by the caller's clock ``now``; see Backend.claim
    lease_ttl: float | None = None


@dataclass(frozen=True)
class ClaimOutcome:
    """The answer to one ClaimRequest: the claim, and the lease when one was asked for and the
    claim was won (None with ``lease_holder`` set when another live holder has it)."""

    claim: ClaimResult
    lease: Lease | None = None
    lease_holder: str | None = None


class LostAnswer(BackendError):
    """A claim batch failed after it may have reached the backend (a timeout, a dropped
    connection): ``leases`` are the run leases it may have taken all the same. Their tokens are
    derived from (instance, job, tick), so the caller releases them (compare-and-delete by token,
    harmless when they were never taken) without the answer that was lost."""

    def __init__(self, message: str, leases: Sequence[Lease]) -> None:
        super().__init__(message)
        self.leases = list(leases)


def lease_token(nonce: str, tick_us: int) -> str:
    """The token of the run lease a claim of ``tick_us`` takes (``nonce``: one per backend
    object, so per process): the same when the claim is repeated (a retry after a lost reply
    gets its lease back) and known without the reply."""
    return f"{nonce}-{tick_us}"


class Backend(Protocol):
    """What the coordinator, `pyjob check-clock`, `pyjob status` and `pyjob history` call: batch
    calls only. A backend may have more (tests probe leases with ``acquire_lease`` and
    ``lease_holder``), but nothing outside it relies on that."""

    url: str  # for messages; never contains a password

    def check(self) -> None:
        """Raise BackendError if the backend cannot be used (called once at start)."""
        ...

    def claim_many(
        self, requests: Sequence[ClaimRequest], instance: str, now: datetime
    ) -> list[ClaimOutcome]:
        """Claim every request (in one round trip where the backend can); one outcome each, in
        order: exactly one claimer wins each (job, tick). A BackendError fails the whole batch.

        Every judgement of time is made by the backend's clock (DESIGN §8). A tick with no claim
        comes back refused (``won`` False, ``refused`` says why) when it is more than
        AHEAD_LIMIT ahead of the backend's clock (``ahead`` set: the claimer's clock is ahead;
        nothing is written), when it is older than its ``keep_until`` plus SKEW_LIMIT, or when
        it is at or before the job's mark (the latest tick claimed, kept forever) and its claim,
        had it been made, would no longer be kept (the backend's clock is within KEPT_MARGIN of
        ``keep_until`` or past it). Claims are kept until ``keep_until`` by the backend's clock
        (``now`` is the caller's clock; a backend that keeps time itself derives a relative TTL
        from the two), so that a lagging instance cannot run a tick again. Repeating a claim
        (same instance, same tick, e.g. after a lost reply) is won again with the same fence,
        and with the run lease it took the first time where the backend can tell (Redis,
        PostgreSQL). A batch that fails after it may have reached the backend raises
        LostAnswer, naming the leases it may have taken."""
        ...

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        """Extend each lease by its TTL (one round trip where the backend can); False for one
        that was lost. A renewal re-asserts the lease: one that expired without anyone taking it
        meanwhile (a step of the backend's clock) is the holder's again."""
        ...

    def release_many(self, leases: Sequence[Lease]) -> None:
        """Give the leases up (by token: one someone else holds now is left alone)."""
        ...

    def cleanup_many(self, jobs: Sequence[str], now: datetime) -> int:
        """Remove the jobs' claims kept past their ``keep_until``; how many were removed."""
        ...

    def server_time(self) -> tuple[float, float] | None:
        """A reading of the clock the backend itself keeps, as (Unix seconds, resolution in
        seconds); None when it has none (``--lock none``). The caller times the call."""
        ...

    def records(self) -> RecordStore | None:
        """The run records kept in this backend (through its own connection); None when it
        keeps none (``--lock none``). A new store object at each call."""
        ...

    def close(self) -> None: ...


class Batched:
    """The batch calls as loops over single-item ones (``claim``, ``acquire_lease``,
    ``lease_holder``, ``renew_lease``, ``release_lease``, ``cleanup``), for a backend with
    nothing better."""

    def claim_many(
        self, requests: Sequence[ClaimRequest], instance: str, now: datetime
    ) -> list[ClaimOutcome]:
        out: list[ClaimOutcome] = []
        for r in requests:
            claim = self.claim(r.job, r.tick, instance, r.keep_until, now)  # type: ignore[attr-defined]
            if not claim.won or r.lease_ttl is None:
                out.append(ClaimOutcome(claim))
                continue
            lease = self.acquire_lease(r.job, instance, r.lease_ttl)  # type: ignore[attr-defined]
            holder = None if lease is not None else self.lease_holder(r.job)  # type: ignore[attr-defined]
            out.append(ClaimOutcome(claim, lease, holder or (None if lease else "unknown")))
        return out

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        return [self.renew_lease(lease) for lease in leases]  # type: ignore[attr-defined]

    def release_many(self, leases: Sequence[Lease]) -> None:
        first: BackendError | None = None
        for lease in leases:
            try:
                self.release_lease(lease)  # type: ignore[attr-defined]
            except BackendError as e:
                first = first or e
        if first is not None:
            raise first

    def cleanup_many(self, jobs: Sequence[str], now: datetime) -> int:
        return sum(self.cleanup(job, now) for job in jobs)  # type: ignore[attr-defined]


__all__ = [
    "AHEAD_LIMIT",
    "BATCH_LIMIT",
    "KEPT_MARGIN",
    "SKEW_LIMIT",
    "Backend",
    "BackendError",
    "Batched",
    "ClaimOutcome",
    "ClaimRequest",
    "ClaimResult",
    "Lease",
    "LostAnswer",
    "lease_token",
]

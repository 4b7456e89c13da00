"""Claims and leases: the claims of the ticks due at one instant go out as one batch per lock
URL; an answer that comes back after the following tick was due is reported, not run; a tick
that needs the run lease takes it before it starts; leases are renewed while their run goes on
and released when nothing will use them. What each URL must clean up later is kept here too.

Every call goes through the Coordinator, whose answers come back on the loop's thread, so none of
this ever waits for a backend.
"""

from __future__ import annotations

from datetime import datetime

from ..backends.protocol import ClaimOutcome, ClaimRequest, ClaimResult, Lease
from ..coordinator import Coordinator
from ..errors import BackendError
from ..events import LEASE_LOST
from ..instants import to_us
from ..releases import RELEASE_GATHER
from ..settings import Overlap
from .model import CLAIM_LEAD, OVERLAPPING, JobState, Retry, Run, keep_until
from .shared import Shared
from .timers import Renew


class Claims:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        # by lock URL: job -> the latest keep_until (µs) of its claims not yet cleaned up
        self.kept: dict[str, dict[str, int]] = {}

    def keep(self, url: str | None, job_id: str, until: datetime) -> None:
        """Remember that ``job_id`` has claims on ``url`` to clean up once ``until`` is past."""
        kept = self.kept.setdefault(Coordinator.key(url), {})
        kept[job_id] = max(kept.get(job_id, 0), to_us(until))
        self.sh.books.clean_up_later()

    def claim(self, url: str | None, items: list[tuple[JobState, datetime]]) -> None:
        """Claim each (job, tick) of one lock URL, in one batch."""
        sh = self.sh
        # The ticks a backend outage kept from being claimed (--catch-up) go first in the
        # batch: the first batch the backend answers claims them before the tick due now.
        missed = [(state, t) for state, _ in items for t in state.failed]
        requests = [
            ClaimRequest(state.id, t, keep_until(state.job.schedule, t), None)
            for state, t in missed
        ]
        now = sh.clock.now()
        useful = float("inf")  # seconds until the first of the following ticks is due
        for state, tick in items:
            state.outcomes[tick] = None  # under way
            # No lease while an earlier request for one is under way: its answer may hold the
            # lease (a tick that went by meanwhile), and is released only when it is back.
            lease = (
                state.s.overlap is Overlap.SKIP
                and not state.runs
                and not state.deferred
                and not state.leasing
            )
            state.leasing += lease
            ahead = state.ahead  # the following tick, found at the claim-ahead
            if ahead is not None and ahead[0] == tick:
                following = ahead[1]
            else:
                following = state.job.schedule.next_tick(tick)
            if following is not None:
                useful = min(useful, (following - now).total_seconds())
            until = keep_until(state.job.schedule, tick, following)
            self.keep(url, state.id, until)
            ttl = state.s.lease_ttl if lease else None
            requests.append(ClaimRequest(state.id, tick, until, ttl))

        def done(result: list[ClaimOutcome] | BackendError) -> None:
            sh.catchup.backend_state(url, isinstance(result, BackendError))
            skip = len(missed)
            for i, (state, tick) in enumerate(items):
                outcome = result if isinstance(result, BackendError) else result[skip + i]
                if requests[skip + i].lease_ttl is not None:
                    state.leasing -= 1
                self.claimed(state, tick, outcome)
            # After the ticks due now are known: a caught-up tick may use their run lease.
            if not isinstance(result, BackendError) and missed:
                sh.catchup.recovered(list(zip(missed, result[:skip], strict=True)))

        expires = None if useful == float("inf") else sh.clock.monotonic() + useful
        sh.coordinator.claim(url, requests, done, expires)

    def claimed(
        self, state: JobState, tick: datetime, outcome: ClaimOutcome | BackendError
    ) -> None:
        """A claim's outcome is back (on this thread)."""
        sh = self.sh
        if isinstance(outcome, ClaimOutcome) and (
            state.claimed_to is None or tick > state.claimed_to
        ):
            state.claimed_to = tick  # answered: --catch-up never claims it again
        if tick in state.waiting and (
            state.ended or (state.prev is not None and tick < state.prev)
        ):
            # Due, and overtaken by a later tick while the backend kept the answer waiting.
            state.waiting.discard(tick)
            state.outcomes.pop(tick, None)
            self.late_answer(state, tick, outcome)
            sh.ticking.after_tick(state)
            return
        if isinstance(outcome, ClaimOutcome) and outcome.claim.won:
            state.won_to = max(tick, state.won_to or tick)
        if tick not in state.outcomes or state.ended:
            self.drop_lease(state, outcome)  # the tick went by meanwhile (missed, retired)
            return
        state.outcomes[tick] = outcome
        if isinstance(outcome, ClaimOutcome) and outcome.claim.won:
            sh.emit("claimed", state.id, tick, fence=outcome.claim.fence)
        if tick in state.waiting:
            state.waiting.discard(tick)
            sh.ticking.decide(state, tick)

    def late_answer(
        self, state: JobState, tick: datetime, outcome: ClaimOutcome | BackendError
    ) -> None:
        """The answer to a due tick's claim came after the following tick was due: the tick is
        not run (it is no longer the most recent one); say why."""
        sh = self.sh
        self.drop_lease(state, outcome)
        if isinstance(outcome, BackendError):
            sh.emit("backend-error", state.id, tick, error=str(outcome), action="skip")
            sh.catchup.failed(state, tick)
        elif outcome.claim.refused:
            sh.emit("refused", state.id, tick, reason=outcome.claim.refused)
        elif not outcome.claim.won:
            state.ticks_run += 1
            sh.emit("lost", state.id, tick, holder=outcome.claim.holder, fence=outcome.claim.fence)
            sh.retries.watch(state, (tick, outcome.claim.holder, outcome.claim.fence))
        else:
            state.ticks_run += 1
            sh.ticking.missed(
                state, [tick], "the backend answered the claim after the next tick was due"
            )

    def lease_then_start(
        self, state: JobState, tick: datetime, claim: ClaimResult | None, jitter: bool = True
    ) -> None:
        """Take the run lease of a tick already won, then start it (--overlap skip)."""
        sh = self.sh
        until = keep_until(state.job.schedule, tick)
        request = ClaimRequest(state.id, tick, until, state.s.lease_ttl)
        state.leasing += 1

        def done(result: list[ClaimOutcome] | BackendError) -> None:
            state.leasing -= 1
            if isinstance(result, BackendError):
                sh.emit("backend-error", state.id, tick, error=str(result), action="skip")
                return
            got = result[0]
            if state.ended or sh.stop or state.runs or state.deferred:
                self.drop_lease(state, got)
                if not (state.ended or sh.stop):
                    sh.executor.overlap(state, tick, claim)
                return
            if got.lease is None:
                sh.ticking.skipped(state, tick, OVERLAPPING, got.lease_holder or "unknown")
                return
            if jitter:
                sh.executor.jitter_or_start(state, tick, claim, got.lease)
            else:
                sh.executor.start(state, tick, claim, got.lease)

        # Claiming a tick this instance already holds is idempotent: it only takes the lease.
        sh.coordinator.claim(state.job.lock, [request], done)

    def lease_then_retry(self, state: JobState, retry: Retry) -> None:
        """Take the run lease for a retry's attempt (--overlap skip), then start it. The claim
        is the one this instance holds for the run (its tick, or the claim by which it took
        the attempts over), so claiming it again is won. An attempt that cannot have the lease
        now (a backend error, the lease held, a run of the job going on here) is not dropped:
        it waits and tries again (Retries.later)."""
        sh = self.sh
        key = retry.key or retry.tick
        until = keep_until(state.job.schedule, retry.tick)
        request = ClaimRequest(state.id, key, until, state.s.lease_ttl)
        state.leasing += 1

        def done(result: list[ClaimOutcome] | BackendError) -> None:
            state.leasing -= 1
            if isinstance(result, BackendError):
                sh.retries.later(state, retry, str(result))
                return
            got = result[0]
            if retry.cancelled or retry not in state.retries or sh.stop or state.gone:
                self.drop_lease(state, got)  # the stop or the reload ended the run
                sh.retries.later(state, retry, "the job was stopped")
            elif got.lease is None or state.runs or state.deferred:
                self.drop_lease(state, got)
                holder = got.lease_holder or "this instance"
                sh.retries.later(state, retry, f"the run lease is held by {holder}")
            else:
                state.retries.remove(retry)
                state.attempts[retry.tick] = (retry.attempt, retry.prior, key)
                sh.executor.start(state, retry.tick, retry.claim, got.lease)

        sh.coordinator.claim(state.job.lock, [request], done)

    def release_ended(self, state: JobState, held: list[Lease]) -> None:
        """Release the leases of a run that ended, gathered with the others that end about then
        (one round trip for a burst), but never so late that any instance's claim of the job's
        next tick (CLAIM_LEAD before it at the earliest, by its clock) could find it held: with
        less than CLAIM_LEAD + 2 × RELEASE_GATHER left before that tick, it goes at once. It
        goes at once too, with those gathered, when no other run of the process still goes:
        nothing is left to share the round trip with, and a claim that is not a tick's (a
        `pyjob trigger`, which no one can see coming) must not find the run still going."""
        wait = RELEASE_GATHER
        if not self.sh.executor.by_handle:
            wait = 0.0
        elif state.next_tick is not None:
            left = (state.next_tick - self.sh.clock.now()).total_seconds()
            wait = max(0.0, min(wait, left - CLAIM_LEAD - RELEASE_GATHER))
        self.sh.coordinator.release(state.job.lock, held, wait)

    def drop_lease(self, state: JobState, outcome: ClaimOutcome | BackendError | None) -> None:
        if isinstance(outcome, ClaimOutcome) and outcome.lease is not None:
            self.sh.coordinator.release(state.job.lock, [outcome.lease])

    def renew(self, url: str | None, runs: list[Run], mono: float) -> None:
        """Renew the leases of ``runs`` (one lock URL) in one call; the next renewal is set now."""
        sh = self.sh
        # Each run's lease and its pool slot, in one call.
        held = [(r, lease) for r in runs for lease in (r.lease, r.slot) if lease is not None]
        leases = [lease for _, lease in held]
        for r in runs:
            ttl = min(lease.ttl for lease in (r.lease, r.slot) if lease is not None)
            sh.mono.push(Renew(mono + ttl / 3, r))

        def done(result: list[bool] | BackendError) -> None:
            for i, (r, _) in enumerate(held):
                if isinstance(result, BackendError):
                    sh.emit(
                        "backend-error",
                        r.job.id,
                        r.tick,
                        error=str(result),
                        action="the run goes on; its lease expires if this lasts",
                    )
                elif not result[i]:
                    sh.emit(
                        "backend-error",
                        r.job.id,
                        r.tick,
                        error=LEASE_LOST,
                        action="the run goes on",
                    )

        sh.coordinator.renew(url, leases, done)

    def clean_up(self) -> None:
        """Remove expired claims: only jobs that claimed since their last claims expired have
        any to remove, so an idle process with 10,000 jobs sweeps nothing."""
        now_us = to_us(self.sh.clock.now())
        for url, kept in self.kept.items():
            if kept:
                self.sh.coordinator.cleanup(url or None, sorted(kept))
                for job_id in [j for j, until in kept.items() if until < now_us]:
                    del kept[job_id]

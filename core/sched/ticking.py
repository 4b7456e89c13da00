"""When a job runs: its next tick, the claim shortly before it, the tick itself, ticks that went
by (late, missed, --misfire-grace), and the decision once the claim is known (run, skip, lost).

Ticks are computed from the previous tick, so nothing drifts; a tick already handled is never
handled again, whatever the wall clock does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..backends.protocol import ClaimOutcome, ClaimResult, Lease
from ..errors import BackendError
from ..instants import iso, to_us
from ..results import Result
from ..settings import OnBackendError, Overlap
from .model import CLAIM_LEAD, OVERLAPPING, PAUSED, JobPhase, JobState, run_id
from .shared import Shared
from .timers import ClaimAhead, TickDue, WallTurn


class Ticking:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh

    def set_next(self, state: JobState, tick: datetime | None) -> None:
        """Make ``tick`` the job's next one (None: its schedule is over here)."""
        sh = self.sh
        state.gen += 1
        state.next_tick = tick
        if tick is None:
            return
        assert state.prev is not None
        lead = max(0.0, min(CLAIM_LEAD, (tick - state.prev).total_seconds() / 4))
        # One timer per job: the claim sets its tick's (a job not due costs one heap entry).
        at = sh.spread.claim_at(state, tick, lead)  # --spread: this instance's turn
        sh.wall.push(ClaimAhead(at, state, state.gen, tick))
        if sh.wants("next-tick"):
            in_seconds = round((tick - sh.clock.now()).total_seconds(), 6)
            sh.emit("next-tick", state.id, tick, in_seconds=in_seconds)

    def stepped_back(self, now: datetime) -> None:
        """The wall clock stepped back (NTP, an operator): a job waits for the first tick after
        now that it has not won, not for the tick its clock had reached. The ticks it passed
        over meanwhile were missed or refused here, never run, so claiming them again runs no
        tick twice (the claim decides, as always); a tick it won is never claimed again. Without
        this, a host whose clock was ahead by X would sit out X after it was set right, as Vixie
        cron does for fixed-time jobs, though it runs its every-minute ones at once."""
        self.sh.fleet.resumed.clear()  # instants of the old clock: no tick is held back by one
        for state in self.sh.jobs.values():
            if state.phase is not JobPhase.ACTIVE or state.next_tick is None or state.waiting:
                continue
            base = now if state.won_to is None else max(now, state.won_to)
            tick = state.job.schedule.next_tick(base)
            if tick is None or tick >= state.next_tick:
                continue
            state.prev = base
            for later in [t for t in state.outcomes if t >= tick]:
                self.sh.claims.drop_lease(state, state.outcomes.pop(later))
            self.set_next(state, tick)

    def due_wall(self, now: datetime) -> None:
        """The wall-clock timers due ``now``: the claims of all jobs due at one instant go out
        together, then each due tick is decided, and only then are the following ticks set."""
        sh = self.sh
        turn = WallTurn()
        for timer in sh.wall.pop_due(to_us(now)):
            timer.fire(sh, turn)
        for url, items in turn.claims.items():
            sh.claims.claim(url, items)
        after: list[tuple[JobState, datetime | None]] = []
        for state, tick in turn.ticks:
            self.tick(state, tick, now, after)
        for state, following in after:  # once every due tick is decided and started
            self.tick_done(state, following)

    def claim_ahead(self, state: JobState, tick: datetime, turn: WallTurn) -> None:
        sh = self.sh
        if tick not in state.outcomes and not sh.fleet.is_paused(state, tick):
            turn.claims.setdefault(state.job.lock, []).append((state, tick))
        # The following tick, the run id, the environment and the program's place on PATH,
        # made now rather than between the spawns of this one.
        state.ahead = (tick, state.job.schedule.next_tick(tick))
        rid = run_id(state.id, tick, tick)
        env = sh.executor.env(state, tick, rid, None)
        found = sh.runner.resolve(state.job.command, env)
        state.ready = (tick, rid, env, found)
        sh.wall.push(TickDue(tick, state, state.gen, tick))  # popped at once when already due

    def tick(
        self,
        state: JobState,
        tick: datetime,
        now: datetime,
        after: list[tuple[JobState, datetime | None]],
    ) -> None:
        """``tick`` of ``state`` is due: find the most recent due tick, decide it, and only then
        schedule the following one, which waits in ``after`` until every tick due now is decided
        (nothing but the decisions stands before the spawns)."""
        sh = self.sh
        tick, following = self.latest_due(state, tick, now)
        state.prev = tick
        state.gen += 1  # this tick's timers are spent
        state.next_tick = following  # provisional: --max-runs may still end the job here
        late = (now - tick).total_seconds()
        grace = state.s.misfire_grace
        if grace is not None and late > grace:
            sh.claims.drop_lease(state, state.outcomes.pop(tick, None))
            self.missed(state, [tick], f"{late:.3f}s late, over --misfire-grace {grace:g}s")
        elif sh.fleet.is_paused(state, tick):
            sh.claims.drop_lease(state, state.outcomes.pop(tick, None))
            self.skipped(state, tick, PAUSED, None)
        else:
            if tick not in state.outcomes:
                sh.claims.claim(state.job.lock, [(state, tick)])
                sh.coordinator.drain()  # inline coordinators answer at once
            if state.outcomes.get(tick) is None:
                state.waiting.add(tick)  # decided when the claim is back
            else:
                self.decide_tick(state, tick)
        after.append((state, following))

    def tick_done(self, state: JobState, following: datetime | None) -> None:
        if state.next_tick is not None and state.next_tick == following:
            self.set_next(state, following)
        self.after_tick(state)

    def after_tick(self, state: JobState) -> None:
        if state.s.max_runs is not None and state.ticks_run >= state.s.max_runs:
            self.set_next(state, None)
        self.sh.lifecycle.maybe_end(state)

    def latest_due(
        self, state: JobState, first: datetime, now: datetime
    ) -> tuple[datetime, datetime | None]:
        """The most recent tick that is due; older passed ticks are reported as missed."""
        schedule = state.job.schedule
        tick = first
        missed: list[datetime] = []
        ahead, state.ahead = state.ahead, None
        following = ahead[1] if ahead is not None and ahead[0] == tick else schedule.next_tick(tick)
        while following is not None and following <= now:
            missed.append(tick)
            tick, following = following, schedule.next_tick(following)
            if len(missed) > 1_000_000:  # pragma: no cover - absurd suspend on a 1µs schedule
                break
        if missed:
            self.missed(state, missed, "late: a later tick was already due")
        for old in [t for t in state.outcomes if t < tick]:
            self.sh.claims.drop_lease(state, state.outcomes.pop(old))
        return tick, following

    def decide(self, state: JobState, tick: datetime) -> None:
        """The claim of a due tick is known: run it, or say why not."""
        self.decide_tick(state, tick)
        self.after_tick(state)

    def decide_tick(self, state: JobState, tick: datetime) -> None:
        sh = self.sh
        outcome = state.outcomes.pop(tick, None)
        if state.ended or sh.stop:
            sh.claims.drop_lease(state, outcome)
            return
        limit = state.s.max_runs
        if limit is not None and state.ticks_run >= limit:
            sh.claims.drop_lease(state, outcome)
            return
        claim: ClaimResult | None = None
        lease: Lease | None = None
        if isinstance(outcome, BackendError) or outcome is None:
            fail_open = state.s.on_backend_error is OnBackendError.RUN
            sh.emit(
                "backend-error",
                state.id,
                tick,
                error=str(outcome or "no answer"),
                action="run" if fail_open else "skip",
            )
            if not fail_open:
                sh.catchup.failed(state, tick)
                return
            state.claimed_to = max(tick, state.claimed_to or tick)  # it runs: never again
            state.won_to = max(tick, state.won_to or tick)
        elif outcome.claim.refused:
            sh.emit("refused", state.id, tick, reason=outcome.claim.refused)
            return
        elif not outcome.claim.won:
            state.ticks_run += 1
            sh.emit("lost", state.id, tick, holder=outcome.claim.holder, fence=outcome.claim.fence)
            # its run is another instance's: heard of if it is lost (before its record too)
            sh.retries.watch(state, (tick, outcome.claim.holder, outcome.claim.fence))
            return
        else:
            claim, lease = outcome.claim, outcome.lease
        state.ticks_run += 1
        self.run_won(state, tick, outcome, claim, lease)

    def run_won(
        self,
        state: JobState,
        tick: datetime,
        outcome: ClaimOutcome | BackendError | None,
        claim: ClaimResult | None,
        lease: Lease | None,
    ) -> None:
        """A tick this instance runs (won, or run on a backend error): now, after its jitter,
        after the lease, or as --overlap says while the job runs here."""
        sh = self.sh
        if state.runs or state.deferred:
            if lease is not None:
                sh.coordinator.release(state.job.lock, [lease])
            sh.executor.overlap(state, tick, claim)
            return
        if state.s.overlap is Overlap.SKIP and isinstance(outcome, ClaimOutcome):
            if lease is None and outcome.lease_holder is not None:
                self.skipped(state, tick, OVERLAPPING, outcome.lease_holder)
                return
            if lease is None:
                # The job was busy here when it claimed, and is not any more: take the lease now.
                sh.claims.lease_then_start(state, tick, claim)
                return
        sh.executor.jitter_or_start(state, tick, claim, lease)

    def skipped(
        self,
        state: JobState,
        tick: datetime,
        reason: str,
        running_on: str | None,
        running: list[str] | None = None,
    ) -> None:
        fields: dict[str, Any] = {"reason": reason}
        if running is not None:
            fields["running"] = running
        if running_on is not None:
            fields["running_on"] = running_on
            if running_on != self.sh.instance:
                self.sh.retries.watch(state)  # a run of another instance holds the lease
        self.sh.emit("skipped", state.id, tick, **fields)
        self.sh.books.record_tick(state, tick, Result.SKIPPED, reason, running_on)

    def missed(self, state: JobState, ticks: list[datetime], reason: str) -> None:
        self.sh.emit(
            "missed",
            state.id,
            ticks[-1],
            count=len(ticks),
            first=iso(ticks[0]),
            last=iso(ticks[-1]),
            reason=reason,
        )
        for tick in ticks[-state.s.history_keep :]:
            self.sh.books.record_tick(state, tick, Result.MISSED, reason)

"""--catch-up: after a start or an outage, the ticks the whole fleet missed within the window
are claimed and run here, oldest first (the most recent one, or up to --catch-up-max of them).

Outages are tracked per lock URL: when claims succeed again after failing, the jobs of that URL
look for what was missed meanwhile.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from ..backends.protocol import ClaimOutcome, ClaimRequest, ClaimResult, Lease
from ..coordinator import Coordinator
from ..errors import BackendError
from ..instants import from_us
from ..settings import Overlap
from .model import PAUSED, JobPhase, JobState, keep_until
from .shared import Shared

_AGAIN = "catch-up when the backend answers again"


class CatchUp:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.down: set[str] = set()  # lock URLs whose last claim failed (an outage)

    def backend_state(self, url: str | None, failed: bool) -> None:
        """A claim on ``url`` failed or succeeded: the end of an outage starts a look-up."""
        key = Coordinator.key(url)
        if failed:
            self.down.add(key)
        elif key in self.down:
            self.down.discard(key)
            for state in list(self.sh.jobs.values()):
                if state.s.catch_up and Coordinator.key(state.job.lock) == key:
                    self.check(state)

    def failed(self, state: JobState, tick: datetime) -> None:
        """The claim of ``tick`` failed (the backend is down) and it did not run: with
        --catch-up it is claimed again once the backend answers (the most recent one, or up
        to --catch-up-max of them with --catch-up-all)."""
        if not state.s.catch_up:
            return
        state.failed.append(tick)
        del state.failed[: -(state.s.catch_up_max if state.s.catch_up_all else 1)]

    def recovered(self, claimed: list[tuple[tuple[JobState, datetime], ClaimOutcome]]) -> None:
        """The backend answered a batch that claimed again the ticks an outage kept from being
        claimed: the ones won within the --catch-up window run here, oldest first; the others
        were run elsewhere, refused, or are reported as missed."""
        sh = self.sh
        now = sh.clock.now()
        won: dict[int, tuple[JobState, list[tuple[datetime, ClaimResult]]]] = {}
        for (state, tick), outcome in claimed:
            if tick not in state.failed:
                continue  # taken by an earlier batch that claimed it too
            state.failed.remove(tick)
            state.claimed_to = max(tick, state.claimed_to or tick)
            c = outcome.claim
            if c.won:
                state.won_to = max(tick, state.won_to or tick)
            if c.refused:
                sh.emit("refused", state.id, tick, reason=c.refused)
            elif not c.won:
                sh.emit("lost", state.id, tick, holder=c.holder, fence=c.fence)
            elif (now - tick).total_seconds() > (state.s.catch_up or 0.0):
                sh.ticking.missed(state, [tick], "missed in a backend outage, before the window")
            else:
                sh.emit("claimed", state.id, tick, fence=c.fence)
                won.setdefault(id(state), (state, []))[1].append((tick, c))
        for state, ticks in won.values():
            state.catchup.extend(ticks)
            state.catchup.sort(key=lambda entry: entry[0])
            self.next(state, len(ticks))

    def check(self, state: JobState) -> None:
        """Ask the backend for the latest tick anyone handled, then plan the catch-up."""
        sh = self.sh
        # The ticks from the job's next one on are this process's own, whatever happens while
        # the answer is on its way: the bound is taken now, when the backend is asked.
        until = state.next_tick

        def done(latest: tuple[int, int | None] | BackendError | None) -> None:
            state.looked_up(JobPhase.CATCHING_UP)
            if isinstance(latest, BackendError):
                sh.emit("backend-error", state.id, None, error=str(latest), action=_AGAIN)
                self.down.add(Coordinator.key(state.job.lock))
            elif latest is not None:  # a fresh job has no proof that anything was missed
                self.plan(state, *latest, until=until)
            sh.lifecycle.maybe_end(state)

        if not state.look_up(JobPhase.CATCHING_UP):
            return  # one at a time; none for a job that is going
        if not sh.coordinator.latest(state.job.lock, state.id, done):
            state.looked_up(JobPhase.CATCHING_UP)  # no records (--lock none): nothing to judge by

    def plan(
        self,
        state: JobState,
        latest_us: int,
        backend_us: int | None,
        until: datetime | None = None,
    ) -> None:
        """The ticks after ``latest_us`` (the latest anyone handled) that are past and before
        ``until`` (the job's next tick when the backend was asked): report the ones outside
        the window or over the limit, claim the others."""
        sh = self.sh
        now = sh.clock.now()
        # The window is judged by the backend's clock where it has one (the fleet's time).
        judged = now if backend_us is None else from_us(backend_us)
        window = state.s.catch_up or 0.0
        first = from_us(latest_us)
        missed = _missed_since(state, first, now, until, state.claimed_to)
        if not missed:
            return
        recent = [t for t in missed if (judged - t).total_seconds() <= window]
        run = recent[-state.s.catch_up_max :] if state.s.catch_up_all else recent[-1:]
        chosen = set(run)
        outside = [t for t in missed if t not in chosen and t not in recent]
        passed_over = [t for t in recent if t not in chosen]
        if outside:
            sh.ticking.missed(
                state, outside, "missed by the whole fleet, before the --catch-up window"
            )
        if passed_over:
            why = "--catch-up-max" if state.s.catch_up_all else "only the most recent"
            sh.ticking.missed(
                state, passed_over, f"missed by the whole fleet; --catch-up runs {why}"
            )
        if run and sh.fleet.is_paused(state):
            for tick in run:  # `pyjob pause`: not run, as the ticks due while it holds
                sh.ticking.skipped(state, tick, PAUSED, None)
        elif run:
            self._claim(state, run, len(missed))

    def _claim(
        self, state: JobState, run: list[datetime], missed: int, older: list[datetime] | None = None
    ) -> None:
        """Claim ``run``. With several ticks to catch up, the most recent is claimed alone
        first, and only the instance that wins it claims the older ones (``older``): two
        instances back at once never split a job's catch-up between them, which would run its
        ticks out of order, or skip the older as an overlap of the newer running elsewhere."""
        sh = self.sh
        if older is None and len(run) > 1:
            run, older = run[-1:], run[:-1]
        keep = [keep_until(state.job.schedule, t) for t in run]
        requests = [ClaimRequest(state.id, t, k, None) for t, k in zip(run, keep, strict=True)]

        def claimed(result: list[ClaimOutcome] | BackendError) -> None:
            state.looked_up(JobPhase.CATCHING_UP)
            if isinstance(result, BackendError):
                sh.emit("backend-error", state.id, run[-1], error=str(result), action=_AGAIN)
                self.down.add(Coordinator.key(state.job.lock))
                return
            won = False
            for tick, outcome in zip(run, result, strict=True):
                c = outcome.claim
                if c.refused:
                    sh.emit("refused", state.id, tick, reason=c.refused)
                elif not c.won:
                    sh.emit("lost", state.id, tick, holder=c.holder, fence=c.fence)
                else:
                    won = True
                    state.won_to = max(tick, state.won_to or tick)
                    state.catchup.append((tick, c))
                    sh.emit("claimed", state.id, tick, fence=c.fence)
            if won and older and not sh.stop and not state.ended:
                self._claim(state, older, missed, [])
                return
            state.catchup.sort(key=lambda entry: entry[0])  # oldest first
            self.next(state, missed)

        state.look_up(JobPhase.CATCHING_UP)
        state.claimed_to = max(run[-1], state.claimed_to or run[-1])
        sh.claims.keep(state.job.lock, state.id, max(keep))
        sh.coordinator.claim(state.job.lock, requests, claimed)

    def next(self, state: JobState, missed: int | None = None) -> None:
        """Start the oldest caught-up tick won, once nothing of the job runs here."""
        sh = self.sh
        if not state.catchup or state.runs or state.deferred or sh.stop or state.ended:
            return
        if sh.fleet.is_paused(state):
            for tick, _ in state.catchup:
                sh.ticking.skipped(state, tick, PAUSED, None)
            state.catchup.clear()
            return
        tick, claim = state.catchup.pop(0)
        state.ticks_run += 1
        late = (sh.clock.now() - tick).total_seconds()
        sh.emit(
            "caught-up",
            state.id,
            tick,
            late=round(late, 6),
            missed=missed if missed is not None else len(state.catchup) + 1,
            window=state.s.catch_up,
        )
        if state.s.overlap is not Overlap.SKIP:
            sh.executor.start(state, tick, claim, None)
            return
        lease = _borrow_lease(state)
        if lease is not None:
            sh.executor.start(state, tick, claim, lease)
        else:
            sh.claims.lease_then_start(state, tick, claim)


def _borrow_lease(state: JobState) -> Lease | None:
    """The job's run lease, when the claim of a tick not yet due took it (the batch after an
    outage claims the caught-up ticks with the tick due next): the caught-up tick runs with it,
    and that tick takes it again when it is due (or is skipped while this run goes on)."""
    for tick, outcome in state.outcomes.items():
        if isinstance(outcome, ClaimOutcome) and outcome.lease is not None:
            state.outcomes[tick] = dataclasses.replace(outcome, lease=None, lease_holder=None)
            return outcome.lease
    return None


def _missed_since(
    state: JobState,
    first: datetime,
    now: datetime,
    asked: datetime | None,
    handled: datetime | None,
) -> list[datetime]:
    """The ticks after ``first`` that are past, before the job's next tick (from which on the
    ticks are handled as usual) as it was when the backend was asked (``asked``) and as it is
    now, and after ``handled``, the latest tick this process claimed for the job: an answer read
    before this process's own claim of a tick must not make it claim that tick again (claiming
    one's own claim again is won, and would run it twice)."""
    schedule = state.job.schedule
    bounds = [t for t in (asked, state.next_tick) if t is not None]
    until = min(bounds) if bounds else None
    if handled is not None and handled > first:
        first = handled
    missed: list[datetime] = []
    t = schedule.next_tick(first)
    while t is not None and t <= now and (until is None or t < until) and len(missed) < 10**5:
        if t not in state.outcomes and t not in state.failed:  # not claimed elsewhere here
            missed.append(t)
        t = schedule.next_tick(t)
    return missed

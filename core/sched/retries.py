"""--retries: the next attempt of a failed run after its delay (with backoff, never past the
following tick unless the overlap policy shares time), the attempts a stop cancels, and the
take-over of the attempts of an instance that went quiet.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from ..backendcalls import Orphans
from ..backends.protocol import ClaimOutcome, ClaimRequest, ClaimResult
from ..errors import BackendError
from ..instants import from_us, iso, to_us
from ..records import InstanceInfo, RunRecord
from ..results import Result
from ..settings import Overlap
from .model import SHARE_TIME, JobPhase, JobState, Retry, Run, attempt_doc, keep_until, run_id
from .shared import Shared
from .timers import RetryDue

# How long an attempt that could not start (a backend error, the run lease held) waits before
# it tries again: its --retry-delay, within these bounds.
LOST_EXIT = 1  # the exit code a lost run's hooks and final ping see (the real one is unknown)
MIN_WAIT = 0.5
MAX_WAIT = 5.0
# How many of a job's newest records are looked at for runs lost with their instance: a run
# lost among more newer records (a job far more frequent than its --lease-ttl) is only shown
# as lost to readers (status, history), not ended here.
ORPHAN_SCAN = 32
# Jobs a look-up: one call reads them all in a few round trips, and is short enough that a
# tick's claim queued behind it is not kept waiting long.
ORPHAN_BATCH = 500


class Retries:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.jobs: set[str] = set()  # jobs with --retries: heartbeats look for orphans
        self.watched: set[str] = set()  # jobs another instance holds a run of (watch)
        self.ended: dict[str, None] = {}  # run ids of lost runs ended here (oldest first)
        # Per job, the newest tick another instance won that this one saw lost, with the
        # winner and its fence, until a record of that tick is seen (``_unrecorded``).
        self.won: dict[str, tuple[datetime, str, int | None]] = {}
        # Each instance's heartbeat as this process last read it: (value, since, last read),
        # the two times on this process's monotonic clock.
        self.beats: dict[str, tuple[int | None, float, float]] = {}

    def delay(self, run: Run, result: str, code: int) -> float | None:
        """The delay before the run's next attempt, or None when it is not retried."""
        sh = self.sh
        s = run.job.s
        if not s.retries or run.attempt > s.retries or run.tick is None:
            return None
        if result not in (Result.FAILURE, Result.TIMEOUT) or sh.stop or run.job.retiring:
            return None
        if s.retry_on is not None:
            key = "timeout" if result == Result.TIMEOUT else str(code)
            if key not in s.retry_on:
                return None
        delay = min(s.retry_max_delay, s.retry_delay * s.retry_backoff ** (run.attempt - 1))
        following = run.job.job.schedule.next_tick(run.tick)
        due = sh.clock.now() + timedelta(seconds=delay)
        if following is not None and due >= following and s.overlap not in SHARE_TIME:
            sh.emit(
                "retry-dropped",
                run.job.id,
                run.tick,
                run_id=run.run_id,
                attempt=run.attempt + 1,
                reason=f"it would start after the following tick ({iso(following)}) is due",
            )
            return None
        return delay

    def schedule(self, run: Run, code: int, result: str, delay: float) -> None:
        sh = self.sh
        state = run.job
        assert run.tick is not None
        prior = [*run.prior, attempt_doc(run, code, result, to_us(sh.clock.now()), sh.instance)]
        claim = ClaimResult(True, sh.instance, run.fence)
        retry = Retry(run.tick, claim, run.attempt + 1, prior, run.record, run=run, code=code)
        retry.key = run.key
        retry.duration = round(sh.clock.monotonic() - run.started_mono, 6)
        state.retries.append(retry)
        sh.mono.push(RetryDue(sh.clock.monotonic() + delay, state, retry))
        sh.emit(
            "retrying",
            state.id,
            run.tick,
            run_id=run.run_id,
            attempt=run.attempt + 1,
            delay=round(delay, 6),
            exit_code=code,
            result=result,
        )

    def retry_now(self, state: JobState, retry: Retry) -> None:
        """A retry's delay is over: its attempt starts (after the run lease, --overlap skip).
        The retry stays in ``state.retries`` until it starts or the run ends, so that a stop
        meanwhile ends the run (``cancel``)."""
        sh = self.sh
        if retry not in state.retries or retry.cancelled or sh.stop:
            return
        if state.gone:
            self.drop(state, retry, "the job was removed or changed by a reload")
            return
        if state.s.overlap is Overlap.SKIP and not state.runs:
            sh.claims.lease_then_retry(state, retry)
            return
        state.retries.remove(retry)
        state.attempts[retry.tick] = (retry.attempt, retry.prior, retry.key or retry.tick)
        sh.executor.start(state, retry.tick, retry.claim, None)

    def later(self, state: JobState, retry: Retry, why: str) -> None:
        """A retry's attempt could not start now (``why``: a backend error, the run lease held
        elsewhere): it tries again a little later, while its tick's window is open; after it
        the run ends with its last attempt's result. An attempt is never just dropped."""
        sh = self.sh
        if retry not in state.retries or retry.cancelled or sh.stop:
            return  # a stop ends the run (cancel)
        if state.gone:
            self.drop(state, retry, "the job was removed or changed by a reload")
            return
        s = state.s
        wait = min(max(s.retry_delay, MIN_WAIT), MAX_WAIT)
        following = state.job.schedule.next_tick(retry.tick)
        due = sh.clock.now() + timedelta(seconds=wait)
        if following is not None and due >= following and s.overlap not in SHARE_TIME:
            reason = f"{why}; the following tick ({iso(following)}) is due before another try"
            self.drop(state, retry, reason)
            return
        sh.emit(
            "backend-error",
            state.id,
            retry.tick,
            error=why,
            action=f"attempt {retry.attempt} tried again in {wait:g}s",
        )
        sh.mono.push(RetryDue(sh.clock.monotonic() + wait, state, retry))

    def drop(self, state: JobState, retry: Retry, reason: str) -> None:
        """End a run between its attempts: its result is its last attempt's, recorded as such,
        counted, and its hooks and final ping (the retry-dropped event with its exit code and
        result) see it. Once per run: the retry leaves ``state.retries``."""
        sh = self.sh
        if retry in state.retries:
            state.retries.remove(retry)
        self._end(state, retry, reason)
        if retry.prior and not sh.stop:
            state.failures += 1
        state.attempts.pop(retry.tick, None)
        sh.lifecycle.maybe_end(state)

    def _end(self, state: JobState, retry: Retry, reason: str) -> None:
        sh = self.sh
        retry.cancelled = True
        last = retry.prior[-1] if retry.prior else {}
        result = str(last.get("result", Result.FAILURE))
        # With exit_code and result, this is the run's end for pings and metrics.
        sh.emit(
            "retry-dropped",
            state.id,
            retry.tick,
            run_id=run_id(state.id, retry.tick, retry.tick),
            attempt=retry.attempt,
            reason=reason,
            exit_code=retry.code,
            result=result,
        )
        if retry.record is not None:
            retry.record.result = result
            retry.record.next_attempt_us = None
            sh.books.record(state, retry.record)
        if retry.run is not None:
            sh.hookrun.after_run(retry.run, retry.code, retry.duration)

    def cancel(self, state: JobState) -> None:
        """A stop cancels the attempts still waiting: each run's result is its last attempt's,
        recorded as such, and its hooks see it."""
        for retry in state.retries:
            self._end(state, retry, "cancelled by the stop")
        state.retries.clear()
        state.attempts.clear()

    def watch(
        self, state: JobState, won: tuple[datetime, str | None, int | None] | None = None
    ) -> None:
        """Another instance holds a run of ``state`` (it won a tick's claim, or holds the run
        lease): look at the job's newest record at the next heartbeats until that run ended,
        so that a run lost with its host is heard of (``adopt``). ``won``: the (tick, winner,
        fence) of a claim this instance lost, so that a winner lost before it wrote the run's
        first record is heard of too."""
        self.watched.add(state.id)
        if won is not None:
            tick, holder, fence = won
            if holder is not None and holder != self.sh.instance:
                self.won[state.id] = (tick, holder, fence)
        self.sh.books.hurry()

    def adopt_orphans(self) -> None:
        """Find the runs whose instance went quiet (killed, host lost) while they ran or waited
        for their next attempt: once its heartbeat is older than its leases' TTL, one instance
        continues the attempts if any are left within the tick, or else records the run as
        lost and fires its hooks and final ping. Jobs with --retries are looked at every beat,
        other jobs while another instance holds a run of theirs; ORPHAN_BATCH jobs of a
        backend a call."""
        sh = self.sh
        asks: dict[str | None, list[JobState]] = {}
        for job_id in sorted(self.jobs | self.watched):
            state = sh.jobs.get(job_id)
            if state is None:
                self.jobs.discard(job_id)
                self.watched.discard(job_id)
                self.won.pop(job_id, None)
                continue
            if state.phase is not JobPhase.ACTIVE or state.busy():
                continue
            if not sh.coordinator.has_records(state.job.lock):
                self.watched.discard(job_id)
                continue
            asks.setdefault(state.job.lock, []).append(state)
        for url, states in asks.items():
            for first in range(0, len(states), ORPHAN_BATCH):
                batch = states[first : first + ORPHAN_BATCH]
                for state in batch:
                    state.look_up(JobPhase.ADOPTING)
                sh.coordinator.orphans(
                    url,
                    [state.id for state in batch],
                    partial(self._found, batch),
                    ORPHAN_SCAN,
                    heartbeats=any(state.id in self.won for state in batch),
                )

    def _found(self, states: list[JobState], answer: Orphans | BackendError) -> None:
        """The answer of ``adopt_orphans``' look-up of ``states``."""
        for state in states:
            state.looked_up(JobPhase.ADOPTING)
        if isinstance(answer, BackendError):
            # The other instances could not write their heartbeats either: what was seen of
            # them starts over once the backend answers. Looked at again at the next beat.
            self.beats.clear()
            return
        newest, instances = answer
        for state in states:
            records = newest.get(state.id, [])
            # Oldest first: a lost run's attempts (within its tick) before the newer ticks.
            again = [self.adopt(state, r, instances) for r in reversed(records)]
            unrecorded = _unrecorded(self.won, state, records)
            if unrecorded is not None:
                if self.adopt(state, unrecorded, instances):
                    again.append(True)
                else:
                    self.won.pop(state.id, None)
            if not any(again):
                self.watched.discard(state.id)

    def quiet(self, name: str, info: InstanceInfo | None) -> bool:
        """Whether the instance ``name`` went quiet: its heartbeat (or its absence) has not
        changed for its quiet time while this process read it (counted from the read before the
        one that saw it change). The time is this process's own
        monotonic time, never a wall clock compared with another host's (DESIGN §8: a host whose
        clock is wrong hurts only itself; one ahead would find every other instance quiet). A
        read that failed (an outage of the backend, which kept the other instance from writing
        too) starts it over, and so does a gap in the reading as long as the quiet time."""
        now = self.sh.clock.monotonic()
        value = None if info is None else info.seen_us
        # An instance with no heartbeat at all (gone long ago): this one's own quiet time.
        quiet_s = (self.sh.me.quiet_us if info is None else info.quiet_us) / 1e6
        seen = self.beats.get(name)
        if seen is None or now - seen[2] > quiet_s:
            if len(self.beats) > 10_000:  # names of long-gone processes
                self.beats = {k: v for k, v in self.beats.items() if now - v[2] < quiet_s}
            self.beats[name] = (value, now, now)
            return False
        if seen[0] != value:  # it changed after the last read: unchanged since then, at most
            self.beats[name] = (value, seen[2], now)
            return False
        self.beats[name] = (value, seen[1], now)
        return now - seen[1] > quiet_s

    def adopt(self, state: JobState, record: RunRecord, instances: dict[str, InstanceInfo]) -> bool:
        """Act on the job's newest record; True while it is worth looking at again (a run going
        on elsewhere, or one this instance could not take yet)."""
        sh = self.sh
        s = state.s
        if record.result not in (Result.RUNNING, Result.RETRYING):
            return False
        # A run of this name from before this process started is a predecessor's, gone with it.
        predecessor = record.instance == sh.instance
        if predecessor and (record.started_us or 0) >= sh.started_us:
            return False  # this process's own run
        if record.run_id in self.ended:
            return False  # this instance ended it; its record is on its way
        info = instances.get(record.instance)
        now_us = to_us(sh.clock.now())
        if not predecessor and not self.quiet(record.instance, info):
            return True
        if record.result == Result.RETRYING and (record.next_attempt_us or 0) > now_us:
            return True
        tick = from_us(record.tick_us)
        if keep_until(state.job.schedule, tick) <= sh.clock.now():
            return False  # too old to be claimed: readers show it as lost
        following = state.job.schedule.next_tick(tick)
        prior = list(record.attempts or [])
        if record.result == Result.RUNNING:  # killed during the attempt: that attempt was lost
            prior.append(
                {
                    "attempt": record.attempt,
                    "instance": record.instance,
                    "started_us": record.started_us,
                    "result": Result.LOST,
                }
            )
        open_ = following is None or following > sh.clock.now() or s.overlap in SHARE_TIME
        if record.attempt <= s.retries and open_:
            self._take_over(state, record, tick, prior)
        else:  # no attempt left, or not within the tick (the attempts stay within their tick)
            self._end_lost(state, record, tick, prior)
        return True

    def _end_lost(
        self, state: JobState, record: RunRecord, tick: datetime, prior: list[dict[str, Any]]
    ) -> None:
        """A run whose instance went quiet and that gets no more attempts ends here, once
        fleet-wide: the instance that wins the take-over claim of its next attempt (the same
        claim a take-over would take, so only one of them happens) records it (``lost`` if it
        died running, else its last attempt's result), counts it and fires its hooks and final
        ping. Under --overlap skip it needs the run lease too, so a holder that is only cut off
        from the backend (its lease lapsed, it still runs) is not declared lost while its lease
        is live."""
        sh = self.sh
        key = tick + timedelta(microseconds=record.attempt + 1)
        ttl = state.s.lease_ttl if state.s.overlap is Overlap.SKIP else None
        request = ClaimRequest(state.id, key, keep_until(state.job.schedule, tick), ttl)

        def claimed(result: list[ClaimOutcome] | BackendError) -> None:
            if isinstance(result, BackendError) or not result[0].claim.won:
                if not isinstance(result, BackendError) and result[0].claim.refused:
                    self.ended[record.run_id] = None  # too old to be claimed: left to readers
                return  # looked at again at the next beat; another instance may have it
            got = result[0]
            sh.claims.drop_lease(state, got)
            if record.run_id in self.ended or sh.stop:
                return
            if ttl is not None and got.lease is None:
                return  # the holder's lease is live: looked at again at the next beat
            self.ended[record.run_id] = None
            if len(self.ended) > 10_000:
                del self.ended[next(iter(self.ended))]
            self._lost(state, record, tick, prior)

        sh.coordinator.claim(state.job.lock, [request], claimed)

    def _lost(
        self, state: JobState, record: RunRecord, tick: datetime, prior: list[dict[str, Any]]
    ) -> None:
        sh = self.sh
        died_running = record.result == Result.RUNNING
        result = Result.LOST if died_running else str(prior[-1].get("result", Result.FAILURE))
        # A lost run's exit code is not known: its hooks and ping see 1 (a failure).
        code = LOST_EXIT if died_running or record.exit_code is None else record.exit_code
        now = sh.clock.now()
        final = replace(record, result=result, finished_us=to_us(now), next_attempt_us=None)
        earlier = prior[:-1] if died_running else prior
        final.attempts = earlier or None
        sh.books.record(state, final)
        state.failures += 1
        sh.emit(
            "retry-dropped",
            state.id,
            tick,
            run_id=record.run_id,
            attempt=record.attempt,
            reason=f"its instance {record.instance} went quiet and no attempt is left",
            exit_code=code,
            result=result,
        )
        started = from_us(record.started_us or record.tick_us)
        env = sh.executor.env(state, tick, record.run_id, record.fence)
        env["PYJOB_ATTEMPT"] = str(record.attempt)
        run = Run(state, tick, record.run_id, record.fence, None, started, sh.clock.monotonic())
        run.env, run.attempt = env, record.attempt
        duration = max(0.0, (now - started).total_seconds())
        sh.hookrun.after_run(run, code, duration, result)
        self.watched.discard(state.id)

    def _take_over(
        self, state: JobState, record: RunRecord, tick: datetime, prior: list[dict[str, Any]]
    ) -> None:
        """One instance takes the attempt over: a claim of its own, just after the tick, with
        the run lease (the dead holder's expires by its TTL; until then this waits for the next
        look). Claiming it again is idempotent for the instance that won it."""
        sh = self.sh
        s = state.s
        attempt = record.attempt + 1
        key = tick + timedelta(microseconds=attempt)
        ttl = s.lease_ttl if s.overlap is Overlap.SKIP else None
        request = ClaimRequest(state.id, key, keep_until(state.job.schedule, tick), ttl)

        def claimed(result: list[ClaimOutcome] | BackendError) -> None:
            if isinstance(result, BackendError) or not result[0].claim.won:
                return
            got = result[0]
            if state.busy() or sh.stop or state.ended or (ttl is not None and got.lease is None):
                sh.claims.drop_lease(state, got)
                return
            sh.emit(
                "retrying",
                state.id,
                tick,
                run_id=record.run_id,
                attempt=attempt,
                delay=0.0,
                exit_code=record.exit_code,
                result=Result.LOST
                if record.result == Result.RUNNING
                else prior[-1].get("result", Result.FAILURE),
                taken_over_from=record.instance,
            )
            state.attempts[tick] = (attempt, prior, key)
            # The same run: its first attempt's fence (the take-over claim only elects the taker).
            fence = record.fence if record.fence is not None else got.claim.fence
            sh.executor.start(state, tick, ClaimResult(True, sh.instance, fence), got.lease)

        sh.coordinator.claim(state.job.lock, [request], claimed)


def _unrecorded(
    won_by: dict[str, tuple[datetime, str, int | None]], state: JobState, records: list[RunRecord]
) -> RunRecord | None:
    """The run of the tick another instance won (``Retries.watch``) when no record of that tick
    is among the job's newest ``records``: its winner was lost before it wrote one (it
    writes the run's ``running`` record just after the spawn). Taken as lost in its
    first attempt, as a ``running`` record would say."""
    won = won_by.get(state.id)
    if won is None:
        return None
    tick, holder, fence = won
    tick_us = to_us(tick)
    beyond = len(records) >= ORPHAN_SCAN and records[-1].tick_us > tick_us
    if beyond or any(r.tick_us == tick_us for r in records):
        del won_by[state.id]  # recorded (or out of sight, as ORPHAN_SCAN says)
        return None
    return RunRecord(state.id, tick_us, run_id(state.id, tick, tick), holder, Result.RUNNING, fence)

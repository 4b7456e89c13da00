"""Fair share (--spread): which live instance claims a tick first, and when the others claim.

Every instance serving a job ranks the live instances that serve it by rendezvous hashing
(highest random weight) of (job, tick) — of the job alone with ``--spread sticky`` — and claims
the tick half the claim lead per rank after the top-ranked one would (the top one at the lead
before the tick, the second halfway, every other one at the tick). The top-ranked instance claims
first and wins; the others' claims come after it and lose. The claim still decides who runs
(never twice); the ranking only decides who asks first, so a dead or slow top-ranked host costs
its tick nothing: the next claim is still made by the tick.

The turn is kept by the backend's clock, not the host's: each instance reads the backend's clock
(Redis ``TIME``, PostgreSQL ``clock_timestamp()``, a file's stamp) with the registry at every
refresh and schedules its claims by its measured offset to it, so a host whose clock is ahead
does not claim first. An offset beyond what the claim protocol tolerates (SPREAD_OFFSET_MAX) is
not corrected: that host's claims are refused or late as the protocol says (DESIGN §8).

The registry is the one `pyjob status` reads: the instances registered for a job whose heartbeat
still changes, judged by this process's monotonic clock (Retries.quiet). An instance that has not
read the registry yet, or a job no other instance serves, claims first-come as with --spread off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..backends import Backend
from ..backends.protocol import AHEAD_LIMIT
from ..coordinator import Coordinator
from ..errors import BackendError
from ..records import InstanceInfo, JobInfo, RecordStore
from ..schedule import to_us
from ..settings import Spread
from .books import IDLE_BEAT
from .model import CLAIM_LEAD, JobState
from .shared import Shared
from .timers import SpreadRead

# What --spread ranks by: the jobs registered (with their instances; None when the registry did
# not change since the last read), the heartbeats, and the backend's clock minus this host's in
# seconds (None: the backend keeps no clock).
Fleet = tuple[list[JobInfo] | None, dict[str, InstanceInfo], float | None]


@dataclass
class _Known:
    """A backend's registry as last read: every job in it (with the instances that serve each),
    every instance it names, and, as of the last time the members were worked out, which of
    those names were live (name -> instance, "" when quiet; None: not worked out yet) and which
    serve this instance's jobs."""

    jobs: list[JobInfo]
    names: set[str]
    live: dict[str, str] | None = None
    serving: set[str] = field(default_factory=set)


def _registry_version(
    instances: dict[str, InstanceInfo],
) -> tuple[tuple[str, str, int, int], ...] | None:
    """What changes whenever the registry does: each instance (a restart under the same name
    has another pid) with its count of registration changes; None when an instance does not
    say it (a pyjob older than that count): the registry is read every time then."""
    out = []
    for info in instances.values():
        if info.registered is None:
            return None
        out.append((info.instance, info.host, info.pid, info.registered))
    return tuple(sorted(out))


# A measured offset to the backend's clock larger than this is not corrected: a claim made on the
# backend's time by a host that far off would run its tick late (or early) by as much.
SPREAD_OFFSET_MAX = AHEAD_LIMIT - CLAIM_LEAD
OFFSET_ERROR_MAX = 0.25  # seconds: a reading of the backend's clock less sure is not used
# A change of the measured offset this large (seconds) is logged (backend-clock) and exported.
OFFSET_NEWS = 0.002
# The registry is read 1 s after the start, then at doubling intervals up to the heartbeat's.
FIRST_READ = 1.0


def weight(key: str, instance: str) -> int:
    """The rendezvous weight of ``instance`` for ``key``: the same on every host."""
    digest = hashlib.blake2b(f"{key}\0{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(key: str, me: str, members: tuple[str, ...]) -> int:
    """How many of ``members`` outrank ``me`` for ``key`` (0: ``me`` claims first)."""
    mine = weight(key, me)
    return sum(1 for m in members if m != me and (weight(key, m), m) > (mine, me))


def delay(rank: int, lead: float) -> float:
    """How long after the top-ranked instance the instance of ``rank`` claims: half the claim
    lead per rank (long enough for the claim ahead to be answered on a busy host), and never
    after the tick itself, so that no rank's claim makes a tick late or leaves its answer less
    time than first-come claiming would."""
    return min(rank * lead / 2, lead)


class Spreading:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.members: dict[str, tuple[str, ...]] = {}  # job -> live instances serving it
        self.offsets: dict[str, float] = {}  # lock URL key -> backend's clock − this host's
        self.stores: dict[str, RecordStore | None] = {}  # lock URL key -> its run records
        self._set = False
        self.doubling = False  # the first reads, at doubling intervals, are going on
        self.fast: dict[str, bool] = {}  # lock URL key -> a live peer there beats fast
        self.registry: dict[str, _Known] = {}  # lock URL key -> its registry as last read
        self.readers: dict[str, Callable[[], Fleet]] = {}  # lock URL key -> its reader
        self.stale: set[str] = set()  # lock URL keys with jobs added since the members were set
        # The lock URLs a spread job uses (by key), and the number of jobs they were found
        # among: worked out again only when jobs came or went, not at every heartbeat.
        self._urls: tuple[int, dict[str, str | None]] | None = None

    def added(self, state: JobState) -> None:
        """A job was added: read the registry soon when its backend keeps one."""
        sh = self.sh
        self._urls = None
        if state.s.spread is Spread.OFF or not sh.coordinator.has_records(state.job.lock):
            return
        self.stale.add(Coordinator.key(state.job.lock))
        if self._set:
            return
        self._set = self.doubling = True
        sh.mono.push(SpreadRead(sh.clock.monotonic() + FIRST_READ, FIRST_READ))

    def beat(self) -> None:
        """A heartbeat: read again, once the first reads are over."""
        if self._set and not self.doubling:
            self.read()

    def peers_fast(self) -> bool:
        """Whether a live peer beats faster than the idle pace: this instance reads at the fast
        pace then, or it would judge that peer's quiet time from reads further apart than it
        (which start the judgement over, Retries.quiet) and never drop it from the ranking."""
        return any(self.fast.values())

    def read(self) -> None:
        """Read the registry and the backend's clock of every lock URL a spread job uses."""
        sh = self.sh
        if self._urls is None or self._urls[0] != len(sh.jobs):
            urls = {
                Coordinator.key(s.job.lock): s.job.lock
                for s in sh.jobs.values()
                if s.s.spread is not Spread.OFF and sh.coordinator.has_records(s.job.lock)
            }
            self._urls = (len(sh.jobs), dict(sorted(urls.items())))
        for key, url in self._urls[1].items():
            if key not in self.stores:  # one per backend: a store may set itself up once
                self.stores[key] = sh.coordinator.backend(url).records()
            store = self.stores[key]
            if store is None:
                continue

            def done(answer: Fleet | BackendError, key: str = key) -> None:
                self.heard(key, answer)

            if key not in self.readers:  # one per backend: it knows what it read last
                self.readers[key] = self._reader(sh.coordinator.backend(url), store)
            sh.coordinator.call(url, self.readers[key], done, held=True)

    def _reader(self, backend: Backend, store: RecordStore) -> Callable[[], Fleet]:
        """The read, on the backend's worker. A failure goes to ``done`` through the
        coordinator's error policy (read again next time), which also tells the outage: a
        failure returned as an answer would count as the backend answering.

        The jobs are read only when the registry changed since this reader's last read (None
        then): a 10,000-job registry costs about a second of CPU to read, and a heartbeat
        reads. Each heartbeat says how many times its instance's registrations changed, and
        is written after them: a change seen in the heartbeats is in the jobs read after."""
        clock = self.sh.clock
        last: list[tuple[tuple[str, str, int, int], ...] | None] = [None]

        def read() -> Fleet:
            from ..clockcheck import backend_clock

            reading = backend_clock(backend, clock, samples=3, calibrate=False)
            # An offset known only roughly (etcd's clock, from 1 s Date headers, at first)
            # would move claims by its error: the host's own clock orders them then.
            offset = None
            if reading is not None and reading.error <= OFFSET_ERROR_MAX:
                offset = reading.offset
            instances = store.instances()
            now = _registry_version(instances)
            jobs = None if now is not None and now == last[0] else store.jobs()
            last[0] = now
            return jobs, instances, offset

        return read

    def heard(self, key: str, answer: Fleet | BackendError) -> None:
        if isinstance(answer, BackendError):
            return  # read again at the next turn; the last membership stands meanwhile
        jobs, instances, offset = answer
        if offset is not None:
            self.measured(key, offset)
        known = self.registry.get(key)
        if jobs is not None or known is None:
            names = {n for info in jobs or [] for n in info.instances}
            known = self.registry[key] = _Known(jobs or [], names)
        live = self.live(instances, known.names)
        me = self.sh.instance
        # Each job's members again only when they may have changed: another registry, other
        # live instances, or other jobs here (a reload).
        if live != known.live or key in self.stale:
            self.stale.discard(key)
            known.live = live
            known.serving = set()
            for info in known.jobs:
                if info.job not in self.sh.jobs:
                    continue
                known.serving.update(info.instances)
                members = tuple(sorted({me} | {live[n] for n in info.instances} - {""}))
                if members != self.members.get(info.job):
                    self.sh.emit("fleet", info.job, None, instances=list(members))
                self.members[info.job] = members
        idle_quiet = int(IDLE_BEAT * 3.5e6)
        # A live peer serving one of this instance's jobs that beats fast.
        self.fast[key] = any(
            live[n] not in ("", me)
            and (beat := instances.get(n)) is not None
            and beat.quiet_us < idle_quiet
            for n in known.serving
        )
        if self.fast[key]:
            self.sh.books.hurry()

    def measured(self, key: str, offset: float) -> None:
        """This host's clock's offset to the backend's of ``key``: kept, published, told."""
        sh = self.sh
        before = self.offsets.get(key)
        self.offsets[key] = offset
        sh.me.offset = round(offset, 6)
        if before is None or abs(offset - before) >= OFFSET_NEWS:
            url = sh.coordinator.backend(key or None).url
            sh.emit("backend-clock", "*", None, backend=url, offset=round(offset, 6))

    def live(self, instances: dict[str, InstanceInfo], names: set[str]) -> dict[str, str]:
        """Each name a job lists -> the live instance it names, or "" when it went quiet (each
        judged once per reading)."""
        out = {}
        for n in names:
            beat = instances.get(n)
            # A store that names files after instances lists a file-safe form of the name.
            name = n if beat is None else beat.instance
            out[n] = "" if self.sh.retries.quiet(name, beat) else name
        return out

    def shift(self, state: JobState) -> float:
        """Seconds to add to a backend instant to make it this host's: minus the offset."""
        offset = self.offsets.get(Coordinator.key(state.job.lock))
        if offset is None or abs(offset) > SPREAD_OFFSET_MAX:
            return 0.0
        return -offset

    def claim_at(self, state: JobState, tick: datetime, lead: float) -> datetime:
        """When this instance claims ``tick`` (by its own clock)."""
        at = tick - timedelta(seconds=lead)
        mode = state.s.spread
        members = self.members.get(state.id)
        if mode is Spread.OFF or members is None or len(members) < 2:
            return at
        key = state.id if mode is Spread.STICKY else f"{state.id}\0{to_us(tick)}"
        wait = delay(rank(key, self.sh.instance, members), lead)
        return at + timedelta(seconds=wait + self.shift(state))


__all__ = ["Spreading", "rank", "weight"]

"""`nfs:PATH` — coordination through a directory that several hosts mount (NFS, EFS, CephFS).

OS locks (fcntl) cannot be trusted across NFS clients in every setup, and hosts' wall clocks must
not be compared, so this backend uses only operations NFS makes atomic and judges staleness on the
waiter's own monotonic clock:

- Claims are decided under one mutex for the directory, taken once per batch (the claims of every
  job due at one instant): a lock file made by ``link(2)``, which is atomic on NFS; when a
  retransmitted link reports an error although it worked, the link count of the source file tells
  (the classic NFS-safe technique). Inside it, per job: read the job's mark (last fence, latest
  tick claimed; never removed), write the next one, create the claim (again by link). The mutex is
  held for milliseconds.
- The server's clock, never a host's, judges time on the shared directory (DESIGN §8): the mtime
  the server stamps on the new mutex file is the "now" for refusing a tick more than AHEAD_LIMIT
  ahead of it ("clock-ahead": nothing is written) or older than its claims are kept (plus the
  skew limit), and clean-up removes a claim when a fresh probe file's mtime is past the claim
  file's own mtime plus its retention (until keep_until by that clock). A host whose clock is far
  off therefore removes nothing that others still need and moves no mark; a tick at or before the
  mark with no claim is refused once its claim would be gone anyway.
- A lock or lease file whose content has not changed for longer than its TTL, as timed by the
  *waiter's* monotonic clock, is stale: the waiter renames it aside (only one rename wins) and
  takes its place. Holders of run leases heartbeat by rewriting a counter in place, so a live
  holder's file keeps changing.
- Attribute and lookup caching decide how soon a host sees another's changes: mount with
  ``lookupcache=positive`` (or ``none``) and ``actimeo`` well below the lease TTL (README).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..clock import Clock, SystemClock
from ..errors import BackendError
from ..instants import to_us as _us
from .common import (
    SHORTAGE_ERRNOS,
    DamagedState,
    Mark,
    claim_record,
    claim_verdict,
    make_private_dirs,
    probe_mtime,
    read_mark,
    read_small,
    refused_for,
    refused_shortage,
    remove_expired_claims,
    remove_strays,
    safe_name,
    write_atomic,
)
from .protocol import ClaimOutcome, ClaimRequest, ClaimResult, Lease

if TYPE_CHECKING:
    from .dirstore import DirectoryRecords

MUTEX_STALE = 10.0  # seconds a claim mutex may stand unchanged before it is broken
_WIDTH = 20  # the heartbeat counter is written at a fixed width, in place


def link_create(target: Path, content: str) -> bool:
    """Create ``target`` holding ``content`` atomically, even on NFS. False if it exists. The
    temporary file is removed whatever happens (a full file system must leave nothing behind)."""
    tmp = target.with_name(
        f".{target.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}"
    )
    try:
        with open(tmp, "x") as f:
            f.write(content)
        try:
            os.link(tmp, target)
            return True
        except OSError as e:
            # NFS: the reply to a retransmitted LINK can be an error (even EEXIST) although the
            # first one worked; the link count of our own file tells.
            if os.stat(tmp).st_nlink == 2:
                return True
            if isinstance(e, FileExistsError):
                return False
            raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class _Watch:
    """What a waiter saw of someone else's lock file, timed on the waiter's monotonic clock."""

    def __init__(self, content: bytes, seen: float) -> None:
        self.content = content
        self.since = seen


class NfsBackend:
    def __init__(self, directory: Path, clock: Clock | None = None) -> None:
        self.directory = Path(directory)
        self.url = f"nfs:{self.directory}"
        self._watch: dict[Path, _Watch] = {}
        self._marks: dict[str, Mark] = {}  # the highest mark seen per job
        self.clock = clock or SystemClock()
        self._mono = self.clock.monotonic

    def check(self) -> None:
        d = self.directory
        try:
            make_private_dirs(d)
            probe = d / f".probe-{uuid.uuid4().hex}"
            if not link_create(probe, "probe"):
                raise OSError(errno.EEXIST, "probe file exists")
            probe.unlink()
        except OSError as e:
            raise BackendError(f"{self.url}: shared directory not usable: {e.strerror or e}") from e

    def _job_dir(self, job: str) -> Path:
        """The job's directory, made again (0700, with the parents it lacks) if someone deleted
        it."""
        path = self.directory / safe_name(job)
        make_private_dirs(path / "claims")
        return path

    # ---------------------------------------------------------------- staleness

    def _stale(self, path: Path, ttl: float) -> bool:
        """True once ``path`` has shown the same content for ``ttl`` seconds of our own time."""
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            self._watch.pop(path, None)
            return False
        now = self._mono()
        seen = self._watch.get(path)
        if seen is None or seen.content != content:
            self._watch[path] = _Watch(content, now)
            return False
        return now - seen.since > ttl

    def _break(self, path: Path) -> None:
        """Move a stale file aside; only one of several breakers' renames finds it."""
        aside = path.with_name(f".{path.name}.stale.{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, aside)
            aside.unlink()
        self._watch.pop(path, None)

    # ---------------------------------------------------------------- claims

    def _lock(self, instance: str, timeout: float = 10.0) -> tuple[Path, int]:
        """Take the directory's claim mutex; returns it and the server's clock (µs) as stamped on
        it."""
        make_private_dirs(self.directory)
        lock = self.directory / "claims.lock"
        deadline = self._mono() + timeout
        while True:
            if link_create(lock, f"{instance} {uuid.uuid4().hex}"):
                return lock, os.stat(lock).st_mtime_ns // 1000
            if self._stale(lock, MUTEX_STALE):
                self._break(lock)
                continue
            if self._mono() > deadline:
                raise BackendError(f"{self.url}: claim lock {lock} held for over {timeout}s")
            self.clock.sleep(0.002)

    def claim_many(
        self, requests: Sequence[ClaimRequest], instance: str, now: datetime
    ) -> list[ClaimOutcome]:
        if not requests:
            return []
        try:
            known: dict[int, ClaimOutcome] = {}
            for i, r in enumerate(requests):  # the common loser's path needs no lock
                try:
                    path = self._job_dir(r.job) / "claims" / f"{_us(r.tick)}.json"
                    if not path.exists():
                        continue
                    known[i] = self._with_lease(
                        self._read_claim(path, r.job, instance), r, instance
                    )
                except Exception as e:
                    refused = refused_for(r.job, e)  # this job's files, not the batch's
                    if refused is None:
                        raise
                    known[i] = refused
            if len(known) == len(requests):
                return [known[i] for i in range(len(requests))]
            try:
                lock, server_us = self._lock(instance)
            except OSError as e:
                if e.errno not in SHORTAGE_ERRNOS:
                    raise
                # not even the mutex: every claim still to make, each
                return [known.get(i) or refused_shortage(e) for i in range(len(requests))]
            try:
                return [
                    known.get(i) or self._claim_isolated(r, instance, now, server_us)
                    for i, r in enumerate(requests)
                ]
            finally:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        except BackendError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackendError(f"{self.url}: claim failed: {e}") from e

    def _claim_isolated(
        self, r: ClaimRequest, instance: str, now: datetime, server_us: int
    ) -> ClaimOutcome:
        try:
            return self._claim_one(r, instance, now, server_us)
        except Exception as e:
            refused = refused_for(r.job, e)  # this job's files, not the batch's
            if refused is None:
                raise
            return refused

    def _claim_one(
        self, r: ClaimRequest, instance: str, now: datetime, server_us: int
    ) -> ClaimOutcome:
        job_dir = self._job_dir(r.job)
        tick_us = _us(r.tick)
        claim_path = job_dir / "claims" / f"{tick_us}.json"
        if claim_path.exists():
            return self._with_lease(self._read_claim(claim_path, r.job, instance), r, instance)
        keep_until_us = _us(r.keep_until)
        known = self._marks.setdefault(r.job, Mark())
        mark = read_mark(job_dir, known)
        verdict = claim_verdict(
            tick_us, keep_until_us, mark.tick_us, server_us, _us(now), mark.since_us
        )
        if verdict is not None:
            why, ahead = verdict
            return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why, ahead=ahead))
        fence = mark.fence + 1
        latest = tick_us if mark.tick_us is None else max(mark.tick_us, tick_us)
        # since: every claim from now on is kept here (now, when the mark did not say so yet)
        new = Mark(fence, latest, server_us if mark.since_us is None else mark.since_us)
        write_atomic(job_dir / "mark", new.text())  # first: a crash here only leaves a gap
        known.raise_to(new)
        # kept until keep_until by the server's clock (the file's own stamp counts from now)
        keep_us = max(0, keep_until_us - server_us)
        record = claim_record(instance, fence, tick_us, keep_us, keep_until_us)
        if not link_create(claim_path, record):
            return ClaimOutcome(self._read_claim(claim_path, r.job, instance))  # pragma: no cover
        return self._with_lease(ClaimResult(True, instance, fence), r, instance)

    def _with_lease(self, claim: ClaimResult, r: ClaimRequest, instance: str) -> ClaimOutcome:
        """The run lease with a won claim (also our own claim repeated), when asked for."""
        if not claim.won or r.lease_ttl is None:
            return ClaimOutcome(claim)
        lease = self._take_lease(r.job, instance, r.lease_ttl)
        other = None if lease is not None else self._holder(r.job) or "unknown"
        return ClaimOutcome(claim, lease, other)

    def _read_claim(self, path: Path, job: str, instance: str) -> ClaimResult:
        try:
            record = json.loads(read_small(path))
            holder, fence = str(record["instance"]), int(record["fence"])
        except (ValueError, KeyError, TypeError) as e:
            raise DamagedState(
                f"its claim file {path.name} is unreadable ({e}; a claimer died while writing "
                "it), so no one runs that tick; clean-up removes the file"
            ) from e
        self._marks.setdefault(job, Mark()).raise_to(Mark(fence, int(path.stem)))
        return ClaimResult(holder == instance, holder, fence)

    def cleanup_many(self, jobs: Sequence[str], now: datetime) -> int:
        """Judged by the server's clock (a probe file's mtime), never by this host's: a host
        whose clock runs ahead must not remove claims the others still rely on."""
        if not jobs:
            return 0
        try:
            server_now, _ = probe_mtime(self.directory)
        except BackendError as e:
            raise BackendError(f"{self.url}: cleanup failed: {e}") from e
        removed = 0
        try:
            for job in jobs:
                job_dir = self._job_dir(job)
                removed += remove_expired_claims(job_dir / "claims", server_now)
                remove_strays(job_dir / "claims", server_now)
                remove_strays(job_dir, server_now)
            remove_strays(self.directory, server_now)
        except OSError as e:
            raise BackendError(f"{self.url}: cleanup failed: {e}") from e
        return removed

    # ---------------------------------------------------------------- run lease

    def _lease_path(self, job: str) -> Path:
        return self._job_dir(job) / "run.lease"

    def _take_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        path = self._lease_path(job)
        token = uuid.uuid4().hex
        body = f"{instance}\n{token}\n{0:0{_WIDTH}d}\n"
        if link_create(path, body):
            return Lease(job, instance, token, ttl, handle=0)
        if self._stale(path, ttl):
            self._break(path)
            if link_create(path, body):
                return Lease(job, instance, token, ttl, handle=0)
        return None

    def _holder(self, job: str) -> str | None:
        try:
            return read_small(self._lease_path(job)).split("\n", 1)[0]
        except FileNotFoundError:
            return None

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        try:
            return self._take_lease(job, instance, ttl)
        except OSError as e:
            raise BackendError(f"{self.url}: lease failed: {e}") from e

    def lease_holder(self, job: str) -> str | None:
        try:
            return self._holder(job)
        except OSError as e:
            raise BackendError(f"{self.url}: lease lookup failed: {e}") from e

    def _renew(self, lease: Lease) -> bool:
        """Heartbeat: rewrite the counter in place. If a waiter broke our lease, the path now
        holds someone else's token (or nothing) and we report the lease lost; a write that races
        with the break lands in the renamed-aside file, which no one reads."""
        path = self._lease_path(lease.job)
        count = (lease.handle if isinstance(lease.handle, int) else 0) + 1
        try:
            with open(path, "r+b") as f:
                head = f.read().split(b"\n")
                if len(head) < 2 or head[1].decode(errors="replace") != lease.token:
                    return False
                f.seek(len(head[0]) + len(head[1]) + 2)
                f.write(f"{count:0{_WIDTH}d}".encode())
                f.flush()
                os.fsync(f.fileno())
        except FileNotFoundError:
            return False
        except OSError as e:
            raise BackendError(f"{self.url}: lease renewal failed: {e}") from e
        lease.handle = count
        return True

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        return [self._renew(lease) for lease in leases]  # one small write each, no lock

    def release_many(self, leases: Sequence[Lease]) -> None:
        first: BackendError | None = None
        for lease in leases:
            try:
                self._release(lease)
            except BackendError as e:
                first = first or e
        if first is not None:
            raise first

    def _release(self, lease: Lease) -> None:
        path = self._lease_path(lease.job)
        try:
            if read_small(path).split("\n")[1] == lease.token:
                path.unlink()
        except (FileNotFoundError, IndexError):
            return
        except OSError as e:
            raise BackendError(f"{self.url}: lease release failed: {e}") from e

    def server_time(self) -> tuple[float, float]:
        return probe_mtime(self.directory)

    def records(self) -> DirectoryRecords:
        from .dirstore import DirectoryRecords

        return DirectoryRecords(self.directory, self.url)

    def close(self) -> None:
        return None

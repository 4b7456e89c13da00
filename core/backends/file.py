"""`file:PATH` — coordination between the pyjob processes of one host.

Layout of the private directory (mode 0700):

    <dir>/claims.lock                               OS lock around a batch of claims (short)
    <dir>/<job>/claims/<tick µs since epoch>.json   one file per claimed tick
    <dir>/<job>/mark                                the job's high-water mark: last fence, latest
                                                    tick claimed (never removed)
    <dir>/<job>/run.lock, run.holder                the run lease of --overlap skip, and the
                                                    instance that took it last

Claims are decided under an OS lock (flock on claims.lock, taken through filelock one try at a
time), which the kernel releases when its holder dies, so a crashed process never wedges a job; one
acquisition serves a whole batch (the claims of every job due at one instant), waited for by the
Clock the backend is given. The run lease is that same kind of lock (flock on run.lock), held for
as long as the run goes on: no TTL or heartbeat is needed on one host, because the kernel knows at
once when the holder is gone.

Every claim is written under the batch lock, so no other claimer reads a file while it is being
written, and each is written with as few file-system operations as keep it whole (a claim cost
1.7 ms of CPU here when each of its three files was a temporary file renamed into place):
- the mark is one fixed-size record written over the last in place by one pwrite (on a file system
  that overwrites in place, as ext4, xfs and tmpfs do, no new block is needed, so it cannot fail
  for space; a process dies before or after a write, never inside; a mark damaged anyway is
  recovered from the claims);
- the claim file is created in place (O_EXCL). A claimer killed between its creation and its
  write leaves an unreadable claim: the tick is then refused, never run twice, and clean-up
  removes the file later. A write that fails (a full file system) removes the file and puts the
  mark back, so nothing is left behind and the fence does not move (a file that cannot be
  removed keeps its fence: the mark stays);
- run.holder is rewritten only when another instance took the lease last.
There is no fsync: the claims must survive a crashed process, and when the host itself crashes
every instance on it goes too.

The host's clock is this backend's clock, and it judges every time (DESIGN §8): a tick more than
AHEAD_LIMIT ahead of it is refused ("clock-ahead"), a tick older than its claims are kept plus the
skew limit is refused, and a tick at or before the job's mark with no claim is refused once its
claim would be gone anyway (claims are kept until keep_until by that clock), or when the claims
of its time may have been lost (the mark's since_us). A deleted directory is made again (0700,
with every parent it lacks) and the marks this process has seen keep the fences growing; a
damaged mark is recovered from the claims on disk. A file of one job that cannot be parsed
refuses that job's claim, never the batch (DESIGN §5).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from filelock import FileLock, Timeout

from ..clock import Clock, SystemClock
from ..errors import BackendError
from ..instants import to_us as _us
from .common import (
    SHORTAGE_ERRNOS,
    Mark,
    claim_record,
    claim_verdict,
    create_new,
    make_private_dirs,
    overwrite,
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

_T = TypeVar("_T")
LOCK_POLL = 0.002  # seconds between tries of a claims lock another process holds


class FileBackend:
    def __init__(
        self, directory: Path, clock: Clock | None = None, lock_timeout: float = 10.0
    ) -> None:
        self.directory = Path(directory)
        self.url = f"file:{self.directory}"
        self.clock = clock or SystemClock()
        self.lock_timeout = lock_timeout  # seconds a batch waits for the claims lock
        self._marks: dict[str, Mark] = {}  # the highest mark seen per job
        self._made: set[str] = set()  # job directories known to exist

    # ---------------------------------------------------------------- set-up

    def _make_directory(self) -> None:
        """Create the directory, and the parents it lacks, each 0700."""
        make_private_dirs(self.directory)

    def check(self) -> None:
        d = self.directory
        try:
            self._make_directory()
            st = d.stat()
        except OSError as e:
            raise BackendError(f"lock directory {d} cannot be created: {e.strerror or e}") from e
        if not stat.S_ISDIR(st.st_mode):
            raise BackendError(f"lock directory {d} is not a directory")
        if st.st_uid != os.getuid():
            raise BackendError(
                f"lock directory {d} is owned by uid {st.st_uid}, not by this user "
                f"(uid {os.getuid()}): use a directory of your own"
            )
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            if mode & (stat.S_ISVTX | stat.S_IWOTH):
                # /tmp and the like: other users' files live there, so chmod would break them.
                user = os.environ.get("USER") or str(os.getuid())
                raise BackendError(
                    f"lock directory {d} is shared with other users (mode {mode:04o}): use a "
                    f"private subdirectory, like --lock file:{d / f'pyjob-{user}'} (pyjob "
                    "creates it with mode 0700)"
                )
            raise BackendError(
                f"lock directory {d} is not private (mode {mode:04o}): "
                f"run chmod 700 {d}, or choose another with --lock file:PATH"
            )
        probe = d / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            with contextlib.suppress(OSError):
                probe.unlink()
            raise BackendError(f"lock directory {d} is not writable: {e.strerror or e}") from e

    def _job_dir(self, job: str) -> Path:
        """The job's directory, made again (0700) if someone deleted it: ``_in_job_dir`` forgets
        a directory found gone, so that this makes it."""
        path = self.directory / safe_name(job)
        if job not in self._made:
            make_private_dirs(path / "claims")  # the lock directory too, if it was deleted
            self._made.add(job)
        return path

    # ---------------------------------------------------------------- claims

    def claim_many(
        self, requests: Sequence[ClaimRequest], instance: str, now: datetime
    ) -> list[ClaimOutcome]:
        if not requests:
            return []
        try:
            self._make_directory()
            lock_path = self.directory / "claims.lock"
            with self._claims_lock(lock_path):
                # The kernel's clock, as it stamps files (claim files' ages are judged by it),
                # not this process's reading of the wall clock: one process's clock may be off.
                os.utime(lock_path)
                clock_us = os.stat(lock_path).st_mtime_ns // 1000
                out: list[ClaimOutcome] = []
                try:
                    for r in requests:
                        one = partial(
                            self._claim_one, r=r, instance=instance, now=now, clock_us=clock_us
                        )
                        try:
                            out.append(self._in_job_dir(r.job, one))
                        except Exception as e:
                            refused = refused_for(r.job, e)  # this job's, not the batch's
                            if refused is None:
                                raise
                            out.append(refused)
                except BaseException:  # the batch fails whole: no lease of it stays taken
                    for o in out:
                        if o.lease is not None:
                            self.release_many([o.lease])
                    raise
                return out
        except BackendError:
            raise
        except _NoDescriptor as e:  # not even the batch's lock: every claim of it, each
            return [refused_shortage(e.error) for _ in requests]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackendError(f"{self.url}: claim failed: {e}") from e

    @contextlib.contextmanager
    def _claims_lock(self, path: Path) -> Iterator[None]:
        """The batch's OS lock on ``path``, waited for at most ``lock_timeout``; _NoDescriptor
        when it cannot be opened for want of descriptors (pyjob's shortage, not the
        directory's)."""
        # One try at a time (filelock never reads the time or sleeps here): the wait is timed
        # and slept by the clock this backend is given, as everything in core/ is.
        lock = FileLock(path, timeout=0, mode=0o600)
        deadline = self.clock.monotonic() + self.lock_timeout
        while True:
            try:
                lock.acquire(blocking=False)
                break
            except Timeout:
                pass
            except OSError as e:
                if e.errno in SHORTAGE_ERRNOS:
                    raise _NoDescriptor(e) from e
                raise
            if self.clock.monotonic() > deadline:
                raise BackendError(
                    f"{self.url}: claim lock not acquired within {self.lock_timeout}s"
                )
            self.clock.sleep(LOCK_POLL)
        try:
            yield
        finally:
            lock.release()

    def _in_job_dir(self, job: str, work: Callable[[Path], _T]) -> _T:
        """``work`` on the job's directory; once more if it was deleted since it was made."""
        try:
            return work(self._job_dir(job))
        except FileNotFoundError:
            self._made.discard(job)
            return work(self._job_dir(job))

    def _claim_one(
        self, job_dir: Path, r: ClaimRequest, instance: str, now: datetime, clock_us: int
    ) -> ClaimOutcome:
        tick_us = _us(r.tick)
        claim_path = job_dir / "claims" / f"{tick_us}.json"
        known = self._marks.setdefault(r.job, Mark())
        if claim_path.exists():
            try:
                record = json.loads(claim_path.read_text())
                holder, fence = str(record["instance"]), int(record["fence"])
            except (ValueError, KeyError, TypeError):
                why = (
                    f"its claim file {claim_path.name} is unreadable (a claimer died while "
                    "writing it), so no one runs it"
                )
                return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why))
            known.raise_to(Mark(fence, tick_us))
            claim = ClaimResult(holder == instance, holder, fence)
            if claim.won and r.lease_ttl is not None:  # our own claim, repeated
                return self._with_lease(claim, job_dir, r.job, instance, r.lease_ttl)
            return ClaimOutcome(claim)
        keep_until_us = _us(r.keep_until)
        mark = read_mark(job_dir, known)
        verdict = claim_verdict(
            tick_us, keep_until_us, mark.tick_us, clock_us, _us(now), mark.since_us
        )
        if verdict is not None:
            why, ahead = verdict
            return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why, ahead=ahead))
        fence = mark.fence + 1
        latest = tick_us if mark.tick_us is None else max(mark.tick_us, tick_us)
        # since: every claim from now on is kept here (now, when the mark did not say so yet)
        new = Mark(fence, latest, clock_us if mark.since_us is None else mark.since_us)
        _put_mark(job_dir / "mark", new)  # first: a crash here only leaves a gap
        # kept until keep_until by this backend's clock (the file's own stamp counts from now)
        keep_us = max(0, keep_until_us - clock_us)
        try:
            create_new(claim_path, claim_record(instance, fence, tick_us, keep_us, keep_until_us))
        except OSError:
            if not claim_path.exists():  # else its fence is handed out: the mark must keep it
                with contextlib.suppress(OSError):
                    _put_mark(job_dir / "mark", mark)  # the fence does not move
            raise
        known.raise_to(new)
        claim = ClaimResult(True, instance, fence)
        if r.lease_ttl is None:
            return ClaimOutcome(claim)
        return self._with_lease(claim, job_dir, r.job, instance, r.lease_ttl)

    def _with_lease(
        self, claim: ClaimResult, job_dir: Path, job: str, instance: str, ttl: float
    ) -> ClaimOutcome:
        lease = self._take_lease(job_dir, job, instance, ttl)
        other = None if lease is not None else self._holder(job_dir) or "unknown"
        return ClaimOutcome(claim, lease, other)

    def cleanup_many(self, jobs: Sequence[str], now: datetime) -> int:
        if not jobs:
            return 0
        # judged by the clock that stamps the files (a fresh probe's mtime), like the claims'
        # own mtimes: nothing depends on what this process thinks the time is
        removed = 0
        try:
            self._make_directory()
            clock_now, _ = probe_mtime(self.directory)
            for job in jobs:
                self._made.discard(job)  # a clean-up finds a deleted directory and makes it
                job_dir = self._job_dir(job)
                removed += remove_expired_claims(job_dir / "claims", clock_now)
                remove_strays(job_dir / "claims", clock_now)
                remove_strays(job_dir, clock_now)
            remove_strays(self.directory, clock_now)
        except OSError as e:
            raise BackendError(f"{self.url}: cleanup failed: {e}") from e
        return removed

    # ---------------------------------------------------------------- run lease

    def _take_lease(self, job_dir: Path, job: str, instance: str, ttl: float) -> Lease | None:
        lock = _OsLock.take(job_dir / "run.lock")
        if lock is None:
            return None
        holder = job_dir / "run.holder"
        try:
            same = read_small(holder) == instance  # read only while the lock is held
        except OSError:
            same = False
        try:
            if not same:
                write_atomic(holder, instance)
        except OSError:
            lock.release()
            raise
        return Lease(job, instance, uuid.uuid4().hex, ttl, handle=lock)

    @staticmethod
    def _holder(job_dir: Path) -> str | None:
        probe = _OsLock.take(job_dir / "run.lock")
        if probe is None:
            try:
                return read_small(job_dir / "run.holder") or "unknown"
            except OSError:
                return "unknown"
        probe.release()
        return None

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        try:
            self._make_directory()
            return self._in_job_dir(job, lambda d: self._take_lease(d, job, instance, ttl))
        except OSError as e:
            raise BackendError(f"{self.url}: lease failed: {e}") from e

    def lease_holder(self, job: str) -> str | None:
        try:
            self._make_directory()
            return self._in_job_dir(job, self._holder)
        except OSError as e:
            raise BackendError(f"{self.url}: lease lookup failed: {e}") from e

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        # no I/O: the kernel holds them
        return [isinstance(x.handle, _OsLock) and x.handle.is_locked for x in leases]

    def release_many(self, leases: Sequence[Lease]) -> None:
        for lease in leases:
            lock = lease.handle
            if isinstance(lock, _OsLock) and lock.is_locked:
                lock.release()  # run.holder stays: it is read only while someone holds the lock

    def server_time(self) -> tuple[float, float]:
        return probe_mtime(self.directory)

    def records(self) -> DirectoryRecords:
        from .dirstore import DirectoryRecords

        return DirectoryRecords(self.directory, self.url, local=True)

    def close(self) -> None:
        return None


class _NoDescriptor(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _OsLock:
    """An OS lock: flock on a file (claims.lock, a job's run.lock), held until released or this
    process ends."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def take(cls, path: Path) -> _OsLock | None:
        """The lock when free, else None: never waits."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    @property
    def is_locked(self) -> bool:
        return self.fd >= 0

    def release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # closing the only descriptor of the open file drops its flock

    def __del__(self) -> None:  # a lease dropped without release
        with contextlib.suppress(OSError):
            self.release()


MARK_SIZE = 128  # bytes: the mark's JSON padded with spaces, so that every write is the same size


def _put_mark(path: Path, mark: Mark) -> None:
    """Write ``mark`` over the last one in place, in one pwrite of (at least) MARK_SIZE bytes.
    A missing file, or one whose blocks cannot hold it, is written whole instead, to a
    temporary name and renamed."""
    data = mark.text().rstrip("\n").ljust(MARK_SIZE - 1).encode() + b"\n"
    if not overwrite(path, data):
        write_atomic(path, data.decode())

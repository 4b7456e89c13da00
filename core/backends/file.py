"""`file:PATH` — coordination between the pyjob processes of one host.

Layout of the private directory (mode 0700), per job:

    <dir>/<job>/claims/<tick µs since epoch>.json   one file per claimed tick
    <dir>/<job>/fence                               the last fence handed out
    <dir>/<job>/job.lock                            OS lock around claim + fence (short)
    <dir>/<job>/run.lock, run.holder                the run lease of --overlap skip

Claims are decided under an OS lock (fcntl, through filelock), which the kernel releases when its
holder dies, so a crashed process never wedges the job. The run lease is that same kind of lock,
held for as long as the run goes on: no TTL or heartbeat is needed on one host, because the kernel
knows at once when the holder is gone. Files are written to a temporary name and renamed, so a
reader never sees half a claim. There is no fsync: the claims must survive a crashed process, and
when the host itself crashes every instance on it goes too.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import uuid
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import BackendError
from .common import probe_mtime, remove_expired_claims, safe_name
from .common import to_us as _us
from .protocol import Batched, ClaimResult, Lease


class FileBackend(Batched):
    def __init__(self, directory: Path, lock_timeout: float = 10.0) -> None:
        self.directory = Path(directory)
        self.url = f"file:{self.directory}"
        self.lock_timeout = lock_timeout
        self._checked: set[str] = set()

    # ---------------------------------------------------------------- set-up

    def check(self) -> None:
        d = self.directory
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o700)
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
            raise BackendError(
                f"lock directory {d} is not private (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"run chmod 700 {d}, or choose another with --lock file:PATH"
            )
        probe = d / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise BackendError(f"lock directory {d} is not writable: {e.strerror or e}") from e

    def _job_dir(self, job: str) -> Path:
        path = self.directory / safe_name(job)
        if job not in self._checked:
            (path / "claims").mkdir(parents=True, exist_ok=True, mode=0o700)
            self._checked.add(job)
        return path

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(text)
        os.replace(tmp, path)

    # ---------------------------------------------------------------- claims

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        try:
            job_dir = self._job_dir(job)
            claim_path = job_dir / "claims" / f"{_us(tick)}.json"
            with FileLock(job_dir / "job.lock", timeout=self.lock_timeout):
                if claim_path.exists():
                    record = json.loads(claim_path.read_text())
                    return ClaimResult(
                        record["instance"] == instance, record["instance"], record.get("fence")
                    )
                fence_path = job_dir / "fence"
                fence = int(fence_path.read_text() or 0) + 1 if fence_path.exists() else 1
                self._write(fence_path, str(fence))
                record = {
                    "job": job,
                    "tick_us": _us(tick),
                    "instance": instance,
                    "fence": fence,
                    "keep_until_us": _us(keep_until),
                }
                self._write(claim_path, json.dumps(record))
                return ClaimResult(True, instance, fence)
        except Timeout as e:
            raise BackendError(
                f"{self.url}: job lock for {job} not acquired within {self.lock_timeout}s"
            ) from e
        except (OSError, ValueError, KeyError) as e:
            raise BackendError(f"{self.url}: claim failed: {e}") from e

    def cleanup(self, job: str, now: datetime) -> int:
        now_us = _us(now)
        try:
            claims = self._job_dir(job) / "claims"
            removed = remove_expired_claims(claims, now_us)
            for tmp in claims.glob(".*"):  # left by a process killed between write and rename
                try:
                    if now_us - int(tmp.stat().st_mtime * 1e6) > 3_600_000_000:
                        tmp.unlink()
                except OSError:
                    continue
        except OSError as e:
            raise BackendError(f"{self.url}: cleanup failed: {e}") from e
        return removed

    # ---------------------------------------------------------------- run lease

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        try:
            job_dir = self._job_dir(job)
            lock = FileLock(job_dir / "run.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return None
            self._write(job_dir / "run.holder", instance)
            return Lease(job, instance, uuid.uuid4().hex, ttl, handle=lock)
        except OSError as e:
            raise BackendError(f"{self.url}: lease failed: {e}") from e

    def lease_holder(self, job: str) -> str | None:
        job_dir = self._job_dir(job)
        probe = FileLock(job_dir / "run.lock")
        try:
            probe.acquire(timeout=0)
        except Timeout:
            try:
                return (job_dir / "run.holder").read_text() or "unknown"
            except OSError:
                return "unknown"
        probe.release()
        return None

    def renew_lease(self, lease: Lease) -> bool:
        lock = lease.handle
        return isinstance(lock, FileLock) and lock.is_locked

    def release_lease(self, lease: Lease) -> None:
        lock = lease.handle
        if isinstance(lock, FileLock) and lock.is_locked:
            with contextlib.suppress(OSError):
                (self._job_dir(lease.job) / "run.holder").unlink(missing_ok=True)
            lock.release()

    def server_time(self) -> tuple[float, float]:
        return probe_mtime(self.directory)

    def close(self) -> None:
        return None

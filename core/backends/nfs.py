"""`nfs:PATH` — coordination through a directory that several hosts mount (NFS, EFS, CephFS).

OS locks (fcntl) cannot be trusted across NFS clients in every setup, and hosts' wall clocks must
not be compared, so this backend uses only operations NFS makes atomic and judges staleness on the
waiter's own monotonic clock:

- Claims are decided under a per-job mutex: a lock file made by ``link(2)``, which is atomic on
  NFS; when a retransmitted link reports an error although it worked, the link count of the source
  file tells (the classic NFS-safe technique). Inside it: read the fence counter, write it + 1,
  create the claim (again by link). The mutex is held for milliseconds.
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
from datetime import datetime
from pathlib import Path

from ..clock import Clock, SystemClock
from ..errors import BackendError
from .common import probe_mtime, remove_expired_claims, safe_name
from .common import to_us as _us
from .protocol import Batched, ClaimResult, Lease

MUTEX_STALE = 10.0  # seconds a claim mutex may stand unchanged before it is broken
_WIDTH = 20  # the heartbeat counter is written at a fixed width, in place


def link_create(target: Path, content: str) -> bool:
    """Create ``target`` holding ``content`` atomically, even on NFS. False if it exists."""
    tmp = target.with_name(
        f".{target.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}"
    )
    tmp.write_text(content)
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        # NFS: the reply to a retransmitted LINK can be an error although the first one worked.
        return os.stat(tmp).st_nlink == 2
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class _Watch:
    """What a waiter saw of someone else's lock file, timed on the waiter's monotonic clock."""

    def __init__(self, content: bytes, seen: float) -> None:
        self.content = content
        self.since = seen


class NfsBackend(Batched):
    def __init__(self, directory: Path, clock: Clock | None = None) -> None:
        self.directory = Path(directory)
        self.url = f"nfs:{self.directory}"
        self._watch: dict[Path, _Watch] = {}
        self._made: set[str] = set()
        self.clock = clock or SystemClock()
        self._mono = self.clock.monotonic

    def check(self) -> None:
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".probe-{uuid.uuid4().hex}"
            if not link_create(probe, "probe"):
                raise OSError(errno.EEXIST, "probe file exists")
            probe.unlink()
        except OSError as e:
            raise BackendError(f"{self.url}: shared directory not usable: {e.strerror or e}") from e

    def _job_dir(self, job: str) -> Path:
        path = self.directory / safe_name(job)
        if job not in self._made:
            (path / "claims").mkdir(parents=True, exist_ok=True)
            self._made.add(job)
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

    def _lock(self, job_dir: Path, instance: str, timeout: float = 10.0) -> Path:
        lock = job_dir / "claim.lock"
        deadline = self._mono() + timeout
        while True:
            if link_create(lock, f"{instance} {uuid.uuid4().hex}"):
                return lock
            if self._stale(lock, MUTEX_STALE):
                self._break(lock)
                continue
            if self._mono() > deadline:
                raise BackendError(f"{self.url}: claim lock {lock} held for over {timeout}s")
            self.clock.sleep(0.002)

    def claim(
        self, job: str, tick: datetime, instance: str, keep_until: datetime, now: datetime
    ) -> ClaimResult:
        try:
            job_dir = self._job_dir(job)
            claim_path = job_dir / "claims" / f"{_us(tick)}.json"
            if claim_path.exists():  # the common loser's path needs no lock
                return self._read_claim(claim_path, instance)
            lock = self._lock(job_dir, instance)
            try:
                if claim_path.exists():
                    return self._read_claim(claim_path, instance)
                fence_path = job_dir / "fence"
                fence = int(fence_path.read_text() or 0) + 1 if fence_path.exists() else 1
                tmp = fence_path.with_name(f".fence.{uuid.uuid4().hex}")
                tmp.write_text(str(fence))
                os.replace(tmp, fence_path)
                record = {"instance": instance, "fence": fence, "keep_until_us": _us(keep_until)}
                if not link_create(claim_path, json.dumps(record)):
                    return self._read_claim(claim_path, instance)  # pragma: no cover
                return ClaimResult(True, instance, fence)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        except BackendError:
            raise
        except (OSError, ValueError, KeyError) as e:
            raise BackendError(f"{self.url}: claim failed: {e}") from e

    @staticmethod
    def _read_claim(path: Path, instance: str) -> ClaimResult:
        record = json.loads(path.read_text())
        return ClaimResult(record["instance"] == instance, record["instance"], record["fence"])

    def cleanup(self, job: str, now: datetime) -> int:
        try:
            return remove_expired_claims(self._job_dir(job) / "claims", _us(now))
        except OSError as e:
            raise BackendError(f"{self.url}: cleanup failed: {e}") from e

    # ---------------------------------------------------------------- run lease

    def _lease_path(self, job: str) -> Path:
        return self._job_dir(job) / "run.lease"

    def acquire_lease(self, job: str, instance: str, ttl: float) -> Lease | None:
        try:
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
        except OSError as e:
            raise BackendError(f"{self.url}: lease failed: {e}") from e

    def lease_holder(self, job: str) -> str | None:
        try:
            return self._lease_path(job).read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BackendError(f"{self.url}: lease lookup failed: {e}") from e

    def renew_lease(self, lease: Lease) -> bool:
        """Heartbeat: rewrite the counter in place. If a waiter broke our lease, the path now
        holds someone else's token (or nothing) and we report the lease lost; a write that races
        with the break lands in the renamed-aside file, which no one reads."""
        path = self._lease_path(lease.job)
        count = (lease.handle if isinstance(lease.handle, int) else 0) + 1
        try:
            with open(path, "r+b") as f:
                head = f.read().split(b"\n")
                if len(head) < 2 or head[1].decode() != lease.token:
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

    def release_lease(self, lease: Lease) -> None:
        path = self._lease_path(lease.job)
        try:
            if path.read_text().split("\n")[1] == lease.token:
                path.unlink()
        except (FileNotFoundError, IndexError):
            return
        except OSError as e:
            raise BackendError(f"{self.url}: lease release failed: {e}") from e

    def server_time(self) -> tuple[float, float]:
        return probe_mtime(self.directory)

    def close(self) -> None:
        return None

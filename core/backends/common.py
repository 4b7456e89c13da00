"""Helpers the backends share (file names, URLs, claim files on disk, the file system's clock).

Backends import this module and ``protocol``, never the package ``__init__``, so that
``core/backends/`` has no import circle.
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from ..errors import BackendError


def probe_mtime(directory: Path) -> tuple[float, float]:
    """The time a file system stamps on a new file in ``directory``: on NFS the server's clock
    sets it, locally this host's kernel. Returned as (mtime + half a tick, tick): the stamp comes
    from the kernel's coarse clock, which lags real time by up to one timer tick."""
    import time
    import uuid

    probe = directory / f".clock-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"t")
        finally:
            os.close(fd)
        stamp = os.stat(probe).st_mtime_ns / 1e9
    except OSError as e:
        raise BackendError(f"{directory}: clock probe failed: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    try:
        tick = time.clock_getres(_CLOCK_REALTIME_COARSE)  # the kernel's timer tick
    except OSError:
        tick = 0.01  # not Linux: assume a coarse 100 Hz stamp
    return stamp + tick / 2, tick


_CLOCK_REALTIME_COARSE = 5  # Linux's clockid; Python's time module does not name it


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(job: str) -> str:
    """A file/key-safe form of a job id that stays unique (a hash suffix when it had to change)."""
    import hashlib

    cleaned = _SAFE.sub("_", job)[:80] or "_"
    if cleaned == job:
        return job
    return f"{cleaned}-{hashlib.sha256(job.encode()).hexdigest()[:8]}"


def remove_expired_claims(claims: Path, now_us: int) -> int:
    """Delete the claim files (JSON with ``keep_until_us``) in ``claims`` kept past ``now_us``.

    Shared by the file and nfs backends; unreadable or half-written files are left for later."""
    import json

    removed = 0
    for path in claims.glob("*.json"):
        try:
            if int(json.loads(path.read_text())["keep_until_us"]) < now_us:
                path.unlink()
                removed += 1
        except (OSError, ValueError, KeyError):
            continue
    return removed


def to_us(instant: datetime) -> int:
    """An aware instant as whole microseconds since the Unix epoch (the key of a claimed tick)."""
    delta = instant - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

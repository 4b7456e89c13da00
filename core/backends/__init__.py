"""Lock backends: where instances of one job agree who runs each tick (DESIGN §5).

Every backend implements ``Backend``; one shared test suite (tests/backend_suite.py) runs against
each of them: claim races, fence order, lease expiry after a crash, no theft from a live holder.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..clock import Clock
from ..errors import BackendError, InputError
from .protocol import (
    Backend,
    Batched,
    ClaimOutcome,
    ClaimRequest,
    ClaimResult,
    Lease,
)


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


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """$XDG_RUNTIME_DIR/pyjob, else ~/.local/state/pyjob (never a shared world-writable dir)."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "pyjob"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "pyjob"


# what TAB offers for --lock
COMPLETIONS = ("file:", "nfs:", "redis://", "rediss://", "postgresql://", "none")


def open_backend(
    url: str | None, env: Mapping[str, str] | None = None, clock: Clock | None = None
) -> Backend:
    """The backend for ``--lock URL`` (default: a private directory on this host)."""
    if url is None or url == "":
        from .file import FileBackend

        return FileBackend(default_lock_dir(env))
    if url == "none":
        from .null import NullBackend

        return NullBackend()
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise InputError(
            f"bad lock URL '{redact(url)}' (file:PATH, nfs:PATH, redis://HOST, "
            "postgresql://HOST/DB or none)",
            source=url,
            pos=0,
            length=len(url),
        )
    if scheme in ("file", "nfs"):
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise InputError(
                f"{scheme}: needs a directory, like {scheme}:/var/lib/pyjob", source=url, pos=0
            )
        if scheme == "file":
            from .file import FileBackend

            return FileBackend(Path(path).expanduser())
        from .nfs import NfsBackend

        return NfsBackend(Path(path).expanduser(), clock)
    if scheme in ("redis", "rediss"):
        from .redis import RedisBackend

        return RedisBackend(url)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresBackend

        return PostgresBackend(url)
    raise InputError(
        f"unknown lock backend '{scheme}:' (supported: file:PATH, nfs:PATH, redis://, "
        "rediss://, postgresql://, none)",
        source=url,
        pos=0,
        length=len(scheme) + 1,
    )


__all__ = [
    "Backend",
    "BackendError",
    "Batched",
    "ClaimOutcome",
    "ClaimRequest",
    "ClaimResult",
    "Lease",
    "default_lock_dir",
    "open_backend",
    "redact",
    "safe_name",
]

"""Lock backends: where instances of one job agree who runs each tick (DESIGN §5).

Every backend implements ``Backend``; one shared test suite (tests/backend_suite.py) runs against
each of them: claim races, fence order, lease expiry after a crash, no theft from a live holder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..clock import Clock
from ..errors import BackendError
from .common import probe_mtime, redact, remove_expired_claims, safe_name
from .protocol import (
    Backend,
    Batched,
    ClaimOutcome,
    ClaimRequest,
    ClaimResult,
    Lease,
)


def default_lock_dir(env: Mapping[str, str] | None = None) -> Path:
    """$XDG_RUNTIME_DIR/pyjob, else ~/.local/state/pyjob (never a shared world-writable dir)."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "pyjob"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state" / "pyjob"


# what TAB offers for --lock
COMPLETIONS = ("file:", "nfs:", "redis://", "rediss://", "postgresql://", "etcd://", "none")


def open_backend(
    url: str | None, env: Mapping[str, str] | None = None, clock: Clock | None = None
) -> Backend:
    """The backend for ``--lock URL`` (default: a private directory on this host). A URL that
    `run` would refuse is refused here too, by the same check (urls.check_lock_url)."""
    from .urls import check_lock_url

    if url is None or url == "":
        from .file import FileBackend

        return FileBackend(default_lock_dir(env), clock)
    if url == "none":
        from .null import NullBackend

        return NullBackend()
    check_lock_url(url)
    scheme, _, rest = url.partition(":")
    if scheme in ("file", "nfs"):
        path = Path(rest[2:] if rest.startswith("//") else rest).expanduser()
        if scheme == "file":
            from .file import FileBackend

            return FileBackend(path, clock)
        from .nfs import NfsBackend

        return NfsBackend(path, clock)
    if scheme in ("redis", "rediss"):
        from .redis import RedisBackend

        return RedisBackend(url)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresBackend

        return PostgresBackend(url)
    if scheme == "etcd":
        from .etcd import EtcdBackend
        from .urls import parse_etcd_url

        endpoints, prefix = parse_etcd_url(url)
        return EtcdBackend(endpoints, prefix, redact(url))
    raise AssertionError(f"check_lock_url accepts '{scheme}:', which open_backend cannot open")


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
    "probe_mtime",
    "redact",
    "remove_expired_claims",
    "safe_name",
]

"""Job ids as file names and keys: the one mapping every backend and reader uses."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _hashlib import HASH

_SAFE = r"[^A-Za-z0-9._-]"  # compiled at its first use (re keeps it), not at every start


def sha256(data: bytes) -> HASH:
    """A SHA-256 hash object of ``data``: job ids, H fields and random ticks hash with it."""
    return _sha256()(data)


@functools.cache
def _sha256() -> Callable[[bytes], HASH]:
    """The interpreter's own SHA-256 when it has one: hashlib's loads OpenSSL, which costs a quick
    command such as `pyjob next` more than its work (the digests are the same)."""
    try:
        from _sha2 import sha256 as own  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from _sha256 import sha256 as own  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            from hashlib import sha256 as own  # type: ignore[assignment,unused-ignore]
    return own  # type: ignore[no-any-return,unused-ignore]


def safe_name(job: str) -> str:
    """A file/key-safe form of a job id that stays unique (a hash suffix when it had to change)."""
    cleaned = re.sub(_SAFE, "_", job)[:80] or "_"
    if cleaned == job:
        return job
    return f"{cleaned}-{sha256(job.encode()).hexdigest()[:8]}"

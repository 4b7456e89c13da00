"""Job ids as file names and keys: the one mapping every backend and reader uses."""

from __future__ import annotations

import re

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(job: str) -> str:
    """A file/key-safe form of a job id that stays unique (a hash suffix when it had to change)."""
    import hashlib

    cleaned = _SAFE.sub("_", job)[:80] or "_"
    if cleaned == job:
        return job
    return f"{cleaned}-{hashlib.sha256(job.encode()).hexdigest()[:8]}"

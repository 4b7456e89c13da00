"""The scheduler of `pyjob run`. It lives in core/sched/ (see core/sched/loop.py for how its
parts fit); this module keeps the names the CLI and the tests import."""

from __future__ import annotations

from .sched.loop import Scheduler
from .sched.model import Job, keep_until, overlap_action, run_id

__all__ = ["Job", "Scheduler", "keep_until", "overlap_action", "run_id"]

"""The result of a run, as its run record, its events, its hooks and its metrics name it."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class Result(StrEnum):
    RUNNING = "running"
    RETRYING = "retrying"  # an attempt ended and another is due
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # pyjob ended it (a stop, or --overlap replace)
    START_FAILED = "start-failed"
    SKIPPED = "skipped"
    MISSED = "missed"
    LOST = "lost"  # its instance went away while it ran


# results of runs that started and ended, and of those among them that failed (hooks, status)
FINISHED = (
    Result.SUCCESS,
    Result.FAILURE,
    Result.TIMEOUT,
    Result.STOPPED,
    Result.START_FAILED,
    Result.LOST,
)
FAILED = (Result.FAILURE, Result.TIMEOUT, Result.START_FAILED, Result.LOST)


def result_of(terminated: str | None, start_failed: bool, exit_code: int | None) -> Result:
    """The result of a run that ended: ``terminated`` is why pyjob ended it ("timeout",
    "stop", "replace") or None; ``start_failed`` when its command could not be started."""
    if terminated == "timeout":
        return Result.TIMEOUT
    if terminated in ("stop", "replace"):
        return Result.STOPPED
    if start_failed:
        return Result.START_FAILED
    return Result.SUCCESS if exit_code == 0 else Result.FAILURE


def event_result(fields: Mapping[str, Any]) -> Result:
    """The result of a run from its run-finished event's fields."""
    return result_of(fields.get("terminated"), bool(fields.get("error")), fields.get("exit_code"))


__all__ = ["FAILED", "FINISHED", "Result", "event_result", "result_of"]

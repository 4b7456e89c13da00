"""``JobSettings``: the job-scope settings of core/settings.py, converted, as one job holds
them. A module of its own: the command line's options and completion read the table of settings
alone, and making this class (a frozen dataclass of every job setting) costs a start-up time that
a completion request should not pay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import InputError
from .settings import (
    BY_NAME,
    JOB_SETTINGS,
    NotifyOn,
    OnBackendError,
    Overlap,
    Spread,
    convert,
)


def _default(name: str) -> Any:
    """A setting's default as ``JobSettings`` holds it (seconds, enums; None: not given)."""
    setting = BY_NAME[name]
    return convert(setting, setting.default)


@dataclass(frozen=True, slots=True)
class JobSettings:
    """The job-scope settings of one job, converted (seconds, enums); a field's default is its
    setting's, converted."""

    overlap: Overlap = _default("overlap")  # noqa: RUF009 (an enum member, immutable)
    misfire_grace: float | None = _default("misfire-grace")  # None: until the following tick is due
    timeout: float | None = _default("timeout")
    kill_after: float = _default("kill-after")
    stop_timeout: float = _default("stop-timeout")
    run_now: bool = _default("run-now")
    jitter: float | None = _default("jitter")
    max_runs: int | None = _default("max-runs")
    log_output: bool = _default("log-output")
    kill_orphans: bool = _default("kill-orphans")
    on_backend_error: OnBackendError = _default("on-backend-error")  # noqa: RUF009 (an enum member, immutable)
    spread: Spread = _default("spread")  # noqa: RUF009 (an enum member, immutable)
    retries: int = _default("retries")
    retry_delay: float = _default("retry-delay")
    retry_backoff: float = _default("retry-backoff")
    retry_max_delay: float = _default("retry-max-delay")
    retry_on: frozenset[str] | None = _default("retry-on")  # exit codes as text, and "timeout"
    catch_up: float | None = _default("catch-up")
    catch_up_all: bool = _default("catch-up-all")
    catch_up_max: int = _default("catch-up-max")
    on_failure: str | None = _default("on-failure")
    on_success: str | None = _default("on-success")
    on_finish: str | None = _default("on-finish")
    hook_timeout: float = _default("hook-timeout")
    notify_on: NotifyOn = _default("notify-on")  # noqa: RUF009 (an enum member, immutable)
    lease_ttl: float = _default("lease-ttl")
    pool: str | None = _default("pool")
    pool_size: int | None = _default("pool-size")
    history_keep: int = _default("history-keep")
    history_max_age: float = _default("history-max-age")
    ping: str | None = _default("ping")
    lock: str | None = _default("lock")

    def __post_init__(self) -> None:  # the enums, also when given as their text
        object.__setattr__(self, "overlap", Overlap(self.overlap))
        object.__setattr__(self, "on_backend_error", OnBackendError(self.on_backend_error))
        object.__setattr__(self, "notify_on", NotifyOn(self.notify_on))
        object.__setattr__(self, "spread", Spread(self.spread))
        if (self.pool is None) != (self.pool_size is None):
            given, missing = (
                ("--pool", "--pool-size N") if self.pool else ("--pool-size", "--pool NAME")
            )
            raise InputError(f"{given} needs {missing} (a pool is a name and a size)")
        if self.pool is not None and (not self.pool.strip() or not self.pool.isprintable()):
            raise InputError(f"bad pool name {self.pool!r}: printable text, not empty")

    @classmethod
    def from_values(cls, *layers: Mapping[str, Any]) -> JobSettings:
        """Built-in defaults < each layer in turn (keys are setting names, values as parsed);
        a layer's None means "not given"."""
        merged: dict[str, Any] = {}
        for s in JOB_SETTINGS:
            if s.default is not None:
                merged[s.name] = s.default
        for layer in layers:
            merged.update({k: v for k, v in layer.items() if v is not None and k in BY_NAME})
        return cls(**{BY_NAME[k].field: convert(BY_NAME[k], v) for k, v in merged.items()})


assert {f.name for f in fields(JobSettings)} == {s.field for s in JOB_SETTINGS}


__all__ = ["JobSettings"]

"""Every event `pyjob run` logs, in one catalogue (DESIGN §4): its kind, level, fields and meaning.

The JSON log (`--log-format json`) is a public interface: each line is one ``Event`` whose kind is
declared here, with only the fields declared for it (every event also names its time, job, tick
and instance). The README's list of events is generated from this catalogue, and the tests check
that every event emitted anywhere is declared here with the fields it carries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

LEVELS = ("debug", "info", "warning", "error")  # lowest first: --log-level keeps a level and up

# Fields whose numbers are seconds (JSON gives them exact; a text line writes 2.3ms or 19h48m).
SECONDS = frozenset(
    {"in_seconds", "lateness", "duration", "stop_timeout", "after", "delay", "offset", "limit"}
    | {"late", "window", "retry_in", "down_for", "paused_for", "waited"}
    | {"error"}  # the clock's error bound; a run's `error` is text, and stays text
)


@dataclass(frozen=True)
class Kind:
    name: str
    level: str
    fields: tuple[str, ...]
    doc: str
    # A level that depends on the fields (a failed run's run-finished is an error), and when,
    # in words for the README's table.
    level_of: Callable[[Mapping[str, Any]], str] | None = None
    level_note: str = ""


def _finished_level(fields: Mapping[str, Any]) -> str:
    if fields.get("terminated") == "stop":
        return "info"
    return "info" if fields.get("exit_code") == 0 else "error"


LEASE_LOST = "run lease lost"  # a backend-error whose backend answered: not part of an outage


def _backend_error_level(fields: Mapping[str, Any]) -> str:
    # One per failed call (a claim, a record, a release): an outage of 1,000 jobs would be
    # thousands of lines a second. backend-down and backend-up tell the outage once; a lease
    # the backend says is lost is news of its own.
    return "warning" if fields.get("error") == LEASE_LOST else "debug"


_KINDS = (
    Kind("started", "info", ("schedule", "command", "backend", "overlap"), "a job was scheduled"),
    Kind(
        "jobs", "info", ("count", "names"), "the jobs of a jobs file were scheduled and registered"
    ),
    Kind("warning", "warning", ("problem", "action"), "something that will go wrong, at start"),
    Kind("next-tick", "debug", ("in_seconds",), "the job's next tick, and how far away it is"),
    Kind("claimed", "debug", ("fence",), "this instance won the claim of a tick"),
    Kind("lost", "debug", ("holder", "fence"), "another instance won the claim of a tick"),
    Kind(
        "fleet",
        "debug",
        ("instances",),
        "the live instances serving the job changed, as --spread ranks them",
    ),
    Kind(
        "backend-clock",
        "debug",
        ("backend", "offset"),
        "this host's clock's offset to the backend's changed (seconds, positive when behind it; "
        "--spread claims by the backend's clock)",
    ),
    Kind(
        "refused",
        "warning",
        ("reason", "offset"),
        "the backend would not vouch that the tick was not run already (clocks too far apart), "
        "or this host's clock is ahead of the backend's (reason `clock-ahead: …`; `offset`: by "
        "how much), or pyjob ran out of file descriptors claiming it (reason `pyjob: too many "
        "open files …`)",
    ),
    Kind(
        "skipped",
        "warning",
        ("reason", "running", "running_on"),
        "a tick came while the previous run was still going (--overlap skip), while the job "
        "is paused (reason `paused`), or found its --pool full until --misfire-grace (reason "
        "`pool full`)",
    ),
    Kind(
        "paused",
        "warning",
        ("by", "since"),
        "`pyjob pause` paused the job (by whom, since when): its ticks are skipped, reason "
        "`paused`, until `pyjob resume`; runs going on go on. Said once per instance",
    ),
    Kind(
        "resumed",
        "info",
        ("paused_for",),
        "`pyjob resume` resumed the job: its ticks run again (how long it was paused)",
    ),
    Kind(
        "triggered",
        "info",
        ("run_id", "by"),
        "this instance won the claim of a `pyjob trigger` run (once in the fleet), which runs "
        "now as --overlap says",
    ),
    Kind(
        "pool-full",
        "info",
        ("pool", "size"),
        "a run of the job found its --pool full (size runs going on in the fleet): it waits "
        "for a slot, up to --misfire-grace (then its tick is skipped, reason `pool full`)",
    ),
    Kind(
        "pool-waited",
        "info",
        ("pool", "waited"),
        "a run that found its pool full got a slot after waiting this long, and starts",
    ),
    Kind("queued", "info", ("running",), "a tick waits for the running one (--overlap queue)"),
    Kind(
        "missed",
        "warning",
        ("count", "first", "last", "reason"),
        "ticks that passed without running (late wake-up, --misfire-grace)",
    ),
    Kind(
        "caught-up",
        "info",
        ("late", "missed", "window"),
        "a tick the whole fleet missed runs now (--catch-up): how late, how many were missed",
    ),
    Kind(
        "retrying",
        "warning",
        ("run_id", "attempt", "delay", "exit_code", "result", "taken_over_from"),
        "a failed run runs again after a delay (--retries), or another instance takes over the "
        "attempts of one that went quiet",
    ),
    Kind(
        "retry-dropped",
        "warning",
        ("run_id", "attempt", "reason", "exit_code", "result"),
        "a retry that would start after the following tick is due, or that a stop cancelled "
        "(then with the run's final exit code and result)",
    ),
    Kind("jitter", "debug", ("delay",), "the run waits a random delay first (--jitter)"),
    Kind(
        "run-started",
        "info",
        ("run_id", "pid", "lateness", "fence", "attempt", "error"),
        "the command was started (error: it could not be)",
    ),
    Kind(
        "output",
        "info",
        ("stream", "line", "run_id", "hook"),
        "a line of the command (--log-output), or of a hook (then named); stream is stdout, "
        "stderr, or pyjob for pyjob's own word on the output (lines dropped)",
    ),
    Kind(
        "run-finished",
        "info",
        (
            "run_id",
            "exit_code",
            "duration",
            "lateness",
            "terminated",
            "attempt",
            "retry_in",
            "error",
        ),
        "the command ended; an error when it failed",
        _finished_level,
        "error when it failed",
    ),
    Kind(
        "hook-finished",
        "debug",
        ("hook", "run_id", "exit_code", "duration"),
        "a hook (--on-failure, --on-success, --on-finish) ended well",
    ),
    Kind(
        "hook-failed",
        "warning",
        ("hook", "run_id", "exit_code", "duration", "error"),
        "a hook failed or ran past --hook-timeout (the run's result is unchanged)",
    ),
    Kind("timeout", "error", ("run_id", "after", "action"), "the command ran past --timeout"),
    Kind(
        "backend-error",
        "debug",
        ("error", "action"),
        "a backend call failed or took too long, and what pyjob did instead (a warning when "
        "the backend says a run's lease is lost; the outage itself is backend-down)",
        _backend_error_level,
        "warning when a run's lease is lost",
    ),
    Kind(
        "backend-down",
        "warning",
        ("backend", "error"),
        "a backend call failed or took too long after the backend had answered: the start of an "
        "outage (its failed calls are backend-error events, at debug)",
    ),
    Kind(
        "backend-up",
        "info",
        ("backend", "failed_calls", "unclaimed_ticks", "down_for"),
        "the backend answers again after backend-down: how many calls failed, how many ticks "
        "had no claim (skipped, or run unclaimed with --on-backend-error run), and for how long",
    ),
    Kind(
        "backend-recovered",
        "info",
        ("released", "recorded"),
        "the backend answers again; leases left behind by the outage were released (released), "
        "run records it held back were written (recorded: their jobs)",
    ),
    Kind("cleanup", "debug", ("removed",), "old claims were removed"),
    Kind(
        "clock",
        "info",
        ("offset", "error", "server", "stratum", "limit", "impact", "action"),
        "the clock was measured against NTP",
    ),
    Kind(
        "clock-warning",
        "warning",
        ("offset", "error", "server", "stratum", "limit", "impact", "problem", "action"),
        "the clock could not be measured, or is off by more than the limit",
    ),
    Kind("reloaded", "info", ("added", "changed", "removed", "kept"), "SIGHUP re-read the file"),
    Kind("reload-failed", "error", ("problems", "action"), "the re-read file has problems"),
    Kind(
        "stopping",
        "info",
        ("running", "forced", "stop_timeout", "drain"),
        "a stop was asked for (signal, reload); running commands get SIGTERM",
    ),
    Kind(
        "ping-failed",
        "warning",
        ("run_id", "ping", "host", "attempts", "error"),
        "a --ping request failed after its retries, or was not sent; the run is not affected",
    ),
    Kind(
        "metrics",
        "info",
        ("listen", "textfile"),
        "Prometheus metrics are served (--metrics-listen) or written (--metrics-textfile)",
    ),
    Kind(
        "output-closed",
        "warning",
        ("stream", "error", "action"),
        "pyjob's own stdout or stderr closed (its reader went away) or failed: its lines are "
        "dropped, the schedule goes on",
    ),
    Kind("stopped", "info", ("runs", "failures"), "the job or the process stopped"),
    Kind("exhausted", "info", ("runs", "failures", "jobs"), "the schedule has no more ticks"),
)

CATALOGUE: dict[str, Kind] = {k.name: k for k in _KINDS}


@dataclass(frozen=True)
class Event:
    kind: str
    job: str
    instance: str
    tick: datetime | None
    at: datetime
    fields: dict[str, Any]

    @property
    def level(self) -> str:
        k = CATALOGUE[self.kind]
        return k.level_of(self.fields) if k.level_of else k.level


def make(
    kind: str, job: str, instance: str, tick: datetime | None, at: datetime, **fields: Any
) -> Event:
    """An Event, checked against the catalogue (an undeclared kind or field is a bug: it raises
    ValueError, which the tests catch)."""
    declared = CATALOGUE.get(kind)
    if declared is None:
        raise ValueError(f"event '{kind}' is not in the catalogue (core/events.py)")
    extra = [f for f in fields if f not in declared.fields]
    if extra:
        raise ValueError(f"event '{kind}' has undeclared fields {extra} (core/events.py)")
    return Event(kind, job, instance, tick, at, fields)


Emit = Callable[[Event], None]
# Whether some consumer takes events of a kind: the scheduler does not make those none takes.
Wants = Callable[[str], bool]


def may_reach(kind: str, min_level: str) -> bool:
    """Whether an event of ``kind`` can be at ``min_level`` or above (a kind whose level
    depends on its fields counts as able to, and so does an undeclared one: ``make`` refuses
    it)."""
    k = CATALOGUE.get(kind)
    return k is None or k.level_of is not None or LEVELS.index(k.level) >= LEVELS.index(min_level)


def wants_all(kind: str) -> bool:
    return True


__all__ = [
    "CATALOGUE",
    "LEVELS",
    "SECONDS",
    "Emit",
    "Event",
    "Kind",
    "Wants",
    "make",
    "may_reach",
    "wants_all",
]

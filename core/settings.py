"""Every setting of `pyjob run`, declared once: name, kind, default, choices, help.

This table is the only place a run setting is written down. From it come the Click options of
`pyjob run` (cli/options.py), the keys a TOML jobs file accepts and their validation
(core/jobsfile.py), and ``JobSettings``, the converted configuration the scheduler reads (durations
become seconds here, once). Settings of scope ``job`` may differ per job of a jobs file; those of
scope ``process`` belong to the one `pyjob run` process.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .durations import format_seconds, parse_duration, to_seconds
from .errors import InputError


class Overlap(StrEnum):
    SKIP = "skip"
    QUEUE = "queue"
    ALLOW = "allow"
    REPLACE = "replace"


class OnBackendError(StrEnum):
    SKIP = "skip"
    RUN = "run"


class Spread(StrEnum):
    EVEN = "even"
    STICKY = "sticky"
    OFF = "off"


class ClockPolicy(StrEnum):
    REFUSE = "refuse"
    WARN = "warn"


class ClockMode(StrEnum):
    SYSTEM = "system"
    NTP = "ntp"


class NotifyOn(StrEnum):
    ALWAYS = "always"
    FAILURE = "failure"
    CHANGE = "change"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Setting:
    """One setting. ``kind``: duration (not zero), duration0 (zero allowed), count (an integer of
    at least 1), flag, choice (``choices`` is the enum), text, lock (a backend URL), server (an
    NTP server, repeatable), url (an http:// or https:// URL). ``default`` is given as it is
    written on the command line."""

    name: str
    kind: str
    help: str
    default: Any = None
    choices: type[StrEnum] | None = None
    metavar: str | None = None
    scope: str = "job"
    envvar: str | None = None

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")


_DURATION = "DURATION"
HOOK_KILL_AFTER = 5.0  # seconds from a hook's SIGTERM (--hook-timeout) to its SIGKILL
# the clock check's: NTP servers, and the offset limit when no interval gives one (seconds)
DEFAULT_SERVERS = ("pool.ntp.org",)
DEFAULT_LIMIT = 1.0
MIN_LIMIT = 0.1  # the least limit an interval gives (1/60 of it)

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "overlap",
        "choice",
        "A tick that comes while the previous run goes on: skip it (across all instances "
        "sharing the backend), queue it (at most one waits), allow it, or replace the running "
        "one (this instance).",
        default="skip",
        choices=Overlap,
    ),
    Setting(
        "misfire-grace",
        "duration0",
        "Run a late tick only if at most this late (default: until the following tick is due). "
        "Older passed ticks are always logged as missed, never run.",
        metavar=_DURATION,
    ),
    Setting(
        "timeout",
        "duration",
        "SIGTERM the command's process group after this long.",
        metavar=_DURATION,
    ),
    Setting(
        "kill-after",
        "duration",
        "SIGKILL this long after the timeout's SIGTERM.",
        default="10s",
        metavar=_DURATION,
    ),
    Setting(
        "stop-timeout",
        "duration",
        "On SIGTERM/SIGINT, wait this long for running commands before SIGKILL.",
        default="10s",
        metavar=_DURATION,
    ),
    Setting("run-now", "flag", "Also run once at start (this instance only, no claim).", False),
    Setting(
        "jitter", "duration", "Delay each run by a random amount up to this.", metavar=_DURATION
    ),
    Setting(
        "max-runs",
        "count",
        "End after the N-th tick was run (by this instance or another).",
        metavar="N",
    ),
    Setting(
        "log-output",
        "flag",
        "Capture the command's stdout/stderr and log each line with job and tick. The command "
        "never waits for the log: a line is cut at 64 KiB, and when 10,000 lines wait to be "
        "logged the oldest are dropped and counted in one line (stream pyjob).",
        False,
    ),
    Setting(
        "kill-orphans",
        "flag",
        "When the command's own process exits, SIGKILL what it left running in its process "
        "group (`sleep 300 &`, a daemon it started). Off by default: like cron, pyjob leaves "
        "them running, after the run and after pyjob stops.",
        False,
    ),
    Setting(
        "on-backend-error",
        "choice",
        "While running, a tick whose claim fails: skip it (fail closed) or run it anyway "
        "(fail open).",
        default="skip",
        choices=OnBackendError,
    ),
    Setting(
        "spread",
        "choice",
        "How the instances sharing a lock share the job's ticks: even (each tick goes to one "
        "live instance by a hash of the job and tick, whatever the hosts' clocks), sticky (the "
        "job stays on one live instance, by a hash of the job, and moves when it leaves), or "
        "off (the first claim wins).",
        default="even",
        choices=Spread,
    ),
    Setting(
        "retries",
        "count0",
        "Run a failed run again up to N times (the same run: run id, tick, fence; PYJOB_ATTEMPT "
        "counts 1, 2, 3...); hooks and pings see its final result once.",
        default=0,
        metavar="N",
    ),
    Setting(
        "retry-delay",
        "duration",
        "Wait this long before the first retry.",
        default="10s",
        metavar=_DURATION,
    ),
    Setting(
        "retry-backoff",
        "factor",
        "Multiply the delay by this after each retry (1: the same delay every time).",
        default="2",
        metavar="F",
    ),
    Setting(
        "retry-max-delay",
        "duration",
        "The longest delay between two attempts.",
        default="10m",
        metavar=_DURATION,
    ),
    Setting(
        "retry-on",
        "codes",
        "Retry only these exit codes, comma-separated, and 'timeout' for runs past --timeout "
        "(default: any non-zero exit, and timeouts).",
        metavar="CODES",
    ),
    Setting(
        "catch-up",
        "duration",
        "When this instance starts, or the backend answers again after an outage: if a tick "
        "within this window of now was missed by the whole fleet (a later tick than the last "
        "one anyone handled, by the run records), run the most recent one once (off by "
        "default; systemd's Persistent=).",
        metavar=_DURATION,
    ),
    Setting(
        "catch-up-all",
        "flag",
        "With --catch-up: run every missed tick of the window, oldest first, one after "
        "another (at most --catch-up-max), not only the most recent.",
        False,
    ),
    Setting(
        "catch-up-max",
        "count",
        "With --catch-up-all: at most this many missed ticks (the most recent ones) run.",
        default=10,
        metavar="N",
    ),
    Setting(
        "on-failure",
        "text",
        "Run this shell line after a run fails (exit code not 0, timeout, not startable), once "
        "per run across the fleet, with PYJOB_EXIT_CODE, PYJOB_RESULT, PYJOB_DURATION and "
        "PYJOB_OUTPUT_TAIL added to the run's environment.",
        metavar="CMD",
    ),
    Setting(
        "on-success",
        "text",
        "Run this shell line after a run succeeds (as --on-failure).",
        metavar="CMD",
    ),
    Setting(
        "on-finish",
        "text",
        "Run this shell line after every run, whatever its result (as --on-failure).",
        metavar="CMD",
    ),
    Setting(
        "hook-timeout",
        "duration",
        f"Stop a hook (SIGTERM, then SIGKILL {format_seconds(HOOK_KILL_AFTER)} later) after this "
        "long; a hook never delays a "
        "tick and its failure is logged (hook-failed), never a failed run.",
        default="30s",
        metavar=_DURATION,
    ),
    Setting(
        "notify-on",
        "choice",
        "Which runs fire the hooks: always, failures only, or only a change of outcome from "
        "the job's previous run across the fleet (a failure after successes, a recovery).",
        default="always",
        choices=NotifyOn,
    ),
    Setting(
        "lease-ttl",
        "duration",
        "How long a run lease (--overlap skip) outlives an instance that stopped renewing it "
        "(killed, host lost); also how soon its running record shows as lost and the fleet "
        "retries it or records it lost (within about 1.5 times this).",
        default="15s",
        metavar=_DURATION,
    ),
    Setting(
        "pool",
        "text",
        "Run in the pool NAME: at most --pool-size runs of the jobs in it at once across every "
        "instance sharing the backend. A tick that finds the pool full waits for a slot up to "
        "--misfire-grace (default: until the following tick is due), then is skipped.",
        metavar="NAME",
    ),
    Setting(
        "pool-size",
        "count",
        "How many runs of --pool NAME may run at once, fleet-wide (give every job of the pool "
        "the same size).",
        metavar="N",
    ),
    Setting(
        "history-keep",
        "count",
        "Keep the records of this many runs per job in the backend (pyjob history).",
        default=100,
        metavar="N",
    ),
    Setting(
        "history-max-age",
        "duration",
        "Remove run records older than this.",
        default="30d",
        metavar=_DURATION,
    ),
    Setting(
        "ping",
        "url",
        "Ping this URL when each run starts and ends, healthchecks.io style: URL/start, then "
        "URL/<exit code> (URL/0 is a success), with ?rid= the same UUID on every host. Sent in "
        "the background, never delaying a tick.",
        metavar="URL",
        envvar="PYJOB_PING_URL",
    ),
    Setting(
        "lock",
        "lock",
        "Lock backend: file:PATH (one host; default: $XDG_RUNTIME_DIR/pyjob or "
        "~/.local/state/pyjob), nfs:PATH (a directory shared by hosts), redis://HOST[:PORT]/DB "
        "(rediss:// for TLS), postgresql://USER@HOST/DB, etcd://HOST:PORT[,HOST:PORT...][/PREFIX], "
        "or none.",
        metavar="URL",
        envvar="PYJOB_LOCK",
    ),
    Setting(
        "instance-id",
        "text",
        "This instance's name in logs and claims (default: HOST:PID).",
        metavar="ID",
        scope="process",
    ),
    Setting(
        "log-format",
        "choice",
        "Log lines for people, or one JSON object per event.",
        default="text",
        choices=LogFormat,
        scope="process",
    ),
    Setting(
        "log-level",
        "choice",
        "Log the events of this level and above (pyjob.core.events gives each event's level): "
        "debug adds next-tick, claimed and lost; warning keeps only problems.",
        default="info",
        choices=LogLevel,
        scope="process",
        envvar="PYJOB_LOG_LEVEL",
    ),
    Setting(
        "ntp-server",
        "server",
        "NTP server for the clock check; repeat for several (default: $PYJOB_NTP_SERVERS, "
        f"else {', '.join(DEFAULT_SERVERS)}).",
        metavar="HOST[:PORT]",
        scope="process",
        envvar="PYJOB_NTP_SERVERS",
    ),
    Setting(
        "max-offset",
        "duration",
        "Refuse to start (exit 4) when the clock is further than this from NTP time "
        f"(default: 1/60 of the schedule's interval, at least {format_seconds(MIN_LIMIT)}).",
        metavar=_DURATION,
        scope="process",
    ),
    Setting(
        "clock-policy",
        "choice",
        "An offset over --max-offset at start: refuse to start, or only warn.",
        default="refuse",
        choices=ClockPolicy,
        scope="process",
    ),
    Setting(
        "require-clock",
        "flag",
        "Exit 3 when no NTP server gives a usable reply at start (default: warn, go on).",
        False,
        scope="process",
    ),
    Setting(
        "clock",
        "choice",
        "Fire ticks by this host's clock, or by NTP-corrected time (local time plus the "
        "measured offset, updated at each re-check): instances with skewed clocks then fire "
        "together.",
        default="system",
        choices=ClockMode,
        scope="process",
    ),
    Setting(
        "clock-check-every",
        "duration",
        "Re-measure the offset this often, beside the run loop, and log it.",
        default="10m",
        metavar=_DURATION,
        scope="process",
    ),
    Setting(
        "clock-budget",
        "duration",
        "The most one clock check may take, however slow or absent the servers.",
        default="3s",
        metavar=_DURATION,
        scope="process",
    ),
    Setting(
        "no-clock-check",
        "flag",
        "Do not measure the clock (air-gapped hosts); the log says so.",
        False,
        scope="process",
        envvar="PYJOB_NO_CLOCK_CHECK",
    ),
    Setting(
        "metrics-listen",
        "text",
        "Serve Prometheus metrics on http://HOST:PORT/metrics, and /healthz for a liveness "
        "probe (needs pip install 'pyjob[metrics]').",
        metavar="HOST:PORT",
        scope="process",
    ),
    Setting(
        "metrics-textfile",
        "text",
        "Write the same metrics to this file (atomically, every 10s and at exit) for "
        "node_exporter's textfile collector.",
        metavar="PATH",
        scope="process",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
JOB_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.scope == "job")


def convert(setting: Setting, value: Any) -> Any:
    """A setting's value as the scheduler uses it, from the parsed form (durations as integer
    microseconds, or as text) : seconds for durations, the enum for choices."""
    if value is None:
        return None
    kind = setting.kind
    if kind in ("duration", "duration0"):
        if isinstance(value, str):
            value = parse_duration(value, allow_zero=kind == "duration0")
        return to_seconds(int(value))
    if kind == "choice":
        assert setting.choices is not None
        return setting.choices(value)
    if kind == "flag":
        return bool(value)
    if kind == "factor":
        return parse_factor(str(value))
    if kind == "codes":
        return parse_codes(str(value))
    return value


def parse_factor(text: str) -> float:
    """A number of at least 1 (--retry-backoff)."""
    t = text.strip()
    try:
        if not t.isascii():
            raise ValueError
        value = float(t)
    except ValueError:
        raise InputError(f"bad factor '{t}': a number like 2 or 1.5", source=text, pos=0) from None
    if not 1.0 <= value <= 1000.0:
        raise InputError(f"bad factor '{t}': from 1 to 1000", source=text, pos=0)
    return value


def parse_codes(text: str) -> frozenset[str]:
    """Exit codes 1-255, comma-separated, and the word ``timeout`` (--retry-on)."""
    out = set()
    for part in text.split(","):
        p = part.strip().lower()
        if p == "timeout" or (p.isascii() and p.isdigit() and 1 <= int(p) <= 255):
            out.add(str(int(p)) if p.isdigit() else p)
            continue
        raise InputError(
            f"bad exit code '{part.strip()}' in '{text}': 1-255 or timeout, comma-separated",
            source=text,
            pos=max(0, text.find(part.strip())),
            length=max(1, len(part.strip())),
        )
    if not out:
        raise InputError("no exit codes: give some, like 1,75 or timeout", source=text, pos=0)
    return frozenset(out)


def problem(setting: Setting, value: Any) -> str | None:
    """Why ``value`` (from a TOML file) is not a valid value of ``setting``, or None. The
    command line's option types ask the same checks (cli/options.py), so `validate --file`
    refuses whatever `run` would."""
    kind = setting.kind
    if kind == "flag":
        return None if isinstance(value, bool) else "must be true or false"
    if kind in ("count", "count0"):
        low = 1 if kind == "count" else 0
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10**6:
            return f"must be a whole number from {low} to 1000000"
        return None
    if kind == "factor" and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return 'must be a string, like "5m"' if kind.startswith("duration") else "must be a string"
    if "\0" in value:  # a hook's line or a URL: no exec, no socket takes one
        return f"has a NUL character (\\0) at position {value.index(chr(0))}"
    return _text_problem(setting, value)


def _text_problem(setting: Setting, value: str) -> str | None:
    """``problem`` for a setting given as text."""
    kind = setting.kind
    if kind == "choice":
        assert setting.choices is not None
        names = [c.value for c in setting.choices]
        return None if value in names else f"must be one of {', '.join(names)}"
    if kind in ("duration", "duration0"):
        try:
            parse_duration(value, allow_zero=kind == "duration0")
        except InputError as e:
            return f"is not a duration: {e.message}"
    if kind in ("factor", "codes"):
        try:
            (parse_factor if kind == "factor" else parse_codes)(value)
        except InputError as e:
            return f"is not valid: {e.message}"
    if kind == "url":
        from .pings import url_problem

        return url_problem(value)
    if kind == "lock":
        from .backends.urls import check_lock_url

        try:
            check_lock_url(value)
        except InputError as e:
            return f"is not a lock URL: {e.message}"
    return None


__all__ = [
    "BY_NAME",
    "JOB_SETTINGS",
    "SETTINGS",
    "ClockMode",
    "ClockPolicy",
    "LogFormat",
    "LogLevel",
    "NotifyOn",
    "OnBackendError",
    "Overlap",
    "Setting",
    "Spread",
    "convert",
    "problem",
]

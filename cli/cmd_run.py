"""`pyjob run`: run a command on its schedule, with locks."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from pyjob.core import OVERLAP_POLICIES

from .env import get_env
from .options import (
    DURATION,
    DURATION_OR_ZERO,
    LOCK_URL,
    NTP_SERVER,
    build_spec,
    complete_schedule,
    jobs_file_option,
    schedule_flags_given,
    schedule_options,
    server_list,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyjob.core.clock import Clock, OffsetClock
    from pyjob.core.clockcheck import ClockWatch


def _seconds(us: int | None) -> float | None:
    return None if us is None else us / 1e6


@click.command("run", context_settings={"allow_interspersed_args": False})
@schedule_options
@click.option(
    "-s",
    "--schedule",
    "schedule_text",
    metavar="EXPR",
    shell_complete=complete_schedule,
    help="The schedule as text: a cron expression or a phrase like 'every 5m align'.",
)
@click.option(
    "--name",
    metavar="JOB",
    help="Job id (default: a hash of the normalized schedule "
    "and the command, so the same one-liner on several hosts is one job).",
)
@click.option(
    "--instance-id",
    metavar="ID",
    help="This instance's name in logs and claims (default: HOST:PID).",
)
@click.option(
    "--lock",
    type=LOCK_URL,
    metavar="URL",
    envvar="PYJOB_LOCK",
    help="Lock backend: file:PATH (one host; default: $XDG_RUNTIME_DIR/pyjob or "
    "~/.local/state/pyjob), nfs:PATH (a directory shared by hosts), redis://HOST[:PORT]/DB "
    "(rediss:// for TLS), postgresql://USER@HOST/DB, or none.",
)
@click.option(
    "--shell",
    is_flag=True,
    default=False,
    help="Run the command through /bin/sh -c (default: executed directly).",
)
@click.option(
    "--overlap",
    type=click.Choice(OVERLAP_POLICIES),
    default="skip",
    show_default=True,
    help="A tick that comes while the previous run goes on: skip it (across all "
    "instances sharing the backend), queue it (at most one waits), allow it, or "
    "replace the running one (this instance).",
)
@click.option(
    "--misfire-grace",
    type=DURATION_OR_ZERO,
    metavar="DURATION",
    help="Run a late tick only if at most this late (default: until the following "
    "tick is due). Older passed ticks are always logged as missed, never run.",
)
@click.option(
    "--timeout",
    type=DURATION,
    metavar="DURATION",
    help="SIGTERM the command's process group after this long.",
)
@click.option(
    "--kill-after",
    type=DURATION,
    default="10s",
    show_default=True,
    metavar="DURATION",
    help="SIGKILL this long after the timeout's SIGTERM.",
)
@click.option(
    "--stop-timeout",
    type=DURATION,
    default="10s",
    show_default=True,
    metavar="DURATION",
    help="On SIGTERM/SIGINT, wait this long for running commands before SIGKILL.",
)
@click.option(
    "--run-now",
    is_flag=True,
    default=False,
    help="Also run once at start (this instance only, no claim).",
)
@click.option(
    "--jitter",
    type=DURATION,
    metavar="DURATION",
    help="Delay each run by a random amount up to this.",
)
@click.option(
    "--max-runs",
    type=click.IntRange(1),
    metavar="N",
    help="End after the N-th tick was run (by this instance or another).",
)
@click.option(
    "--log-output",
    is_flag=True,
    default=False,
    help="Capture the command's stdout/stderr and log each line with job and tick.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines for people, or one JSON object per event.",
)
@click.option(
    "--on-backend-error",
    type=click.Choice(["skip", "run"]),
    default="skip",
    show_default=True,
    help="While running, a tick whose claim fails: skip it (fail "
    "closed) or run it anyway (fail open).",
)
@click.option(
    "--ntp-server",
    "ntp_servers",
    multiple=True,
    type=NTP_SERVER,
    metavar="HOST[:PORT]",
    envvar="PYJOB_NTP_SERVERS",
    help="NTP server for the clock check; repeat for several "
    "(default: $PYJOB_NTP_SERVERS, else pool.ntp.org).",
)
@click.option(
    "--max-offset",
    type=DURATION,
    metavar="DURATION",
    help="Refuse to start (exit 4) when the clock is further than this from NTP time "
    "(default: 1/60 of the schedule's interval, at least 100ms).",
)
@click.option(
    "--clock-policy",
    type=click.Choice(["refuse", "warn"]),
    default="refuse",
    show_default=True,
    help="An offset over --max-offset at start: refuse to start, or only warn.",
)
@click.option(
    "--require-clock",
    is_flag=True,
    default=False,
    help="Exit 3 when no NTP server gives a usable reply at start (default: warn, go on).",
)
@click.option(
    "--clock",
    "clock_mode",
    type=click.Choice(["system", "ntp"]),
    default="system",
    show_default=True,
    help="Fire ticks by this host's clock, or by NTP-corrected time (local time plus the "
    "measured offset, updated at each re-check): instances with skewed clocks then fire "
    "together.",
)
@click.option(
    "--clock-check-every",
    type=DURATION,
    default="10m",
    show_default=True,
    metavar="DURATION",
    help="Re-measure the offset this often, beside the run loop, and log it.",
)
@click.option(
    "--clock-budget",
    type=DURATION,
    default="3s",
    show_default=True,
    metavar="DURATION",
    help="The most one clock check may take, however slow or absent the servers.",
)
@click.option(
    "--no-clock-check",
    is_flag=True,
    default=False,
    envvar="PYJOB_NO_CLOCK_CHECK",
    help="Do not measure the clock (air-gapped hosts); the log says so.",
)
@jobs_file_option(
    "Run every job of a crontab or a TOML jobs file (*.toml) in this one process, instead "
    "of one command; SIGHUP re-reads it. The run options given here are defaults for its jobs."
)
@click.argument("command", nargs=-1, required=False, metavar="-- CMD [ARGS]...")
def run_cmd(
    command: tuple[str, ...],
    schedule_text: str | None,
    name: str | None,
    instance_id: str | None,
    lock: str | None,
    shell: bool,
    overlap: str,
    misfire_grace: int | None,
    timeout: int | None,
    kill_after: int,
    stop_timeout: int,
    run_now: bool,
    jitter: int | None,
    max_runs: int | None,
    log_output: bool,
    log_format: str,
    on_backend_error: str,
    ntp_servers: tuple[str, ...],
    max_offset: int | None,
    clock_policy: str,
    require_clock: bool,
    clock_mode: str,
    clock_check_every: int,
    clock_budget: int,
    no_clock_check: bool,
    jobs_file: str | None,
    **kw: Any,
) -> None:
    """Run CMD on a schedule, once per tick across every instance that shares the lock.

    Ticks are claimed in the lock backend before they run; an instance that loses the claim logs
    who won and skips. Logs go to stderr; the command's output passes through (or is logged with
    --log-output). It runs until stopped (SIGTERM/SIGINT: stop scheduling, forward SIGTERM,
    wait --stop-timeout, exit 0; a second Ctrl-C kills at once, exit 130), or until the schedule
    ends (--once, --stop-at, --max-runs): then exit 0 if every run succeeded, else 1.

    With --file PATH, runs every job of a crontab or TOML jobs file instead, each on its own
    ticks; SIGHUP re-reads the file (unchanged jobs keep running, removed ones finish their run).

    \b
    Examples:
      pyjob run --every 5m --align -- ./backup.sh
      pyjob run --file crontab --lock redis://redis:6379/0
      pyjob run --cron "0 3 * * *" --tz Europe/Berlin --timeout 1h -- ./nightly.sh
      pyjob run -s "every 1m..5m" --shell -- 'curl -fsS https://example.com/ping'
    """
    # Imported here, not at the top: completion and --help load this module on every TAB.
    import socket

    from pyjob.core.backends import open_backend
    from pyjob.core.clock import OffsetClock
    from pyjob.core.clockcheck import schedule_interval
    from pyjob.core.executor import Executor, JobConfig
    from pyjob.core.process import Command, RealRunner, check_command
    from pyjob.core.schedule import Schedule, derive_job_id

    from .logs import EventLog

    env = get_env()
    if no_clock_check and (clock_mode == "ntp" or require_clock):
        flag = "--clock ntp" if clock_mode == "ntp" else "--require-clock"
        raise click.UsageError(f"{flag} needs the clock check: drop --no-clock-check")
    clock_options = ClockOptions(
        servers=server_list(ntp_servers) or None,
        max_offset=_seconds(max_offset),
        policy=clock_policy,
        require=require_clock,
        mode=clock_mode,
        every=clock_check_every / 1e6,
        budget=clock_budget / 1e6,
        skip=no_clock_check,
    )
    if jobs_file is not None:
        from .run_file import run_file

        given = schedule_flags_given(kw, also=("at", "align", "offset")) + (
            ["-s"] if schedule_text else []
        )
        for flag, value in (("CMD", command), ("--name", name), ("--shell", shell)):
            if value:
                given.append(flag)
        if given:
            raise click.UsageError(f"--file takes its jobs from the file: drop {', '.join(given)}")
        defaults = {
            "overlap": overlap,
            "misfire-grace": misfire_grace,
            "timeout": timeout,
            "kill-after": kill_after,
            "stop-timeout": stop_timeout,
            "run-now": run_now,
            "jitter": jitter,
            "max-runs": max_runs,
            "log-output": log_output,
            "on-backend-error": on_backend_error,
        }
        code = run_file(
            jobs_file,
            env,
            instance_id=instance_id,
            lock=lock,
            log_format=log_format,
            defaults={k: v for k, v in defaults.items() if v is not None},
            clock_options=clock_options,
        )
        raise click.exceptions.Exit(code)
    if not command:
        raise click.UsageError(
            "missing the command: pyjob run SCHEDULE -- CMD [ARGS]... (or --file PATH)"
        )
    spec, now = build_spec(schedule_text, kw)
    cmd = Command(tuple(command), shell=shell)
    job = name or derive_job_id(spec, (["--shell"] if shell else []) + list(command))
    instance = instance_id or f"{socket.gethostname()}:{os.getpid()}"
    schedule = Schedule(spec, job_id=job, anchor=now)
    backend = open_backend(lock, env.environ, env.clock)
    backend.check()
    log = EventLog(log_format, env.err_is_terminal(), env.color)
    config = JobConfig(
        job_id=job,
        schedule=schedule,
        command=cmd,
        instance=instance,
        overlap=overlap,
        misfire_grace=_seconds(misfire_grace),
        timeout=_seconds(timeout),
        kill_after=kill_after / 1e6,
        stop_timeout=stop_timeout / 1e6,
        run_now=run_now,
        jitter=(jitter or 0) / 1e6,
        max_runs=max_runs,
        log_output=log_output,
        on_backend_error=on_backend_error,
        env=dict(env.environ),
    )
    runner = RealRunner()
    corrected = OffsetClock(env.clock) if clock_mode == "ntp" else None
    clock: Clock = corrected or env.clock
    executor = Executor(config, backend, clock, runner, log)
    problem = check_command(cmd, env.environ)
    if problem:
        executor.emit("warning", None, problem=problem, action="each run will fail (exit 127/126)")
    unshared = unshared_warning(spec.rule)
    if unshared and backend.url != "none":
        executor.emit("warning", None, **unshared)
    watch = clock_watch(
        clock_options,
        env.clock,
        corrected,
        schedule_interval(schedule, now),
        lambda kind, **fields: executor.emit(kind, None, **fields),
    )
    try:
        if watch is not None:
            watch.check_start()  # raises ClockError (exit 3) or ClockOffsetError (exit 4)
            watch.start()
        install_signals(lambda force: executor.request_stop(force=force), executor.waker.fd)
        code = executor.run(clock.now())
    finally:
        signal.set_wakeup_fd(-1)
        if watch is not None:
            watch.stop()
        runner.close()
        backend.close()
    raise click.exceptions.Exit(code)


@dataclass(frozen=True)
class ClockOptions:
    servers: list[str] | None
    max_offset: float | None
    policy: str
    require: bool
    mode: str  # system or ntp
    every: float
    budget: float
    skip: bool


def clock_watch(
    options: ClockOptions,
    base: Clock,
    corrected: OffsetClock | None,
    interval: float | None,
    emit: Callable[..., None],
) -> ClockWatch | None:
    """The ClockWatch `run` uses, or None (after logging so) with --no-clock-check."""
    from pyjob.core.clockcheck import DEFAULT_SERVERS, ClockWatch, offset_limit

    if options.skip:
        emit("clock", action="not measured (--no-clock-check)")
        return None
    limit, reason = offset_limit(options.max_offset, interval)
    return ClockWatch(
        options.servers or list(DEFAULT_SERVERS),
        base,
        emit,
        limit=limit,
        limit_reason=reason,
        policy=options.policy,
        require=options.require,
        every=options.every,
        budget=options.budget,
        correct=corrected,
    )


def unshared_warning(rule: object) -> dict[str, str] | None:
    """The fields of the warning for a schedule whose ticks differ between instances."""
    why = _unshared_ticks(rule)
    if why is None:
        return None
    return {
        "problem": f"'{rule}' {why}: other instances get other ticks and do not coordinate "
        "with this one",
        "action": "add --align (or use cron) when several instances run this job",
    }


def _unshared_ticks(rule: object) -> str | None:
    """Why the ticks of ``rule`` differ between instances, if they do."""
    from pyjob.core.schedule import EveryRule, RandomEveryRule

    if isinstance(rule, EveryRule) and not rule.align:
        return "counts from this instance's start"
    if isinstance(rule, RandomEveryRule):
        return "draws each wait at random"
    return None


def install_signals(
    stop: Callable[[bool], None], waker_fd: int, reload: Callable[[], None] | None = None
) -> None:
    """SIGTERM/SIGINT call ``stop(force)``: gracefully, and forced at a second SIGINT; SIGHUP
    calls ``reload`` when given. Handlers only set flags: the wake-up byte is written by the
    interpreter itself (set_wakeup_fd)."""
    interrupts = 0

    def on_int(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        stop(interrupts > 1)

    def on_term(signum: int, frame: object) -> None:
        stop(False)

    signal.set_wakeup_fd(waker_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_term)
    if reload is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: reload())

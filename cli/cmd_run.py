"""`pyjob run`: run a command on its schedule, with locks."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import click
from pyjob.core import OVERLAP_POLICIES

from .env import get_env
from .options import (
    DURATION,
    DURATION_OR_ZERO,
    LOCK_URL,
    build_spec,
    complete_schedule,
    schedule_options,
)

if TYPE_CHECKING:
    from pyjob.core.executor import Executor


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
@click.argument("command", nargs=-1, required=True, metavar="-- CMD [ARGS]...")
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
    **kw: Any,
) -> None:
    """Run CMD on a schedule, once per tick across every instance that shares the lock.

    Ticks are claimed in the lock backend before they run; an instance that loses the claim logs
    who won and skips. Logs go to stderr; the command's output passes through (or is logged with
    --log-output). It runs until stopped (SIGTERM/SIGINT: stop scheduling, forward SIGTERM,
    wait --stop-timeout, exit 0; a second Ctrl-C kills at once, exit 130), or until the schedule
    ends (--once, --stop-at, --max-runs): then exit 0 if every run succeeded, else 1.

    \b
    Examples:
      pyjob run --every 5m --align -- ./backup.sh
      pyjob run --cron "0 3 * * *" --tz Europe/Berlin --timeout 1h -- ./nightly.sh
      pyjob run -s "every 1m..5m" --shell -- 'curl -fsS https://example.com/ping'
    """
    # Imported here, not at the top: completion and --help load this module on every TAB.
    import socket

    from pyjob.core.backends import open_backend
    from pyjob.core.executor import Executor, JobConfig
    from pyjob.core.process import Command, RealRunner, check_command
    from pyjob.core.schedule import Schedule, derive_job_id

    from .logs import EventLog

    env = get_env()
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
    executor = Executor(config, backend, env.clock, runner, log)
    problem = check_command(cmd, env.environ)
    if problem:
        executor.emit("warning", None, problem=problem, action="each run will fail (exit 127/126)")
    _install_signals(executor)
    try:
        code = executor.run(now)
    finally:
        signal.set_wakeup_fd(-1)
        runner.close()
        backend.close()
    raise click.exceptions.Exit(code)


def _install_signals(executor: Executor) -> None:
    """SIGTERM/SIGINT stop gracefully; a second SIGINT forces. Handlers only set flags: the
    wake-up byte is written by the interpreter itself (set_wakeup_fd)."""
    interrupts = 0

    def on_int(signum: int, frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        executor.request_stop(force=interrupts > 1)

    def on_term(signum: int, frame: object) -> None:
        executor.request_stop()

    signal.set_wakeup_fd(executor.waker.fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_term)

"""`pyjob run --file`: every job of a crontab or TOML jobs file in one process."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .cmd_run import ClockOptions
    from .env import Env


def run_file(
    path: str,
    env: Env,
    *,
    instance_id: str | None,
    lock: str | None,
    log_format: str,
    defaults: dict[str, Any],
    clock_options: ClockOptions,
) -> int:
    import socket

    from pyjob.core.clock import Clock, OffsetClock
    from pyjob.core.clockcheck import schedule_interval
    from pyjob.core.jobsfile import JobsFileError, load
    from pyjob.core.multirun import Supervisor
    from pyjob.core.process import RealRunner, check_command

    from .cmd_run import clock_watch, install_signals, unshared_warning
    from .logs import EventLog

    try:
        jobs = load(path, env.environ, env.clock.now())
    except JobsFileError as e:  # every problem, one line each, then exit 2
        for problem in e.problems:
            click.echo(f"Error: {problem}", err=True)
        raise click.exceptions.Exit(2) from None
    instance = instance_id or f"{socket.gethostname()}:{os.getpid()}"
    log = EventLog(log_format, env.err_is_terminal(), env.color)
    corrected = OffsetClock(env.clock) if clock_options.mode == "ntp" else None
    clock: Clock = corrected or env.clock
    runner = RealRunner()
    supervisor = Supervisor(
        clock,
        runner,
        log,
        instance=instance,
        defaults=defaults,
        env=dict(env.environ),
        default_lock=lock,
    )
    try:
        prepared = supervisor.prepare(jobs)  # BackendError: exit 5
        now = env.clock.now()
        intervals = [schedule_interval(r.executor.c.schedule, now) for r in prepared]
        known = [i for i in intervals if i is not None]
        watch = clock_watch(
            clock_options,
            env.clock,
            corrected,
            min(known) if known else None,
            supervisor.emit,
        )
        for r in prepared:
            problem = check_command(r.job.command, env.environ)
            if problem:
                r.executor.emit(
                    "warning", None, problem=problem, action="each run will fail (exit 127/126)"
                )
            unshared = unshared_warning(r.job.spec.rule)
            if unshared and r.backend.url != "none":
                r.executor.emit("warning", None, **unshared)
        if watch is not None:
            watch.check_start()
            watch.start()
        install_signals(
            lambda force: supervisor.request_stop(force=force),
            supervisor.waker.fd,
            supervisor.request_reload,
        )
        supervisor.start(prepared)
        try:
            return supervisor.run(lambda: load(path, env.environ, env.clock.now()))
        finally:
            signal.set_wakeup_fd(-1)
            if watch is not None:
                watch.stop()
    finally:
        runner.close()

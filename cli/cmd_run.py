"""`pyjob run`: run a command on its schedule, with locks."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import click

from .env import get_env
from .monitoring import MonitorOptions, parse_listen
from .options import (
    RunCommand,
    ScheduleBeforeDashes,
    build_spec,
    complete_schedule,
    job_identity_options,
    jobs_file_option,
    schedule_flags_given,
    schedule_options,
    server_list,
    settings_options,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pyjob.core.clock import Clock, OffsetClock
    from pyjob.core.clockcheck import ClockWatch
    from pyjob.core.scheduler import Job

    from .env import Env


def _zone_of(scheduler: Any, job: str) -> Any:
    """The zone a job's ticks are written in by the text log: its --tz / CRON_TZ, if any."""
    from pyjob.core.zones import get_zone

    state = scheduler.jobs.get(job)
    zone = state.job.schedule.spec.zone if state is not None else None
    return get_zone(zone) if zone else None


@click.command("run", cls=RunCommand, context_settings={"allow_interspersed_args": False})
@click.argument(
    "words",
    nargs=-1,
    metavar="[SCHEDULE]",
    cls=ScheduleBeforeDashes,
    shell_complete=complete_schedule,
)
@schedule_options
@click.option(
    "-s",
    "--schedule",
    "schedule_text",
    metavar="EXPR",
    shell_complete=complete_schedule,
    help="The schedule as text: a cron expression or a phrase like 'every 5m align'.",
)
@job_identity_options
@settings_options
@jobs_file_option(
    "Run every job of a crontab or a TOML jobs file (*.toml) in this one process, instead "
    "of one command; SIGHUP re-reads it. The run options given here are defaults for its jobs."
)
def run_cmd(
    words: tuple[str, ...],
    command: tuple[str, ...],
    schedule_text: str | None,
    name: str | None,
    shell: bool,
    jobs_file: str | None,
    **kw: Any,
) -> None:
    """Run CMD on a schedule, once per tick across every instance that shares the lock.

    SCHEDULE is the text `next` and `validate` take ('*/5 * * * *', 'every 5m align'); -s EXPR
    and the schedule options (--every 5m --align) say the same. The command follows the
    schedule; -- before it is optional, needed only when the schedule is several unquoted words
    (pyjob run every 5m -- CMD). pyjob's options go before the schedule.

    Ticks are claimed in the lock backend before they run; an instance that loses the claim logs
    who won and skips. Logs go to stderr; the command's output passes through (or is logged with
    --log-output). It runs until stopped (SIGTERM/SIGINT/SIGHUP: stop scheduling, forward SIGTERM,
    wait --stop-timeout, exit 0; a second Ctrl-C kills at once, exit 130), or until the schedule
    ends (--once, --stop-at, --max-runs): then exit 0 if every run succeeded, else 1.

    With --file PATH, runs every job of a crontab or TOML jobs file instead, each on its own
    ticks; SIGHUP re-reads the file (unchanged jobs keep running, removed ones finish their run).
    One process is one scheduler, whatever its number of jobs: one thread, one backend
    connection per lock URL.

    \b
    Examples:
      pyjob run "*/5 * * * *" -- ./backup.sh
      pyjob run "*/5 * * * *" ./backup.sh
      pyjob run --every 5m --align -- ./backup.sh
      pyjob run --file crontab --lock redis://redis:6379/0
      pyjob run --cron "0 3 * * *" --tz Europe/Berlin --timeout 1h -- ./nightly.sh
      pyjob run -s "every 1m..5m" --shell -- 'curl -fsS https://example.com/ping'
    """
    from pyjob.core.settings import SETTINGS

    values = {s.name: kw.pop(s.field) for s in SETTINGS}
    env = get_env()
    process = ProcessOptions.from_values(values)
    _check_printable(name, values["instance-id"])
    job_values = {k: v for k, v in values.items() if k in _JOB_SETTING_NAMES()}
    if words:
        if schedule_text is not None:
            raise click.UsageError("two schedules: SCHEDULE and -s (give one)")
        schedule_text = " ".join(words)
    if jobs_file is not None:
        given = schedule_flags_given(kw, also=("at", "align", "offset")) + (
            ["SCHEDULE" if words else "-s"] if schedule_text else []
        )
        given += [f for f, v in (("CMD", command), ("--name", name), ("--shell", shell)) if v]
        raise click.exceptions.Exit(_run_file(jobs_file, given, env, process, job_values))
    # One rule for where the command starts: after the schedule. The schedule is given by
    # options, or is the first argument (quoted when it has spaces); `--` before the command is
    # optional, and needed only for a schedule of several unquoted words.
    typed = words or command  # the words as the shell passed them, for the hints
    first = not words and schedule_text is None and not schedule_flags_given(kw) and command
    if first:
        schedule_text, command = command[0], command[1:]
    if not command and schedule_text is None and not schedule_flags_given(kw):
        raise click.UsageError(
            "missing the command: pyjob run SCHEDULE [--] CMD [ARGS]... (or --file PATH)"
        )
    from pyjob.core.errors import InputError
    from pyjob.core.jobsettings import JobSettings
    from pyjob.core.process import Command
    from pyjob.core.schedule import Schedule, job_identity
    from pyjob.core.scheduler import Job

    try:
        spec, now = build_spec(schedule_text, kw)
    except (InputError, click.UsageError) as e:
        hint = _schedule_hint(typed, command if words else (), bool(words), bool(first), e)
        if hint is not None:
            raise click.UsageError(hint) from None
        raise
    if not command:
        raise click.UsageError(
            "missing the command: pyjob run SCHEDULE [--] CMD [ARGS]... (or --file PATH)"
        )
    if first and command[0].startswith("-"):
        _refuse_dashed_command(command[0], schedule_text)
    job_id = job_identity(spec, command, shell=shell, name=name)
    settings = JobSettings.from_values(job_values)
    job = Job(
        job_id,
        Schedule(spec, job_id=job_id, anchor=now),
        Command(tuple(command), shell=shell, kill_orphans=settings.kill_orphans),
        settings,
        env={},  # the process environment is the scheduler's; a job adds only its own
    )
    raise click.exceptions.Exit(serve([job], env, process))


def _check_printable(name: str | None, instance_id: str | None) -> None:
    for field, text in (("name", name), ("instance-id", instance_id)):
        if text is not None and (not text.strip() or not text.isprintable()):
            raise click.BadParameter(
                "must be printable, without newlines or control characters",
                param_hint=f"'--{field}'",
            )


def _run_file(
    path: str, given: list[str], env: Env, process: ProcessOptions, job_values: dict[str, Any]
) -> int:
    """``run --file``: every job of the file, reloaded on SIGHUP; the exit code."""
    if given:
        raise click.UsageError(f"--file takes its jobs from the file: drop {', '.join(given)}")

    def load() -> list[Job]:
        return jobs_from_file(path, env, job_values)

    jobs = _load_or_exit(load)
    return serve(jobs, env, process, reload=load)


def _refuse_dashed_command(word: str, schedule_text: str | None) -> None:
    from .hints import quoted

    raise click.UsageError(
        f"'{word}' after the schedule is not a command: the options of pyjob go "
        "before the schedule, and a command that starts with a dash after -- "
        f"(pyjob run [OPTIONS] {quoted(schedule_text or '')} -- CMD [ARGS]...)"
    )


def _schedule_hint(
    typed: tuple[str, ...],
    after: tuple[str, ...],
    before_dashes: bool,
    first: bool,
    error: Exception,
) -> str | None:
    """A better error than the parser's for a schedule mangled on the way: expanded by the
    shell (an unquoted ``*/5 * * * *`` in a directory with files), or given as several words
    without ``--`` (``pyjob run 0 9 '*' '*' '*' ./x``). None: the parser's error says it."""
    from . import hints

    if not (before_dashes or first):
        return None
    found = hints.glob_hint([*typed, *after] if after else typed, "pyjob run")
    if found is None and first:
        found = hints.unquoted_hint(typed, "pyjob run")
    if found is None and first and isinstance(error, click.UsageError):
        return None
    if found is None and first and not _looks_like_schedule(typed[0]):
        return (
            f"no schedule: '{typed[0]}' is not one; give the schedule first, quoted "
            '(pyjob run "*/5 * * * *" ./backup.sh), or as an option: --cron, --every, --daily, '
            "--weekly, --monthly, --once, -s"
        )
    return found


def _looks_like_schedule(word: str) -> bool:
    """A word the parser's own message is about: several words, a descriptor, a cron field or
    a duration ('5m': meant 'every 5m'); a program name is not."""
    from pyjob.core.durations import suggest_duration

    return (
        any(c.isspace() for c in word)
        or word.startswith("@")
        or not word.strip("0123456789*/,-?LWH#")
        or suggest_duration(word) is not None
    )


def _JOB_SETTING_NAMES() -> set[str]:
    from pyjob.core.settings import JOB_SETTINGS

    return {s.name for s in JOB_SETTINGS}


def _load_or_exit(load: Callable[[], list[Job]]) -> list[Job]:
    from pyjob.core.jobsfile import JobsFileError

    try:
        return load()
    except JobsFileError as e:  # every problem, one line each, then exit 2
        for problem in e.problems:
            click.echo(f"Error: {problem}", err=True)
        raise click.exceptions.Exit(2) from None


def jobs_from_file(path: str, env: Env, cli_values: dict[str, Any]) -> list[Job]:
    """The jobs of a jobs file, each with the command line's settings as its defaults."""
    from pyjob.core.jobsettings import JobSettings
    from pyjob.core.jobsfile import load
    from pyjob.core.schedule import Schedule
    from pyjob.core.scheduler import Job

    now = env.clock.now()
    jobs = []
    alike: dict[JobSettings, JobSettings] = {}  # most jobs of a file have the same settings
    made: dict[Any, JobSettings] = {}  # ... from the same options: converted once
    for d in load(path, env.environ, now):
        try:
            settings = made[d.options]
        except KeyError:
            settings = JobSettings.from_values(cli_values, d.settings)
            settings = made[d.options] = alike.setdefault(settings, settings)
        except TypeError:  # an option's value that cannot be a key
            settings = JobSettings.from_values(cli_values, d.settings)
            settings = alike.setdefault(settings, settings)
        jobs.append(
            Job(
                d.name,
                Schedule(d.spec, job_id=d.name, anchor=now),
                # --kill-orphans is how the command is run: the runner sees the command only
                d.command
                if d.command.kill_orphans == settings.kill_orphans
                else replace(d.command, kill_orphans=settings.kill_orphans),
                settings,
                env=dict(d.env),  # on top of the process environment, at each spawn
                fingerprint=(d.fingerprint(), settings),
            )
        )
    return jobs


def serve(
    jobs: list[Job],
    env: Env,
    process: ProcessOptions,
    reload: Callable[[], list[Job]] | None = None,
) -> int:
    """The one start-up path of `pyjob run`, for one job or a file of them: open the backends,
    check the clock, install the signals, run the scheduler; its exit code."""
    import gc
    import signal
    import socket

    from pyjob.core.clock import OffsetClock
    from pyjob.core.clockcheck import schedule_interval
    from pyjob.core.process import RealRunner
    from pyjob.core.scheduler import Scheduler

    from .logs import EventLog
    from .monitoring import Monitoring
    from .outputs import Outputs

    instance = process.instance or f"{socket.gethostname()}:{os.getpid()}"
    outputs = Outputs()  # stdout and stderr, which may close under a running schedule
    log = EventLog(
        process.log_format, env.err_is_terminal(), env.color, process.log_level, outputs=outputs
    )
    # --ping and the metrics consume the events beside the log (exit 2 here if misconfigured);
    # they see every event, whatever --log-level keeps in the log
    monitoring = Monitoring(jobs, process.monitor, instance, env.clock, env.environ)
    corrected = OffsetClock(env.clock) if process.clock.mode == "ntp" else None
    clock: Clock = monitoring.loop_clock(corrected or env.clock)
    # Several jobs: whose output is it? Each line after its job's name.
    # A hook's output, always: whose answer is it? (`fail | OK` was read as the job's.)
    runner = RealRunner(
        prefix=outputs.write if len(jobs) > 1 else None,
        hooks=outputs.write,
        child_limits=raise_open_files_limit(),
    )
    scheduler = Scheduler(
        clock,
        runner,
        monitoring.fan_out(log),
        instance=instance,
        env=env.environ,
        wants=monitoring.wants(log.wants),
    )
    log.zone_of = lambda job: _zone_of(scheduler, job)
    who = jobs[0].job_id if len(jobs) == 1 else "*"

    def output_lost(stream: str, error: str, gone: bool) -> None:
        action = (
            f"its lines are dropped, and commands started from now on have /dev/null as {stream}"
            if gone
            else "the lines that cannot be written are dropped"
        )
        fields = {"stream": stream, "error": error, "action": f"{action}; the schedule goes on"}
        monitoring.report("output-closed", who, None, **fields)

    outputs.on_lost = output_lost
    outputs.watch()
    try:
        scheduler.open(jobs)  # BackendError: exit 5
        monitoring.start(who)  # a port or textfile that cannot be used: exit 2
        now = env.clock.now()
        # The clock limit comes from the shortest interval; nothing to compute without a check.
        known = (
            []
            if process.clock.skip or process.clock.max_offset is not None
            else [i for i in (schedule_interval(j.schedule, now) for j in jobs) if i is not None]
        )
        watch = clock_watch(
            process.clock,
            env.clock,
            corrected,
            min(known) if known else None,
            lambda kind, **fields: scheduler.emit(kind, who, None, **fields),
        )
        for job in jobs:
            for warning in start_warnings(job, env.environ, in_file=reload is not None):
                scheduler.emit("warning", job.job_id, None, **warning)
        if watch is not None:
            watch.check_start()  # raises ClockError (exit 3) or ClockOffsetError (exit 4)
            watch.start()
        install_signals(
            lambda force: scheduler.request_stop(force=force),
            scheduler.waker.fd,
            scheduler.request_reload if reload is not None else None,
        )
        try:
            start = clock.now()
            for job in jobs:
                scheduler.add(job, start)
            scheduler.register()
            if len(jobs) > 1 or reload is not None:
                scheduler.emit("jobs", "*", None, count=len(jobs), names=[j.job_id for j in jobs])
            # What start-up made (the jobs, their schedules, the imports) lives as long as the
            # process: out of the collector's sight, so that a full collection scans only what
            # runs make, instead of pausing a tick's spawns for every object of every job.
            gc.collect()
            gc.freeze()
            return scheduler.run(monitoring.reloading(reload))
        finally:
            signal.set_wakeup_fd(-1)
            if watch is not None:
                watch.stop()
    finally:
        scheduler.close()
        runner.close()
        monitoring.stop()  # the last pings, the last textfile
        outputs.stop_watching()


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as the Go runtime does for supercronic:
    each running command costs pyjob a descriptor or three (a pidfd, its output pipes), a lease
    of the file backend one more, and a soft limit of 256 or 1024 failed a tick of 2,000 jobs.
    Done here, in `run` alone: the limit is the process's, and the core changes nothing of the
    process it is not asked to (the commands get the old limit back: RealRunner). The limit as
    it was, when raised; None when it was at the hard limit already or cannot be raised."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # Linux refuses more than fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            return None
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return None
    return soft, hard


@dataclass(frozen=True)
class ProcessOptions:
    """The process-scope settings of `pyjob run` (pyjob.core.settings, scope "process")."""

    instance: str | None
    log_format: str
    log_level: str
    clock: ClockOptions
    monitor: MonitorOptions

    @classmethod
    def from_values(cls, v: dict[str, Any]) -> ProcessOptions:
        from pyjob.core.durations import to_seconds

        if v["no-clock-check"] and (v["clock"] == "ntp" or v["require-clock"]):
            flag = "--clock ntp" if v["clock"] == "ntp" else "--require-clock"
            raise click.UsageError(f"{flag} needs the clock check: drop --no-clock-check")
        return cls(
            instance=v["instance-id"],
            log_format=v["log-format"],
            log_level=v["log-level"],
            clock=ClockOptions(
                servers=server_list(v["ntp-server"]) or None,
                max_offset=to_seconds(v["max-offset"]),
                policy=v["clock-policy"],
                require=v["require-clock"],
                mode=v["clock"],
                every=v["clock-check-every"] / 1e6,
                budget=v["clock-budget"] / 1e6,
                skip=v["no-clock-check"],
            ),
            monitor=MonitorOptions(
                listen=parse_listen(v["metrics-listen"]), textfile=v["metrics-textfile"]
            ),
        )


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
    from pyjob.core.clockcheck import ClockWatch, offset_limit
    from pyjob.core.settings import DEFAULT_SERVERS

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


def start_warnings(
    job: Job, environ: Mapping[str, str], in_file: bool = False
) -> list[dict[str, str]]:
    """The fields of the warnings about ``job`` at start: a command that cannot run, ticks
    that other instances do not share. ``in_file``: the job is a line or table of a jobs
    file, where options are not what fixes it."""
    from pyjob.core.process import check_command

    found = []
    problem = check_command(job.command, environ)
    if problem:
        found.append({"problem": problem, "action": "each run will fail (exit 127/126)"})
    unshared = unshared_warning(job.schedule.spec.rule, in_file)
    # Only where other instances may share the ticks: a lock given on purpose (the default
    # file lock of a lone one-liner is not a fleet).
    if unshared and job.lock is not None and job.lock != "none":
        found.append(unshared)
    if job.settings.pool is not None and job.lock == "none":
        found.append(
            {
                "problem": f"--pool {job.settings.pool} with --lock none bounds the runs of this "
                "process only",
                "action": "give a shared --lock for a pool across the fleet",
            }
        )
    return found


def unshared_warning(rule: Any, in_file: bool = False) -> dict[str, str] | None:
    """The fields of the warning for a schedule whose ticks differ between instances."""
    why = rule.unshared_reason
    if why is None:
        return None
    if getattr(rule, "align", None) is False and in_file:
        interval = str(rule).removeprefix("every ")
        action = (
            f"write 'align' after the interval (@every {interval} align in a crontab, "
            "align = true in a TOML job), or use cron, when several instances run this job"
        )
    elif getattr(rule, "align", None) is False:
        action = "add --align (or use cron) when several instances run this job"
    else:  # a random interval cannot be aligned
        action = (
            "use a fixed interval with --align (--every 5m --align), or cron, when several "
            "instances run this job; or --jitter for a random delay on shared ticks"
        )
    return {
        "problem": f"'{rule}' {why}: other instances get other ticks and do not coordinate "
        "with this one",
        "action": action,
    }


def install_signals(
    stop: Callable[[bool], None], waker_fd: int, reload: Callable[[], None] | None = None
) -> None:
    """SIGTERM/SIGINT call ``stop(force)``: gracefully, and forced at a second SIGINT; SIGHUP
    calls ``reload`` when given, else stops as gracefully as SIGTERM (an ssh session that
    closes must not kill the command behind its TERM trap). Handlers only set flags: the
    wake-up byte is written by the interpreter itself (set_wakeup_fd)."""
    import signal  # here: a completion request for `run` imports this module, not signals

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
    else:
        signal.signal(signal.SIGHUP, on_term)

"""`pyjob validate`: check schedules, with exit codes for CI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from pyjob.core.errors import InputError

from .env import get_env
from .errors import caret_lines
from .exitcodes import ExitCode
from .options import (
    CommandAfterDashes,
    build_spec,
    catch_up_option,
    catch_up_text,
    complete_schedule,
    job_identity_options,
    jobs_file_option,
    schedule_flags_given,
    schedule_options,
)
from .render import echo_json

if TYPE_CHECKING:
    from datetime import datetime


@click.command("validate", cls=CommandAfterDashes)
@click.argument("exprs", nargs=-1, metavar="[EXPR]...", shell_complete=complete_schedule)
@schedule_options
@job_identity_options
@click.option(
    "--strict",
    is_flag=True,
    default=False,
    help="Treat warnings (DST, day-of-month OR day-of-week) as failures: exit 1.",
)
@catch_up_option
@jobs_file_option(
    "Check every job of a crontab or TOML jobs file (as run --file reads it); each problem "
    "is reported with file:line or the job's table."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for machines.",
)
def validate_cmd(
    exprs: tuple[str, ...],
    name: str | None,
    shell: bool,
    command: tuple[str, ...],
    strict: bool,
    catch_up: int | None,
    jobs_file: str | None,
    fmt: str,
    **kw: Any,
) -> None:
    """Check schedules: print the normalized form and next tick, or what is wrong.

    Each EXPR is checked on its own (or the schedule options, when no EXPR is given). Exit 0 when
    all are valid, 2 when any is not (one line per problem, naming the field and the bad token),
    1 with --strict when any has a warning: a time that a DST change skips or repeats in its zone,
    or both day-of-month and day-of-week restricted (cron then fires when EITHER matches).

    The next tick of a schedule with H fields or a random interval depends on the job: give the
    command after -- (and --shell or --name) as for `pyjob run` to check that job's.

    \b
    Examples:
      pyjob validate "*/5 * * * *" "0 0 31 2 *"
      pyjob validate "H H * * *" -- ./backup.sh
    """
    env = get_env()
    clock_now = env.clock.now()
    if jobs_file is not None:
        if exprs or name or shell or command or schedule_flags_given(kw):
            raise click.UsageError(
                "--file checks the file's jobs: drop the EXPR, the command, --name, --shell "
                "and schedule options"
            )
        _validate_file(jobs_file, strict, fmt)
        return
    inputs: list[str | None] = list(exprs) if exprs else [None]
    job = _JobWords(name, shell, command)
    results = [_check(text, kw, job, catch_up, clock_now) for text in inputs]
    any_error = any(not r["valid"] for r in results)
    any_warning = any(r["warnings"] for r in results)
    if fmt == "json":
        echo_json({"valid": not any_error, "strict": strict, "schedules": results})
    else:
        terminal = env.err_is_terminal()
        for r in results:
            _print_result(r, len(results) > 1, job, catch_up, terminal)
        if any_error and len(exprs) > 1:
            _hint_quoting(exprs, kw)
    if any_error:
        raise click.exceptions.Exit(int(ExitCode.USAGE))
    if strict and any_warning:
        raise click.exceptions.Exit(int(ExitCode.FAILED))


class _JobWords:
    """The job the schedules are checked for: its H fields and random intervals depend on it."""

    def __init__(self, name: str | None, shell: bool, command: tuple[str, ...]) -> None:
        self.name = name
        self.shell = shell
        self.command = command


def _check(
    text: str | None,
    kw: dict[str, Any],
    job: _JobWords,
    catch_up: int | None,
    clock_now: datetime,
) -> dict[str, Any]:
    """The JSON document of one schedule (``text``, or the schedule options when None)."""
    from pyjob.core.describe import describe, warnings
    from pyjob.core.instants import iso
    from pyjob.core.schedule import Schedule, job_identity

    result: dict[str, Any] = {"input": text, "valid": False}
    try:
        spec, now = build_spec(text, kw)
        job_id = job_identity(spec, job.command, shell=job.shell, name=job.name)
        schedule = Schedule(spec, job_id=job_id, anchor=now)
        nxt = schedule.next_tick(now)
        if nxt is None:
            raise InputError(f"'{spec}' has no tick after {iso(now)}")
        result.update(
            valid=True,
            normalized=str(spec),
            job=job_id,
            description=describe(spec),
            zone=str(schedule.zone),
            next=iso(nxt, schedule.zone),
            warnings=[
                {"code": w.code, "message": w.message} for w in warnings(schedule, clock_now)
            ],
            errors=[],
        )
    except InputError as e:
        result["errors"] = [
            {"message": e.message, "pos": e.pos, "length": e.length, "source": e.source}
        ]
        result["warnings"] = []
        return result
    if catch_up is not None:
        result["catch_up"] = catch_up / 1e6
    return result


def _print_result(
    r: dict[str, Any], several: bool, job: _JobWords, catch_up: int | None, terminal: bool
) -> None:
    """One schedule's result as text: ok and what it means on stdout, problems on stderr (with
    a caret under the bad part on a terminal)."""
    if r["valid"]:
        click.echo(f"ok: {r['normalized']}")
        click.echo(f"  means: {r['description']}")
        click.echo(f"  next:  {r['next']}")
        if catch_up is not None:
            click.echo(f"  catch-up: {catch_up_text(catch_up)}")
        if job.name or job.command:
            click.echo(f"  job:   {r['job']}")
        label = r["input"] if r["input"] is not None else "schedule"
        for w in r["warnings"]:
            click.echo(f"warning: {label}: {w['message']}", err=True)
    for err in r["errors"]:
        named = f"'{r['input']}': " if several else ""  # which one failed
        click.echo(f"Error: {named}{err['message']}", err=True)
        if terminal:
            problem = InputError(
                err["message"], source=err["source"], pos=err["pos"], length=err["length"]
            )
            for line in caret_lines(problem):
                click.echo(line, err=True)


def _hint_quoting(exprs: tuple[str, ...], kw: dict[str, Any]) -> None:
    """`pyjob validate every 5m` checks 'every' and '5m': when the words together are one
    schedule, say how to check it; when the shell expanded an unquoted ``*`` into file names,
    say so."""
    import shlex

    from .hints import glob_hint

    globbed = glob_hint(exprs, "pyjob validate", dashes=False)
    if globbed is not None:
        click.echo(f"hint: {globbed}", err=True)
        return
    joined = " ".join(exprs)
    try:
        build_spec(joined, kw)
    except (InputError, click.UsageError):
        return
    click.echo(
        f"hint: each EXPR is a schedule of its own; to check {joined!r} as one, quote it: "
        f"pyjob validate {shlex.quote(joined)}",
        err=True,
    )


def _validate_file(path: str, strict: bool, fmt: str) -> None:
    from pyjob.core.describe import warnings
    from pyjob.core.instants import iso
    from pyjob.core.jobsfile import JobsFileError, load
    from pyjob.core.schedule import Schedule

    env = get_env()
    now = env.clock.now()
    try:
        jobs = load(path, env.environ, now)
    except JobsFileError as e:
        if fmt == "json":
            echo_json({"valid": False, "file": path, "jobs": [], "errors": e.problems})
        else:
            for problem in e.problems:
                click.echo(f"Error: {problem}", err=True)
        raise click.exceptions.Exit(int(ExitCode.USAGE)) from None
    docs: list[dict[str, Any]] = []
    for job in jobs:
        schedule = Schedule(job.spec, job_id=job.name, anchor=now)
        nxt = schedule.next_tick(now)
        docs.append(
            {
                "name": job.name,
                "where": job.where,
                "schedule": str(job.spec),
                "command": str(job.command),
                "catch_up": job.settings.get("catch-up") and job.settings["catch-up"] / 1e6,
                "next": iso(nxt, schedule.zone) if nxt else None,
                "warnings": [w.message for w in warnings(schedule, now)],
            }
        )
    if fmt == "json":
        echo_json({"valid": True, "file": path, "jobs": docs, "errors": []})
    else:
        for d in docs:
            click.echo(f"ok: {d['name']}: {d['schedule']} -- {d['command']}")
            click.echo(f"  next:  {d['next'] or 'none: the schedule has ended'}")
            if d["catch_up"]:
                click.echo(f"  catch-up: {catch_up_text(int(d['catch_up'] * 1e6))}")
            for w in d["warnings"]:
                click.echo(f"warning: {d['where']}: {w}", err=True)
    if strict and any(d["warnings"] for d in docs):
        raise click.exceptions.Exit(int(ExitCode.FAILED))

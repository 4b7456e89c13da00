"""`pyjob validate`: check schedules, with exit codes for CI."""

from __future__ import annotations

from typing import Any

import click
from pyjob.core.errors import InputError

from .env import get_env
from .errors import caret_lines
from .exitcodes import ExitCode
from .options import build_spec, complete_schedule, schedule_options
from .render import echo_json


@click.command("validate")
@click.argument("exprs", nargs=-1, metavar="[EXPR]...", shell_complete=complete_schedule)
@schedule_options
@click.option(
    "--strict",
    is_flag=True,
    default=False,
    help="Treat warnings (DST, day-of-month OR day-of-week) as failures: exit 1.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for machines.",
)
def validate_cmd(exprs: tuple[str, ...], strict: bool, fmt: str, **kw: Any) -> None:
    """Check schedules: print the normalized form and next tick, or what is wrong.

    Each EXPR is checked on its own (or the schedule options, when no EXPR is given). Exit 0 when
    all are valid, 2 when any is not (one line per problem, naming the field and the bad token),
    1 with --strict when any has a warning: a time that a DST change skips or repeats in its zone,
    or both day-of-month and day-of-week restricted (cron then fires when EITHER matches).
    """
    from pyjob.core.describe import describe, warnings
    from pyjob.core.schedule import Schedule, derive_job_id, iso

    env = get_env()
    clock_now = env.clock.now()
    inputs: list[str | None] = list(exprs) if exprs else [None]
    results = []
    for text in inputs:
        result: dict[str, Any] = {"input": text, "valid": False}
        try:
            spec, now = build_spec(text, kw)
            schedule = Schedule(spec, job_id=derive_job_id(spec), anchor=now)
            nxt = schedule.next_tick(now)
            if nxt is None:
                raise InputError(f"'{spec}' has no tick after {iso(now)}")
            result.update(
                valid=True,
                normalized=str(spec),
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
        results.append(result)
    any_error = any(not r["valid"] for r in results)
    any_warning = any(r["warnings"] for r in results)
    if fmt == "json":
        echo_json({"valid": not any_error, "strict": strict, "schedules": results})
    else:
        terminal = env.err_is_terminal()
        for r in results:
            label = r["input"] if r["input"] is not None else "schedule"
            if r["valid"]:
                click.echo(f"ok: {r['normalized']}")
                click.echo(f"  means: {r['description']}")
                click.echo(f"  next:  {r['next']}")
                for w in r["warnings"]:
                    click.echo(f"warning: {label}: {w['message']}", err=True)
            for err in r["errors"]:
                click.echo(f"Error: {err['message']}", err=True)
                if terminal:
                    e = InputError(
                        err["message"], source=err["source"], pos=err["pos"], length=err["length"]
                    )
                    for line in caret_lines(e):
                        click.echo(line, err=True)
    if any_error:
        raise click.exceptions.Exit(int(ExitCode.USAGE))
    if strict and any_warning:
        raise click.exceptions.Exit(int(ExitCode.FAILED))

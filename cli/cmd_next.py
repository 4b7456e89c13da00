"""`pyjob next`: preview a schedule's next ticks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .env import get_env
from .options import (
    AsciiIntRange,
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
from .render import echo_json, instant_fields, table

if TYPE_CHECKING:
    from pyjob.core.rules import Tick


def _note(tick: Tick) -> str:
    if tick.moved_from is not None:
        return f"DST gap: moved from {tick.moved_from:%H:%M}"
    if tick.repeated:
        return "DST: repeated hour"
    return ""


@click.command("next", cls=CommandAfterDashes)
@click.argument("words", nargs=-1, metavar="[EXPR]", shell_complete=complete_schedule)
@schedule_options
@job_identity_options
@click.option(
    "-n",
    "--count",
    type=AsciiIntRange(1, 100_000),
    default=5,
    show_default=True,
    help="How many ticks to show.",
)
@click.option(
    "--from",
    "from_",
    metavar="DATETIME",
    help="Count from this instant instead of now (ISO 8601; naive means the job's zone).",
)
@catch_up_option
@jobs_file_option(
    "The next ticks of every job of a crontab or TOML jobs file, merged in time order, "
    "each with its job's name."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "plain", "json"]),
    default="table",
    show_default=True,
    help="table for people, plain (one ISO 8601 instant per line) or json.",
)
def next_cmd(
    words: tuple[str, ...],
    count: int,
    from_: str | None,
    name: str | None,
    shell: bool,
    command: tuple[str, ...],
    catch_up: int | None,
    jobs_file: str | None,
    fmt: str,
    **kw: Any,
) -> None:
    """Show the next ticks of a schedule.

    EXPR is a cron expression or a phrase ('every 5m align', 'daily at 09:00'); the schedule
    options build the same. Ticks that a DST gap moved, or that sit in a repeated hour, are marked.

    H fields and random intervals depend on the job: give the command after -- (and --shell or
    --name) as for `pyjob run`, and the ticks shown are the ones run fires for that job.

    \b
    Examples:
      pyjob next "0 * * * *"
      pyjob next "H 3 * * *" -- ./backup.sh
      pyjob next "CRON_TZ=America/New_York 30 2 * * *" --from 2026-03-07 -n 3
      pyjob next --every 1h --align --tz Asia/Kolkata --format plain
    """
    from pyjob.core.describe import describe
    from pyjob.core.durations import human_duration
    from pyjob.core.instants import iso
    from pyjob.core.schedule import Schedule, job_identity

    env = get_env()
    expr = " ".join(words) if words else None  # `pyjob next every 5m` reads as 'every 5m'
    if jobs_file is not None:
        if expr or name or shell or command or schedule_flags_given(kw):
            raise click.UsageError(
                "--file previews the file's jobs: drop the EXPR, the command, --name, --shell "
                "and schedule options"
            )
        _next_file(jobs_file, count, from_, fmt)
        return
    spec, now = build_spec(expr, kw, from_)
    job = job_identity(spec, command, shell=shell, name=name)
    schedule = Schedule(spec, job_id=job, anchor=now)
    ticks = list(schedule.ticks(now, count))
    zone = schedule.zone
    if fmt == "plain":
        for tick in ticks:
            click.echo(iso(tick.instant, zone))
        return
    if fmt == "json":
        echo_json(
            {
                "schedule": str(spec),
                "job": job,
                "description": describe(spec),
                "zone": str(zone),
                **({} if catch_up is None else {"catch_up": catch_up / 1e6}),
                "from": iso(now),
                "ticks": [
                    {
                        **instant_fields(t.instant, zone, now),
                        "dst": "gap" if t.moved_from else ("repeated" if t.repeated else None),
                        "moved_from": t.moved_from.isoformat() if t.moved_from else None,
                    }
                    for t in ticks
                ],
            }
        )
        return
    rows = []
    for i, tick in enumerate(ticks, 1):
        rows.append(
            [
                str(i),
                _local(tick, zone),
                iso(tick.instant),
                "in " + human_duration((tick.instant - now).total_seconds()),
                _note(tick),
            ]
        )
    title = [("Schedule", str(spec)), ("Means", describe(spec))]
    caught = catch_up_text(catch_up)
    if caught:
        title.append(("Catch-up", caught))
    if name or command:
        title.append(("Job", job))
    if not ticks:
        title.append(("Ticks", "none: the schedule has ended"))
    elif len(ticks) < count:
        title.append(("Ticks", f"{len(ticks)}, then the schedule ends"))
    table(env, ["#", "Local", "UTC", "When", "Note"], rows, title)


def _local(tick: Tick, zone: Any) -> str:
    local = tick.instant.astimezone(zone)
    return (
        local.strftime("%a %Y-%m-%d %H:%M:%S")
        + (f".{local.microsecond:06d}" if local.microsecond else "")
        + " "
        + (local.tzname() or "")
    )


def _next_file(path: str, count: int, from_: str | None, fmt: str) -> None:
    import heapq

    from pyjob.core.durations import human_duration
    from pyjob.core.errors import InputError
    from pyjob.core.instants import iso
    from pyjob.core.jobsfile import load
    from pyjob.core.schedule import Schedule
    from pyjob.core.timeparse import parse_datetime
    from pyjob.core.zones import get_zone, job_zone_name

    env = get_env()
    now = env.clock.now()
    if from_ is not None:
        try:
            now = parse_datetime(from_, get_zone(job_zone_name(None, None, env.environ)), now)
        except InputError as e:
            raise click.BadParameter(e.message, param_hint="'--from'") from None
    jobs = load(path, env.environ, now)

    def stream(job: Any) -> Any:  # a function, so that each stream keeps its own job
        schedule = Schedule(job.spec, job_id=job.name, anchor=now)
        for t in schedule.ticks(now, count):
            yield t.instant, job.name, t, schedule.zone

    merged = list(heapq.merge(*map(stream, jobs), key=lambda x: (x[0], x[1])))[:count]
    if fmt == "plain":
        for instant, job_name, _, zone in merged:
            click.echo(f"{iso(instant, zone)} {job_name}")
        return
    if fmt == "json":
        echo_json(
            {
                "file": path,
                "from": iso(now),
                "ticks": [
                    {"job": job_name, **instant_fields(instant, zone, now)}
                    for instant, job_name, _, zone in merged
                ],
            }
        )
        return
    rows = [
        [
            str(i),
            _local(tick, zone),
            iso(instant),
            "in " + human_duration((instant - now).total_seconds()),
            job_name,
            _note(tick),
        ]
        for i, (instant, job_name, tick, zone) in enumerate(merged, 1)
    ]
    table(
        env,
        ["#", "Local", "UTC", "When", "Job", "Note"],
        rows,
        [("File", path), ("Jobs", str(len(jobs)))],
    )

"""`pyjob history`: the runs of the fleet, newest first, from the lock backend's records."""

from __future__ import annotations

import click
from pyjob.core.results import Result

from .env import get_env
from .options import AsciiIntRange
from .records_view import RESULT_STYLE, ago, format_option, local, lock_option, open_store
from .records_view import styled as _styled
from .render import echo_json, table

# the --result choices, in the order --help shows them
RESULTS_SHOWN = tuple(
    str(r)
    for r in (
        Result.SUCCESS,
        Result.FAILURE,
        Result.TIMEOUT,
        Result.STOPPED,
        Result.START_FAILED,
        Result.RUNNING,
        Result.LOST,
        Result.SKIPPED,
        Result.MISSED,
    )
)


@click.command("history")
@click.argument("job", required=False)
@lock_option
@click.option(
    "-n",
    "--count",
    type=AsciiIntRange(1, 100_000),
    default=20,
    show_default=True,
    help="How many runs to show.",
)
@click.option(
    "--since",
    metavar="DATETIME",
    help="Only ticks at or after this instant (ISO 8601; naive means UTC), or a duration ago "
    "like 2h.",
)
@click.option(
    "--result",
    type=click.Choice(RESULTS_SHOWN),
    help="Only runs with this result.",
)
@format_option
def history_cmd(
    job: str | None, lock: str | None, count: int, since: str | None, result: str | None, fmt: str
) -> None:
    """The runs of JOB (default: every job), newest first, wherever in the fleet they ran.

    Every instance that handles a tick records it in the lock backend: job, tick, run id,
    instance, fence, attempt, start, end, duration, lateness, exit code and result (success,
    failure, timeout, stopped, start-failed, running, lost, skipped, missed), so this answers
    "did last night's backup run, where, and did it succeed?" from any host. A run retried
    (--retries) is one row: ATTEMPT is its last attempt, whose exit code and duration are
    shown; --format json lists the earlier attempts under "attempts".

    \b
    Examples:
      pyjob history backup --lock redis://redis:6379/0
      pyjob history --result failure --since 24h
      pyjob history -n 5 --format json
    """
    from pyjob.core.durations import human_duration
    from pyjob.core.instants import to_us
    from pyjob.core.records import effective, run_document
    from pyjob.core.zones import get_zone

    env = get_env()
    now = env.clock.now()
    since_us = _since(since, now) if since else None
    store, backend = open_store(lock, env)
    try:
        jobs = {j.job: j for j in store.jobs()}
        if job is not None and job not in jobs:
            click.echo(f"Error: no such job: {job} (pyjob status lists the jobs)", err=True)
            raise click.exceptions.Exit(1)
        instances = store.instances()
        now_us = to_us(now)
        runs = []
        for name in [job] if job else sorted(jobs):
            for r in store.runs(name, count if result is None else 100_000, since_us):
                r = effective(r, instances, now_us)
                if result is None or r.result == result:
                    runs.append((r, get_zone(jobs[name].zone)))
    finally:
        backend.close()
    runs.sort(key=lambda item: (item[0].tick_us, item[0].job), reverse=True)
    runs = runs[:count]
    if fmt == "json":
        echo_json({"runs": [run_document(r, zone) for r, zone in runs]})
        return
    term = env.out_is_terminal()
    rows = []
    for r, zone in runs:
        rows.append(
            [
                r.job,
                local(r.tick_us, zone),
                ago(r.tick_us, now_us),
                _styled(r.result, RESULT_STYLE.get(r.result), term),
                "-" if r.exit_code is None else str(r.exit_code),
                # TOOK is this attempt's; the earlier ones are in JSON. A tick skipped or
                # missed made no attempt.
                "-" if r.result in ("skipped", "missed") else str(r.attempt),
                "-" if r.duration is None else human_duration(r.duration, coarse=True),
                r.instance,
                r.reason or "",
            ]
        )
    table(env, ["JOB", "TICK", "", "RESULT", "EXIT", "ATTEMPT", "TOOK", "INSTANCE", "REASON"], rows)


def _since(text: str, now: object) -> int:
    from datetime import UTC, datetime

    from pyjob.core.durations import parse_duration
    from pyjob.core.errors import InputError
    from pyjob.core.instants import to_us
    from pyjob.core.timeparse import parse_datetime

    assert isinstance(now, datetime)
    try:
        return to_us(now) - parse_duration(text)
    except InputError:
        pass
    try:
        return to_us(parse_datetime(text, UTC, now))
    except InputError as e:
        raise click.BadParameter(
            f"{e.message} (an ISO 8601 date-time, or a duration like 2h)", param_hint="'--since'"
        ) from None

"""`pyjob status`: every job the lock backend knows, its last run, next tick and instances."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .env import get_env
from .fleetview import echo_instances, instance_documents, shares
from .records_view import RESULT_STYLE, ago, format_option, lock_option, open_store, styled
from .render import echo_json, table

if TYPE_CHECKING:
    from pyjob.core.records import InstanceInfo, RunRecord

# A job none of whose instances was seen for this long is left out: nobody serves it any more
# (renamed, moved to another backend, its hosts gone). Its records stay (pyjob history JOB).
UNSERVED_SHOWN = 24 * 3600.0


@click.command("status")
@lock_option
@format_option
def status_cmd(lock: str | None, fmt: str) -> None:
    """Every job known to the lock backend, in the style of `systemctl list-timers`: its
    schedule, last run (when, where, result, duration), next tick, what runs now and where, and
    the instances that serve it. A job paused by `pyjob pause` shows NEXT as "paused 5m ago
    by USER@HOST" ("paused": {"since", "by"} in JSON, null when it is not).

    Each instance registers its jobs in the backend and refreshes a heartbeat every third of its
    --lease-ttl (5 s by default, at most 10 s); one not seen for 3.5 beats (17.5 s) has gone
    quiet, and a run it left `running` shows as `lost`. A job with
    no live instance shows NEXT as "- no live instance" (next_tick null in JSON): nothing will
    run its ticks; once none of its instances was seen for 24 h it is no longer listed (its
    history stays, for `pyjob history JOB`). With the
    default file: backend this shows this host's jobs. A warning on stderr says when the
    instances run different tzdata releases, which can compute different ticks.

    A second table shows each live instance's SHARE of the runs among the newest 50 records of
    each job (--spread shares them evenly) and the OFFSET of its clock to the backend's as it
    last measured it (positive: behind the backend), judged as in `pyjob check-clock`:
    negligible under 100 ms, minor under 1 s, noticeable under 5 s, else severe (JSON:
    "instances", each with share, runs, offset in seconds and clock).

    \b
    Examples:
      pyjob status --lock redis://redis:6379/0
      pyjob status --format json | jq '.jobs[] | select(.last.result != "success")'
    """
    from pyjob.core.instants import iso, to_us
    from pyjob.core.records import effective, run_document, zone_database_warning
    from pyjob.core.results import FINISHED, Result
    from pyjob.core.zones import get_zone

    env = get_env()
    now = env.clock.now()
    now_us = to_us(now)
    store, backend = open_store(lock, env)
    try:
        jobs = store.jobs()
        instances = store.instances()
        recent = {j.job: store.recent(j.job) for j in jobs}
        counts = shares(store, [j.job for j in jobs])
        paused = _paused(backend)
    finally:
        backend.close()
    fleet_warning = zone_database_warning(instances, now_us)
    if fleet_warning:
        click.echo(f"warning: {fleet_warning}", err=True)
    docs: list[dict[str, Any]] = []
    rows = []
    term = env.out_is_terminal()
    unserved = 0
    for j in jobs:
        zone = get_zone(j.zone)
        records = [effective(r, instances, now_us) for r in recent[j.job]]
        last = next((r for r in records if r.result in FINISHED), None)
        running = [r for r in records if r.result == Result.RUNNING]
        served = _served(j.instances, instances)
        seen_us = max((i.seen_us for i in served), default=None)
        if seen_us is None or now_us - seen_us > UNSERVED_SHOWN * 1e6:
            unserved += 1
            continue
        live = _live(j.instances, instances, now_us)
        nxt = _next_tick(j.schedule, j.job, now) if live else None
        pause = paused.get(j.job)
        docs.append(
            {
                "job": j.job,
                "schedule": j.schedule,
                "description": _describe(j.schedule, j.job),
                "command": j.command,
                "zone": j.zone,
                "last": run_document(last, zone) if last else None,
                "next_tick": None if nxt is None else iso(nxt, zone),
                "paused": None
                if pause is None
                else {"since": _iso(pause.since_us, zone), "by": pause.by},
                "last_seen": _iso(seen_us, zone),  # the latest heartbeat of its instances
                "running": [run_document(r, zone) for r in running],
                "instances": [
                    {
                        "instance": i.instance,
                        "host": i.host,
                        "seen": _iso(i.seen_us, zone),
                        "tzdata": i.tzdata or None,
                    }
                    for i in live
                ],
            }
        )
        running_text = (
            ", ".join(f"{r.instance} since {ago(r.started_us, now_us)}" for r in running) or "-"
        )
        rows.append(
            [
                j.job,
                _describe(j.schedule, j.job),
                _last_text(last, now_us, term),
                _next_column(nxt, zone, now_us, live, seen_us, pause),
                running_text,
                str(len(live)),
            ]
        )
    if unserved:
        click.echo(
            f"{unserved} job(s) not listed: none of their instances seen for "
            f"{UNSERVED_SHOWN / 3600:g}h (pyjob history JOB shows their runs)",
            err=True,
        )
    fleet = instance_documents(instances, counts, docs, now_us)
    if fmt == "json":
        echo_json({"jobs": docs, "instances": fleet})
        return
    if not rows:
        click.echo("no jobs recorded in this backend yet", err=True)
        return
    table(env, ["JOB", "SCHEDULE", "LAST", "NEXT", "RUNNING", "INSTANCES"], rows)
    echo_instances(env, fleet)


def _served(names: list[str], instances: dict[str, InstanceInfo]) -> list[InstanceInfo]:
    """The instances named (an id, or its prefix), quiet or not."""
    served = []
    for name in names:
        info = instances.get(name) or next(
            (i for k, i in instances.items() if k.startswith(name)), None
        )
        if info is not None:
            served.append(info)
    return served


def _live(names: list[str], instances: dict[str, InstanceInfo], now_us: int) -> list[InstanceInfo]:
    """The instances named (an id, or its prefix) that are not quiet."""
    from pyjob.core.records import is_quiet

    return [i for i in _served(names, instances) if not is_quiet(i, now_us)]


def _paused(backend: Any) -> dict[str, Any]:
    """The jobs paused (`pyjob pause`), by name; a read that fails twice: BackendError."""
    from pyjob.core.control import control_for
    from pyjob.core.errors import BackendError

    control = control_for(backend)
    if control is None:
        return {}
    try:
        return dict(control.read().paused)
    except BackendError:
        return dict(control.read().paused)


def _next_column(
    nxt: Any, zone: Any, now_us: int, live: list[InstanceInfo], seen_us: int, pause: Any
) -> str:
    if pause is not None:
        return f"paused {ago(pause.since_us, now_us)} by {pause.by}"
    return _next_text(nxt, zone, now_us) if live else _unserved_text(seen_us, now_us)


def _next_text(nxt: Any, zone: Any, now_us: int) -> str:
    """The NEXT column of a job some live instance serves."""
    from pyjob.core.instants import to_us

    if nxt is None:
        return "-"
    return f"{nxt.astimezone(zone):%Y-%m-%d %H:%M:%S} ({ago(to_us(nxt), now_us)})"


def _unserved_text(seen_us: int, now_us: int) -> str:
    """The NEXT column of a job no live instance serves: nothing runs its ticks."""
    return f"- no live instance (seen {ago(seen_us, now_us)})"


def _last_text(last: RunRecord | None, now_us: int, term: bool) -> str:
    """The LAST column: when, the result (coloured on a terminal), how long, where."""
    from pyjob.core.durations import human_duration

    if last is None:
        return "never"
    took = "" if last.duration is None else f", {human_duration(last.duration, coarse=True)}"
    return (
        f"{ago(last.started_us or last.tick_us, now_us)} "
        f"{styled(last.result, RESULT_STYLE.get(last.result), term)}{took} "
        f"on {last.instance}"
    )


def _iso(us: int, zone: Any) -> str:
    from pyjob.core.instants import local_iso

    return local_iso(us, zone, "seconds")


def _spec(text: str) -> Any:
    from pyjob.core.errors import InputError
    from pyjob.core.schedule import parse

    try:
        return parse(text, env={})
    except InputError:
        return None


def _describe(text: str, job: str) -> str:
    from pyjob.core.describe import describe

    spec = _spec(text)
    return text if spec is None else describe(spec)


def _next_tick(text: str, job: str, now: Any) -> Any:
    from pyjob.core.schedule import Schedule

    spec = _spec(text)
    if spec is None:
        return None
    try:
        return Schedule(spec, job_id=job, anchor=now).next_tick(now)
    except Exception:  # a schedule this version cannot compute: shown as unknown
        return None

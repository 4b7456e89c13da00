"""`pyjob align`: the next boundary of an interval grid, optionally waiting for it."""

from __future__ import annotations

import click
from pyjob.core.errors import InputError

from .env import get_env
from .options import ZONE


@click.command("align")
@click.argument("interval", metavar="INTERVAL")
@click.option("--offset", metavar="DURATION", help="Shift the grid, e.g. 5m --offset 30s.")
@click.option(
    "--tz",
    type=ZONE,
    metavar="ZONE",
    help="Zone whose midnight starts the grid when INTERVAL divides a day.",
)
@click.option("--from", "from_", metavar="DATETIME", help="Count from this instant instead of now.")
@click.option(
    "--wait",
    is_flag=True,
    default=False,
    help="Sleep until the boundary, then exit 0 (a countdown on a terminal).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["iso", "unix", "json"]),
    default="iso",
    show_default=True,
    help="iso (local, with offset), unix seconds, or json.",
)
def align_cmd(
    interval: str, offset: str | None, tz: str | None, from_: str | None, wait: bool, fmt: str
) -> None:
    """Print the next boundary of the INTERVAL grid that `run --every INTERVAL --align` uses.

    When INTERVAL divides 24h the grid is on the local wall clock, as `run --align` fires it (1h
    lands on :00 local, also in +05:30 zones; 6h at 00:00, 06:00, 12:00 and 18:00 local, DST days
    included); otherwise it counts from the Unix epoch. `pyjob align 5m --wait && cmd`
    starts cmd on the next 5-minute boundary; Ctrl-C while waiting exits 130.
    """
    from pyjob.core.clock import sleep_until
    from pyjob.core.durations import format_duration
    from pyjob.core.grammar import build
    from pyjob.core.instants import iso, to_us, unix_text
    from pyjob.core.parts import Parts
    from pyjob.core.rules import EveryRule
    from pyjob.core.schedule import Schedule
    from pyjob.core.timeparse import parse_datetime
    from pyjob.core.zones import get_zone, job_zone_name

    env = get_env()
    clock = env.clock
    now = clock.now()
    zone_name = job_zone_name(tz, None, env.environ)
    if from_ is not None:
        try:
            now = parse_datetime(from_, get_zone(zone_name), now)
        except InputError as e:
            raise click.BadParameter(e.message, param_hint="'--from'") from None
    try:
        spec = build(
            Parts(kind="every", value=interval, align=True, offset=offset),
            tz=zone_name,
            env=env.environ,
            now=now,
        )
    except InputError as e:
        raise click.BadParameter(e.message, param_hint="'INTERVAL' or '--offset'") from None
    rule = spec.rule
    assert isinstance(rule, EveryRule)  # built from kind="every" above
    boundary = Schedule(spec).next_tick(now)
    assert boundary is not None
    zone = get_zone(zone_name)
    if fmt == "iso":
        click.echo(iso(boundary, zone))
    elif fmt == "unix":
        click.echo(unix_text(to_us(boundary)))
    else:
        from .render import echo_json, instant_fields

        echo_json(
            {
                **instant_fields(boundary, zone, now),  # the words of next --format json
                "interval": format_duration(rule.every),
                "offset": format_duration(rule.offset),
                "grid": "local-midnight" if spec.zone else "unix-epoch",
                "zone": zone_name,
            }
        )
    if not wait:
        return
    import signal

    from pyjob.core.clock import Waker

    # Ctrl-C: the group maps KeyboardInterrupt to exit 130. The wake-up fd makes sure a SIGINT
    # that lands just before a sleep ends it instead of waiting out the slice.
    waker = Waker()
    previous = signal.set_wakeup_fd(waker.fd, warn_on_full_buffer=False)
    try:
        if env.err_is_terminal():
            _countdown(env, boundary, waker)
        sleep_until(clock, boundary, waker=waker)
    finally:
        signal.set_wakeup_fd(previous)
        waker.close()


def _countdown(env: object, boundary: object, waker: object) -> None:
    """A live one-line countdown on stderr, redrawn a few times a second until the boundary."""
    from datetime import datetime

    from pyjob.core.clock import Waker
    from pyjob.core.durations import human_duration
    from pyjob.core.instants import iso

    from .env import Env

    assert isinstance(env, Env) and isinstance(boundary, datetime) and isinstance(waker, Waker)
    clock = env.clock
    while True:
        remaining = (boundary - clock.now()).total_seconds()
        if remaining <= 0.3:
            break
        click.echo(
            f"\rwaiting {human_duration(remaining):>8} for {iso(boundary)} ", err=True, nl=False
        )
        clock.wait(waker, min(0.25, remaining - 0.25))
    click.echo("\r" + " " * 60 + "\r", err=True, nl=False)

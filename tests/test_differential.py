"""pyjob's cron ticks against two independent implementations.

1. cronsim (healthchecks' evaluator, which follows Debian cron's DST rules): many generated 5-field
   expressions, several zones, start times around both 2026 transitions but not inside a repeated
   hour (there cronsim can return a tick earlier than its start; pyjob never does).
2. A brute-force oracle written from DESIGN §3 alone: walk every minute of a window and keep the
   instants whose wall time matches (wildcard minute/hour) or map matching wall times by the
   gap/repeat rule (fixed times). It also covers Australia/Lord_Howe's 30-minute shift, where
   cronsim skips matches that exist after the fall-back (02:00 and 02:20 on 2026-04-05 for
   '*/20 2 * * *').
"""

from __future__ import annotations

import random
import zlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim, CronSimError
from pyjob.core.errors import ScheduleError
from pyjob.core.schedule import Schedule, parse
from pyjob.core.zones import is_repeated, resolve_wall

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Europe/Dublin"]
EXPRESSIONS = 400  # per zone: 2,000 expressions, 20 ticks each, from 3 start times
TICKS = 20
STARTS = [
    datetime(2026, 3, 7, 22, 17, tzinfo=UTC),
    datetime(2026, 3, 28, 21, 3, tzinfo=UTC),
    datetime(2026, 10, 24, 20, 41, tzinfo=UTC),
]
_NAMES_MON = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_NAMES_DOW = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


def _item(rng: random.Random, lo: int, hi: int, names: list[str] | None) -> str:
    def value(v: int) -> str:
        if names and rng.random() < 0.3 and v - lo < len(names):
            return names[v - lo]
        return str(v)

    r = rng.random()
    if r < 0.25:
        return "*"
    if r < 0.4:
        return f"*/{rng.randint(1, (hi - lo + 1) // 2 or 1)}"
    a = rng.randint(lo, hi)
    if r < 0.65:
        return value(a)
    b = rng.randint(a, hi)
    if r < 0.85 or a == b:
        return f"{value(a)}-{value(b)}"
    # Not "a-a/n": cronsim reads it as "a/n" (a to the field's end); Vixie cron and pyjob as "a".
    return f"{a}-{b}/{rng.randint(1, max(1, b - a))}"


def _field(rng: random.Random, lo: int, hi: int, names: list[str] | None = None) -> str:
    n = 1 if rng.random() < 0.7 else rng.randint(2, 3)
    items = [_item(rng, lo, hi, names) for _ in range(n)]
    if "*" in items and len(items) > 1:
        items = ["*"]
    return ",".join(items)


def generate(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        minute = _field(rng, 0, 59)
        hour = _field(rng, 0, 23) if rng.random() < 0.7 else rng.choice(["1", "2", "2-3", "1,2"])
        out.append(
            " ".join(
                [
                    minute,
                    hour,
                    _field(rng, 1, 31) if rng.random() < 0.4 else "*",
                    _field(rng, 1, 12, _NAMES_MON) if rng.random() < 0.3 else "*",
                    _field(rng, 0, 6, _NAMES_DOW) if rng.random() < 0.4 else "*",
                ]
            )
        )
    return out


def pyjob_ticks(expr: str, zone: str, start: datetime, n: int) -> list[datetime]:
    sched = Schedule(parse(expr, tz=zone, env={}))
    return [t.instant for t in sched.ticks(start, n)]


def cronsim_ticks(expr: str, zone: str, start: datetime, n: int) -> list[datetime]:
    it = CronSim(expr, start.astimezone(ZoneInfo(zone)))
    return [next(it).astimezone(UTC) for _ in range(n)]


# Found by sweeping seeds: croniter drops an OR-ed day field that is full or has a * item in a list.
REGRESSIONS = [
    "* * 28-29,*/3 1-OCT SAT,*/1,6-6",
    "18 21-23/2 1,*/15,21 * SUN-6,3-6",
    "27-52 1,20,23-23 5,13,*/11 * 0-6",
    "*/2 * 5-23,*/2 * 5-5,*/1",
    "54 23-23 11-25,*/2 */5 SUN-6",
    "30 7 2-5/2,*/10 * 5-6/1,*/1",
    "0 12 1-31 * MON",
    "0 12 13 * 0-7",
]


@pytest.mark.parametrize("expr", REGRESSIONS)
def test_regressions_match_cronsim(expr: str) -> None:
    for zone in ("UTC", "America/New_York"):
        for start in STARTS:
            assert pyjob_ticks(expr, zone, start, TICKS) == cronsim_ticks(expr, zone, start, TICKS)


@pytest.mark.parametrize("zone", ZONES)
def test_matches_cronsim(zone: str) -> None:
    compared = 0
    for expr in generate(zlib.crc32(zone.encode()) % 1000 + 7, EXPRESSIONS):
        try:
            Schedule(parse(expr, tz=zone, env={}))
        except ScheduleError:
            with pytest.raises((CronSimError, StopIteration)):
                cronsim_ticks(expr, zone, STARTS[0], 1)
            continue
        for start in STARTS:
            if is_repeated(start, ZoneInfo(zone)):
                continue
            mine = pyjob_ticks(expr, zone, start, TICKS)
            theirs = cronsim_ticks(expr, zone, start, TICKS)
            assert mine == theirs, (expr, zone, start)
            compared += 1
    assert compared >= EXPRESSIONS * len(STARTS) * 0.9


# ------------------------------------------------------------------ brute-force oracle


def vixie_set(text: str, lo: int, hi: int, names: list[str] | None = None) -> set[int]:
    """A field as Vixie cron reads it (lists, ranges, steps, names), written for this test."""

    def num(tok: str) -> int:
        if names and tok.upper() in names:
            return lo + names.index(tok.upper())
        return int(tok)

    out: set[int] = set()
    for item in text.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            a, b = lo, hi
        elif "-" in base:
            a, b = (num(x) for x in base.split("-"))
        else:
            a = num(base)
            b = hi if step else a
        out.update(range(a, b + 1, int(step or 1)))
    return out


def _matcher(expr: str):  # type: ignore[no-untyped-def]
    f = expr.split()
    minutes, hours = vixie_set(f[0], 0, 59), vixie_set(f[1], 0, 23)
    days, months = vixie_set(f[2], 1, 31), vixie_set(f[3], 1, 12, _NAMES_MON)
    weekdays = {d % 7 for d in vixie_set(f[4], 0, 7, _NAMES_DOW)}
    day_and = f[2].startswith("*") or f[4].startswith("*")

    def matches(wall: datetime) -> bool:
        if wall.minute not in minutes or wall.hour not in hours or wall.month not in months:
            return False
        dom = wall.day in days
        dow = (wall.isoweekday() % 7) in weekdays
        return (dom and dow) if day_and else (dom or dow)

    return matches


def oracle(expr: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    z = ZoneInfo(zone)
    matches = _matcher(expr)
    fields = expr.split()
    fixed = not fields[0].startswith("*") and not fields[1].startswith("*")
    out: set[datetime] = set()
    if fixed:
        wall = (start.astimezone(z) - timedelta(hours=3)).replace(tzinfo=None, second=0)
        wall = wall.replace(microsecond=0)
        last = end.astimezone(z).replace(tzinfo=None) + timedelta(hours=3)
        while wall <= last:
            if matches(wall):
                out.add(resolve_wall(wall, z).instant)
            wall += timedelta(minutes=1)
    else:
        t = start.replace(second=0, microsecond=0)
        while t <= end:
            if matches(t.astimezone(z).replace(tzinfo=None)):
                out.add(t)
            t += timedelta(minutes=1)
    return sorted(i for i in out if start < i <= end)


WINDOWS = {
    "Australia/Lord_Howe": [
        datetime(2026, 4, 4, 10, 0, tzinfo=UTC),
        datetime(2026, 10, 3, 10, 0, tzinfo=UTC),
    ],
    "Europe/Berlin": [
        datetime(2026, 3, 28, 18, tzinfo=UTC),
        datetime(2026, 10, 24, 18, tzinfo=UTC),
    ],
    "America/New_York": [datetime(2026, 3, 8, 0, tzinfo=UTC), datetime(2026, 11, 1, 0, tzinfo=UTC)],
    "Europe/Dublin": [
        datetime(2026, 3, 28, 18, tzinfo=UTC),
        datetime(2026, 10, 24, 18, tzinfo=UTC),
    ],
}


@pytest.mark.parametrize("zone", sorted(WINDOWS))
def test_matches_brute_force_oracle(zone: str) -> None:
    generated = [e for e in generate(11, 150) if e.split()[2:] == ["*", "*", "*"]][:40]
    exprs = [
        "*/20 2 * * *",
        "*/15 * * * *",
        "0 * * * *",
        "30 1 * * *",
        "45 1 * * *",
        "15 2 * * *",
        "0,30 1-3 * * *",
        "*/7 1-2 * * *",
        "59 * * * *",
        "0 2 * * SUN",
        "58-58/1 * * * *",
        "1-1/5 2 * * *",
        *generated,
    ]
    for start in WINDOWS[zone]:
        end = start + timedelta(hours=14)
        for expr in exprs:
            expected = oracle(expr, zone, start, end)
            sched = Schedule(parse(expr, tz=zone, env={}))
            got = []
            for tick in sched.ticks(start, len(expected) + 1):
                if tick.instant > end:
                    break
                got.append(tick.instant)
            assert got == expected, (expr, zone, start)

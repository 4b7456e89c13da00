"""Aligned intervals (DESIGN §2, issue 15 item 3) against an oracle written from the rule alone.

The rule: when D divides 24 h the grid is the local wall-clock times offset + k·D of every day
(the same times as the equivalent cron grid). A grid time that a spring-forward skips fires at the
first instant after the gap when D is longer than the jump, and is absent otherwise; a grid time
that a fall-back repeats fires once, at its first occurrence, when D is longer than the repeat,
and at both occurrences otherwise. Other grids count offset + k·D from the Unix epoch.

Zones and the 2026 transitions the windows sit on (tz database):
- Asia/Kolkata +05:30 and Asia/Kathmandu +05:45: no DST (a plain day, 2026-03-29).
- America/St_Johns -03:30: 2026-03-08 02:00 -> 03:00; 2026-11-01 02:00 -> 01:00.
- Australia/Lord_Howe (30 minutes): 2026-04-05 02:00 -> 01:30; 2026-10-04 02:00 -> 02:30.
- Pacific/Chatham (+12:45/+13:45): 2026-04-05 03:45 -> 02:45; 2026-09-27 02:45 -> 03:45.
- America/Santiago: 2026-04-05 00:00 -> 23:00 the day before; 2026-09-06 00:00 -> 01:00 (a
  skipped midnight).
- America/Havana: 2026-03-08 00:00 -> 01:00; 2026-11-01 01:00 -> 00:00 (a repeated midnight).
- Europe/Dublin: 2026-03-29 01:00 -> 02:00; 2026-10-25 02:00 -> 01:00.
- Europe/Berlin: 2026-03-29 02:00 -> 03:00; 2026-10-25 03:00 -> 02:00.
- America/New_York: 2026-03-08 02:00 -> 03:00; 2026-11-01 02:00 -> 01:00.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pyjob.core.schedule import Schedule, parse
from pyjob.core.zones import get_zone, transitions

ZONES = [
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Santiago",
    "America/Havana",
    "Europe/Dublin",
    "Europe/Berlin",
    "America/New_York",
]
# (every, offset); 7s, 7m and 48h do not divide a day.
GRIDS = [
    ("1s", None),
    ("7s", None),
    ("90s", None),
    ("5m", None),
    ("45m", None),
    ("90m", None),
    ("90m", "15m"),
    ("1h", None),
    ("6h", None),
    ("6h", "1h"),
    ("24h", None),
    ("7m", None),
    ("48h", None),
]
SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)
NAIVE_EPOCH = datetime(1970, 1, 1)


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600}
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


def windows(zone: str) -> list[datetime]:
    """The instants of the zone's 2026 transitions, or a plain day where it has none."""
    z = get_zone(zone)
    found = transitions(z, datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    return [t.instant for t in found] or [datetime(2026, 3, 29, 12, tzinfo=UTC)]


def _offsets(z: ZoneInfo, start: datetime, end: datetime) -> set[timedelta]:
    out = set()
    t = start
    while t <= end:
        off = t.astimezone(z).utcoffset()
        assert off is not None
        out.add(off)
        t += timedelta(minutes=15)
    return out


def _instants(wall: datetime, z: ZoneInfo, offsets: set[timedelta]) -> list[datetime]:
    """Every instant whose local wall time is ``wall``."""
    out = []
    for off in offsets:
        instant = (wall - off).replace(tzinfo=UTC)
        if instant.astimezone(z).utcoffset() == off:
            out.append(instant)
    return sorted(out)


def _gap_end(wall: datetime, z: ZoneInfo, offsets: set[timedelta]) -> tuple[datetime, timedelta]:
    """For a wall time that does not exist: the first instant after the gap, and the jump."""
    lo = (wall - max(offsets)).replace(tzinfo=UTC)  # local time before the gap
    hi = (wall - min(offsets)).replace(tzinfo=UTC)  # local time after it
    while hi - lo > SECOND:
        mid = lo + (hi - lo) // 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(z).replace(tzinfo=None) < wall:
            lo = mid
        else:
            hi = mid
    before, after = lo.astimezone(z).utcoffset(), hi.astimezone(z).utcoffset()
    assert before is not None and after is not None
    return hi, after - before


def oracle(zone: str, every: str, offset: str | None, start: datetime, end: datetime) -> list:  # type: ignore[type-arg]
    """The ticks in (start, end], from the rule in the module doc."""
    z = get_zone(zone)
    d = _duration(every)
    off = _duration(offset) if offset else timedelta(0)
    if DAY % d:  # counts from the Unix epoch
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        k = (start - epoch - off) // d + 1
        out = []
        while (tick := epoch + off + k * d) <= end:
            out.append(tick)
            k += 1
        return out
    offsets = _offsets(z, start - DAY, end + DAY)
    local = start.astimezone(z).replace(tzinfo=None) - timedelta(hours=4)
    wall = NAIVE_EPOCH + off + ((local - NAIVE_EPOCH - off) // d) * d
    last = end.astimezone(z).replace(tzinfo=None) + timedelta(hours=4)
    found: set[datetime] = set()
    while wall <= last:
        instants = _instants(wall, z, offsets)
        if not instants:
            moved, jump = _gap_end(wall, z, offsets)
            if d > jump:
                found.add(moved)
        elif len(instants) == 2 and d > instants[1] - instants[0]:
            found.add(instants[0])
        else:
            found.update(instants)
        wall += d
    return sorted(t for t in found if start < t <= end)


def pyjob_ticks(zone: str, every: str, offset: str | None, start: datetime, end: datetime) -> list:  # type: ignore[type-arg]
    text = f"every {every} align" + (f" offset {offset}" if offset else "")
    sched = Schedule(parse(text, tz=zone, env={}))
    out = []
    for tick in sched.ticks(start, None):
        if tick.instant > end:
            return out
        out.append(tick.instant)
    return out  # pragma: no cover


def _span(every: str) -> timedelta:
    d = _duration(every)
    if d < timedelta(minutes=1):
        return timedelta(hours=2)
    return timedelta(days=3) if d >= timedelta(hours=6) else timedelta(days=1)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(("every", "offset"), GRIDS)
def test_aligned_grid_matches_the_rule(zone: str, every: str, offset: str | None) -> None:
    for instant in windows(zone):
        start, end = instant - _span(every), instant + _span(every)
        expected = oracle(zone, every, offset, start, end)
        assert expected, (zone, every, instant)
        assert pyjob_ticks(zone, every, offset, start, end) == expected, (zone, every, instant)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("every", ["90s", "45m", "90m", "1h", "6h", "24h", "7m"])
def test_every_start_within_the_day_yields_the_same_grid(zone: str, every: str) -> None:
    for instant in windows(zone):
        day_start = instant - timedelta(hours=12)
        expected = oracle(zone, every, None, day_start - DAY, day_start + 4 * DAY)
        for k in range(40):  # 40 starts spread over the day, none on a round minute
            start = day_start + k * timedelta(minutes=36, seconds=7, microseconds=250)
            sched = Schedule(parse(f"every {every} align", tz=zone, env={}))
            got = [t.instant for t in sched.ticks(start, 3)]
            assert got == [t for t in expected if t > start][:3], (zone, every, start)


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        # issue 15's examples
        (
            "every 24h align tz America/New_York",
            "2026-10-31T00:00-04:00",
            ["2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00"],
        ),
        (
            "every 6h align tz America/New_York",
            "2026-10-31T23:00-04:00",
            [
                "2026-11-01T00:00:00-04:00",
                "2026-11-01T06:00:00-05:00",
                "2026-11-01T12:00:00-05:00",
                "2026-11-01T18:00:00-05:00",
            ],
        ),
        (
            "every 24h align tz America/Santiago",
            "2026-09-05T12:00-04:00",
            ["2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"],
        ),
        (
            "every 90m align tz Europe/Berlin",
            "2026-03-28T23:59+01:00",
            ["2026-03-29T00:00:00+01:00", "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00"],
        ),
    ],
)
def test_issue_15_aligned_examples(text: str, start: str, expected: list[str]) -> None:
    sched = Schedule(parse(text, env={}))
    ticks = sched.ticks(datetime.fromisoformat(start), len(expected))
    assert [t.instant.astimezone(sched.zone).isoformat() for t in ticks] == expected


def test_every_1h_align_fires_25_times_on_a_25_hour_day() -> None:
    sched = Schedule(parse("every 1h align tz America/New_York", env={}))
    start = datetime.fromisoformat("2026-11-01T00:00-04:00") - SECOND
    end = datetime.fromisoformat("2026-11-02T00:00-05:00")
    assert len([t for t in sched.ticks(start, 30) if t.instant < end]) == 25


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Australia/Lord_Howe", "America/Havana"])
@pytest.mark.parametrize("every", ["15m", "90m", "2h"])
def test_one_schedule_walks_from_calm_days_into_a_transition(zone: str, every: str) -> None:
    """A schedule keeps the stretch of days its last tick lay in: with no change of offset for
    days around it, the next tick comes straight from the offset. Walked from such days into a
    transition, one schedule finds the ticks of the rule."""
    for instant in windows(zone):
        start, end = instant - timedelta(days=6), instant + timedelta(days=2)
        assert pyjob_ticks(zone, every, None, start, end) == oracle(zone, every, None, start, end)

"""DST behaviour across both transitions of 2026, zone by zone (DESIGN §3).

Transitions used (from the tz database, 2026):
- Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
- America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
- Australia/Lord_Howe (30-minute shift): 2026-04-05 02:00 +11 -> 01:30 +10:30;
  2026-10-04 02:00 +10:30 -> 02:30 +11.
- Asia/Kolkata: no DST, +05:30 all year (alignment must land on local :00, not UTC :00).
- Europe/Dublin (negative DST in tzdata: winter GMT is the "DST" period):
  2026-03-29 01:00 GMT -> 02:00 IST; 2026-10-25 02:00 IST -> 01:00 GMT.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from pyjob.core.schedule import Schedule, parse


def ticks(text: str, start: str, n: int) -> list[str]:
    sched = Schedule(parse(text, env={}), job_id="t", anchor=datetime.fromisoformat(start))
    return [
        t.instant.astimezone(sched.zone).isoformat()
        for t in sched.ticks(datetime.fromisoformat(start), n)
    ]


CASES = [
    # --- Europe/Berlin, spring forward 2026-03-29
    pytest.param(
        "CRON_TZ=Europe/Berlin 30 2 * * *",
        "2026-03-28T12:00+01:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        id="berlin-spring-fixed-time-in-gap-fires-at-gap-end",
    ),
    pytest.param(
        "CRON_TZ=Europe/Berlin 0 * * * *",
        "2026-03-29T00:30+01:00",
        ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
        id="berlin-spring-wildcard-hour-never-fires-in-gap",
    ),
    pytest.param(
        "CRON_TZ=Europe/Berlin */30 2 * * *",
        "2026-03-28T12:00+01:00",
        ["2026-03-30T02:00:00+02:00"],
        id="berlin-spring-wildcard-minute-in-skipped-hour-does-not-run",
    ),
    pytest.param(
        "every 1h align tz Europe/Berlin",
        "2026-03-29T00:30+01:00",
        ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
        id="berlin-spring-every-1h-align-is-elapsed-time",
    ),
    pytest.param(
        "every 24h align tz Europe/Berlin",
        "2026-03-28T12:00+01:00",
        ["2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"],
        id="berlin-spring-every-24h-align-is-local-midnight",
    ),
    # --- Europe/Berlin, fall back 2026-10-25
    pytest.param(
        "CRON_TZ=Europe/Berlin 30 2 * * *",
        "2026-10-24T12:00+02:00",
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        id="berlin-fall-fixed-time-in-repeat-fires-once-first",
    ),
    pytest.param(
        "CRON_TZ=Europe/Berlin 0 * * * *",
        "2026-10-25T00:30+02:00",
        [
            "2026-10-25T01:00:00+02:00",
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T03:00:00+01:00",
        ],
        id="berlin-fall-wildcard-hour-fires-twice-in-repeat",
    ),
    pytest.param(
        "CRON_TZ=Europe/Berlin */30 2 * * *",
        "2026-10-25T00:30+02:00",
        [
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T02:30:00+01:00",
            "2026-10-26T02:00:00+01:00",
        ],
        id="berlin-fall-wildcard-minute-runs-in-both-hours",
    ),
    pytest.param(
        "every 1h align tz Europe/Berlin",
        "2026-10-25T01:30+02:00",
        ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"],
        id="berlin-fall-every-1h-align-fires-every-real-hour",
    ),
    pytest.param(
        "daily at 02:30 tz Europe/Berlin",
        "2026-10-24T12:00+02:00",
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        id="berlin-fall-daily-fires-once",
    ),
    pytest.param(
        "daily at 02:30 tz Europe/Berlin",
        "2026-03-28T12:00+01:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        id="berlin-spring-daily-moves-to-gap-end",
    ),
    # --- America/New_York
    pytest.param(
        "CRON_TZ=America/New_York 30 2 * * *",
        "2026-03-07T12:00-05:00",
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
        id="new-york-spring-fixed-time-in-gap",
    ),
    pytest.param(
        "CRON_TZ=America/New_York 30 1 * * *",
        "2026-10-31T12:00-04:00",
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        id="new-york-fall-fixed-time-once",
    ),
    pytest.param(
        "CRON_TZ=America/New_York 0 * * * *",
        "2026-11-01T00:30-04:00",
        ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"],
        id="new-york-fall-wildcard-hour-twice",
    ),
    pytest.param(
        "every 1h align tz America/New_York",
        "2026-03-08T00:30-05:00",
        ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00"],
        id="new-york-spring-every-1h-align",
    ),
    # --- Australia/Lord_Howe: 30-minute shifts
    pytest.param(
        "CRON_TZ=Australia/Lord_Howe 15 2 * * *",
        "2026-10-03T12:00+10:30",
        ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"],
        id="lord-howe-spring-half-hour-gap",
    ),
    pytest.param(
        "CRON_TZ=Australia/Lord_Howe 45 1 * * *",
        "2026-04-04T12:00+11:00",
        ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
        id="lord-howe-fall-half-hour-repeat-once",
    ),
    pytest.param(
        "CRON_TZ=Australia/Lord_Howe */15 * * * *",
        "2026-04-05T01:20+11:00",
        [
            "2026-04-05T01:30:00+11:00",
            "2026-04-05T01:45:00+11:00",
            "2026-04-05T01:30:00+10:30",
            "2026-04-05T01:45:00+10:30",
            "2026-04-05T02:00:00+10:30",
        ],
        id="lord-howe-fall-wildcard-repeats-half-hour",
    ),
    pytest.param(
        "CRON_TZ=Australia/Lord_Howe */20 2 * * *",
        "2026-04-05T01:00+11:00",
        ["2026-04-05T02:00:00+10:30", "2026-04-05T02:20:00+10:30", "2026-04-05T02:40:00+10:30"],
        id="lord-howe-fall-wildcard-minute-after-shift",
    ),
    pytest.param(
        "every 1h align tz Australia/Lord_Howe",
        "2026-10-04T00:30+10:30",
        # issue 15: the grid is on the wall clock; 02:00 is skipped by a 30-minute jump, shorter
        # than 1h, so it fires at the gap's end, and the grid stays on :00.
        ["2026-10-04T01:00:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T03:00:00+11:00"],
        id="lord-howe-spring-every-1h-align-moves-skipped-02-00-then-stays-on-the-hour",
    ),
    pytest.param(
        "every 1h align tz Australia/Lord_Howe",
        "2026-10-04T22:59+11:00",
        ["2026-10-04T23:00:00+11:00", "2026-10-05T00:00:00+11:00", "2026-10-05T01:00:00+11:00"],
        id="lord-howe-grid-on-the-hour-after-the-transition-day",
    ),
    # --- Asia/Kolkata: +05:30, no DST
    pytest.param(
        "every 1h align tz Asia/Kolkata",
        "2026-03-29T10:10+05:30",
        ["2026-03-29T11:00:00+05:30", "2026-03-29T12:00:00+05:30"],
        id="kolkata-every-1h-align-lands-on-local-hour",
    ),
    pytest.param(
        "every 24h align tz Asia/Kolkata",
        "2026-10-25T10:00+05:30",
        ["2026-10-26T00:00:00+05:30", "2026-10-27T00:00:00+05:30"],
        id="kolkata-every-24h-align-is-local-not-utc-midnight",
    ),
    pytest.param(
        "CRON_TZ=Asia/Kolkata 0 * * * *",
        "2026-03-29T00:10+05:30",
        ["2026-03-29T01:00:00+05:30", "2026-03-29T02:00:00+05:30", "2026-03-29T03:00:00+05:30"],
        id="kolkata-no-transitions",
    ),
    # --- Europe/Dublin: negative DST
    pytest.param(
        "CRON_TZ=Europe/Dublin 30 1 * * *",
        "2026-03-28T12:00+00:00",
        ["2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"],
        id="dublin-spring-fixed-time-in-gap",
    ),
    pytest.param(
        "CRON_TZ=Europe/Dublin 30 1 * * *",
        "2026-10-24T12:00+01:00",
        ["2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00"],
        id="dublin-fall-fixed-time-once",
    ),
    pytest.param(
        "CRON_TZ=Europe/Dublin 0 * * * *",
        "2026-10-24T23:30+01:00",
        [
            "2026-10-25T00:00:00+01:00",
            "2026-10-25T01:00:00+01:00",
            "2026-10-25T01:00:00+00:00",
            "2026-10-25T02:00:00+00:00",
        ],
        id="dublin-fall-wildcard-hour-twice",
    ),
    pytest.param(
        "every 1h align tz Europe/Dublin",
        "2026-03-29T00:30+00:00",
        ["2026-03-29T02:00:00+01:00", "2026-03-29T03:00:00+01:00"],
        id="dublin-spring-every-1h-align",
    ),
]


@pytest.mark.parametrize(("text", "start", "expected"), CASES)
def test_dst_ticks(text: str, start: str, expected: list[str]) -> None:
    assert ticks(text, start, len(expected)) == expected


def test_tick_after_a_repeated_hour_start_is_strictly_later() -> None:
    # Starting inside the second 02:xx of Berlin's fall-back, a fixed 02:30 job must not go back
    # to the first occurrence (earlier in UTC though later in wall-clock terms).
    sched = Schedule(parse("CRON_TZ=Europe/Berlin 30 2 * * *", env={}))
    after = datetime.fromisoformat("2026-10-25T02:10+01:00")
    nxt = sched.next_tick(after)
    assert nxt is not None and nxt > after
    assert nxt.isoformat() == "2026-10-26T01:30:00+00:00"


def test_ticks_are_marked_for_gap_and_repeat() -> None:
    sched = Schedule(parse("CRON_TZ=Europe/Berlin 30 2 * * *", env={}))
    gap = sched.next_info(datetime.fromisoformat("2026-03-28T12:00+01:00"))
    assert gap is not None and gap.moved_from == datetime(2026, 3, 29, 2, 30)
    rep = sched.next_info(datetime.fromisoformat("2026-10-24T12:00+02:00"))
    assert rep is not None and rep.repeated and rep.moved_from is None
    hourly = Schedule(parse("CRON_TZ=Europe/Berlin 0 * * * *", env={}))
    marks = [t.repeated for t in hourly.ticks(datetime.fromisoformat("2026-10-25T00:30+02:00"), 4)]
    assert marks == [False, True, True, False]

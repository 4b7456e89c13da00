"""Table-driven next_tick for every schedule kind (as gocron tests each job kind's next)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pyjob.core.errors import ScheduleError
from pyjob.core.schedule import Schedule, derive_job_id, parse


def run(text: str, start: str, n: int, *, anchor: str | None = None, job: str = "j") -> list[str]:
    after = datetime.fromisoformat(start)
    sched = Schedule(
        parse(text, env={}, now=after),
        job_id=job,
        anchor=datetime.fromisoformat(anchor) if anchor else after,
    )
    return [t.instant.astimezone(sched.zone).isoformat() for t in sched.ticks(after, n)]


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        ("0 * * * * tz UTC", "2026-01-01T00:00+00:00", ["2026-01-01T01:00:00+00:00"]),
        (
            "*/15 9-10 * * * tz UTC",
            "2026-01-01T10:40+00:00",
            ["2026-01-01T10:45:00+00:00", "2026-01-02T09:00:00+00:00"],
        ),
        (
            "30 */20 * * * * tz UTC",
            "2026-01-01T00:00+00:00",
            ["2026-01-01T00:00:30+00:00", "2026-01-01T00:20:30+00:00"],
        ),
        (
            "5-5 * * * * tz UTC",
            "2026-01-01T00:00+00:00",
            ["2026-01-01T00:05:00+00:00", "2026-01-01T01:05:00+00:00"],
        ),
        ("0 0 * * 7 tz UTC", "2026-01-01T00:00+00:00", ["2026-01-04T00:00:00+00:00"]),
        ("0 0 ? * SUN tz UTC", "2026-01-01T00:00+00:00", ["2026-01-04T00:00:00+00:00"]),
        ("0 0 L * * tz UTC", "2026-02-01T00:00+00:00", ["2026-02-28T00:00:00+00:00"]),
        ("0 0 15W * * tz UTC", "2026-02-01T00:00+00:00", ["2026-02-16T00:00:00+00:00"]),
        ("0 0 * * FRI#2 tz UTC", "2026-01-01T00:00+00:00", ["2026-01-09T00:00:00+00:00"]),
        ("0 0 * * L5 tz UTC", "2026-01-01T00:00+00:00", ["2026-01-30T00:00:00+00:00"]),
        # Vixie: dom restricted, dow starts with * -> both must match (a Monday the 1st or 15th)
        ("0 0 1,15 * */7 tz UTC", "2026-01-01T00:00+00:00", ["2026-02-01T00:00:00+00:00"]),
        # both restricted -> either: the 13th, or any Friday
        (
            "0 0 13 * FRI tz UTC",
            "2026-02-10T00:00+00:00",
            ["2026-02-13T00:00:00+00:00", "2026-02-20T00:00:00+00:00"],
        ),
        ("@hourly tz UTC", "2026-01-01T00:59:59+00:00", ["2026-01-01T01:00:00+00:00"]),
        ("@yearly tz UTC", "2026-01-01T00:00+00:00", ["2027-01-01T00:00:00+00:00"]),
        (
            "0 9 * * MON-FRI tz Asia/Tokyo",
            "2026-01-02T10:00+09:00",
            ["2026-01-05T09:00:00+09:00", "2026-01-06T09:00:00+09:00"],
        ),
    ],
)
def test_cron(text: str, start: str, expected: list[str]) -> None:
    assert run(text, start, len(expected)) == expected


def test_cron_tz_prefix_sets_zone_and_tz_option_wins() -> None:
    spec = parse("CRON_TZ=Asia/Tokyo 0 9 * * *", env={})
    assert spec.zone == "Asia/Tokyo"
    assert parse("TZ=Asia/Tokyo 0 9 * * *", env={}).zone == "Asia/Tokyo"
    assert parse("CRON_TZ=Asia/Tokyo 0 9 * * *", tz="UTC", env={}).zone == "UTC"
    assert parse("0 9 * * *", env={"PYJOB_TZ": "Europe/Paris"}).zone == "Europe/Paris"
    assert parse("0 9 * * *", env={"TZ": "America/Lima"}).zone == "America/Lima"


def test_hash_is_stable_per_job_and_spreads_jobs() -> None:
    start = "2026-01-01T00:00+00:00"
    a = run("H H * * * tz UTC", start, 2, job="backup")
    assert a == run("H H * * * tz UTC", start, 2, job="backup")
    minutes = {run("H * * * * tz UTC", start, 1, job=f"job{i}")[0][14:16] for i in range(40)}
    assert len(minutes) > 10
    steps = run("H/15 * * * * tz UTC", start, 4, job="x")
    mins = [int(t[14:16]) for t in steps]
    assert mins[0] < 15 and [m - mins[0] for m in mins] == [0, 15, 30, 45]
    ranged = {int(run("H(0-9) 0 * * * tz UTC", start, 1, job=f"j{i}")[0][14:16]) for i in range(30)}
    assert ranged <= set(range(10))


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        # every: from the anchor (the start), first tick one interval later
        (
            "every 90s",
            "2026-01-01T00:00:10+00:00",
            ["2026-01-01T00:01:40+00:00", "2026-01-01T00:03:10+00:00"],
        ),
        (
            "@every 250ms",
            "2026-01-01T00:00:00+00:00",
            ["2026-01-01T00:00:00.250000+00:00", "2026-01-01T00:00:00.500000+00:00"],
        ),
        # aligned, not dividing a day: the Unix-epoch grid
        # 2026-01-01T00:00Z is 1767225600 s after the epoch, a multiple of 420 s
        (
            "every 7m align",
            "2026-01-01T00:01:00+00:00",
            ["2026-01-01T00:07:00+00:00", "2026-01-01T00:14:00+00:00"],
        ),
        (
            "every 1h align offset 15m tz UTC",
            "2026-01-01T00:20:00+00:00",
            ["2026-01-01T01:15:00+00:00", "2026-01-01T02:15:00+00:00"],
        ),
        (
            "every 5m align offset 7m tz UTC",
            "2026-01-01T00:00:00+00:00",
            ["2026-01-01T00:02:00+00:00", "2026-01-01T00:07:00+00:00"],
        ),
        (
            "every 250ms align tz UTC",
            "2026-01-01T00:00:00.100+00:00",
            ["2026-01-01T00:00:00.250000+00:00", "2026-01-01T00:00:00.500000+00:00"],
        ),
        # on a boundary exactly: strictly after
        ("every 5m align tz UTC", "2026-01-01T00:05:00+00:00", ["2026-01-01T00:10:00+00:00"]),
    ],
)
def test_every(text: str, start: str, expected: list[str]) -> None:
    assert run(text, start, len(expected)) == expected


def test_every_with_start_at_fires_at_start_first() -> None:
    assert run("every 10m start-at 2026-01-01T00:03Z", "2026-01-01T00:00+00:00", 2) == [
        "2026-01-01T00:03:00+00:00",
        "2026-01-01T00:13:00+00:00",
    ]


def test_aligned_ticks_agree_whenever_an_instance_started() -> None:
    a = run("every 5m align tz Europe/Berlin", "2026-01-01T00:01:07+00:00", 5)
    b = run("every 5m align tz Europe/Berlin", "2026-01-01T00:03:59+00:00", 5)
    assert a == b


def test_random_every_is_in_range_and_repeatable() -> None:
    start = "2026-01-01T00:00:00+00:00"
    got = run("every 1m..2m", start, 50)
    assert got == run("every 1m..2m", start, 50)
    prev = datetime.fromisoformat(start)
    for t in got:
        cur = datetime.fromisoformat(t)
        assert 60 <= (cur - prev).total_seconds() < 120
        prev = cur
    assert got != run("every 1m..2m", start, 50, job="other")


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        (
            "daily at 09:00,17:30 tz UTC",
            "2026-01-01T10:00+00:00",
            ["2026-01-01T17:30:00+00:00", "2026-01-02T09:00:00+00:00"],
        ),
        ("daily tz UTC", "2026-01-01T10:00+00:00", ["2026-01-02T00:00:00+00:00"]),
        # days since 1970-01-01: 2026-01-01 is day 20454, even
        (
            "daily at 12:00 interval 2 tz UTC",
            "2026-01-01T00:00+00:00",
            ["2026-01-01T12:00:00+00:00", "2026-01-03T12:00:00+00:00"],
        ),
        # 20454 = 3 x 6818, so 2026-01-01 is on for interval 3 as well
        (
            "daily at 12:00 interval 3 tz UTC",
            "2026-01-02T00:00+00:00",
            ["2026-01-04T12:00:00+00:00", "2026-01-07T12:00:00+00:00"],
        ),
        (
            "weekly on MON,FRI at 08:00 tz UTC",
            "2026-01-01T00:00+00:00",
            ["2026-01-02T08:00:00+00:00", "2026-01-05T08:00:00+00:00"],
        ),
        (
            "weekly on SAT-SUN at 08:00 tz UTC",
            "2026-01-01T00:00+00:00",
            ["2026-01-03T08:00:00+00:00", "2026-01-04T08:00:00+00:00"],
        ),
        # ISO weeks since Monday 1970-01-05: the week of 2026-01-05 is week 2922 (even)
        (
            "weekly on MON at 08:00 interval 2 tz UTC",
            "2026-01-01T00:00+00:00",
            ["2026-01-05T08:00:00+00:00", "2026-01-19T08:00:00+00:00"],
        ),
        (
            "weekly on MON at 08:00 interval 2 tz UTC",
            "2026-01-06T00:00+00:00",
            ["2026-01-19T08:00:00+00:00"],
        ),
        (
            "monthly on 1,15 at 06:00 tz UTC",
            "2026-01-10T00:00+00:00",
            ["2026-01-15T06:00:00+00:00", "2026-02-01T06:00:00+00:00"],
        ),
        (
            "monthly on -1 at 23:00 tz UTC",
            "2026-01-31T23:30+00:00",
            ["2026-02-28T23:00:00+00:00", "2026-03-31T23:00:00+00:00"],
        ),
        (
            "monthly on -2 tz UTC",
            "2026-02-01T00:00+00:00",
            ["2026-02-27T00:00:00+00:00", "2026-03-30T00:00:00+00:00"],
        ),
        # a day a month lacks is skipped that month
        (
            "monthly on 31 tz UTC",
            "2026-01-31T12:00+00:00",
            ["2026-03-31T00:00:00+00:00", "2026-05-31T00:00:00+00:00"],
        ),
        ("monthly on -31 tz UTC", "2026-01-02T00:00+00:00", ["2026-03-01T00:00:00+00:00"]),
        # 31 and -1 coincide in a 31-day month: once
        (
            "monthly on 31,-1 tz UTC",
            "2026-01-02T00:00+00:00",
            ["2026-01-31T00:00:00+00:00", "2026-02-28T00:00:00+00:00"],
        ),
        # months since 1970-01: 2026-01 is month 672 (divisible by 3)
        (
            "monthly on 1 interval 3 tz UTC",
            "2026-01-02T00:00+00:00",
            ["2026-04-01T00:00:00+00:00", "2026-07-01T00:00:00+00:00"],
        ),
    ],
)
def test_calendar(text: str, start: str, expected: list[str]) -> None:
    assert run(text, start, len(expected)) == expected


# The calendar ends on 9999-12-31 (Python's last date): every kind yields its ticks up to there,
# in the job's zone as in UTC, and then ends (issue 27 item 2), never an error. America/Los_Angeles
# is -08:00, so its last day is cut at 16:00 local, where UTC ends; Pacific/Kiritimati is +14:00,
# so its last day ends at 9999-12-31T10:00Z. (A sweep of every kind in nine zones found these.)
@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        ("monthly on 15 at 00:00 tz UTC", "9999-12-01T00:00+00:00", ["9999-12-15T00:00:00+00:00"]),
        (
            "monthly on -1 at 23:59 tz UTC",
            "9999-11-15T00:00+00:00",
            ["9999-11-30T23:59:00+00:00", "9999-12-31T23:59:00+00:00"],
        ),
        (
            "monthly on 31 at 00:00 interval 5 tz UTC",
            "9999-06-01T00:00+00:00",
            ["9999-08-31T00:00:00+00:00"],
        ),
        (
            "every 1h align tz America/Los_Angeles",
            "9999-12-31T20:00+00:00",
            ["9999-12-31T13:00:00-08:00", "9999-12-31T14:00:00-08:00", "9999-12-31T15:00:00-08:00"],
        ),
        (  # an epoch grid shown in a zone where its later ticks are already in year 10000
            "every 7h align tz Pacific/Kiritimati",
            "9999-12-30T12:00+00:00",
            ["9999-12-31T04:00:00+14:00", "9999-12-31T11:00:00+14:00", "9999-12-31T18:00:00+14:00"],
        ),
    ],
)
def test_every_kind_ends_with_the_calendar(text: str, start: str, expected: list[str]) -> None:
    assert run(text, start, 100) == expected


def test_next_shows_the_last_tick_of_the_calendar_then_the_end(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["next", "monthly on 15 at 00:00", "--from", "9999-12-01"])
    assert result.exit_code == 0, result.output
    assert "Ticks:     1, then the schedule ends" in result.output
    assert "Wed 9999-12-15 00:00:00 UTC  9999-12-15T00:00:00Z" in result.output
    args = ["every 7h align", "--tz", "Pacific/Kiritimati", "--from", "9999-12-31T00:00Z"]
    plain = invoke(["next", *args, "-n", "9", "--format", "plain"])
    assert plain.exit_code == 0 and plain.output.splitlines()[-1] == "9999-12-31T18:00:00+14:00"


def test_once_drops_past_times_and_ends() -> None:
    text = "once at 2025-06-01T00:00Z,2026-03-01T09:00,2026-02-01T09:00 tz Europe/Berlin"
    assert run(text, "2026-01-01T00:00+00:00", 5) == [
        "2026-02-01T08:00:00+00:00",
        "2026-03-01T08:00:00+00:00",
    ]
    spec = parse(text, env={}, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert str(spec) == "once at 2026-02-01T08:00:00Z,2026-03-01T08:00:00Z"


def test_once_all_past_is_an_error() -> None:
    with pytest.raises(ScheduleError, match="in the past"):
        parse("once at 2020-01-01T00:00Z", env={}, now=datetime(2026, 1, 1, tzinfo=UTC))


def test_bounds() -> None:
    text = "every 1h align tz UTC start-at 2026-01-01T05:00Z stop-at 2026-01-01T07:00Z"
    assert run(text, "2026-01-01T00:00+00:00", 10) == [
        "2026-01-01T05:00:00+00:00",
        "2026-01-01T06:00:00+00:00",
        "2026-01-01T07:00:00+00:00",
    ]
    assert run(text, "2026-01-01T07:00+00:00", 1) == []


def test_stop_before_start_is_an_error() -> None:
    with pytest.raises(ScheduleError, match="before start-at"):
        parse("every 1h start-at 2026-01-02T00:00Z stop-at 2026-01-01T00:00Z", env={})


def test_next_tick_is_pure_and_strictly_after() -> None:
    sched = Schedule(parse("*/5 * * * * tz UTC", env={}))
    after = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    assert (
        sched.next_tick(after) == sched.next_tick(after) == datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    )
    with pytest.raises(ValueError):
        sched.next_tick(datetime(2026, 1, 1))


def test_job_id_is_stable_and_depends_on_schedule_zone_and_command() -> None:
    a = parse("0 * * * *", env={"TZ": "UTC"})
    assert derive_job_id(a, ["echo", "hi"]) == derive_job_id(a, ["echo", "hi"])
    assert derive_job_id(a, ["echo", "hi"]) != derive_job_id(a, ["echo", "ho"])
    b = parse("0 * * * *", env={"TZ": "Europe/Berlin"})
    assert derive_job_id(a, ["x"]) != derive_job_id(b, ["x"])
    assert derive_job_id(a, ["x"]).startswith("job-")

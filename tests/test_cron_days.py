"""Cron day fields through the CLI (issue 15): L, LW, nW (in lists too), d#n, dL and Ld, with
day-of-month OR day-of-week whenever neither starts with *, and day-of-week a/n up to 7 = Sunday.
The fake clock is 2026-11-27 22:00Z; every case gives its own --from."""

from __future__ import annotations

import json
from datetime import datetime

import pytest


def plain(invoke, expr: str, n: int = 4, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    result = invoke(
        ["next", expr, "--tz", "UTC", "--from", "2026-01-01T00:00Z", "-n", str(n),
         "--format", "plain", *extra]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return [line[:10] for line in result.output.splitlines()]


@pytest.mark.parametrize(
    ("expr", "days"),
    [
        # issue 15 item 1: OR with # and L in day-of-week, W in day-of-month
        ("0 0 1 * L5", ["2026-01-30", "2026-02-01", "2026-02-27", "2026-03-01"]),
        ("0 0 1 * 5L", ["2026-01-30", "2026-02-01", "2026-02-27", "2026-03-01"]),
        ("0 0 1 * FRIL", ["2026-01-30", "2026-02-01", "2026-02-27", "2026-03-01"]),
        ("0 0 1 * MON#1", ["2026-01-05", "2026-02-01", "2026-02-02", "2026-03-01"]),
        ("0 0 15W * FRI", ["2026-01-02", "2026-01-09", "2026-01-15", "2026-01-16"]),
        # a day field starting with * (or ?) means both must match
        ("0 0 ? * MON#1", ["2026-01-05", "2026-02-02", "2026-03-02", "2026-04-06"]),
        ("0 0 */2 * 5L", ["2026-02-27", "2026-03-27", "2026-05-29", "2026-07-31"]),
        # W in lists; LW; a 1st that is a Saturday moves to Monday the 3rd, never out of the month
        ("0 0 1W,15W * *", ["2026-01-15", "2026-02-02", "2026-02-16", "2026-03-02"]),
        ("0 0 LW * *", ["2026-01-30", "2026-02-27", "2026-03-31", "2026-04-30"]),
        ("0 0 1W 8 *", ["2026-08-03", "2027-08-02", "2028-08-01", "2029-08-01"]),
        ("0 0 31W 5 *", ["2026-05-29", "2027-05-31", "2028-05-31", "2029-05-31"]),
        # issue 15 item 2: day-of-week a/n runs from a up to 7 = Sunday (cronsim)
        ("0 0 * * 7/1", ["2026-01-04", "2026-01-11", "2026-01-18", "2026-01-25"]),
        ("0 0 * * 5/2", ["2026-01-02", "2026-01-04", "2026-01-09", "2026-01-11"]),
        ("0 0 * * SAT/1", ["2026-01-03", "2026-01-04", "2026-01-10", "2026-01-11"]),
    ],
)
def test_day_fields(invoke, expr: str, days: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert plain(invoke, expr) == days


def test_fourth_sunday_or_the_26th_in_luxembourg(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(
        ["next", "54 12 26 OCT SUN#4", "--tz", "Europe/Luxembourg", "--from", "2026-10-01",
         "-n", "3", "--format", "plain"]
    )  # fmt: skip
    assert result.output.split() == [
        "2026-10-25T12:54:00+01:00",
        "2026-10-26T12:54:00+01:00",
        "2027-10-24T12:54:00+02:00",
    ]


@pytest.mark.parametrize(
    ("expr", "normalized", "means"),
    [
        ("0 0 1 * MON#1", "0 0 1 * MON#1", "at 00:00 on the 1st or on the 1st Monday of the month"),
        ("0 0 1 * 5L", "0 0 1 * L5", "at 00:00 on the 1st or on the last Friday of the month"),
        ("0 0 15W * FRI", "0 0 15W * FRI", "at 00:00 on the weekday nearest the 15th or on Friday"),
        ("0 0 LW * *", "0 0 LW * *", "at 00:00 on the last weekday of the month"),
        ("0 0 * * 7/1", "0 0 * * 7/1", "at 00:00 on Sunday"),
        ("0 0 * * 1/2", "0 0 * * 1/2", "at 00:00 on Monday, Wednesday, Friday and Sunday"),
        ("0 0 ? * MON#1", "0 0 * * MON#1", "at 00:00 on the 1st Monday of the month"),
    ],
)
def test_validate_describes_the_days(invoke, expr: str, normalized: str, means: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(invoke(["validate", expr, "--tz", "UTC", "--format", "json"]).output)
    checked = doc["schedules"][0]
    assert checked["normalized"] == f"CRON_TZ=UTC {normalized}"
    assert checked["description"] == f"{means} (UTC)"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 0 1-5W * *", "bad day-of-month '1-5W' (W takes one day, like 15W or LW, not a range"),
        ("0 0 15W/2 * *", "bad day-of-month '15W/2' (W takes one day"),
        ("0 0 32W * *", "bad day-of-month '32W' (nW needs a day 1-31)"),
        ("0 0 * * L", "bad day-of-week 'L' (L needs one weekday, like 5L or FRIL"),
        ("0 0 * * 1-5L", "bad day-of-week '1-5L' (L needs one weekday"),
        ("0 0 * * 8L", "bad day-of-week '8' (0-7)"),
        ("0 0 * * FRI#6", "bad day-of-week 'FRI#6' (the n in day#n is 1-5)"),
        ("0 0 30W 2 *", "can never fire"),
        ("0 0 31 2 *", "can never fire"),
    ],
)
def test_bad_day_fields(invoke, expr: str, message: str) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["validate", expr])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1


def test_next_local_column_uses_the_job_zone_for_epoch_grids(invoke) -> None:  # type: ignore[no-untyped-def]
    # issue 15 item 4: 5h does not divide a day, so the grid counts from the epoch (00:00Z,
    # 05:00Z, ...), but the Local column shows it in the job's zone.
    result = invoke(["next", "every 5h align", "--tz", "Asia/Kolkata", "-n", "2"])
    lines = result.output.splitlines()
    assert lines[3].startswith("1  Sat 2026-11-28 05:30:00 IST  2026-11-28T00:00:00Z"), lines
    doc = json.loads(
        invoke(["next", "every 5h align", "--tz", "Asia/Kolkata", "--format", "json"]).output
    )
    assert doc["zone"] == "Asia/Kolkata" and doc["schedule"] == "every 5h align"
    assert doc["ticks"][0]["local"] == "2026-11-28T05:30:00+05:30"


def test_jobs_on_one_resolved_expression_share_its_compiled_form() -> None:
    """A file of thousands of jobs on a few schedules holds a few compiled forms (memory), and
    H still resolves per job: two jobs whose H fields differ never share one."""
    from pyjob.core.cron import parse_cron, wall_clock

    plain = parse_cron("0 0 1 1 *")
    assert wall_clock(plain, "job-a") is wall_clock(plain, "job-b")
    hashed = parse_cron("H H * * *")
    a, b = wall_clock(hashed, "job-a"), wall_clock(hashed, "job-b")
    assert (a.minutes, a.hours) != (b.minutes, b.hours)
    assert wall_clock(hashed, "job-a") is a
    # and the shared form answers as a fresh one of the resolved expression
    from pyjob.core.cron import WallClock

    resolved = WallClock(("0", str(a.minutes[0]), str(a.hours[0]), "*", "*", "*"), False)
    for after in (datetime(2026, 3, 1, 12, 0), datetime(2026, 12, 31, 23, 59, 59)):
        assert a.next_after(after) == resolved.next_after(after)

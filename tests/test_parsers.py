"""Parsers: exact messages naming the bad part, normalization, durations."""

from __future__ import annotations

import pytest
from pyjob.core.durations import DAY, HOUR, MINUTE, SECOND, format_duration, parse_duration
from pyjob.core.errors import DurationError, InputError, ScheduleError, ZoneError
from pyjob.core.schedule import parse


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("250ms", 250_000),
        ("90s", 90 * SECOND),
        ("5m", 5 * MINUTE),
        ("1h30m", HOUR + 30 * MINUTE),
        ("1.5h", HOUR + 30 * MINUTE),
        ("2d", 2 * DAY),
        ("1d2h3m4s5ms6us", DAY + 2 * HOUR + 3 * MINUTE + 4 * SECOND + 5006),
        ("1000ns", 1),
        ("+5s", 5 * SECOND),
        (".5s", 500_000),
    ],
)
def test_parse_duration(text: str, us: int) -> None:
    assert parse_duration(text) == us


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "zero duration '0': must be positive"),
        ("0s", "zero duration '0s': must be positive"),
        ("-5m", "negative duration '-5m': must be positive"),
        ("5", "bad duration '5' at '5' (like 250ms, 90s, 5m, 1h30m or 2d)"),
        ("5x", "bad duration '5x' at '5x' (like 250ms, 90s, 5m, 1h30m or 2d)"),
        ("1h 30m", "bad duration '1h 30m' at ' 30m' (did you mean '1h30m'?)"),
        ("", "empty duration (like 250ms, 90s, 5m, 1h30m or 2d)"),
        ("10ns", "duration '10ns' is finer than a microsecond"),
        ("9999999999999d", "duration '9999999999999d' is too large (at most 36525d, 100 years)"),
        ("36526d", "duration '36526d' is too large (at most 36525d, 100 years)"),
    ],
)
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert str(info.value) == message


def test_zero_offset_is_allowed_where_asked() -> None:
    assert parse_duration("0", allow_zero=True) == 0


@pytest.mark.parametrize("us", [1, 999, 1000, SECOND, 90 * SECOND, DAY + 1, 3 * DAY + 5 * HOUR])
def test_format_duration_round_trips(us: int) -> None:
    assert parse_duration(format_duration(us)) == us


@pytest.mark.parametrize(
    ("text", "message", "pos", "length"),
    [
        ("61 * * * *", "bad minute '61' (0-59)", 0, 2),
        ("0 24 * * *", "bad hour '24' (0-23)", 2, 2),
        ("0 0 0 * *", "bad day-of-month '0' (1-31)", 4, 1),
        ("0 0 * 13 *", "bad month '13' (1-12)", 6, 2),
        ("0 0 * FOO *", "bad month 'FOO' (1-12 or JAN-DEC)", 6, 3),
        ("0 0 * * 8", "bad day-of-week '8' (0-7)", 8, 1),
        ("0 0 * * MON-XYZ", "bad day-of-week 'XYZ' (0-7 or SUN-SAT)", 12, 3),
        ("5-2 * * * *", "bad minute '5-2' (range start after its end)", 0, 3),
        ("*/0 * * * *", "bad minute '*/0' (the step after / is 1-60)", 0, 3),
        ("0,,5 * * * *", "bad minute '0,,5' (empty item in list)", 0, 4),
        ("60 0 * * * *", "bad second '60' (0-59)", 0, 2),
        ("0 0 * * FRI#6", "bad day-of-week 'FRI#6' (the n in day#n is 1-5)", 8, 5),
        (
            "* * *",
            "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 "
            "with seconds first; got 3 in '* * *'",
            0,
            5,
        ),
        (
            "0 0 31 2 *",
            "'0 0 31 2 *' can never fire: no date matches its day-of-month, month and "
            "day-of-week fields",
            0,
            10,
        ),
    ],
)
def test_cron_errors_name_field_and_token(text: str, message: str, pos: int, length: int) -> None:
    with pytest.raises(ScheduleError) as info:
        parse(text, env={"TZ": "UTC"})
    assert info.value.message == message
    assert (info.value.pos, info.value.length) == (pos, length)


def test_a_field_parsed_before_is_placed_anew_in_each_expression() -> None:
    """Fields are normalized once per text (a crontab repeats them); their errors are not kept,
    so each expression reports its own place and source."""
    assert str(parse("0 1,2 * * *", env={"TZ": "UTC"}).rule) == str(
        parse("0 1,2 * * *", env={"TZ": "UTC"}).rule
    )
    for text, pos in [("0 99 * * *", 2), ("99 0 * * *", 0), ("CRON_TZ=UTC 0 99 * * *", 14)]:
        with pytest.raises(ScheduleError) as info:
            parse(text, env={"TZ": "UTC"})
        assert (info.value.pos, info.value.source) == (pos, text), text


def test_error_position_accounts_for_prefix() -> None:
    with pytest.raises(ScheduleError) as info:
        parse("CRON_TZ=UTC 0 99 * * *", env={})
    assert info.value.pos == 14 and info.value.source == "CRON_TZ=UTC 0 99 * * *"


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("0  *  * * *", "CRON_TZ=UTC 0 * * * *"),
        ("5-5 * * * *", "CRON_TZ=UTC 5 * * * *"),
        ("00 09 ? jan-mar mon,wed", "CRON_TZ=UTC 0 9 * JAN-MAR MON,WED"),
        ("@weekly", "CRON_TZ=UTC 0 0 * * 0"),
        ("@every 1h30m", "every 1h30m"),
        ("EVERY 300s ALIGN", "every 5m align tz UTC"),
        ("every 90m align", "every 1h30m align tz UTC"),
        ("every 100m align", "every 1h40m align"),
        ("every 1h align offset 0s", "every 1h align tz UTC"),
        ("weekly sun,mon", "weekly on MON,SUN at 00:00 tz UTC"),
        ("weekly on monday at 7:05:09", "weekly on MON at 07:05:09 tz UTC"),
        ("monthly on 15,-1,1-3 at 23:00,01:00", "monthly on 1,2,3,15,-1 at 01:00,23:00 tz UTC"),
        ("daily at 9:00 interval 1", "daily at 09:00 tz UTC"),
    ],
)
def test_normalized_form(text: str, normalized: str) -> None:
    spec = parse(text, env={"TZ": "UTC"})
    assert str(spec) == normalized
    assert parse(normalized, env={"TZ": "Asia/Tokyo"}) == spec


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("CRON_TZ=Mars/Base 0 * * * *", ZoneError, "unknown time zone 'Mars/Base'"),
        ("every 5m offset 1m", ScheduleError, "'offset' needs 'align'"),
        ("every 1m..1m", DurationError, "MIN..MAX needs MIN < MAX"),
        ("every 1m..5m align", ScheduleError, "'align' does not apply to a random interval"),
        ("daily at 24:00", InputError, "bad time of day '24:00'"),
        ("daily on MON", ScheduleError, "daily takes no days"),
        ("weekly", ScheduleError, "weekly needs days"),
        ("weekly on FRI-MON", ScheduleError, "bad weekday range 'FRI-MON'"),
        ("monthly on 32", ScheduleError, "bad day of month '32'"),
        ("monthly on 1 interval 0", ScheduleError, "bad interval '0'"),
        ("every 5m at 09:00", ScheduleError, "'at' does not apply to a every schedule"),
        ("0 * * * * bogus", ScheduleError, "'bogus' is not part of the schedule"),
        ("0 * * * * * *", ScheduleError, "got 7 in"),
        ("daily at 09:00 extra", ScheduleError, "unexpected 'extra'"),
        ("daily at", ScheduleError, "'at' needs a value"),
        ("daily tz UTC tz UTC", ScheduleError, "'tz' given twice"),
        ("@reboot", ScheduleError, "@reboot is not a schedule pyjob has: --run-now runs"),
        ("once at tomorrow", InputError, "bad date-time 'tomorrow'"),
        ("", ScheduleError, "empty schedule"),
        ("CRON_TZ=UTC every 5m tz Asia/Tokyo", ScheduleError, "two zones in one schedule"),
    ],
)
def test_schedule_errors(text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse(text, env={"TZ": "UTC"})

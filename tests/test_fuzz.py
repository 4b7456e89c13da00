"""Fuzzing: any text through any parser gives a schedule or a clean PyjobError, never another
exception; through the CLI, exit 0 or 2 with one `Error:` line, never a traceback."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyjob.cli.env import Env
from pyjob.cli.main import cli
from pyjob.core.clock import FakeClock
from pyjob.core.durations import format_duration, parse_duration
from pyjob.core.errors import PyjobError
from pyjob.core.schedule import Schedule, parse
from pyjob.core.timeparse import parse_datetime, parse_time_of_day
from pyjob.core.zones import get_zone

NOW = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
ENV = {"TZ": "Europe/Berlin"}

_cron_atom = st.sampled_from(
    [
        "*",
        "?",
        "0",
        "5",
        "59",
        "60",
        "61",
        "-1",
        "1-5",
        "5-1",
        "5-5",
        "*/0",
        "*/15",
        "1-30/7",
        "MON",
        "mon-fri",
        "JAN",
        "L",
        "15W",
        "5#2",
        "L5",
        "H",
        "H/15",
        "H(0-29)",
        "H(5-1)",
        "7",
        "",
        ",",
        "1,,2",
        "2-",
        "-",
        "/",
        "x",
        "00",
        "1/0",
        "FRI#9",
        "32",
        "W",
    ]
)
_cron_field = st.lists(_cron_atom, min_size=1, max_size=3).map(",".join)
near_cron = st.tuples(
    st.sampled_from(["", "CRON_TZ=UTC ", "TZ=Europe/Berlin ", "CRON_TZ=Nope/Zone ", "CRON_TZ= "]),
    st.lists(_cron_field, min_size=3, max_size=7),
).map(lambda t: t[0] + " ".join(t[1]))
_word = st.sampled_from(
    [
        "every",
        "daily",
        "weekly",
        "monthly",
        "once",
        "at",
        "on",
        "align",
        "offset",
        "interval",
        "tz",
        "start-at",
        "stop-at",
        "5m",
        "0s",
        "-1m",
        "1m..5m",
        "5m..1m",
        "1h30m",
        "09:00",
        "25:00",
        "9:00,17:30",
        "MON,FRI",
        "MON-SUN",
        "FUN",
        "1,-1",
        "0",
        "32",
        "-32",
        "2",
        "2026-12-01T09:00",
        "2020-01-01",
        "now",
        "@1790000000",
        "UTC",
        "Asia/Kolkata",
        "Bad/Zone",
        "@daily",
        "@every",
        "@reboot",
        "x",
    ]
)
near_phrase = st.lists(_word, min_size=1, max_size=8).map(" ".join)
any_schedule_text = st.one_of(st.text(max_size=40), near_cron, near_phrase)


def _check(text: str) -> None:
    try:
        spec = parse(text, env=ENV, now=NOW)
    except PyjobError:
        return
    # A schedule that parsed must compute ticks and round-trip through its normalized form.
    assert parse(str(spec), env={"TZ": "UTC"}, now=NOW) == spec
    sched = Schedule(spec, job_id="fuzz", anchor=NOW)
    prev = NOW
    for tick in sched.ticks(NOW, 3):
        assert tick.instant > prev
        prev = tick.instant


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_schedule_text)
def test_schedule_parser_never_crashes(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=20),
        st.from_regex(r"[-+]?[0-9.]{0,6}(ns|us|ms|s|m|h|d|x){0,3}", fullmatch=True),
    )
)
def test_duration_parser_never_crashes(text: str) -> None:
    try:
        us = parse_duration(text)
    except PyjobError:
        return
    assert us > 0 and parse_duration(format_duration(us)) == us


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_time_parsers_never_crash(text: str) -> None:
    for parser in (
        lambda: parse_time_of_day(text),
        lambda: parse_datetime(text, get_zone("Europe/Berlin"), NOW),
        lambda: get_zone(text),
    ):
        with contextlib.suppress(PyjobError):
            parser()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["next", "validate"]),
    any_schedule_text,
    st.sampled_from(
        [[], ["--format", "json"], ["--tz", "Asia/Kolkata"], ["--align"], ["--at", "25:00"]]
    ),
)
def test_cli_gives_exit_0_or_2_and_no_traceback(command: str, text: str, extra: list[str]) -> None:
    env = Env(clock=FakeClock(NOW), environ=ENV, stdout_terminal=False, stderr_terminal=False)
    result = CliRunner().invoke(
        cli,
        [command, "--", text, *extra] if text.startswith("-") else [command, text, *extra],
        obj=env,
    )
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=12), st.sampled_from([[], ["--offset", "7s"], ["--format", "unix"]]))
def test_align_cli_gives_exit_0_or_2(interval: str, extra: list[str]) -> None:
    env = Env(clock=FakeClock(NOW), environ=ENV, stdout_terminal=False, stderr_terminal=False)
    args = (
        ["align", "--", interval, *extra]
        if interval.startswith("-")
        else ["align", interval, *extra]
    )
    result = CliRunner().invoke(cli, args, obj=env)
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ------------------------------------------------------------- round trip of generated specs

_durations = st.integers(1, 10**6).map(lambda n: n * 1000)  # up to ~17 minutes, ms resolution
_zone = st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata", "America/New_York"])
_times = st.lists(st.times().map(lambda t: t.replace(microsecond=0)), min_size=1, max_size=3)
_instants = st.datetimes(
    min_value=datetime(2027, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


def _phrase(draw_kind: str, data: st.DataObject) -> str:
    zone = data.draw(_zone)
    if draw_kind == "every":
        d = data.draw(_durations)
        text = f"every {format_duration(d)}"
        if data.draw(st.booleans()):
            text += " align"
            if data.draw(st.booleans()):
                text += f" offset {format_duration(data.draw(_durations))}"
        return text + f" tz {zone}"
    if draw_kind == "random":
        lo = data.draw(_durations)
        return f"every {format_duration(lo)}..{format_duration(lo + data.draw(_durations))}"
    at = ",".join(t.strftime("%H:%M:%S") for t in data.draw(_times))
    interval = data.draw(st.integers(1, 12))
    if draw_kind == "daily":
        return f"daily at {at} interval {interval} tz {zone}"
    if draw_kind == "weekly":
        days = data.draw(st.lists(st.sampled_from(["MON", "TUE", "SUN", "sat"]), min_size=1))
        return f"weekly on {','.join(days)} at {at} interval {interval} tz {zone}"
    if draw_kind == "monthly":
        days = data.draw(st.lists(st.integers(1, 31) | st.integers(-31, -1), min_size=1))
        return f"monthly on {','.join(map(str, days))} at {at} tz {zone}"
    instants = data.draw(st.lists(_instants, min_size=1, max_size=3))
    return "once at " + ",".join(i.isoformat() for i in instants)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["every", "random", "daily", "weekly", "monthly", "once"]), st.data())
def test_normalized_form_parses_back_to_the_same_schedule(kind: str, data: st.DataObject) -> None:
    text = _phrase(kind, data)
    bounds = data.draw(
        st.sampled_from(["", " start-at 2027-02-01T00:00Z", " stop-at 2031-01-01T00:00Z"])
    )
    spec = parse(text + bounds, env=ENV, now=NOW)
    normalized = str(spec)
    again = parse(normalized, env={"TZ": "UTC"}, now=NOW)
    assert again == spec
    assert str(again) == normalized
    a = Schedule(spec, job_id="x", anchor=NOW)
    b = Schedule(again, job_id="x", anchor=NOW)
    start = NOW + timedelta(days=data.draw(st.integers(0, 800)))
    assert [t.instant for t in a.ticks(start, 5)] == [t.instant for t in b.ticks(start, 5)]

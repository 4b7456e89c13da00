"""Fuzzing: any text through any parser gives a schedule or a clean PyjobError, never another
exception; through the CLI, exit 0 or 2 with one `Error:` line, never a traceback."""

from __future__ import annotations

import contextlib
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyjob.cli.env import Env
from pyjob.cli.main import cli
from pyjob.core.clock import FakeClock
from pyjob.core.durations import MAX_DAYS, format_duration, parse_duration
from pyjob.core.errors import PyjobError
from pyjob.core.schedule import Schedule, parse
from pyjob.core.timeparse import parse_datetime, parse_time_of_day
from pyjob.core.zones import get_zone

from .conftest import pyjob_exe

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
        # after `--` comes the job's command: a text that looks like an option goes in --cron=
        [command, f"--cron={text}", *extra] if text.startswith("-") else [command, text, *extra],
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


# ------------------------------------------- hostile input (issue 14 item 7): huge numbers,
# digits that are not ASCII ('٥', '５', '߅'...), control characters

_non_ascii_digit = st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())
_control = st.characters(categories=["Cc"])
_huge_number = st.integers(20, 6000).map(lambda n: "9" * n)  # over 100 years in any unit
_hostile_number = st.one_of(
    _huge_number,
    st.lists(st.one_of(_non_ascii_digit, st.sampled_from("0123456789")), min_size=1, max_size=4)
    .map("".join)
    .filter(lambda s: not s.isascii()),
    st.tuples(st.text("0123456789", min_size=1, max_size=3), _control).map("".join),
)
_unit = st.sampled_from(["", "s", "m", "h", "d", "ms", "us"])


def _has_bad_char(text: str) -> bool:
    return any(not c.isascii() and c.isdigit() for c in text) or any(
        ord(c) < 32 and not c.isspace() for c in text
    )


@settings(max_examples=300, deadline=None)
@given(_hostile_number, _unit, st.booleans())
def test_duration_parser_rejects_hostile_numbers(number: str, unit: str, fraction: bool) -> None:
    if fraction and number.isascii() and number.isdigit() and len(number) <= 18:
        return  # a plain fraction like 1.999999d is a fine duration
    text = (f"1.{number}" if fraction else number) + (unit or "d")
    try:
        us = parse_duration(text)
    except PyjobError as e:
        assert "\n" not in str(e) and len(str(e)) < 200, str(e)
        return
    raise AssertionError(f"{text[:50]!r} parsed as {us}")


def test_duration_limit_is_what_schedules_can_compute() -> None:
    # The largest duration the parser takes must give ticks, claims and deadlines pyjob can
    # compute: an unaligned schedule's ticks far into the future, and the end of time (9999) as
    # the end of the schedule, not an OverflowError.
    us = parse_duration(f"{MAX_DAYS}d")
    with pytest.raises(PyjobError, match="too large"):
        parse_duration(f"{MAX_DAYS + 1}d")
    sched = Schedule(parse(f"every {MAX_DAYS}d", env=ENV, now=NOW), anchor=NOW)
    ticks = list(sched.ticks(NOW, 1000))
    assert ticks[0].instant == NOW + timedelta(microseconds=us)
    assert len(ticks) == (datetime(9999, 12, 31, tzinfo=UTC) - NOW) // timedelta(microseconds=us)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4), _hostile_number, st.sampled_from(["{}", "{}-30", "*/{}", "1-{}", "{}#2"]))
def test_cron_fields_take_only_ascii_digits(index: int, number: str, shape: str) -> None:
    fields = ["0", "0", "*", "*", "*"]
    fields[index] = shape.format(number)
    text = " ".join(fields)
    if any(c.isspace() for c in number):
        return  # a whitespace control character splits the field: another expression
    with pytest.raises(PyjobError) as raised:
        parse(text, env=ENV, now=NOW)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 250


@pytest.mark.parametrize("text", ["٥ * * * *", "５ * * * *", "0 ٥ * * *", "*/５ * * * *"])
def test_non_ascii_digits_are_not_cron_digits(text: str) -> None:
    with pytest.raises(PyjobError, match=r"bad (minute|hour)"):
        parse(text, env=ENV, now=NOW)


def _pyjob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pyjob_exe(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TZ": "UTC", "PYJOB_NO_CLOCK_CHECK": "1"},
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr[-500:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["run", "next", "validate", "align"]),
    st.sampled_from(["--every", "cron", "--offset", "--timeout", "--jitter"]),
    _hostile_number,
    _unit,
)
def test_real_cli_rejects_hostile_numbers_with_one_error_line(
    command: str, where: str, number: str, unit: str
) -> None:
    if any(c.isspace() for c in number) or "\x00" in number:
        return  # not one argument (a NUL cannot be passed in argv)
    value = number + (unit or "d")
    if command == "align":
        args = ["align", value] if where != "--offset" else ["align", "5m", "--offset", value]
    elif where == "cron":
        args = [command, "-s" if command == "run" else "--cron", f"{number} * * * *"]
    elif where in ("--timeout", "--jitter") and command != "run":
        args = [command, "--every", value]
    elif where == "--offset":
        args = [command, "--every", "5m", "--align", "--offset", value]
    else:
        args = (
            [command, where, value]
            if where == "--every"
            else [command, "--every", "5m", where, value]
        )
    if command == "run":
        args += ["--lock", "none", "--", "true"]
    _one_error_line(_pyjob(*args))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["next", "--every", "1" * 4301 + "s"], "is too large (at most 36525d, 100 years)"),
        (["run", "--every", "1" * 4301 + "s", "--", "true"], "is too large"),
        (["run", "--every", "500000d", "--lock", "none", "--", "true"], "'500000d' is too large"),
        (["next", "--every", "800000d"], "'800000d' is too large"),
        (["next", "٥ * * * *"], "bad minute '٥' (0-59)"),
        (["run", "-s", "５ * * * *", "--", "true"], "bad minute '５' (0-59)"),
        (["validate", "0 0 * * 5#" + "1" * 5000], "(5002 characters)"),
        (["next", "--every", "5\x1bm"], "bad duration '5\\x1bm'"),
        (["next", "0 \x07 * * *"], "bad hour '\\x07' (0-23)"),
        (["next", "--daily", "--at", "٠٩:00"], "bad time of day '٠٩:00'"),
        (["next", "--weekly", "MON", "--interval", "٢"], "bad interval '٢'"),
        (["next", "--every", "1h", "--start-at", "@١٧٩٠٠٠٠٠٠٠"], "bad date-time"),
    ],
)
def test_issue_14_bad_input_gives_one_error_line(args: list[str], message: str) -> None:
    proc = _pyjob(*args)
    _one_error_line(proc)
    assert message in proc.stderr, proc.stderr


def test_schedules_end_at_year_9999_instead_of_crashing() -> None:
    for text in ["0 0 1 1 *", "0 0 29 2 1", "daily at 00:00 interval 1000", "every 36525d align"]:
        sched = Schedule(parse(text, env=ENV, now=NOW), anchor=NOW)
        ticks = list(sched.ticks(NOW, 100_000))
        assert ticks and ticks[-1].instant.year >= 9900, text


# Issue 28, item 13: a jobs file's values and env keys, through validate and run alike.


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string: every character outside printable ASCII escaped."""
    out = []
    for c in text:
        if c in '"\\' or not (" " <= c <= "~"):
            out.append(f"\\U{ord(c):08X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


_env_text = st.text(
    st.one_of(st.sampled_from(["=", "\x00", "A", "_", " ", "\n", "é", "$"]), st.characters()),
    max_size=6,
)
_toml_key = st.sampled_from(
    ["env", "ping", "lock", "name", "command", "shell", "timeout", "tz", "max-runs", "every"]
)
_toml_value = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "http://[::1",
            "http://[::1]:9/x",
            "https://h:99999/",
            "redis://h:0/0",
            "redis://[::1/0",
            "redis://" + "a" * 300 + "/0",
            "postgresql://u@h/db?sslmode=nope",
            "file:",
            "nfs:",
            "none",
            "1s",
            "٣",
            "x\x00y",
            "",
        ]
    ),
)


def _jobs_file(key: str, value: str, env: dict[str, str]) -> str:
    lines = ["[jobs.j]", 'every = "1s"', "max-runs = 1"]
    if key == "command":
        lines.append(f"command = [{_toml_string(value)}]")
    elif key == "shell":
        lines.append(f"shell = {_toml_string(value)}")
    else:
        lines.append('command = ["true"]')
        if key != "env":
            lines.append(f"{key} = {_toml_string(value)}")
    if key == "every":
        lines.remove('every = "1s"')
    entries = ", ".join(f"{_toml_string(k)} = {_toml_string(v)}" for k, v in env.items())
    lines.append(f"env = {{ {entries} }}")
    return "\n".join(lines) + "\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_toml_key, _toml_value, st.dictionaries(_env_text, _env_text, max_size=2))
def test_validate_file_of_any_toml_value_is_exit_0_or_2(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: str, env: dict[str, str]
) -> None:
    path = tmp_path_factory.mktemp("toml") / "jobs.toml"
    path.write_text(_jobs_file(key, value, env))
    result = CliRunner().invoke(
        cli,
        ["validate", "--file", str(path)],
        obj=Env(clock=FakeClock(NOW), environ=dict(ENV)),
        catch_exceptions=True,
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert all(line.startswith("Error: ") for line in result.stderr.splitlines())


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_toml_key, _toml_value, st.dictionaries(_env_text, _env_text, max_size=2))
def test_run_file_refuses_exactly_what_validate_file_refuses(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: str, env: dict[str, str]
) -> None:
    """Through the real CLI: validate's verdict is run's (0: the job ran its one run and pyjob
    ended; 2: the same Error: lines), never a traceback at the first tick."""
    if key in ("command", "shell", "timeout", "every", "tz") and value not in ("1s", "none"):
        key = "env"  # a command of arbitrary text would run: keep to the values run checks
    path = tmp_path_factory.mktemp("toml") / "jobs.toml"
    path.write_text(_jobs_file(key, value, env))
    checked = _pyjob("validate", "--file", str(path))
    ran = _pyjob("run", "--file", str(path), "--lock", "none")
    assert "Traceback" not in checked.stderr + ran.stderr, ran.stderr[-2000:]
    assert checked.returncode in (0, 2)
    if checked.returncode == 2:
        assert (ran.returncode, ran.stderr) == (2, checked.stderr)
    else:
        assert ran.returncode in (0, 1), ran.stderr[-2000:]  # 1: the one run failed
        assert '"run-finished"' in ran.stderr or "run-finished" in ran.stderr

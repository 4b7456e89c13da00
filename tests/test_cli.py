"""The CLI: exact output and exit codes per format (CliRunner, fake clock at 2026-11-27 22:00Z)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import pyjob_exe


def test_next_table_plain_text(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(
        ["next", "CRON_TZ=America/New_York 30 2 * * *", "--from", "2026-03-07", "-n", "3"]
    )
    assert result.exit_code == 0
    assert result.output == (
        "Schedule:  CRON_TZ=America/New_York 30 2 * * *\n"
        "Means:     at 02:30 every day (America/New_York)\n"
        "#  Local                        UTC                   When      Note\n"
        "1  Sat 2026-03-07 02:30:00 EST  2026-03-07T07:30:00Z  in 2h30m\n"
        "2  Sun 2026-03-08 03:00:00 EDT  2026-03-08T07:00:00Z  in 1d2h   "
        "DST gap: moved from 02:30\n"
        "3  Mon 2026-03-09 02:30:00 EDT  2026-03-09T06:30:00Z  in 2d1h\n"
    )


def test_next_marks_repeated_hour(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(
        ["next", "0 * * * *", "--tz", "Europe/Berlin", "--from", "2026-10-25T01:30", "-n", "3"]
    )
    lines = result.output.splitlines()
    assert lines[3].endswith("DST: repeated hour") and "CEST" in lines[3]
    assert lines[4].endswith("DST: repeated hour") and "CET" in lines[4]
    assert not lines[5].endswith("hour")


def test_next_plain(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(
        ["next", "--every", "1h", "--align", "--tz", "Asia/Kolkata", "--format", "plain", "-n", "3"]
    )
    assert result.exit_code == 0
    assert result.output == (
        "2026-11-28T04:00:00+05:30\n2026-11-28T05:00:00+05:30\n2026-11-28T06:00:00+05:30\n"
    )


def test_next_json(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(
        [
            "next",
            "daily at 02:30",
            "--tz",
            "Europe/Berlin",
            "--from",
            "2026-03-28T12:00",
            "-n",
            "2",
            "--format",
            "json",
        ]
    )
    assert result.exit_code == 0
    doc = json.loads(result.output)
    assert doc == {
        "schedule": "daily at 02:30 tz Europe/Berlin",
        "job": "job-5baf2d79d788",
        "description": "at 02:30 every day (Europe/Berlin)",
        "zone": "Europe/Berlin",
        "from": "2026-03-28T11:00:00Z",
        "ticks": [
            {
                "local": "2026-03-29T03:00:00+02:00",
                "utc": "2026-03-29T01:00:00Z",
                "unix": 1774746000,
                "in_seconds": 50400.0,
                "dst": "gap",
                "moved_from": "2026-03-29T02:30:00",
            },
            {
                "local": "2026-03-30T02:30:00+02:00",
                "utc": "2026-03-30T00:30:00Z",
                "unix": 1774830600,
                "in_seconds": 135000.0,
                "dst": None,
                "moved_from": None,
            },
        ],
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["next", "61 * * * *"], "Error: bad minute '61' (0-59)\n"),
        (
            ["next", "--every", "5m", "--cron", "* * * * *"],
            "Error: conflicting schedules: --cron and --every (give exactly one schedule)\n",
        ),
        (
            ["next", "0 * * * *", "--daily"],
            "Error: conflicting schedules: EXPR and --daily (give exactly one schedule)\n",
        ),
        (
            ["next"],
            "Error: no schedule: give an expression like '0 * * * *' or 'every 5m', or one of "
            "--cron, --every, --daily, --weekly, --monthly, --once\n",
        ),
        (["next", "--every", "0s"], "Error: zero duration '0s': must be positive\n"),
        (
            ["next", "--daily", "--at", "25:00"],
            "Error: bad time of day '25:00' (HH:MM or HH:MM:SS, 00:00 to 23:59:59)\n",
        ),
        (
            ["next", "--cron", "0 0 31 2 *"],
            "Error: '0 0 31 2 *' can never fire: no date matches its day-of-month, month and "
            "day-of-week fields\n",
        ),
        (
            ["next", "--every", "5m", "--at", "09:00"],
            "Error: 'at' does not apply to a every schedule\n",
        ),
        (
            ["next", "--once", "2020-01-01T00:00Z"],
            "Error: every time in 'once 2020-01-01T00:00Z' is in the past\n",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(invoke, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = invoke(args)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] + "\n" == message
    assert "Traceback" not in result.output


def test_bad_zone_is_a_usage_error(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["next", "0 * * * *", "--tz", "Mars/Olympus"])
    assert result.exit_code == 2
    assert "unknown time zone 'Mars/Olympus'" in result.output


def test_caret_under_bad_token_on_terminal(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["validate", "1-61 * * * *"], terminal=True)
    assert result.exit_code == 2
    assert result.output == "Error: bad minute '61' (0-59)\n  1-61 * * * *\n    ^^\n"


def test_validate_ok(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["validate", "*/5 * * * *"])
    assert result.exit_code == 0
    assert result.output == (
        "ok: CRON_TZ=UTC */5 * * * *\n"
        "  means: every 5 minutes (UTC)\n"
        "  next:  2026-11-27T22:05:00+00:00\n"
    )


def test_validate_many_one_bad(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["validate", "0 * * * *", "0 0 * 13 *", "every 5m"])
    assert result.exit_code == 2
    assert result.output.count("ok: ") == 2
    assert "Error: '0 0 * 13 *': bad month '13' (1-12)" in result.output  # names the input


def test_validate_warnings_and_strict(invoke) -> None:  # type: ignore[no-untyped-def]
    args = ["validate", "CRON_TZ=Europe/Berlin 30 2 * * *", "0 0 1 * MON"]
    result = invoke(args)
    assert result.exit_code == 0
    assert (
        "warning: CRON_TZ=Europe/Berlin 30 2 * * *: fires at a time that DST skips on 2027-03-28 "
        "in Europe/Berlin (02:00-03:00): that run moves to 03:00" in result.output
    )
    assert (
        "fires at a time that DST repeats on 2027-10-31 in Europe/Berlin (02:00-03:00): it runs "
        "once, at the first occurrence" in result.output
    )
    assert "are both restricted: it fires on days matching EITHER" in result.output
    assert invoke([*args, "--strict"]).exit_code == 1
    assert invoke(["validate", "0 12 * * *", "--tz", "Europe/Berlin", "--strict"]).exit_code == 0


def test_validate_wildcard_minute_in_skipped_hour_warns(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["validate", "*/10 2 * * *", "--tz", "America/New_York"])
    assert "fires in an hour that DST skips on 2027-03-14" in result.output


def test_validate_json(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["validate", "every 90m align", "bad", "--format", "json"])
    assert result.exit_code == 2
    doc = json.loads(result.output)
    assert doc["valid"] is False
    ok, bad = doc["schedules"]
    assert (
        ok["normalized"] == "every 1h30m align tz UTC" and ok["next"] == "2026-11-27T22:30:00+00:00"
    )
    assert bad["valid"] is False and bad["errors"][0]["message"].startswith(
        "a cron expression has 5"
    )


def test_validate_options_without_expr(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["validate", "--weekly", "MON-FRI", "--at", "08:00", "--tz", "UTC"])
    assert result.exit_code == 0
    assert result.output.startswith("ok: weekly on MON,TUE,WED,THU,FRI at 08:00 tz UTC\n")


@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["align", "5m"], "2026-11-27T22:05:00+00:00\n"),
        (["align", "5m", "--format", "unix"], "1795817100\n"),
        (["align", "1h", "--tz", "Asia/Kolkata"], "2026-11-28T04:00:00+05:30\n"),
        (["align", "1h", "--offset", "15m"], "2026-11-27T22:15:00+00:00\n"),
        (["align", "250ms", "--format", "unix", "--from", "@1795816800.1"], "1795816800.250000\n"),
        (["align", "24h", "--tz", "Asia/Kolkata"], "2026-11-29T00:00:00+05:30\n"),
    ],
)
def test_align(invoke, args: list[str], output: str) -> None:  # type: ignore[no-untyped-def]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert result.output == output


def test_align_json(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["align", "7m", "--format", "json"])
    assert json.loads(result.output) == {
        "local": "2026-11-27T22:05:00+00:00",
        "utc": "2026-11-27T22:05:00Z",
        "unix": 1795817100,
        "in_seconds": 300.0,
        "interval": "7m",
        "offset": "0s",
        "grid": "unix-epoch",
        "zone": "UTC",
    }
    # the words of next's ticks, for the same instant
    ticks = json.loads(invoke(["next", "every 7m align", "-n", "1", "--format", "json"]).output)
    assert ticks["ticks"][0] == {
        "local": "2026-11-27T22:05:00+00:00",
        "utc": "2026-11-27T22:05:00Z",
        "unix": 1795817100,
        "in_seconds": 300.0,
        "dst": None,
        "moved_from": None,
    }


def test_align_wait_uses_the_clock(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["align", "5m", "--wait"])
    assert result.exit_code == 0
    assert invoke.clock.now().isoformat() == "2026-11-27T22:05:00+00:00"


@pytest.mark.parametrize(
    "args", [["align", "0s"], ["align", "5m", "--offset", "-1s"], ["align", "5m", "--tz", "X/Y"]]
)
def test_align_bad_input(invoke, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = invoke(args)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].startswith("Error: ")


def test_every_command_has_help(invoke) -> None:  # type: ignore[no-untyped-def]
    from pyjob.cli.main import cli

    for name in cli.list_commands(None):  # type: ignore[arg-type]
        result = invoke([name, "--help"])
        assert result.exit_code == 0
        assert len(result.output.splitlines()) > 5
        assert cli.get_command(None, name).help  # type: ignore[arg-type,union-attr]


# --------------------------------------------------------------- real processes


def test_core_imports_neither_click_nor_rich() -> None:
    code = (
        "import sys, pyjob.core.schedule, pyjob.core.describe, pyjob.core.clock, pyjob.core.cron;"
        "bad = [m for m in ('click', 'rich') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_dash_m_works() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pyjob.cli", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("pyjob, version 0.1.0 (tzdata ")


def test_nothing_named_bare_core_or_cli_is_importable() -> None:
    code = (
        "import importlib.util as u, sys;"
        "sys.path = [p for p in sys.path if p not in ('', '.')];"
        "print(u.find_spec('core'), u.find_spec('cli'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.stdout.strip() == "None None"


def test_align_wait_exits_on_the_boundary() -> None:
    start = time.time()
    proc = subprocess.run(
        [*pyjob_exe(), "align", "1s", "--wait", "--format", "unix"],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
    )
    end = time.time()
    assert proc.returncode == 0
    boundary = float(proc.stdout)
    assert start < boundary <= end  # it returned after the boundary, not before


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_align_wait_sigint_exits_130(delay: float) -> None:
    proc = subprocess.Popen(
        [*pyjob_exe(), "align", "1h", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell starts background jobs with SIGINT ignored, and a program should keep it so;
        # the test wants the foreground case, whoever started the test run.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip()  # printed before waiting
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 130
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_align_wait_shows_a_countdown_on_a_terminal_only(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["align", "5s", "--wait"], terminal=True)
    assert result.exit_code == 0
    assert "\rwaiting" in result.output and "for 2026-11-27T22:00:05Z" in result.output
    assert invoke.clock.now().isoformat() == "2026-11-27T22:00:05+00:00"
    quiet = invoke(["align", "5s", "--wait"])
    assert quiet.output == "2026-11-27T22:00:10+00:00\n"

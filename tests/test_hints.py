"""Hints for the usual mistakes of a new user (issue 19), through the installed `pyjob` script:
the exact stderr and exit code a person sees."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from .conftest import pyjob_exe


def pyjob(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYJOB_")}
    env.update(TZ="UTC", NO_COLOR="1", PYJOB_NO_CLOCK_CHECK="1")
    return subprocess.run(
        [*pyjob_exe(), *args], capture_output=True, text=True, timeout=30, env=env
    )


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        # a crontab line pasted with its command
        (
            ["validate", "0 9 * * * /usr/bin/backup.sh"],
            "Error: '/usr/bin/backup.sh' is not part of the schedule \"0 9 * * *\": a command "
            'goes after -- (pyjob run "0 9 * * *" -- /usr/bin/backup.sh)\n',
        ),
        # not silently re-read as 6 fields (seconds first)
        (
            ["next", "0 9 * * MON-FRI foo"],
            "Error: 'foo' is not part of the schedule \"0 9 * * MON-FRI\": a command goes after "
            '-- (pyjob run "0 9 * * MON-FRI" -- foo)\n',
        ),
        (
            ["validate", "@daily ./nightly --all"],
            "Error: './nightly' is not part of the schedule \"@daily\": a command goes after -- "
            '(pyjob run "@daily" -- ./nightly --all)\n',
        ),
        # schedule words unquoted (issue 28: a quoted schedule argument takes no --)
        (
            ["run", "0", "9", "*", "*", "*", "/usr/bin/backup.sh"],
            'Error: the schedule is one argument: quote it (pyjob run "0 9 * * *" -- '
            "/usr/bin/backup.sh)\n",
        ),
        (
            ["validate", "every 5mins"],
            "Error: bad duration '5mins' at 'ins' (did you mean '5m'?)\n",
        ),
        (
            ["validate", "every 2 hours"],
            "Error: every takes one duration: did you mean 'every 2h'?\n",
        ),
        (
            ["next", "5m"],
            "Error: '5m' is a duration, not a cron expression: did you mean \"every 5m\"?\n",
        ),
        (
            ["run", "--every", "90 seconds", "--", "true"],
            "Error: bad duration '90 seconds' at '90 seconds' (did you mean '90s'?)\n",
        ),
        (
            ["validate", "@reboot"],
            "Error: @reboot is not a schedule pyjob has: --run-now runs the command once when "
            "pyjob starts (start pyjob at boot: a systemd unit, the container's entry point)\n",
        ),
        (
            ["validate", "@dialy"],
            "Error: unknown descriptor '@dialy' (did you mean '@daily'? one of @annually, "
            "@daily, @hourly, @midnight, @monthly, @weekly, @yearly, @every DURATION)\n",
        ),
        (["nxt", "0 * * * *"], "Error: No such command 'nxt': did you mean 'next'?\n"),
        (["frobnicate"], "Error: No such command 'frobnicate' (pyjob --help lists them)\n"),
        (
            ["next", "0 * * * *", "--tz", "Berlin"],
            "Error: Invalid value for '--tz': unknown time zone 'Berlin' (did you mean "
            "Europe/Berlin?)\n",
        ),
        (
            ["next", "CRON_TZ=tokyo 0 9 * * *"],
            "Error: unknown time zone 'tokyo' (did you mean Asia/Tokyo?)\n",
        ),
        (
            ["validate", "0 * * * *", "61 * * * *", "every 5m"],
            "Error: '61 * * * *': bad minute '61' (0-59)\n",
        ),
        (
            ["validate", "every", "5m"],
            "Error: 'every': every takes one duration, like 'every 5m' or 'every 1m..5m'\n"
            "Error: '5m': '5m' is a duration, not a cron expression: did you mean \"every 5m\"?\n"
            "hint: each EXPR is a schedule of its own; to check 'every 5m' as one, quote it: "
            "pyjob validate 'every 5m'\n",
        ),
        (
            ["run", "-s", "every 1s", "every", "1s", "--", "true"],
            "Error: two schedules: SCHEDULE and -s (give one)\n",
        ),
    ],
)
def test_a_usual_mistake_gets_a_hint_and_exit_2(args: list[str], stderr: str) -> None:
    done = pyjob(*args)
    assert (done.returncode, done.stderr) == (2, stderr)


def test_tz_overriding_the_expressions_cron_tz_warns() -> None:
    done = pyjob(
        "next", "CRON_TZ=Asia/Tokyo 0 9 * * *", "--tz", "Europe/Berlin", "-n", "1", "--format",
        "plain", "--from", "2026-12-01T00:00Z",
    )  # fmt: skip
    assert done.returncode == 0
    assert (
        done.stderr == "warning: --tz Europe/Berlin overrides CRON_TZ=Asia/Tokyo of the schedule\n"
    )
    assert done.stdout == "2026-12-01T09:00:00+01:00\n"


def test_next_takes_the_schedule_unquoted() -> None:
    done = pyjob(
        "next", "every", "5m", "--from", "2026-12-01T00:00Z", "-n", "2", "--format", "plain"
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "2026-12-01T00:05:00+00:00\n2026-12-01T00:10:00+00:00\n"


def test_pyjob_alone_prints_the_help() -> None:
    done = pyjob()
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == pyjob("--help").stdout
    assert done.stdout.startswith("Usage: pyjob [OPTIONS] COMMAND [ARGS]...\n")


@pytest.mark.slow
def test_run_takes_the_schedule_as_an_argument(tmp_path: object) -> None:
    """`pyjob run "*/5 * * * *" -- date` as the README writes it: the same job as --cron."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYJOB_")}
    env.update(TZ="UTC", PYJOB_NO_CLOCK_CHECK="1", XDG_RUNTIME_DIR=str(tmp_path))
    common = ["--max-runs", "1", "--log-format", "json"]
    ids = []
    for how in (["* * * * * *"], ["--cron", "* * * * * *"], ["every", "1s", "--align"]):
        done = subprocess.run(
            [*pyjob_exe(), "run", *how, *common, "--", "echo", "ran"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr
        started = json.loads(done.stderr.splitlines()[1])
        assert started["event"] == "started"
        ids.append((started["job"], started["schedule"]))
    assert ids[0] == ids[1]  # the positional schedule is the --cron one
    assert ids[2][1] == "every 1s align tz UTC"


def test_check_clock_reports_a_refused_server_at_once() -> None:
    import socket
    import time

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    start = time.monotonic()
    done = pyjob("check-clock", "--server", f"127.0.0.1:{port}", "--format", "nagios")
    assert time.monotonic() - start < 2  # not 4 samples x 1s of "no reply"
    assert done.returncode == 3
    assert done.stdout == (
        f"NTP UNKNOWN: no usable NTP reply (127.0.0.1:{port}: connection refused: nothing listens "
        "on its NTP port)\n"
    )


# Issue 28, item 14: the traps a newcomer fell into.


def test_a_crontab_line_pasted_into_run_gets_the_hint_validate_gives() -> None:
    hint = (
        "Error: '/usr/bin/backup.sh' is not part of the schedule \"0 9 * * *\": a command goes "
        'after -- (pyjob run "0 9 * * *" -- /usr/bin/backup.sh)\n'
    )
    assert pyjob("validate", "0 9 * * * /usr/bin/backup.sh").stderr == hint
    done = pyjob("run", "0 9 * * * /usr/bin/backup.sh")
    assert (done.returncode, done.stderr) == (2, hint)


@pytest.mark.parametrize("dashes", [True, False])
def test_a_cron_expression_the_shell_expanded_gets_a_quote_it_hint(
    tmp_path: Path, dashes: bool
) -> None:
    """Unquoted, each * of `*/5 * * * *` becomes the names of the directory's files: the real
    shell expands it here."""
    for name in ("backup.sh", "notes.txt"):
        (tmp_path / name).write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYJOB_")}
    env.update(TZ="UTC", NO_COLOR="1", PYJOB_NO_CLOCK_CHECK="1", LC_ALL="C")
    exe = shlex.join(pyjob_exe())
    tail = "-- ./backup.sh" if dashes else "./backup.sh"
    done = subprocess.run(
        ["/bin/sh", "-c", f"{exe} run */5 * * * * {tail}"],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (
        2,
        "Error: the shell replaced each unquoted * of the schedule with the names of the files "
        "here (backup.sh, notes.txt): quote the schedule, like "
        'pyjob run "*/5 * * * *" -- ./backup.sh\n',
    )
    done = subprocess.run(
        ["/bin/sh", "-c", f"{exe} validate */5 * * * *"],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "hint: the shell replaced each unquoted * of the schedule with the names of the files "
        'here (backup.sh, notes.txt): quote the schedule, like pyjob validate "*/5 * * * *"'
    )


def test_every_align_in_a_crontab_is_an_aligned_schedule_not_a_job_named_align(
    tmp_path: Path,
) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text("@every 4s align echo a\n@every 1h align offset 15m echo b\n")
    done = pyjob("validate", "--file", str(crontab))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("ok: ")]
    assert lines == [
        "ok: echo-" + lines[0].split("-")[1].split(":")[0] + ": every 4s align tz UTC -- echo a",
        "ok: echo-"
        + lines[1].split("-")[1].split(":")[0]
        + ": every 1h align offset 15m tz UTC -- echo b",
    ]


def test_the_unaligned_warning_of_a_crontab_job_says_how_to_align_it_there(
    tmp_path: Path,
) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text("@every 1s echo b\n")
    done = pyjob(
        "run", "--file", str(crontab), "--max-runs", "1", "--lock", f"file:{tmp_path / 'locks'}",
        "--log-format", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [e for e in map(json.loads, done.stderr.splitlines()) if e["event"] == "warning"]
    assert [w["action"] for w in warnings] == [
        "write 'align' after the interval (@every 1s align in a crontab, align = true in a "
        "TOML job), or use cron, when several instances run this job"
    ]


@pytest.mark.parametrize(
    "how",
    [
        ["--every", "1s", "--align", "echo", "ran"],
        ["--every", "1s", "--align", "--", "echo", "ran"],
        ["* * * * * *", "echo", "ran"],
        ["* * * * * *", "--", "echo", "ran"],
        ["every", "1s", "align", "--", "echo", "ran"],
    ],
)
def test_the_command_follows_the_schedule_with_or_without_dashes(
    tmp_path: Path, how: list[str]
) -> None:
    """One rule: the command comes after the schedule, whether options or an argument give
    it; `--` is needed only for a schedule of several unquoted words."""
    done = pyjob("run", "--max-runs", "1", "--lock", f"file:{tmp_path}", "--name", "j", *how)
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (
            ["run", "0", "9", "*", "*", "*", "./x"],
            'Error: the schedule is one argument: quote it (pyjob run "0 9 * * *" -- ./x)\n',
        ),
        (
            ["run", "./backup.sh"],
            "Error: no schedule: './backup.sh' is not one; give the schedule first, quoted "
            '(pyjob run "*/5 * * * *" ./backup.sh), or as an option: --cron, --every, --daily, '
            "--weekly, --monthly, --once, -s\n",
        ),
        (
            ["run", "0 9 * * *", "--lock", "none", "./x"],
            "Error: '--lock' after the schedule is not a command: the options of pyjob go before "
            "the schedule, and a command that starts with a dash after -- "
            '(pyjob run [OPTIONS] "0 9 * * *" -- CMD [ARGS]...)\n',
        ),
        (
            ["run", "0 9 * * *"],
            "Error: missing the command: pyjob run SCHEDULE [--] CMD [ARGS]... (or --file PATH)\n",
        ),
    ],
)
def test_a_schedule_argument_without_dashes_is_checked_like_one_with(
    args: list[str], stderr: str
) -> None:
    done = pyjob(*args)
    assert (done.returncode, done.stderr) == (2, stderr)

"""The log of `pyjob run` as an operator reads it (issue 19): levels, colour, --log-level, values
for people in text and exact ones in JSON, and whose output is whose."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
from pyjob.core.durations import human_duration

from .conftest import pyjob_exe

pytestmark = pytest.mark.slow

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TICK = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYJOB_") and k != "NO_COLOR"}
    env.update(TZ="UTC", PYJOB_NO_CLOCK_CHECK="1", XDG_RUNTIME_DIR=str(tmp_path), **extra)
    return env


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`pyjob run ARGS` to its end, with its stderr (the log) and stdout."""
    return subprocess.run(
        [*pyjob_exe(), "run", "--instance-id", "i1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path, **env),
        cwd=tmp_path,
    )


def kinds(log: str) -> list[tuple[str, str]]:
    return [(line.split()[1], line.split()[2]) for line in log.splitlines()]


def test_a_healthy_tick_is_two_info_lines_and_a_failed_run_is_an_error(tmp_path: Path) -> None:
    done = run(
        tmp_path, "--every", "1s", "--max-runs", "2", "--name", "j", "--", "sh", "-c", "exit 3"
    )
    assert done.returncode == 1
    assert kinds(done.stderr) == [
        ("info", "clock"),
        ("info", "started"),
        ("info", "run-started"),
        ("error", "run-finished"),
        ("info", "run-started"),
        ("error", "run-finished"),
        ("info", "exhausted"),
    ]
    lines = done.stderr.splitlines()
    assert re.fullmatch(
        TIME
        + r" info    clock         job=j instance=i1 action=\"not measured \(--no-clock-check\)\"",
        lines[0],
    )
    # nothing absent (no fence=None, pid=None, forced=False), no run_id (it is job and tick)
    assert re.fullmatch(
        TIME + r" info    started       job=j instance=i1 schedule=\"every 1s\" "
        r"command=\"sh -c 'exit 3'\" backend=file:\S+ overlap=skip",
        lines[1],
    )
    assert re.fullmatch(
        TIME + rf" info    run-started   job=j tick={TICK}Z instance=i1 pid=\d+ "
        r"lateness=\d+(\.\d+)?(µs|ms) fence=\d+",
        lines[2],
    )
    assert re.fullmatch(
        TIME + rf" error   run-finished  job=j tick={TICK}Z instance=i1 exit_code=3 "
        r"duration=\d+(\.\d+)?(µs|ms|s) lateness=\d+(\.\d+)?(µs|ms)",
        lines[3],
    )
    assert re.fullmatch(
        TIME + r" info    exhausted     job=j instance=i1 runs=2 failures=2", lines[6]
    )


def test_log_level_debug_adds_next_tick_and_claimed_warning_keeps_problems(tmp_path: Path) -> None:
    args = ("--every", "1s", "--max-runs", "1", "--name", "j", "--", "false")
    debug = run(tmp_path, "--log-level", "debug", *args)
    assert kinds(debug.stderr) == [
        ("info", "clock"),
        ("info", "started"),
        ("debug", "next-tick"),
        ("debug", "claimed"),
        ("info", "run-started"),
        ("debug", "next-tick"),
        ("error", "run-finished"),
        ("info", "exhausted"),
    ]
    assert re.search(r" next-tick .* in=\d+ms$", debug.stderr.splitlines()[2])
    quiet = run(tmp_path, *args, PYJOB_LOG_LEVEL="warning")
    assert kinds(quiet.stderr) == [("error", "run-finished")]
    bad = run(tmp_path, "--log-level", "loud", *args)
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--log-level': 'loud' is not one of 'debug', 'info', "
        "'warning', 'error'."
    )


def test_json_has_levels_exact_numbers_and_the_same_filter(tmp_path: Path) -> None:
    done = run(
        tmp_path,
        *("--log-format", "json", "--every", "1s", "--max-runs", "1", "--name", "j"),
        *("--", "sh", "-c", "exit 1"),
    )
    docs = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(d["level"], d["event"]) for d in docs] == [
        ("info", "clock"),
        ("info", "started"),
        ("info", "run-started"),
        ("error", "run-finished"),
        ("info", "exhausted"),
    ]
    finished = docs[3]
    assert finished["exit_code"] == 1 and isinstance(finished["duration"], float)
    assert finished["run_id"] == "j-" + finished["tick"].replace("-", "").replace(":", "")


def test_text_writes_the_tick_in_the_jobs_zone(tmp_path: Path) -> None:
    done = run(
        tmp_path,
        *("--cron", "* * * * * *", "--tz", "Asia/Kolkata", "--max-runs", "1", "--name", "j"),
        *("--", "true"),
    )
    assert done.returncode == 0
    started = next(line for line in done.stderr.splitlines() if " run-started " in line)
    assert re.search(r" tick=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+05:30 ", started)


def test_a_failed_run_is_red_on_a_terminal_and_a_good_one_green(tmp_path: Path) -> None:
    """In a pseudo-terminal, as an operator sees it: the escape codes of run-finished."""
    controller, terminal = pty.openpty()
    fail_then_succeed = 'test "$(cat n 2>/dev/null)" = 1; s=$?; echo 1 > n; exit $s'
    args = ["run", "--every", "1s", "--max-runs", "2", "--name", "j", "--shell"]
    proc = subprocess.Popen(
        [*pyjob_exe(), *args, "--", fail_then_succeed],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=_env(tmp_path, TERM="xterm-256color", COLUMNS="300"),
        cwd=tmp_path,
    )
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
    os.close(controller)
    assert proc.wait(timeout=30) == 1
    lines = [line for line in out.decode().splitlines() if "run-finished" in line]
    assert len(lines) == 2
    assert lines[0].startswith("\x1b[1;31m") and "error   run-finished" in lines[0]
    assert "exit_code=1" in lines[0] and lines[0].endswith("\x1b[0m")
    assert lines[1].startswith("\x1b[32m") and "info    run-finished" in lines[1]
    assert "exit_code=0" in lines[1]


def test_several_jobs_output_is_prefixed_with_the_jobs_name(tmp_path: Path) -> None:
    crontab = tmp_path / "crontab"
    crontab.write_text("* * * * * * echo one\n* * * * * * printf 'two\\nthree' >&2\n")
    done = run(tmp_path, "--file", str(crontab), "--max-runs", "1")
    assert done.returncode == 0
    assert done.stdout == "echo | one\n"
    assert [line for line in done.stderr.splitlines() if "|" in line] == [
        "printf | two",
        "printf | three",
    ]
    logged = run(tmp_path, "--file", str(crontab), "--max-runs", "1", "--log-output")
    assert logged.stdout == ""
    assert re.search(r" output +job=echo tick=\S+ instance=i1 stdout: one\n", logged.stderr)


def test_one_job_output_passes_through_as_it_is(tmp_path: Path) -> None:
    done = run(tmp_path, "--every", "1s", "--max-runs", "1", "--", "echo", "one")
    assert done.stdout == "one\n"


@pytest.mark.parametrize(
    ("args", "action"),
    [
        (["--every", "1s"], "add --align (or use cron) when several instances run this job"),
        (
            ["-s", "every 1s..2s"],
            "use a fixed interval with --align (--every 5m --align), or cron, when several "
            "instances run this job; or --jitter for a random delay on shared ticks",
        ),
    ],
)
def test_unshared_ticks_warn_only_with_a_lock_given(
    tmp_path: Path, args: list[str], action: str
) -> None:
    plain = run(tmp_path, *args, "--max-runs", "1", "--", "true")
    assert "warning" not in [k for _, k in kinds(plain.stderr)]
    shared = run(tmp_path, *args, "--max-runs", "1", "--lock", f"file:{tmp_path}/l", "--", "true")
    (warning,) = [line for line in shared.stderr.splitlines() if " warning " in line]
    assert warning.endswith(f' action="{action}"')


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.000284, "284µs"),
        (0.0023, "2.3ms"),
        (0.9999, "1s"),
        (1.5, "1.5s"),
        (10, "10s"),
        (245, "4m5s"),
        (600, "10m"),
        (71322.7, "19h48m"),
        (183600, "2d3h"),
        (-0.0123, "-12.3ms"),
    ],
)
def test_durations_read_as_pyjob_writes_them(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.85, "850ms"),
        (1.5, "1.5s"),
        (12.3, "12s"),
        (245, "4m"),
        (7500.9, "2h5m"),
        (7200, "2h"),
        (277200, "3d5h"),
        (-245, "-4m"),
    ],
)
def test_ages_in_tables_read_coarser_in_the_same_units(seconds: float, text: str) -> None:
    assert human_duration(seconds, coarse=True) == text


def test_events_come_in_the_order_things_happen_and_a_stop_is_no_failure(tmp_path: Path) -> None:
    from .runproc import PyjobRun

    run = PyjobRun(
        ["--every", "1s", "--log-output", "--name", "j", "--shell", "--", "echo a; exec sleep 30"],
        tmp_path,
    )
    run.wait_for("output")
    assert run.stop() == 0
    order = [
        e["event"]
        for e in run.events()
        if e["event"] not in ("next-tick", "clock", "fleet", "backend-clock")
    ]
    assert order == [
        "started",
        "claimed",
        "run-started",
        "output",
        "stopping",
        "run-finished",
        "stopped",
    ]
    finished, stopped = run.events("run-finished")[0], run.events("stopped")[0]
    assert (finished["level"], finished["terminated"], finished["exit_code"]) == (
        "info",
        "stop",
        143,
    )
    assert (stopped["runs"], stopped["failures"]) == (1, 0)


def test_a_hang_up_stops_a_one_liner_as_gracefully_as_sigterm(tmp_path: Path) -> None:
    """An ssh session that closes: the command's TERM trap runs, pyjob exits 0."""
    import signal

    from .runproc import PyjobRun

    trap = f"trap 'echo trapped > {tmp_path}/t; exit 0' TERM; echo up; while :; do sleep 0.1; done"
    run = PyjobRun(["--every", "1s", "--log-output", "--shell", "--", trap], tmp_path)
    run.wait_for("output")
    run.signal(signal.SIGHUP)
    assert run.wait() == 0
    assert (tmp_path / "t").read_text() == "trapped\n"
    events = [e["event"] for e in run.events() if e["event"] != "output"]  # sleep: Terminated
    assert events[-3:] == ["stopping", "run-finished", "stopped"]
    assert run.events("run-finished")[0]["exit_code"] == 0


def test_text_quotes_list_values_and_leaves_out_absent_ones(tmp_path: Path) -> None:
    """reload-failed's problems as one logfmt value; stopping without forced=False."""
    import signal

    crontab = tmp_path / "crontab"
    crontab.write_text("0 3 * * * ./nightly\n")
    proc = subprocess.Popen(
        [*pyjob_exe(), "run", "--file", str(crontab), "--instance-id", "i1"],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    lines = [proc.stderr.readline() for _ in range(3)]  # clock, started, jobs
    assert lines[2].split()[2] == "jobs"
    crontab.write_text("61 * * * * ./nightly\n0 3 * * * ./nightly --all\n")
    proc.send_signal(signal.SIGHUP)
    failed = proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert re.fullmatch(
        TIME + rf" error   reload-failed job=\* instance=i1 problems=\"{crontab}:1: bad minute "
        r"'61' \(0-59\)\" action=\"the previous jobs keep running\"\n",
        failed,
    )
    stopping = rest.splitlines()[0]
    assert re.fullmatch(
        TIME + r" info    stopping      job=nightly instance=i1 running=0 stop_timeout=10s",
        stopping,
    )

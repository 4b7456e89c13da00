"""A run's output as pyjob captures it (issue 28): a chatty command is not held back by the log,
a line without end costs bounded memory, a hook's output is marked as the hook's, and what a
command leaves running behind it is killed with --kill-orphans."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from .runproc import PyjobRun

pytestmark = pytest.mark.slow

LINE_MAX = 64 * 1024  # a longer line is cut (docs/running.md)
BACKLOG_LINES = 10_000  # lines that wait to be logged, at most
DROPPED = re.compile(r"^(\d+) lines of output dropped here")


def test_a_chatty_command_is_not_held_back_and_every_line_is_logged_or_counted(
    tmp_path: Path,
) -> None:
    """2,000,000 lines: logged one by one, a line took pyjob some 20 µs while the command waited
    on the full pipe, so the run outlasted this --timeout by far. Now the log keeps what it
    can, says how many lines it dropped and where, and the tail is whole."""
    hook = 'printf %s "$PYJOB_OUTPUT_TAIL" > tail.txt'
    args = ["--every", "1s", "--max-runs", "1", "--log-output", "--timeout", "20s"]
    args += ["--on-failure", hook, "--shell", "--", "seq 1 2000000; exit 3"]
    run = PyjobRun(args, tmp_path)
    assert run.wait(timeout=90) == 1
    [finished] = run.events("run-finished")
    assert finished["exit_code"] == 3 and "terminated" not in finished  # not the --timeout
    output = run.events("output")
    lines = [int(e["line"]) for e in output if e["stream"] == "stdout"]
    dropped = [int(DROPPED.match(e["line"]).group(1)) for e in output if e["stream"] == "pyjob"]
    assert len(lines) + sum(dropped) == 2_000_000
    assert lines == sorted(lines) and len(set(lines)) == len(lines)
    assert lines[-BACKLOG_LINES:] == list(range(2_000_001 - BACKLOG_LINES, 2_000_001))
    run.wait_for("hook-finished")
    assert (tmp_path / "tail.txt").read_text().endswith("\n1999999\n2000000")


def _peak_rss_kb(line: str) -> int:
    match = re.match(r"VmHWM:\s+(\d+) kB", line)
    assert match, line
    return int(match.group(1))


def test_a_line_without_end_is_cut_and_costs_bounded_memory(tmp_path: Path) -> None:
    """20 MB and no newline: pyjob keeps LINE_MAX bytes of it and says how much it cut; its
    peak memory (VmHWM of pyjob, the shell's parent, read before and after) grows little."""
    script = (
        "grep VmHWM /proc/$PPID/status; head -c 20000000 /dev/zero | tr '\\0' x; echo; "
        "grep VmHWM /proc/$PPID/status; printf 'last words'"
    )
    args = ["--every", "1s", "--max-runs", "1", "--log-output", "--shell", "--", script]
    run = PyjobRun(args, tmp_path)
    assert run.wait(timeout=90) == 0
    lines = [e["line"] for e in run.events("output") if e["stream"] == "stdout"]
    assert len(lines) == 4 and lines[3] == "last words"  # the last one has no newline either
    before, long, after = _peak_rss_kb(lines[0]), lines[1], _peak_rss_kb(lines[2])
    assert long == "x" * LINE_MAX + (
        f" [pyjob: line cut at {LINE_MAX} bytes, {20_000_000 - LINE_MAX} more bytes dropped]"
    )
    assert after - before < 16 * 1024, (before, after)  # kept in full, it was 20 MB at least


def test_a_hooks_output_is_marked_as_the_hooks(tmp_path: Path) -> None:
    """`fail | OK` read as the job's output was curl's answer in the on-failure hook."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[jobs.fail]\nevery = "1s"\nmax-runs = 1\nshell = "echo job says; exit 1"\n'
        'on-failure = "echo OK; echo oops >&2"\n'
        '[jobs.fine]\nevery = "1s"\nmax-runs = 1\nshell = "echo fine"\n'
    )
    run = PyjobRun(["--file", str(jobs)], tmp_path)
    assert run.wait(timeout=30) == 1
    out = run.out_path.read_text().splitlines()
    assert sorted(out) == ["fail | job says", "fail[on-failure] | OK", "fine | fine"]
    assert "fail[on-failure] | oops" in run.log_path.read_text().splitlines()
    # One job: its own output passes through untouched, its hook's is marked.
    args = ["--every", "1s", "--max-runs", "1", "--name", "solo", "--on-failure", "echo OK"]
    one = PyjobRun([*args, "--shell", "--", "echo job says; exit 1"], tmp_path, "one")
    assert one.wait(timeout=30) == 1
    assert one.out_path.read_text().splitlines() == ["job says", "solo[on-failure] | OK"]


def test_with_log_output_a_hooks_lines_are_output_events_that_name_it(tmp_path: Path) -> None:
    args = ["--every", "1s", "--max-runs", "1", "--name", "solo", "--log-output"]
    args += ["--on-failure", "echo OK", "--shell", "--", "echo job says; exit 1"]
    run = PyjobRun(args, tmp_path)
    assert run.wait(timeout=30) == 1
    lines = {(e["line"], e.get("hook")) for e in run.events("output")}
    assert lines == {("job says", None), ("OK", "on-failure")}


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("where", ["flag", "toml", "off"])
def test_kill_orphans_kills_what_the_command_left_running(tmp_path: Path, where: str) -> None:
    """cron leaves `sleep 300 &` running after the run, and so does pyjob by default; with
    --kill-orphans (kill-orphans = true in a jobs file) the run's process group goes with it."""
    line = "sleep 300 & echo $! > orphan.pid"
    if where == "toml":
        jobs = tmp_path / "jobs.toml"
        jobs.write_text(
            f'[jobs.fork]\nevery = "1s"\nmax-runs = 1\nkill-orphans = true\nshell = "{line}"\n'
        )
        args = ["--file", str(jobs)]
    else:
        args = ["--every", "1s", "--max-runs", "1", "--shell", "--", line]
        if where == "flag":
            args.insert(0, "--kill-orphans")
    run = PyjobRun(args, tmp_path)
    assert run.wait(timeout=30) == 0, run.log_path.read_text()
    orphan = int((tmp_path / "orphan.pid").read_text())
    try:
        assert _alive(orphan) is (where == "off")
    finally:
        if _alive(orphan):
            os.kill(orphan, 9)


def test_the_json_log_names_a_hooks_output() -> None:
    """The events of a hook's output (with --log-output) carry its name; the text log says it."""
    from datetime import UTC, datetime

    from pyjob.cli.logs import text_line
    from pyjob.core import events

    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    event = events.make(
        "output", "fail", "web-1", at, at, stream="stdout", line="OK", run_id="r", hook="on-failure"
    )
    assert text_line(event).endswith(
        " job=fail tick=2026-12-01T09:00:00Z instance=web-1 hook=on-failure stdout: OK"
    )
    assert json.loads(json.dumps(event.fields))["hook"] == "on-failure"

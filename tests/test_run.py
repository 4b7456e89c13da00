"""`pyjob run` for real: processes, signals, time, and several instances racing (DESIGN §4-5)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .runproc import PyjobRun, pid_alive

pytestmark = pytest.mark.slow

RECORD = 'echo "$PYJOB_TICK_UNIX $PYJOB_INSTANCE $(date +%s.%N)" >> "$OUT"'


@pytest.mark.long
def test_fire_precision_and_no_drift_over_21_ticks(tmp_path: Path) -> None:
    run = PyjobRun(
        [
            "--every",
            "1s",
            "--align",
            "--max-runs",
            "21",
            "--lock",
            f"file:{tmp_path}/l",
            "--shell",
            "--",
            RECORD,
        ],
        tmp_path,
        env={"OUT": str(tmp_path / "runs")},
    )
    assert run.wait(timeout=60) == 0
    rows = [line.split() for line in (tmp_path / "runs").read_text().splitlines()]
    ticks = [float(r[0]) for r in rows]
    starts = [float(r[2]) for r in rows]
    assert len(ticks) == 21 and len(set(ticks)) == 21
    # the tick of run k is exactly the first grid point + k seconds: nothing missed, no drift
    assert ticks == [ticks[0] + k for k in range(21)]
    assert all(s >= t for s, t in zip(starts, ticks, strict=True))  # never before its tick
    # Late by less than a tick, however busy the machine: how precise is benchmarks/firing.py's.
    assert all(s - t < 1.0 for s, t in zip(starts, ticks, strict=True))
    finished = run.events("run-finished")
    assert len(finished) == 21 and all(e["exit_code"] == 0 for e in finished)


def _race(
    tmp_path: Path, n: int, seconds: float, kill_one: bool
) -> tuple[Counter[float], list[PyjobRun]]:
    lock = f"file:{tmp_path}/locks"
    args = ["--every", "200ms", "--align", "--lock", lock, "--shell", "--", RECORD + "; sleep 0.05"]
    env = {"OUT": str(tmp_path / "runs")}
    runs = [PyjobRun(args, tmp_path, f"i{i}", env) for i in range(n)]
    for r in runs:
        r.wait_for("next-tick")
    end = time.monotonic() + seconds
    restarted: list[PyjobRun] = []
    while kill_one and time.monotonic() < end:
        time.sleep(0.7)
        victim = runs.pop(0)
        victim.wait_for("run-started")
        victim.proc.kill()  # SIGKILL, possibly mid-run
        victim.wait()
        restarted.append(victim)
        fresh = PyjobRun(args, tmp_path, f"r{len(restarted)}", env)
        fresh.wait_for("next-tick")
        runs.append(fresh)
    time.sleep(max(0.0, end - time.monotonic()))
    for r in runs:
        assert r.stop() == 0
    rows = [line.split() for line in (tmp_path / "runs").read_text().splitlines()]
    return Counter(float(r[0]) for r in rows), runs + restarted


def test_several_processes_run_each_tick_exactly_once(tmp_path: Path) -> None:
    counts, runs = _race(tmp_path, 3, 4.0, kill_one=False)
    assert counts and max(counts.values()) == 1, [t for t, c in counts.items() if c > 1]
    ticks = sorted(counts)
    inner = [t for t in ticks if ticks[0] < t < ticks[-1]]
    # no tick in the window is missing: consecutive 200 ms grid points
    assert all(abs(b - a - 0.2) < 1e-6 for a, b in itertools.pairwise(inner))
    lost = sum(len(r.events("lost")) for r in runs)
    assert lost >= len(inner)  # the other instances saw each tick claimed and stood down
    who = {e["holder"] for r in runs for e in r.events("lost")}
    assert who <= {e["instance"] for r in runs for e in r.events("started")}


def test_no_tick_runs_twice_while_instances_are_killed_and_restarted(tmp_path: Path) -> None:
    counts, _ = _race(tmp_path, 3, 4.0, kill_one=True)
    assert counts and max(counts.values()) == 1, [t for t, c in counts.items() if c > 1]


def test_overlap_skip_never_overlaps(tmp_path: Path) -> None:
    cmd = 'echo "start $(date +%s.%N)" >> "$OUT"; sleep 0.45; echo "end $(date +%s.%N)" >> "$OUT"'
    run = PyjobRun(
        ["--every", "200ms", "--align", "--lock", f"file:{tmp_path}/l", "--shell", "--", cmd],
        tmp_path,
        env={"OUT": str(tmp_path / "o")},
    )
    run.wait_for("run-finished", 3)
    run.stop()
    lines = [line.split() for line in (tmp_path / "o").read_text().splitlines()]
    starts = [float(x[1]) for x in lines if x[0] == "start"]
    ends = [float(x[1]) for x in lines if x[0] == "end"]
    assert all(s >= e for s, e in zip(starts[1:], ends, strict=False))
    skipped = run.events("skipped")
    assert skipped and skipped[0]["reason"].startswith("overlap")


def test_overlap_queue_keeps_at_most_one_waiting(tmp_path: Path) -> None:
    run = PyjobRun(
        [
            "--every",
            "200ms",
            "--align",
            "--overlap",
            "queue",
            "--lock",
            "none",
            "--",
            "sleep",
            "0.7",
        ],
        tmp_path,
    )
    run.wait_for("run-finished", 3)
    run.stop()
    assert run.events("queued")
    assert any("already queued" in e["reason"] for e in run.events("skipped"))
    started = run.events("run-started")
    finished = run.events("run-finished")
    assert len(started) - len(finished) <= 1


def test_overlap_allow_runs_concurrently(tmp_path: Path) -> None:
    run = PyjobRun(
        [
            "--every",
            "200ms",
            "--align",
            "--overlap",
            "allow",
            "--lock",
            "none",
            "--",
            "sleep",
            "0.5",
        ],
        tmp_path,
    )
    run.wait_for("run-started", 4)
    run.stop()
    assert not run.events("skipped")


def test_overlap_replace_terminates_the_running_one(tmp_path: Path) -> None:
    run = PyjobRun(
        [
            "--every",
            "300ms",
            "--align",
            "--overlap",
            "replace",
            "--lock",
            "none",
            "--",
            "sleep",
            "5",
        ],
        tmp_path,
    )
    run.wait_for("run-finished", 2)
    run.stop()
    replaced = [e for e in run.events("run-finished") if e.get("terminated") == "replace"]
    assert replaced and replaced[0]["exit_code"] == 128 + signal.SIGTERM


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    cmd = 'sleep 30 & echo $! > "$OUT"; wait'
    run = PyjobRun(
        [
            "--every",
            "1h",
            "--align",
            "--run-now",
            "--timeout",
            "300ms",
            "--kill-after",
            "1s",
            "--lock",
            "none",
            "--shell",
            "--",
            cmd,
        ],
        tmp_path,
        env={"OUT": str(tmp_path / "pid")},
    )
    finished = run.wait_for("run-finished")
    run.stop()
    assert finished[0]["terminated"] == "timeout"
    assert run.events("timeout")
    grandchild = int((tmp_path / "pid").read_text())
    time.sleep(0.2)
    assert not pid_alive(grandchild)


def test_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    cmd = "trap '' TERM; while :; do sleep 0.05; done"
    run = PyjobRun(
        [
            "--every",
            "1h",
            "--align",
            "--run-now",
            "--timeout",
            "200ms",
            "--kill-after",
            "300ms",
            "--lock",
            "none",
            "--shell",
            "--",
            cmd,
        ],
        tmp_path,
    )
    finished = run.wait_for("run-finished")
    run.stop()
    assert finished[0]["exit_code"] == 128 + signal.SIGKILL


def test_sigterm_is_forwarded_and_pyjob_exits_0(tmp_path: Path) -> None:
    cmd = "trap 'echo got-term > \"$OUT\"; exit 0' TERM; sleep 30 & wait"
    run = PyjobRun(
        ["--every", "1h", "--align", "--run-now", "--lock", "none", "--shell", "--", cmd],
        tmp_path,
        env={"OUT": str(tmp_path / "t")},
    )
    started = run.wait_for("run-started")
    time.sleep(0.2)
    run.signal(signal.SIGTERM)
    assert run.wait() == 0
    assert (tmp_path / "t").read_text().strip() == "got-term"
    assert not pid_alive(started[0]["pid"])
    assert run.events("stopping") and run.events("stopped")


def test_second_sigint_kills_at_once_and_exits_130(tmp_path: Path) -> None:
    cmd = "trap '' TERM INT; while :; do sleep 0.05; done"
    run = PyjobRun(
        [
            "--every",
            "1h",
            "--align",
            "--run-now",
            "--stop-timeout",
            "30s",
            "--lock",
            "none",
            "--shell",
            "--",
            cmd,
        ],
        tmp_path,
    )
    started = run.wait_for("run-started")
    run.signal(signal.SIGINT)
    run.wait_for("stopping")
    time.sleep(0.3)
    assert run.proc.poll() is None  # still waiting for the command to stop
    t0 = time.monotonic()
    run.signal(signal.SIGINT)
    assert run.wait() == 130
    assert time.monotonic() - t0 < 5
    time.sleep(0.1)
    assert not pid_alive(started[0]["pid"])


def test_sigkilled_pyjob_takes_its_command_and_grandchildren_with_it(tmp_path: Path) -> None:
    cmd = 'sleep 30 & echo $! > "$OUT"; sleep 30'
    run = PyjobRun(
        ["--every", "1h", "--align", "--run-now", "--lock", "none", "--shell", "--", cmd],
        tmp_path,
        env={"OUT": str(tmp_path / "pid")},
    )
    pid = run.wait_for("run-started")[0]["pid"]
    deadline = time.monotonic() + 5
    while not (tmp_path / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int((tmp_path / "pid").read_text())
    run.proc.kill()  # SIGKILL: pyjob gets no chance to clean up; its reaper does
    run.wait()
    deadline = time.monotonic() + 3
    while (pid_alive(pid) or pid_alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid) and not pid_alive(grandchild)


def test_missing_command_is_logged_per_run_and_the_loop_goes_on(tmp_path: Path) -> None:
    run = PyjobRun(
        ["--every", "200ms", "--align", "--lock", "none", "--", "no-such-command-xyz"], tmp_path
    )
    finished = run.wait_for("run-finished", 2)
    run.stop()
    assert all(e["exit_code"] == 127 for e in finished)
    assert "command not found: no-such-command-xyz" in finished[0]["error"]
    assert run.events("warning")[0]["problem"].startswith("command not found")


def test_not_executable_is_126(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    run = PyjobRun(
        ["--every", "1h", "--align", "--run-now", "--lock", "none", "--", str(script)], tmp_path
    )
    finished = run.wait_for("run-finished")
    run.stop()
    assert finished[0]["exit_code"] == 126


def test_a_run_gets_only_stdio_and_the_default_signal_dispositions(tmp_path: Path) -> None:
    """Runs are spawned without closing descriptors in the child: nothing pyjob holds (a lease,
    output pipes of other runs) or inherited reaches the command, and SIGPIPE, which Python
    ignores, is back to its default there."""
    import os

    inherited = os.open(tmp_path / "inherited", os.O_CREAT | os.O_WRONLY)
    os.set_inheritable(inherited, True)
    jobs = tmp_path / "jobs.toml"
    probe = "ls /proc/$$/fd; grep SigIgn /proc/$$/status"  # the shell's: no pipeline of its own
    jobs.write_text(
        "".join(
            f'[jobs.{name}]\nevery = "200ms"\nalign = true\nmax-runs = 2\nshell = "{probe}"\n'
            for name in ("a", "b")
        )
    )
    run = PyjobRun(
        ["--lock", f"file:{tmp_path}/l", "--file", str(jobs)], tmp_path, pass_fds=(inherited,)
    )
    try:
        assert run.wait() == 0
    finally:
        os.close(inherited)
    lines = [line.split(" | ", 1)[1] for line in run.out_path.read_text().splitlines()]
    fds = Counter(line for line in lines if "SigIgn" not in line)
    ignored = [int(line.split()[-1], 16) for line in lines if "SigIgn" in line]
    assert fds == {"0": 4, "1": 4, "2": 4}, lines  # 2 jobs x 2 runs
    assert len(ignored) == 4 and not any(mask & (1 << (signal.SIGPIPE - 1)) for mask in ignored)


def test_log_output_captures_lines_with_job_and_tick(tmp_path: Path) -> None:
    run = PyjobRun(
        [
            "--every",
            "200ms",
            "--align",
            "--log-output",
            "--max-runs",
            "2",
            "--lock",
            "none",
            "--shell",
            "--",
            "echo out-line; echo err-line >&2",
        ],
        tmp_path,
    )
    assert run.wait() == 0
    lines = run.events("output")
    assert {(e["stream"], e["line"]) for e in lines} >= {
        ("stdout", "out-line"),
        ("stderr", "err-line"),
    }
    assert all(e["tick"] and e["job"] and e["instance"] for e in lines)
    assert run.out_path.read_text() == ""


def test_json_log_every_line_parses_and_names_job_tick_instance(tmp_path: Path) -> None:
    run = PyjobRun(
        [
            "--every",
            "200ms",
            "--align",
            "--max-runs",
            "3",
            "--lock",
            f"file:{tmp_path}/l",
            "--",
            "true",
        ],
        tmp_path,
    )
    assert run.wait() == 0
    events = run.events()
    kinds = [e["event"] for e in events]
    for kind in ("started", "next-tick", "claimed", "run-started", "run-finished", "exhausted"):
        assert kind in kinds
    for e in events:
        assert {"time", "event", "job", "tick", "instance"} <= set(e)
    claimed = [e["fence"] for e in run.events("claimed")]
    assert claimed == sorted(claimed) and len(claimed) == 3


def test_environment_reaches_the_command(tmp_path: Path) -> None:
    cmd = 'env | grep ^PYJOB_ | sort > "$OUT"'
    run = PyjobRun(
        [
            "--every",
            "200ms",
            "--align",
            "--max-runs",
            "1",
            "--name",
            "envjob",
            "--instance-id",
            "host-a",
            "--lock",
            f"file:{tmp_path}/l",
            "--shell",
            "--",
            cmd,
        ],
        tmp_path,
        env={"OUT": str(tmp_path / "env")},
    )
    assert run.wait() == 0
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    tick = run.events("run-started")[0]["tick"]
    assert env["PYJOB_JOB"] == "envjob" and env["PYJOB_INSTANCE"] == "host-a"
    assert env["PYJOB_FENCE"] == "1"
    assert env["PYJOB_RUN_ID"].startswith("envjob-") and env["PYJOB_RUN_ID"].endswith("Z")
    assert env["PYJOB_TICK"].endswith("+00:00") and tick.startswith(env["PYJOB_TICK"][:19])


def test_once_schedule_ends_by_itself_with_the_runs_status(tmp_path: Path) -> None:
    # Far enough ahead that no busy machine starts pyjob after it ("is in the past", exit 2).
    soon = time.time() + 8
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(soon)) + f".{int(soon % 1 * 1e6):06d}Z"
    ok = PyjobRun(["--once", at, "--lock", "none", "--", "true"], tmp_path, "ok")
    bad = PyjobRun(["--once", at, "--lock", "none", "--", "false"], tmp_path, "bad")
    assert ok.wait() == 0
    assert bad.wait() == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--every", "0s", "--", "true"], 2, "zero duration"),
        (
            ["--every", "5m", "--overlap", "sometimes", "--", "true"],
            2,
            "Invalid value for '--overlap'",
        ),
        (["--every", "5m", "--lock", "ftp://x", "--", "true"], 2, "unknown lock backend 'ftp:'"),
        (["--every", "5m", "--lock", "file:/proc/nope/x", "--", "true"], 5, "cannot be created"),
        (["--every", "5m"], 2, "missing the command"),
    ],
)
def test_bad_input_and_bad_backend_fail_at_start(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    from .conftest import pyjob_exe

    proc = subprocess.run(
        [*pyjob_exe(), "run", "--no-clock-check", *args], capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") <= 3


def test_lock_directory_that_is_not_private_exits_5(tmp_path: Path) -> None:
    from .conftest import pyjob_exe

    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o755)
    proc = subprocess.run(
        [
            *pyjob_exe(),
            "run",
            "--no-clock-check",
            "--every",
            "5m",
            "--lock",
            f"file:{d}",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 5
    assert proc.stderr.strip() == (
        f"Error: lock directory {d} is not private (mode 0755): run chmod 700 {d}, or choose "
        "another with --lock file:PATH"
    )


def test_claims_directory_broken_mid_run_skips_ticks_without_crashing(tmp_path: Path) -> None:
    run = PyjobRun(
        [
            "--every",
            "200ms",
            "--align",
            "--name",
            "j",
            "--lock",
            f"file:{tmp_path}/l",
            "--",
            "true",
        ],
        tmp_path,
    )
    run.wait_for("run-finished", 2)
    claims = tmp_path / "l" / "j" / "claims"
    subprocess.run(["rm", "-rf", str(claims)], check=True)
    claims.write_text("")  # the job's storage is broken: its claims are refused (DESIGN §5)
    refused = run.wait_for("refused", 2)
    assert all("cannot be used" in e["reason"] for e in refused)
    claims.unlink()
    claims.mkdir()
    before = len(run.events("run-finished"))
    run.wait_for("run-finished", before + 2)
    assert run.stop() == 0
    assert all(e["action"] == "skip" for e in run.events("backend-error") if e["tick"])


def test_python_version_is_supported() -> None:
    assert sys.version_info >= (3, 11)


def test_a_command_that_cannot_start_ends_at_once_not_at_the_next_wake_up(
    tmp_path: Path,
) -> None:
    """Its end (and with it its hooks and ping) does not wait for the loop's next wake-up for
    something else: with nothing due for an hour, that would be the 20 s clock-step slice."""
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = PyjobRun(["--once", soon, "--lock", "none", "--", "nosuchcmd"], tmp_path)
    finished = run.wait_for("run-finished", timeout=9)  # the next wake-up: 10 s in
    assert finished[0]["exit_code"] == 127
    assert run.wait(timeout=30) == 1

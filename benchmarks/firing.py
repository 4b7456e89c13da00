"""Firing precision: how late each tool starts a command after its tick, and how far it drifts.

Every tool spawns the same child, `date +%s.%N`, whose output is its own start time. For tools that
fire on whole seconds (pyjob --align, APScheduler's cron trigger, the deadline loop) the tick is
the whole second; for tools that count from their start (`schedule`, a bash `sleep 1` loop) it is
the first run plus k seconds. Lateness = child's start - its tick; drift = the largest lateness
that accumulated by the last tick over the first.

    python -m benchmarks.firing            # 30 ticks, 3 runs (about 8 minutes)
    python -m benchmarks.firing --quick    # 4 ticks, 1 run (a smoke test)

With fewer than 100 ticks a run's 99th percentile is its largest lateness: the table then says max.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import Goal, Table, pyjob, run_alone, spread, tail, tail_name

DEADLINE = r"""
import math, subprocess, sys, time
for _ in range(int(sys.argv[1])):
    time.sleep(math.ceil(time.time() + 1e-4) - time.time())
    subprocess.Popen(["date", "+%s.%N"])
time.sleep(0.5)
"""
SCHEDULE = r"""
import subprocess, sys, time
import schedule
n = int(sys.argv[1]); runs = []
def job():
    subprocess.Popen(["date", "+%s.%N"]); runs.append(1)
    if len(runs) >= n:
        return schedule.CancelJob
schedule.every(1).seconds.do(job)
while schedule.jobs:
    time.sleep(max(0.0, schedule.idle_seconds() or 0.0))
    schedule.run_pending()
time.sleep(0.5)
"""
APSCHEDULER = r"""
import subprocess, sys, time
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
n = int(sys.argv[1]); runs = []
sched = BlockingScheduler()
def job():
    subprocess.Popen(["date", "+%s.%N"]); runs.append(1)
    if len(runs) >= n:
        sched.shutdown(wait=False)
sched.add_job(job, CronTrigger(second="*"), misfire_grace_time=1)
sched.start()
time.sleep(0.5)
"""
BASH = 'for i in $(seq "$1"); do sleep 1; date +%s.%N; done'


def tools(ticks: int, tmp: Path) -> dict[str, tuple[list[str], bool]]:
    """name -> (argv, fires on whole seconds)"""
    return {
        "deadline loop (floor)": ([sys.executable, "-c", DEADLINE, str(ticks)], True),
        "pyjob run --every 1s --align": (
            [
                pyjob(),
                "run",
                "--no-clock-check",
                "--every",
                "1s",
                "--align",
                "--max-runs",
                str(ticks),
                "--lock",
                f"file:{tmp}/locks",
                "--log-format",
                "json",
                "--",
                "date",
                "+%s.%N",
            ],
            True,
        ),
        "APScheduler 3 cron trigger": ([sys.executable, "-c", APSCHEDULER, str(ticks)], True),
        "schedule (every 1 s)": ([sys.executable, "-c", SCHEDULE, str(ticks)], False),
        "bash sleep 1 loop": (["bash", "-c", BASH, "bash", str(ticks)], False),
    }


def one_run(argv: list[str], aligned: bool, ticks: int) -> tuple[list[float], float, int]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=ticks + 60, env={**os.environ, "TZ": "UTC"}
    )
    starts = [float(x) for x in proc.stdout.split()]
    if not starts:
        raise RuntimeError(f"{argv[:2]} produced no runs: {proc.stderr[-500:]}")
    base = math.floor(starts[0]) if aligned else starts[0]
    late = [(s - (base + k)) * 1000 for k, s in enumerate(starts)]
    drift = late[-1] - late[0]
    return late, drift, len(starts)


def measure(
    ticks: int, repeat: int, only: list[str] | None = None
) -> dict[str, dict[str, list[float]]]:
    """name -> {"p50": [...per run], "p99": [...], "max": [...], "drift": [...], "runs": [...]}"""
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        named = tools(ticks, Path(d))
        names = [n for n in named if only is None or n in only]
        for name in names:
            out[name] = {"p50": [], "p99": [], "max": [], "drift": [], "runs": []}
        for _ in range(repeat):  # round-robin, so drift in the machine touches all alike
            for name in names:
                argv, aligned = named[name]
                late, drift, n = one_run(argv, aligned, ticks)
                stats = out[name]
                stats["p50"].append(sorted(late)[len(late) // 2])
                stats["p99"].append(tail(late))
                stats["max"].append(max(late))
                stats["drift"].append(drift)
                stats["runs"].append(float(n))
    return out


def table(ticks: int, repeat: int, only: list[str] | None = None) -> Table:
    results = measure(ticks, repeat, only)
    p99 = tail_name(ticks)
    t = Table(
        f"Firing: {ticks} ticks at 1 s, {repeat} run(s) each; lateness of the command's own "
        "start after its tick, ms",
        ["tool", "runs", "p50 ms", *([f"{p99} ms"] if p99 != "max" else []), "max ms", "drift ms"],
    )
    for name, s in results.items():
        t.rows.append(
            [
                name,
                spread(s["runs"], 0),
                spread(s["p50"]),
                *([spread(s["p99"])] if p99 != "max" else []),
                spread(s["max"]),
                spread(s["drift"]),
            ]
        )
    t.note = (
        "Median of the runs, with min-max. `schedule` and the bash loop count from their own "
        "start, so their lateness is their accumulated drift."
    )
    floor, mine = results.get("deadline loop (floor)"), results.get("pyjob run --every 1s --align")
    if floor and mine:
        gap = statistics.median(mine["p99"]) - statistics.median(floor["p99"])
        t.goals.append(
            Goal(
                f"one job: firing {p99}",
                "within 1 ms of the deadline loop",
                f"{gap:+.2f} ms",
                gap <= 1.0,
            )
        )
    return t


def main() -> int:
    return run_alone(__doc__, lambda quick: [table(4 if quick else 30, 1 if quick else 3)])


if __name__ == "__main__":
    raise SystemExit(main())

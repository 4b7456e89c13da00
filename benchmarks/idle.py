"""Idle cost: CPU time, wake-ups and peak memory while each tool waits for a tick an hour away.

    python -m benchmarks.idle            # 60 s after 15 s of start-up, 3 runs (about 4 minutes)
    python -m benchmarks.idle --quick    # 4 s, 1 run (a smoke test)

Every thread counts: CPU is the sum of /proc/PID/task/*/schedstat (nanoseconds on CPU), wake-ups
the sum of every thread's context switches, voluntary and involuntary (/proc/PID/task/*/status),
both over the window and scaled to a minute; peak RSS is VmHWM. The goals are those of an idle
pyjob instance, heartbeat included: at most 6 wake-ups and 2 ms of CPU a minute, peak RSS at most
22 MiB.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import tempfile
import time

from .common import Goal, Table, cpu_seconds, proc_status, pyjob, run_alone, spread, wakeups

GOALS = {"cpu": 2.0, "wakes": 6.0, "rss": 22.0}  # per minute, per minute, MiB
# Seconds each tool runs before the window: start-up is not idling (pyjob reads the registry 1,
# 3 and 7 s after its start, and beats at the fast pace until its first look at the fleet).
SETTLE = 15.0

APSCHEDULER = r"""
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
import datetime
s = BlockingScheduler()
at = datetime.datetime.now() + datetime.timedelta(hours=1)
s.add_job(print, CronTrigger(hour=at.hour, minute=at.minute))
s.start()
"""
SCHEDULE = r"""
import time, schedule
schedule.every(1).hours.do(print)
while True:
    time.sleep(max(0.0, schedule.idle_seconds() or 0.0))
    schedule.run_pending()
"""


def tools(tmp: str) -> dict[str, list[str]]:
    far = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    return {
        "pyjob run": [
            pyjob(),
            "run",
            "--no-clock-check",
            "--once",
            far,
            "--lock",
            f"file:{tmp}/idle",
            "--",
            "true",
        ],
        "APScheduler 3 (BlockingScheduler)": [sys.executable, "-c", APSCHEDULER],
        "schedule (sleep until idle_seconds)": [sys.executable, "-c", SCHEDULE],
    }


def measure(seconds: float, repeat: int, settle: float) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            procs = {
                name: subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for name, argv in tools(tmp).items()
            }
            time.sleep(settle)  # start-up is not idling
            before = {name: (cpu_seconds(p.pid), wakeups(p.pid)) for name, p in procs.items()}
            t0 = time.monotonic()
            time.sleep(seconds)
            per_min = 60 / (time.monotonic() - t0)
            for name, p in procs.items():
                cpu, wakes = cpu_seconds(p.pid), wakeups(p.pid)
                rss = int(proc_status(p.pid)["VmHWM"].split()[0])
                stats = out.setdefault(name, {"cpu": [], "wakes": [], "rss": []})
                stats["cpu"].append((cpu - before[name][0]) * 1000 * per_min)
                stats["wakes"].append((wakes - before[name][1]) * per_min)
                stats["rss"].append(rss / 1024)
                p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    return out


def table(seconds: float, repeat: int) -> Table:
    t = Table(
        f"Idle: waiting {seconds:g} s for a tick an hour away, {repeat} run(s) each",
        ["tool", "CPU ms per minute", "wake-ups per minute", "peak RSS MiB"],
    )
    results = measure(seconds, repeat, SETTLE if repeat > 1 else 2.0)
    for name, s in results.items():
        t.rows.append([name, spread(s["cpu"], 2), spread(s["wakes"], 1), spread(s["rss"], 1)])
    t.note = (
        f"The three wait side by side, measured from {SETTLE if repeat > 1 else 2.0:g} s after "
        "their start. Every thread counts: CPU from /proc/PID/task/*/schedstat "
        "(ns), wake-ups as every thread's context switches (voluntary and involuntary), both "
        "scaled to a minute; "
        "peak RSS is VmHWM. Median of the runs, with min-max."
    )
    mine = results["pyjob run"]
    names = {
        "cpu": ("idle CPU", "ms/min"),
        "wakes": ("idle wake-ups", "/min"),
        "rss": ("peak RSS", "MiB"),
    }
    for key, limit in GOALS.items():
        what, unit = names[key]
        v = statistics.median(mine[key])
        t.goals.append(
            Goal(
                f"pyjob {what}, one job an hour away",
                f"at most {limit:g} {unit}",
                f"{v:.2f} {unit}",
                v <= limit,
            )
        )
    return t


def main() -> int:
    return run_alone(__doc__, lambda quick: [table(4.0 if quick else 60.0, 1 if quick else 3)])


if __name__ == "__main__":
    raise SystemExit(main())

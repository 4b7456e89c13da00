"""Idle cost: CPU time, wake-ups and peak memory while each tool waits for a tick an hour away."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time

from .common import Table, proc_stat, pyjob, spread

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


def measure(seconds: float, repeat: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            procs = {
                name: subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for name, argv in tools(tmp).items()
            }
            time.sleep(2.0)  # start-up is not idling
            before = {name: proc_stat(p.pid) for name, p in procs.items()}
            time.sleep(seconds)
            for name, p in procs.items():
                cpu, wakes, rss = proc_stat(p.pid)
                per_min = 60 / seconds
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
    for name, s in measure(seconds, repeat).items():
        t.rows.append([name, spread(s["cpu"], 1), spread(s["wakes"], 1), spread(s["rss"], 1)])
    t.note = (
        "The three wait side by side. pyjob wakes every 20 s to notice clock steps; "
        "CPU time is read from /proc in clock ticks (10 ms), so small values round to 0."
    )
    return t

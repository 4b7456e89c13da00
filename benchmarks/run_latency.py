"""How precisely and cheaply `pyjob run` fires, against a minimal loop measured in the same run.

    python benchmarks/run_latency.py            # 30 ticks at 1 s, 60 s idle (about 2.5 minutes)
    python benchmarks/run_latency.py --quick    # 5 ticks, 5 s idle (a smoke test for CI)

Firing: `pyjob run --every 1s --align -- date +%s.%N` and a baseline Python loop that sleeps
until the next whole second and spawns the same `date`. Each child prints its own start time, so
lateness is "child started" minus "its tick" (the whole second it belongs to), measured the same way
for both. Drift: how far the k-th tick is from first tick + k seconds (0 when no tick is missed).

Idle: `pyjob run` waiting for a tick an hour away: CPU time (utime + stime from /proc) over the
window, wake-ups (voluntary context switches), and peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = r"""
import subprocess, sys, time
n = int(sys.argv[1])
for _ in range(n):
    time.sleep(math.ceil(time.time() + 1e-4) - time.time())
    subprocess.Popen(["date", "+%s.%N"])
time.sleep(0.5)
""".replace("import subprocess", "import math, subprocess")


def pyjob_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "pyjob"
    return [str(exe)] if exe.exists() else [shutil.which("pyjob") or "pyjob"]


def lateness(lines: list[str]) -> tuple[list[float], float, int]:
    starts = [float(x) for x in lines if x.strip()]
    ticks = [math.floor(s) for s in starts]
    late = [(s - t) * 1000 for s, t in zip(starts, ticks, strict=True)]
    drift = max(abs(t - (ticks[0] + k)) for k, t in enumerate(ticks)) if ticks else 0
    return late, float(drift), len(set(ticks))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_pyjob(ticks: int, tmp: Path) -> list[str]:
    out = tmp / "pyjob.out"
    with out.open("w") as f:
        proc = subprocess.Popen(
            [
                *pyjob_cmd(),
                "run",
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
            stdout=f,
            stderr=subprocess.DEVNULL,
        )
        proc.wait(timeout=ticks + 30)
    return out.read_text().splitlines()


def run_baseline(ticks: int, tmp: Path) -> list[str]:
    out = tmp / "baseline.out"
    with out.open("w") as f:
        subprocess.run([sys.executable, "-c", BASELINE, str(ticks)], stdout=f, timeout=ticks + 30)
    return out.read_text().splitlines()


def proc_stat(pid: int) -> tuple[float, int, int]:
    """CPU seconds (user + system), voluntary context switches, peak RSS in KiB."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    values = dict(line.split(":", 1) for line in status if ":" in line)
    return cpu, int(values["voluntary_ctxt_switches"]), int(values["VmHWM"].split()[0])


def idle(seconds: float, tmp: Path) -> tuple[float, int, int]:
    far = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    proc = subprocess.Popen(
        [*pyjob_cmd(), "run", "--once", far, "--lock", f"file:{tmp}/idle", "--", "true"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2.0)  # start-up is not idling
    cpu0, sw0, _ = proc_stat(proc.pid)
    time.sleep(seconds)
    cpu1, sw1, rss = proc_stat(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    return cpu1 - cpu0, sw1 - sw0, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 ticks and 5 s idle (CI smoke)")
    args = parser.parse_args()
    ticks, idle_s = (5, 5.0) if args.quick else (30, 60.0)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base_late, base_drift, base_n = lateness(run_baseline(ticks, tmp))
        pj_late, pj_drift, pj_n = lateness(run_pyjob(ticks, tmp))
        cpu, wakeups, rss = idle(idle_s, tmp)
    print()
    print(f"Firing: {ticks} ticks at 1 s; lateness = child's own start minus its tick (ms)")
    print()
    print("| | ticks | p50 ms | p99 ms | max ms | drift s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, late, drift, n in (
        ("baseline loop", base_late, base_drift, base_n),
        ("pyjob run", pj_late, pj_drift, pj_n),
    ):
        print(
            f"| {name} | {n} | {statistics.median(late):.2f} | {pct(late, 0.99):.2f} | "
            f"{max(late):.2f} | {drift:g} |"
        )
    p50_gap = statistics.median(pj_late) - statistics.median(base_late)
    p99_gap = pct(pj_late, 0.99) - pct(base_late, 0.99)
    print(f"| pyjob − baseline | | {p50_gap:+.2f} | {p99_gap:+.2f} | | |")
    print()
    per_min = 60 / idle_s
    print(f"Idle: waiting {idle_s:g} s for a tick an hour away")
    print()
    print("| CPU ms per minute | wake-ups per minute | peak RSS MiB |")
    print("| --- | --- | --- |")
    print(f"| {cpu * 1000 * per_min:.1f} | {wakeups * per_min:.1f} | {rss / 1024:.1f} |")
    ok = pj_n == ticks and pj_drift == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

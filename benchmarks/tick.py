"""Many jobs on one tick: 100 jobs due at each whole second, and 1,000 due every 4 seconds,
against a loop that spawns them bare.

    python -m benchmarks.tick            # 10 ticks of each, 3 runs (about 10 minutes)
    python -m benchmarks.tick --quick    # 3 ticks, 1 run (a smoke test)

`pyjob run --file` holds N TOML jobs `every = "1s"` (1,000: `"4s"`, so that a tick's spawns end
before the next), `align = true`, each running `date +%s.%N`, whose output is the command's own
start time; lateness = start - tick. The spawn rate of a tick is its runs over the time from the
tick to its last start. The floor, measured in the same run, is a minimal Python loop that
sleeps to each tick and spawns the same N commands with os.posix_spawn (what pyjob spawns
with), one after another, in a process group each, stdin /dev/null; a peer row does the same with
subprocess.Popen. pyjob runs with `--lock none` (the scheduler alone), `file:` (the default) and a
Redis on loopback. Own CPU per run: the process's CPU time (every thread, from schedstat; never
its children's) over the ticks, divided by the runs; for pyjob also its scheduler (main) thread's.
The goals are ratios to the floor measured in the same run, so they hold on any machine.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, Goal, Table, cpu_seconds, run_alone, run_file, tail, tail_name

sys.path.insert(0, str(ROOT))
from localservers import start_redis

# Jobs on one tick, and the period of their ticks (seconds).
SIZES = {100: 1, 1000: 4}
COMMAND = ["date", "+%s.%N"]
FLOOR = r"""
import math, os, shutil, sys, time
n, period = int(sys.argv[1]), int(sys.argv[2])
argv = ["date", "+%s.%N"]
path, env = shutil.which(argv[0]), dict(os.environ)
actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
print("ready", file=sys.stderr, flush=True)
while True:  # until killed, as pyjob runs until stopped: the window is cut out below
    time.sleep(max(0.0, math.ceil((time.time() + 1e-4) / period) * period - time.time()))
    pids = [os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0) for _ in range(n)]
    for pid in pids:
        os.waitpid(pid, 0)
"""
POPEN = r"""
import math, subprocess, sys, time
n, period = int(sys.argv[1]), int(sys.argv[2])
argv = ["date", "+%s.%N"]
print("ready", file=sys.stderr, flush=True)
while True:  # until killed, as pyjob runs until stopped: the window is cut out below
    time.sleep(max(0.0, math.ceil((time.time() + 1e-4) / period) * period - time.time()))
    children = [
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0) for _ in range(n)
    ]
    for c in children:
        c.wait()
"""
LOOPS = {"floor": FLOOR, "popen": POPEN}


def jobs_file(path: Path, n: int, period: int) -> Path:
    lines = [
        f'[jobs.j{k:04d}]\nevery = "{period}s"\nalign = true\ncommand = {COMMAND!r}\n'
        for k in range(n)
    ]
    path.write_text("\n".join(lines).replace("'", '"'))
    return path


def _wait_for(log: Path, marker: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise RuntimeError(f"no {marker!r}: {log.read_text(errors='replace')[-2000:]}")


def one_run(name: str, lock: str | None, n: int, ticks: int, tmp: Path) -> dict[str, float]:
    """Start ``name`` (pyjob with ``lock``, or a loop of LOOPS), let ``ticks`` ticks of ``n``
    runs go by, stop it: lateness p50/p99/max in ms, the spawn rate, CPU ms per run, runs."""
    period = SIZES[n]
    out, log = tmp / f"{name}.out", tmp / f"{name}.log"
    if lock is not None:
        argv = run_file(lock, jobs_file(tmp / "jobs.toml", n, period))
        marker = '"event": "jobs"'  # it runs until stopped; the window is cut out below
    else:
        argv = [sys.executable, "-c", LOOPS[name], str(n), str(period)]
        marker = "ready"
    with out.open("wb") as o, log.open("wb") as e:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=o, stderr=e, env={**os.environ, "TZ": "UTC"}
        )
    try:
        _wait_for(log, marker, proc)
        # Two ticks of warm-up, then the window: from the middle of the period before its first
        # tick to the middle of the period after its last.
        first = math.ceil(time.time() / period) * period + 2 * period
        end = first + ticks * period
        time.sleep(max(0.0, first - period / 2 - time.time()))
        cpu0, main0 = cpu_seconds(proc.pid), cpu_seconds(proc.pid, main_thread=True)
        time.sleep(max(0.0, end - period / 2 - time.time()))
        cpu = cpu_seconds(proc.pid) - cpu0
        main = cpu_seconds(proc.pid, main_thread=True) - main0
    finally:
        if lock is not None:
            proc.send_signal(signal.SIGTERM)
        else:
            proc.kill()
        proc.wait(timeout=30)
    # One start time a line; with several jobs pyjob prefixes each line with the job's name.
    starts = [float(line.split()[-1]) for line in out.read_text().splitlines() if line.strip()]
    by_tick: dict[int, list[float]] = {}
    for s in starts:
        if first <= s < end:
            by_tick.setdefault(math.floor(s / period) * period, []).append(s)
    late = [(s - t) * 1000 for t, ss in by_tick.items() for s in ss]
    if not late:
        raise RuntimeError(f"{name}: no runs in the window: {log.read_text()[-2000:]}")
    return {
        "p50": statistics.median(late),
        "p99": tail(late),
        "max": max(late),
        "rate": statistics.median(len(ss) / max(max(ss) - t, 1e-6) for t, ss in by_tick.items()),
        "cpu": cpu * 1000 / len(late),
        "main": main * 1000 / len(late),
        "runs": float(len(late)),
        "short": float(sum(1 for t in range(first, end, period) if len(by_tick.get(t, [])) != n)),
    }


SPAWNERS = {
    "floor": "floor: a Python loop, os.posix_spawn × N at each tick",
    "popen": "a Python loop, subprocess.Popen × N at each tick",
    "none": "pyjob run --file, --lock none",
    "file": "pyjob run --file, file:",
    "redis": "pyjob run --file, redis://",
}


def measure(n: int, ticks: int, repeat: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {name: {} for name in SPAWNERS}
    tmp = Path(tempfile.mkdtemp(prefix="pyjob-bench-tick-"))
    redis_server = start_redis(tmp)
    try:
        for r in range(repeat):  # round-robin: the machine's drift touches all alike
            for name in out:
                work = tmp / f"{name}-{r}"
                work.mkdir()
                lock = {
                    "floor": None,
                    "popen": None,
                    "none": "none",
                    "file": f"file:{work / 'locks'}",
                    "redis": f"redis://127.0.0.1:{redis_server.port}/{r + 1}",
                }[name]
                for k, v in one_run(name, lock, n, ticks, work).items():
                    out[name].setdefault(k, []).append(v)
    finally:
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _cell(values: list[float], digits: int = 2) -> str:
    m = statistics.median(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(n: int, ticks: int, repeat: int) -> Table:
    res = measure(n, ticks, repeat)
    floor_p99 = statistics.median(res["floor"]["p99"])
    floor_rate = statistics.median(res["floor"]["rate"])
    floor_cpu = statistics.median(res["floor"]["cpu"])
    p99 = tail_name(n * ticks)
    period = SIZES[n]
    t = Table(
        f"Many jobs on one tick: {n:,} jobs due at each of {ticks} ticks {period} s apart, "
        f"{repeat} run(s); lateness of each command's own start, ms",
        [
            "spawner",
            "runs",
            "p50 ms",
            f"{p99} ms",
            "max ms",
            f"{p99} × floor",
            "spawns/s",
            "spawns/s × floor",
            "own CPU ms per run",
            "CPU × floor",
            "of which scheduler thread",
        ],
    )
    for name, s in res.items():
        t.rows.append(
            [
                SPAWNERS[name].replace("N", f"{n:,}"),
                _cell(s["runs"], 0),
                _cell(s["p50"]),
                _cell(s["p99"]),
                _cell(s["max"]),
                f"{statistics.median(s['p99']) / floor_p99:.2f}",
                _cell(s["rate"], 0),
                f"{statistics.median(s['rate']) / floor_rate:.2f}",
                _cell(s["cpu"], 3),
                f"{statistics.median(s['cpu']) / floor_cpu:.2f}",
                _cell(s["main"], 3) if name not in LOOPS else "-",
            ]
        )
    short = sum(sum(res[name]["short"]) for name in SPAWNERS if name not in LOOPS)
    t.note = (
        f'Median of the runs, with min-max. Jobs are `every = "{period}s"`, `align = true`, '
        '`command = ["date", "+%s.%N"]`. Each command\'s lateness includes the spawns before '
        f"it in the same tick, so {p99} is about the time to start {n * 99 // 100:,} commands; "
        "spawns/s is the median over the ticks of their runs over the time from the tick to "
        "the last start. file: is a directory in /tmp "
        "(here ext4, like the default ~/.local/state/pyjob); on a tmpfs such as "
        "$XDG_RUNTIME_DIR its claims cost about half as much CPU. "
        + (f"In {short:.0f} tick(s) pyjob did not start all {n:,} runs." if short else "")
    ).strip()
    for name in ("none", "file", "redis"):
        backend = {"none": "--lock none", "file": "file:", "redis": "redis://"}[name]
        ratio = statistics.median(res[name]["p99"]) / floor_p99
        rate = statistics.median(res[name]["rate"]) / floor_rate
        cpu = statistics.median(res[name]["cpu"]) / floor_cpu
        if n == 100:
            t.goals.append(
                Goal(
                    f"{n:,} jobs on one tick ({backend}): {p99} lateness",
                    "at most 1.2× the posix_spawn floor",
                    f"{ratio:.2f}×",
                    ratio <= 1.2,
                )
            )
        t.goals += [
            Goal(
                f"{n:,} jobs on one tick ({backend}): spawn rate",
                "at least 0.85× the posix_spawn floor's",
                f"{rate:.2f}×",
                rate >= 0.85,
            ),
            Goal(
                f"pyjob's own CPU per run, {n:,} jobs ({backend})",
                "at most 3× the posix_spawn floor's",
                f"{cpu:.2f}×",
                cpu <= 3.0,
            ),
        ]
    return t


def tables(ticks: int, repeat: int) -> list[Table]:
    return [table(n, ticks, repeat) for n in SIZES]


def main() -> int:
    return run_alone(__doc__, lambda quick: tables(3 if quick else 10, 1 if quick else 3))


if __name__ == "__main__":
    raise SystemExit(main())

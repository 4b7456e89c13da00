"""Many jobs on one tick: 100 jobs due at the same second, against a loop that spawns them bare.

    python -m benchmarks.tick            # 10 ticks of 100 jobs, 3 runs (about 1.5 minutes)
    python -m benchmarks.tick --quick    # 3 ticks, 1 run (a smoke test)

A second table holds 1,000 jobs `every = "4s"` (a burst: the first command's lateness, from
pyjob's own run-started events, so that a run started after the following tick counts for its
own), against the posix_spawn floor, on file: and Redis: 5 ticks from 70 s after the start, once
the start's registrations are written (2 ticks from 10 s with --quick).

`pyjob run --file` holds 100 TOML jobs `every = "1s"`, `align = true`, each running
`date +%s.%N`, whose output is the command's own start time; the tick is that whole second, so
lateness = start - tick. The floor, measured in the same run, is a minimal Python loop that sleeps
to each whole second and spawns the same 100 commands with os.posix_spawn (what pyjob spawns
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
from collections import Counter
from pathlib import Path

from .common import ROOT, Goal, Table, cpu_seconds, run_alone, run_file, tail, tail_name

sys.path.insert(0, str(ROOT))
from localservers import start_redis

JOBS = 100
BURST = 1000  # the second table: this many jobs every BURST_EVERY seconds
BURST_EVERY = 4
COMMAND = ["date", "+%s.%N"]
FLOOR = r"""
import math, os, shutil, sys, time
n, ticks, every = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
argv = ["date", "+%s.%N"]
path, env = shutil.which(argv[0]), dict(os.environ)
actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
print("ready", file=sys.stderr, flush=True)
for _ in range(ticks):
    time.sleep(math.ceil((time.time() + 1e-4) / every) * every - time.time())
    pids = [os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0) for _ in range(n)]
    for pid in pids:
        os.waitpid(pid, 0)
sys.stdin.read()
"""
POPEN = r"""
import math, subprocess, sys, time
n, ticks, every = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
argv = ["date", "+%s.%N"]
print("ready", file=sys.stderr, flush=True)
for _ in range(ticks):
    time.sleep(math.ceil((time.time() + 1e-4) / every) * every - time.time())
    children = [
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, process_group=0) for _ in range(n)
    ]
    for c in children:
        c.wait()
sys.stdin.read()
"""
LOOPS = {"floor": FLOOR, "popen": POPEN}


def jobs_file(path: Path, n: int, every: int = 1) -> Path:
    lines = [
        f'[jobs.j{k:04d}]\nevery = "{every}s"\nalign = true\ncommand = {COMMAND!r}\n'
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


def one_run(
    name: str,
    lock: str | None,
    ticks: int,
    tmp: Path,
    jobs: int = JOBS,
    every: int = 1,
    warm: float = 2,
) -> dict[str, float]:
    """Start ``name`` (pyjob with ``lock``, or a loop of LOOPS), let ``ticks`` ticks (every
    ``every`` seconds) of ``jobs`` runs go by, stop it: lateness p50/p99/max and of each tick's
    first command in ms, CPU ms per run, runs counted."""
    out, log = tmp / f"{name}.out", tmp / f"{name}.log"
    if lock is not None:
        argv = run_file(lock, jobs_file(tmp / "jobs.toml", jobs, every))
        marker = '"event": "jobs"'  # it runs until stopped; the window is cut out below
    else:
        loops = ticks + 2 + math.ceil(warm / every)
        argv = [sys.executable, "-c", LOOPS[name], str(jobs), str(loops), str(every)]
        marker = "ready"
    with out.open("wb") as o, log.open("wb") as e:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=o, stderr=e, env={**os.environ, "TZ": "UTC"}
        )
    try:
        _wait_for(log, marker, proc)
        # ``warm`` seconds of warm-up, then the window: from the middle of the interval before
        # its first tick to the middle of the interval after its last.
        first = math.ceil((time.time() + max(warm, 2 * every + 1)) / every) * every
        time.sleep(max(0.0, first - every / 2 - time.time()))
        cpu0, main0 = cpu_seconds(proc.pid), cpu_seconds(proc.pid, main_thread=True)
        time.sleep(max(0.0, first + ticks * every - every / 2 - time.time()))
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
    window = [s for s in starts if first <= s < first + ticks * every]

    def tick_of(s: float) -> int:
        return math.floor(s / every) * every

    per_tick = Counter(tick_of(s) for s in window)
    late = [(s - tick_of(s)) * 1000 for s in window]
    firsts = {t: min(s for s in window if tick_of(s) == t) - t for t in per_tick}
    if lock is not None:
        # pyjob says which tick each run is of: a run started after the following tick came
        # counts for its own tick, not as that one's first
        per_tick, firsts = _from_log(log, first, first + ticks * every)
    if not late:
        raise RuntimeError(f"{name}: no runs in the window: {log.read_text()[-2000:]}")
    return {
        "p50": statistics.median(late),
        "p99": tail(late),
        "max": max(late),
        "cpu": cpu * 1000 / len(window),
        "main": main * 1000 / len(window),
        "first": statistics.median(v * 1000 for v in firsts.values()),
        "runs": float(len(window)),
        "short": float(
            sum(1 for t in range(first, first + ticks * every, every) if per_tick[t] != jobs)
        ),
    }


def _from_log(log: Path, start: int, end: int) -> tuple[Counter[int], dict[int, float]]:
    """From pyjob's run-started events: the runs of each tick in [start, end), and the
    lateness (s) of each tick's first."""
    import json
    from datetime import datetime

    runs: Counter[int] = Counter()
    firsts: dict[int, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"run-started"' not in line:
            continue
        e = json.loads(line)
        tick = round(datetime.fromisoformat(e["tick"].replace("Z", "+00:00")).timestamp())
        if start <= tick < end:
            runs[tick] += 1
            firsts[tick] = min(firsts.get(tick, math.inf), float(e["lateness"]))
    return runs, firsts


SPAWNERS = {
    "floor": "floor: a Python loop, os.posix_spawn × 100 at each second",
    "popen": "a Python loop, subprocess.Popen × 100 at each second",
    "none": f"pyjob run --file ({JOBS} jobs), --lock none",
    "file": f"pyjob run --file ({JOBS} jobs), file:",
    "redis": f"pyjob run --file ({JOBS} jobs), redis://",
}


def measure(
    ticks: int,
    repeat: int,
    names: tuple[str, ...] = tuple(SPAWNERS),
    jobs: int = JOBS,
    every: int = 1,
    warm: float = 2,
) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {name: {} for name in names}
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
                for k, v in one_run(name, lock, ticks, work, jobs, every, warm).items():
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


def table(ticks: int, repeat: int) -> Table:
    res = measure(ticks, repeat)
    floor_p50 = statistics.median(res["floor"]["p50"])
    floor_p99 = statistics.median(res["floor"]["p99"])
    floor_cpu = statistics.median(res["floor"]["cpu"])
    p99 = tail_name(JOBS * ticks)
    t = Table(
        f"Many jobs on one tick: {JOBS} jobs due at each of {ticks} whole seconds, "
        f"{repeat} run(s); lateness of each command's own start, ms",
        [
            "spawner",
            "runs",
            "p50 ms",
            f"{p99} ms",
            "max ms",
            "p50 × floor",
            f"{p99} × floor",
            "own CPU ms per run",
            "CPU × floor",
            "of which scheduler thread",
        ],
    )
    for name, s in res.items():
        t.rows.append(
            [
                SPAWNERS[name],
                _cell(s["runs"], 0),
                _cell(s["p50"]),
                _cell(s["p99"]),
                _cell(s["max"]),
                f"{statistics.median(s['p50']) / floor_p50:.2f}",
                f"{statistics.median(s['p99']) / floor_p99:.2f}",
                _cell(s["cpu"], 3),
                f"{statistics.median(s['cpu']) / floor_cpu:.2f}",
                _cell(s["main"], 3) if name not in LOOPS else "-",
            ]
        )
    short = sum(sum(res[name]["short"]) for name in SPAWNERS if name not in LOOPS)
    t.note = (
        'Median of the runs, with min-max. Jobs are `every = "1s"`, `align = true`, '
        '`command = ["date", "+%s.%N"]`. Each command\'s lateness includes the spawns before '
        f"it in the same second, so {p99} is about the time to start 99 commands. file: is a "
        "directory in /tmp (here ext4, like the default ~/.local/state/pyjob); on a tmpfs such "
        "as $XDG_RUNTIME_DIR its claims cost about half as much CPU. "
        + (f"In {short:.0f} tick(s) pyjob did not start all {JOBS} runs." if short else "")
    ).strip()
    for name in ("none", "file", "redis"):
        backend = {"none": "--lock none", "file": "file:", "redis": "redis://"}[name]
        ratio = statistics.median(res[name]["p99"]) / floor_p99
        cpu = statistics.median(res[name]["cpu"]) / floor_cpu
        t.goals += [
            Goal(
                f"{JOBS} jobs on one tick ({backend}): {p99} lateness",
                "at most 1.2× the posix_spawn floor",
                f"{ratio:.2f}×",
                ratio <= 1.2,
            ),
            Goal(
                f"pyjob's own CPU per run ({backend})",
                "at most 3× the posix_spawn floor's",
                f"{cpu:.2f}×",
                cpu <= 3.0,
            ),
        ]
    return t


BURSTERS = ("floor", "file", "redis")


def burst_table(ticks: int, repeat: int, warm: float) -> Table:
    """1,000 jobs on one tick: how late each tick's first command starts (its claims are made
    before the tick, so nothing but the spawns stands before it), and the CPU per run, after
    ``warm`` seconds (a start's registrations are written in its first minute)."""
    res = measure(ticks, repeat, BURSTERS, BURST, BURST_EVERY, warm)
    floor_first = statistics.median(res["floor"]["first"])
    floor_cpu = statistics.median(res["floor"]["cpu"])
    t = Table(
        f"A burst: {BURST:,} jobs due at each of {ticks} ticks {BURST_EVERY} s apart, "
        f"{repeat} run(s), from {warm:.0f} s after the start; lateness of each command's own "
        "start, ms",
        [
            "spawner",
            "runs",
            "first command ms",
            "p50 ms",
            "max ms",
            "own CPU ms per run",
            "CPU × floor",
            "of which scheduler thread",
        ],
    )
    for name, s in res.items():
        t.rows.append(
            [
                SPAWNERS[name]
                .replace(f"({JOBS} jobs)", f"({BURST:,} jobs)")
                .replace("× 100 at each second", f"× {BURST:,} every {BURST_EVERY} s"),
                _cell(s["runs"], 0),
                _cell(s["first"]),
                _cell(s["p50"]),
                _cell(s["max"]),
                _cell(s["cpu"], 3),
                f"{statistics.median(s['cpu']) / floor_cpu:.2f}",
                _cell(s["main"], 3) if name not in LOOPS else "-",
            ]
        )
    short = sum(sum(res[name]["short"]) for name in BURSTERS if name not in LOOPS)
    t.note = (
        f"Median of the runs, with min-max; the floor's first command is at {floor_first:.2f} ms. "
        + (f"In {short:.0f} tick(s) pyjob did not start all {BURST:,} runs." if short else "")
    ).strip()
    for name in ("file", "redis"):
        first = statistics.median(res[name]["first"])
        t.goals.append(
            Goal(
                f"{BURST:,} jobs on one tick ({name}:): the first command's lateness",
                "within 50 ms of the tick",
                f"{first:.1f} ms",
                first <= 50.0,
            )
        )
    return t


def main() -> int:
    return run_alone(
        __doc__,
        lambda quick: [
            table(3 if quick else 10, 1 if quick else 3),
            burst_table(2 if quick else 5, 1 if quick else 3, 10 if quick else 70),
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())

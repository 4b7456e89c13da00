"""Helpers shared by the benchmark modules: the machine, statistics, tables, processes."""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )


@functools.cache
def commit() -> str:
    """The checkout's short commit hash, with "+changes" when the tree differs from it, or
    "unknown" outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+changes" if dirty else "")


def stamp() -> str:
    """What a table was measured on: the commit and the machine's cores."""
    return f"Measured at commit {commit()} on {os.cpu_count()} cores."


def pyjob() -> str:
    exe = Path(sys.executable).parent / "pyjob"
    return str(exe) if exe.exists() else (shutil.which("pyjob") or "pyjob")


def run_file(lock: str, path: Path) -> list[str]:
    """`pyjob run --file PATH --lock LOCK`, with JSON events and no clock check at start."""
    return [
        pyjob(),
        "run",
        "--no-clock-check",
        "--log-format",
        "json",
        "--lock",
        lock,
        "--file",
        str(path),
    ]


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# Fewer samples than this make the 99th percentile the largest of them: such a column says max.
P99_SAMPLES = 100


def tail_name(samples: int) -> str:
    """The name of the tail column for ``samples`` samples per figure: p99, or max when they are
    too few for a 99th percentile to differ from the largest."""
    return "p99" if samples >= P99_SAMPLES else "max"


def tail(values: Sequence[float]) -> float:
    """The 99th percentile of ``values``, or their largest when they are too few (tail_name)."""
    return pct(values, 0.99) if len(values) >= P99_SAMPLES else max(values)


def spread(values: Sequence[float], digits: int = 2) -> str:
    """The median of repeated runs, with min-max when there was more than one."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def wakeups(pid: int) -> int:
    """Context switches of every live thread of ``pid``, from /proc/PID/task/*/status: the
    voluntary ones (each a sleep that ended in a wake-up) and the involuntary ones (the thread
    was running, so it had woken, and the scheduler took the CPU from it). A thread that ended
    takes its count with it."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            lines = Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
        for line in lines:
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split(":", 1)[1])
    return total


def cpu_seconds(pid: int, main_thread: bool = False) -> float:
    """The CPU time of every live thread of ``pid`` (or of its main thread alone), user + system,
    in seconds, to the nanosecond: /proc/PID/task/*/schedstat when the kernel keeps it, else
    utime + stime from /proc/PID/stat (in clock ticks of 10 ms). A process's own time only, never
    its children's."""
    total = 0
    try:
        tasks = [str(pid)] if main_thread else os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            try:
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that just ended
        if total:
            return total / 1e9
    except (FileNotFoundError, ValueError, IndexError):
        pass
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Goal:
    """One goal of an issue, as measured: for the summary table at the end."""

    what: str
    target: str
    measured: str
    met: bool


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    goals: list[Goal] = field(default_factory=list)  # not printed here: see goals_table()

    def markdown(self) -> str:
        lines = [f"**{self.title}**", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("| " + " | ".join("---" for _ in self.headers) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines += ["", (self.note + " " + stamp()).strip()]
        return "\n".join(lines) + "\n"


def goals_table(tables: Sequence[Table], title: str) -> Table | None:
    goals = [g for t in tables for g in t.goals]
    if not goals:
        return None
    t = Table(title, ["goal", "target", "measured", "met"])
    for g in goals:
        t.rows.append([g.what, g.target, g.measured, "yes" if g.met else "**no**"])
    return t


def run_alone(doc: str | None, build: Callable[[bool], Sequence[Table]]) -> int:
    """``python -m benchmarks.AREA [--quick]``: the area's tables, printed, and its goals; 0 when
    it measured (a missed goal is a figure, not a failure). ``build(quick)`` makes the tables."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples, one run (smoke test)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n", flush=True)
    tables = build(args.quick)
    for t in tables:
        print(t.markdown(), flush=True)
    for g in (g for t in tables for g in t.goals):
        print(f"{'ok    ' if g.met else 'MISSED'} {g.what}: {g.measured} (goal: {g.target})")
    return 0

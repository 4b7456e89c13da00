"""A fleet on a small database: 3 `pyjob run --file` instances × 100 jobs on a PostgreSQL that
allows 20 connections (`max_connections = 20`), every job `every 1s align`.

    python -m benchmarks.smalldb            # 10 s of ticks
    python -m benchmarks.smalldb --quick    # 5 s

Each command appends its PYJOB_RUN_ID (`<job>-<tick>`, the same on every host) to one file. Every
tick of every job must run exactly once: no run id twice, and for every job every second of the
window in which all three instances were up. No instance may exit or log "too many clients". The
connections are read from pg_stat_activity once a second. tests/test_small_database.py asserts the
same on a 10 s run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .common import ROOT, Goal, Table, machine, pyjob

sys.path.insert(0, str(ROOT))
from localservers import PostgresServer, start_postgres

INSTANCES = 3
JOBS = 100
MAX_CONNECTIONS = 20
RECORD = 'echo "$PYJOB_RUN_ID" >> "$OUT"'


def jobs_file(path: Path, n: int = JOBS) -> Path:
    """n TOML jobs, every 1s align, each appending its run id to $OUT."""
    body = f"every = \"1s\"\nalign = true\nshell = '{RECORD}'\n"
    path.write_text("\n".join(f"[jobs.j{k:03d}]\n{body}" for k in range(n)))
    return path


def tick_of(run_id: str) -> tuple[str, int]:
    """(job, tick as Unix seconds) of a run id `<job>-<YYYYmmddTHHMMSS>Z`."""
    job, stamp = run_id.rsplit("-", 1)
    at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return job, int(at.timestamp())


@dataclass
class Outcome:
    """What a fleet run did, judged over the window in which every instance was up."""

    seconds: int
    jobs: int
    expected: int  # job-ticks in the window
    runs: int  # job-ticks in the window that ran
    duplicates: int  # run ids that ran more than once (anywhere)
    missing: int  # job-ticks in the window that did not run
    gaps: int  # job-ticks missing between a job's first and last run
    exits: list[str] = field(default_factory=list)  # instances that ended by themselves
    too_many_clients: int = 0  # log lines that say so
    peak_connections: int = 0
    share: str = ""

    @property
    def ok(self) -> bool:
        return not (
            self.duplicates
            or self.missing
            or self.gaps
            or self.exits
            or self.too_many_clients
            or self.runs != self.expected
        )


def judge(
    run_ids: list[str], first: int, last: int, jobs: list[str], instances_by_id: Counter[str]
) -> Outcome:
    """Exactly once: the run ids against every job's ticks from ``first`` to ``last``."""
    counts = Counter(run_ids)
    ticks: dict[str, set[int]] = {}
    for rid in counts:
        job, tick = tick_of(rid)
        ticks.setdefault(job, set()).add(tick)
    window = range(first, last + 1)
    missing = sum(1 for job in jobs for t in window if t not in ticks.get(job, set()))
    gaps = 0
    for seen in ticks.values():
        gaps += sum(1 for t in range(min(seen), max(seen) + 1) if t not in seen)
    runs = sum(1 for job in jobs for t in window if t in ticks.get(job, set()))
    return Outcome(
        seconds=len(window),
        jobs=len(jobs),
        expected=len(jobs) * len(window),
        runs=runs,
        duplicates=sum(c - 1 for c in counts.values() if c > 1),
        missing=missing,
        gaps=gaps,
        share=", ".join(f"{k} {v}" for k, v in sorted(instances_by_id.items())),
    )


def _connections(pg: PostgresServer, db: str) -> int:
    import psycopg

    with psycopg.connect(pg.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,)
        ).fetchone()
    return int(row[0]) if row else 0


def fleet(pg: PostgresServer, tmp: Path, seconds: int) -> Outcome:
    """3 instances × 100 jobs on database `fleet` of ``pg`` for ``seconds`` whole seconds."""
    db = f"fleet_{os.getpid()}_{int(time.time())}"
    url = pg.create_database(db)
    out = tmp / "runs"
    jobs = jobs_file(tmp / "jobs.toml")
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    peak = 0
    try:
        for n in range(INSTANCES):
            log = tmp / f"i{n}.log"
            with log.open("wb") as err:
                argv = [pyjob(), "run", "--no-clock-check", "--log-format", "json"]
                argv += ["--instance-id", f"i{n}", "--lock", url, "--file", str(jobs)]
                env = {**os.environ, "TZ": "UTC", "OUT": str(out)}
                procs.append((f"i{n}", subprocess.Popen(argv, stderr=err, env=env), log))
        deadline = time.monotonic() + 60
        for name, proc, log in procs:  # every instance has scheduled its jobs
            while b'"event": "jobs"' not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
        first = int(time.time()) + 2  # a whole second after all were up
        last = first + seconds - 1
        while time.time() < last + 1.5:  # the last tick's commands have written
            peak = max(peak, _connections(pg, db))
            time.sleep(1.0)
        exits = [
            f"{name} (exit {proc.poll()})" for name, proc, _ in procs if proc.poll() is not None
        ]
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _ in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    run_ids = out.read_text().split() if out.exists() else []
    by_instance: Counter[str] = Counter()
    for _, _, log in procs:
        for line in log.read_text(errors="replace").splitlines():
            if '"event": "run-started"' in line:
                name = log.stem
                tick = line.split('"tick": "', 1)[1][:19] if '"tick": "' in line else ""
                if tick:
                    at = int(datetime.fromisoformat(tick).replace(tzinfo=UTC).timestamp())
                    if first <= at <= last:
                        by_instance[name] += 1
    result = judge(run_ids, first, last, [f"j{k:03d}" for k in range(JOBS)], by_instance)
    result.exits = exits
    result.too_many_clients = sum(
        log.read_text(errors="replace").count("too many clients") for _, _, log in procs
    )
    result.peak_connections = peak
    return result


def table(seconds: int) -> Table:
    tmp = Path(tempfile.mkdtemp(prefix="pyjob-bench-smalldb-"))
    pg = start_postgres({"max_connections": str(MAX_CONNECTIONS)})
    try:
        r = fleet(pg, tmp, seconds)
    finally:
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    t = Table(
        f"A fleet on a small database: {INSTANCES} instances × {JOBS} jobs (every 1s align), "
        f"PostgreSQL with max_connections = {MAX_CONNECTIONS}, {seconds} s",
        [
            "job-ticks",
            "ran",
            "run twice",
            "missing",
            "peak connections (all instances)",
            "instances that exited",
            '"too many clients"',
            "runs per instance",
        ],
    )
    t.rows.append(
        [
            f"{r.expected:,}",
            f"{r.runs:,}",
            str(r.duplicates),
            str(r.missing + r.gaps),
            str(r.peak_connections),
            ", ".join(r.exits) or "0",
            str(r.too_many_clients),
            r.share,
        ]
    )
    t.note = (
        "A job-tick ran when its command appended its PYJOB_RUN_ID; the window is every whole "
        "second in which all instances were up. Connections are counted in pg_stat_activity "
        "once a second."
    )
    t.goals.append(
        Goal(
            f"small database ({INSTANCES} × {JOBS} jobs, max_connections {MAX_CONNECTIONS})",
            "every tick of every job exactly once",
            f"{r.runs:,} of {r.expected:,}, {r.duplicates} twice, {r.peak_connections} connections",
            r.ok,
        )
    )
    return t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    t = table(5 if args.quick else 10)
    print(t.markdown())
    return 0 if all(g.met for g in t.goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Run records: what `pyjob status` and `pyjob history` cost on a backend holding 1,000 jobs with
100 records each, and what a record write costs next to the claim it follows (issue 16).

The baseline, measured in the same run, is `pyjob --version` (the interpreter and Click start-up
that every command pays): the ratio says what reading the records adds.

    python -m benchmarks.records            # 1,000 jobs × 100 records, 3 runs; 500 writes
    python -m benchmarks.records --quick    # 100 jobs × 100 records, 1 run; 50 writes
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .common import Table, pyjob, run_alone, spread


def _populate(directory: Path, jobs: int, runs: int) -> None:
    from pyjob.core.backends import open_backend
    from pyjob.core.records import InstanceInfo, JobInfo, RunRecord

    backend = open_backend(f"file:{directory}")
    backend.check()
    store = backend.records()
    assert store is not None
    now_us = int(time.time() * 1e6)
    me = InstanceInfo("bench:1", "bench", 1, "0", seen_us=now_us)
    infos = [JobInfo(f"job{j:04d}", "every 1m align tz UTC", "UTC", "true") for j in range(jobs)]
    store.register(infos, me)
    for j in range(jobs):
        batch = [
            RunRecord(
                f"job{j:04d}",
                now_us - (runs - i) * 60_000_000,
                f"job{j:04d}-{i}",
                "bench:1",
                "success" if i % 7 else "failure",
                fence=i + 1,
                started_us=now_us - (runs - i) * 60_000_000,
                finished_us=now_us - (runs - i) * 60_000_000 + 1000,
                duration=0.001,
                exit_code=0 if i % 7 else 1,
            )
            for i in range(runs)
        ]
        store.put_runs(batch, runs)


def _time(cmd: list[str], repeat: int) -> tuple[list[float], str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        out = done.stdout
    return times, out


def status_table(jobs: int, runs: int, repeat: int) -> Table:
    t = Table(
        f"Run records: `status` and `history` on {jobs:,} jobs × {runs} runs (file:)",
        ["command", "seconds", "× `pyjob --version`"],
        note="`status` reads each job's newest records and its instances; `history JOB` one "
        "job's. Goal: `status` under 1 s.",
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "locks"
        d.mkdir(mode=0o700)
        _populate(d, jobs, runs)
        base, _ = _time([pyjob(), "--version"], repeat)
        status, out = _time([pyjob(), "status", "--lock", f"file:{d}", "--format", "json"], repeat)
        assert len(json.loads(out)["jobs"]) == jobs
        hist, out = _time(
            [pyjob(), "history", f"job{jobs // 2:04d}", "--lock", f"file:{d}", "-n", "100"],
            repeat,
        )
        b = statistics.median(base)
        t.rows.append(["pyjob --version (baseline)", spread(base, 3), "1.0"])
        t.rows.append(
            [
                "pyjob status --format json",
                spread(status, 3),
                f"{statistics.median(status) / b:.1f}",
            ]
        )
        t.rows.append(
            ["pyjob history JOB -n 100", spread(hist, 3), f"{statistics.median(hist) / b:.1f}"]
        )
    return t


def write_table(n: int) -> Table:
    """A record write against the claim of the same tick, one call each, on file:."""
    from pyjob.core.backends import ClaimRequest, open_backend
    from pyjob.core.records import RunRecord

    t = Table(
        "Run records: a record write next to its claim (file:, one call each)",
        ["call", "µs per call (median)", "× claim"],
        note="Both go through the coordinator's thread, after the spawn: neither delays a tick.",
    )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "locks"
        d.mkdir(mode=0o700)
        backend = open_backend(f"file:{d}")
        backend.check()
        store = backend.records()
        assert store is not None
        # Ticks of the last hour by the real clock, so that every claim is won, as a run's is.
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=n + 60)
        claims, writes = [], []
        for i in range(n):
            tick = t0 + timedelta(seconds=i)
            request = ClaimRequest("bench", tick, tick + timedelta(hours=1))
            start = time.perf_counter()
            got = backend.claim_many([request], "me", datetime.now(UTC))
            claims.append(time.perf_counter() - start)
            assert got[0].claim.won, got[0]
            rec = RunRecord("bench", i, f"bench-{i}", "me", "success", exit_code=0)
            start = time.perf_counter()
            store.put_runs([rec], 100)
            writes.append(time.perf_counter() - start)
        c, w = statistics.median(claims) * 1e6, statistics.median(writes) * 1e6
        t.rows.append(["claim (claim_many of 1)", f"{c:.0f}", "1.0"])
        t.rows.append(["record write (put_runs of 1)", f"{w:.0f}", f"{w / c:.2f}"])
    return t


def main() -> int:
    return run_alone(
        __doc__,
        lambda quick: [
            status_table(100 if quick else 1000, 100, 1 if quick else 3),
            write_table(50 if quick else 500),
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Fair share (--spread): how three instances share the ticks, with and without one clock 300 ms
ahead, and what the policy costs in lateness against --spread off.

    python -m benchmarks.spread            # 20 ticks per fleet, every backend (~12 minutes)
    python -m benchmarks.spread --quick    # 4 ticks, file: only (a smoke test for CI)

Each fleet is three `pyjob run --every 1s --align` processes on one backend (1 job, or 100 jobs
of a jobs file), started together; the ticks counted are those after every instance has read
the registry (8 s after the start). One instance's clock is 300 ms ahead through libfaketime
(as in benchmarks.coordination). A tick "ran" when its command wrote a line; lateness is each
run-started event's `lateness`, less the 300 ms of the host ahead (it measures by its own clock).
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .common import ROOT, Table, machine, pct, pyjob

sys.path.insert(0, str(ROOT))

from localservers import start_postgres, start_redis

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
RECORD = 'echo "$PYJOB_RUN_ID $PYJOB_INSTANCE" >> "$OUT"'
SETTLE = 8.0  # seconds after the start: every instance has read the registry (at 1, 3, 7 s)


def _jobs_file(path: Path, n: int) -> Path:
    body = f"every = \"1s\"\nalign = true\nshell = '{RECORD}'\n"
    path.write_text("\n".join(f"[jobs.j{k:03d}]\n{body}" for k in range(n)))
    return path


def fleet(url: str, jobs: int, skewed: bool, spread: str, ticks: int, tmp: Path) -> dict[str, str]:
    """Three instances for ``ticks`` seconds: shares, duplicates, misses, lateness."""
    tag = f"{random.randrange(10**9)}"
    out = tmp / f"runs-{tag}"
    what = (
        ["--file", str(_jobs_file(tmp / f"jobs-{tag}.toml", jobs))]
        if jobs > 1
        else ["--every", "1s", "--align", "--shell", "--", RECORD]
    )
    procs, logs = [], []
    for n in range(3):
        env = {**os.environ, "TZ": "UTC", "OUT": str(out), "PYJOB_LOG_LEVEL": "info"}
        name = f"i{n}"
        if n == 0 and skewed and Path(FAKETIME_LIB).exists():
            env.update(LD_PRELOAD=FAKETIME_LIB, FAKETIME="+0.3")
            name += "+300ms"
        log = tmp / f"{tag}-{name}.log"
        logs.append(log)
        head = ["run", "--no-clock-check", "--log-format", "json", "--lock", url]
        head += ["--instance-id", name, "--spread", spread]
        head += what
        with log.open("w") as err:
            procs.append(
                subprocess.Popen([pyjob(), *head], env=env, stdout=subprocess.DEVNULL, stderr=err)
            )
    time.sleep(SETTLE)
    first = int(time.time()) + 1
    time.sleep(first + ticks - time.time() + 0.6)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=60)
    rows = [line.split() for line in out.read_text().splitlines() if line.strip()]
    ran: Counter[tuple[str, int]] = Counter()
    share: Counter[str] = Counter()
    for run_id, instance in rows:
        job, stamp = run_id.rsplit("-", 1)
        t = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        if first <= t < first + ticks:
            ran[(job, t)] += 1
            share[instance] += 1
    late = []
    for n, log in enumerate(logs):
        # By true time: the host 300 ms ahead measures its lateness by its own clock.
        ahead = 300.0 if n == 0 and skewed else 0.0
        for line in log.read_text().splitlines():
            doc = json.loads(line) if line.startswith("{") else {}
            if doc.get("event") == "run-started" and doc.get("lateness") is not None:
                late.append(float(doc["lateness"]) * 1000 - ahead)
    expected = jobs * ticks
    return {
        "job-ticks": str(expected),
        "duplicates": str(sum(c - 1 for c in ran.values() if c > 1)),
        "misses": str(expected - len(ran)),
        "share": ", ".join(f"{k} {v}" for k, v in sorted(share.items())),
        "p50": f"{statistics.median(late):.0f}" if late else "-",
        "p99": f"{pct(late, 0.99):.0f}" if late else "-",
    }


def tables(ticks: int, quick: bool = False) -> list[Table]:
    tmp = Path(tempfile.mkdtemp(prefix="pyjob-bench-spread-"))
    redis_server = None if quick else start_redis(tmp)
    pg = None if quick else start_postgres()
    shares = Table(
        f"Fair share: 3 instances, --every 1s --align, {ticks} ticks, "
        "--spread even (default) against off",
        ["backend", "jobs", "clocks", "spread", "job-ticks", "duplicates", "misses", "runs"],
    )
    lateness = Table(
        "Lateness of the runs (ms after the tick, true time): --spread even against off",
        ["backend", "jobs", "clocks", "even p50", "even p99", "off p50", "off p99"],
    )
    try:
        backends = {"file": lambda n: f"file:{tmp / f'file-{n}'}"}
        if redis_server is not None and pg is not None:
            import psycopg

            base = pg.url.rsplit("/", 1)[0]
            dbs = iter(range(1, 16))
            backends["redis"] = lambda n: f"redis://127.0.0.1:{redis_server.port}/{next(dbs)}"

            def pg_url(n: str) -> str:
                name = f"spread_{n.replace('-', '_')}"
                with psycopg.connect(pg.url, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                return f"{base}/{name}"

            backends["postgresql"] = pg_url
        for name, make in backends.items():
            for jobs in (1, 100):
                for skewed in (False, True):
                    got = {}
                    for spread in ("even", "off"):
                        key = f"{jobs}-{int(skewed)}-{spread}"
                        got[spread] = fleet(make(key), jobs, skewed, spread, ticks, tmp)
                        r = got[spread]
                        clocks = "i0 +300 ms" if skewed else "in step"
                        row = [name, str(jobs), clocks, spread, r["job-ticks"], r["duplicates"]]
                        shares.rows.append([*row, r["misses"], r["share"]])
                        print(shares.rows[-1], flush=True)
                    even, off = got["even"], got["off"]
                    row = [name, str(jobs), clocks, even["p50"], even["p99"]]
                    lateness.rows.append([*row, off["p50"], off["p99"]])
    finally:
        if redis_server is not None:
            redis_server.stop()
        if pg is not None:
            pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    shares.note = (
        "A job-tick ran when its command wrote a line; runs per instance over the window (after "
        "every instance read the registry). With --spread off the instance whose clock is "
        "300 ms ahead (libfaketime) claims first and wins every tick; with --spread even the "
        "claims go out by the backend's clock in rendezvous order, so it does not."
    )
    lateness.note = (
        "From each run-started event's lateness, less the 300 ms of the host ahead (it measures "
        "by its own clock): negative is early. That host starts the ticks it wins by its own "
        "clock, early by up to its offset, with either policy."
    )
    return [shares, lateness]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 ticks, file: only (CI smoke)")
    parser.add_argument("--ticks", type=int, default=None)
    args = parser.parse_args()
    ticks = args.ticks or (4 if args.quick else 20)
    print(f"machine: {machine()}\n", flush=True)
    result = tables(ticks, args.quick)
    for t in result:
        print(t.markdown(), flush=True)
    return 0 if all(r[5] == "0" and r[6] == "0" for r in result[0].rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

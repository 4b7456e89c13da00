"""Coordination: claim latency per backend, and four instances sharing each backend.

    python -m benchmarks.coordination            # 500 claims, 30 ticks per backend (~2.5 minutes)
    python -m benchmarks.coordination --quick    # 50 claims, 5 ticks (a smoke test for CI)

Servers (redis-server, PostgreSQL, etcd, chronyd) are started on free loopback ports, as the
tests do; nfs: runs on a local directory (NFS cannot be mounted here). The fleet run is 4 `pyjob
run --every 1s --align` processes, one of them with its clock 300 ms ahead (libfaketime); a tick
"ran" when its command wrote a line. On Redis it runs again with --clock ntp.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pyjob.core.backends import ClaimRequest, open_backend

from .common import ROOT, Table, machine, pyjob, tail, tail_name

sys.path.insert(0, str(ROOT))
from localservers import start_chronyd, start_etcd, start_postgres, start_redis

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


BATCHES = (1, 100)  # jobs due on one tick: the scheduler claims them in one claim_many call


def claim_latency(url: str, n: int) -> dict[str, list[float]]:
    """``claim_many`` as the scheduler calls it, one batch per tick holding every job due on it:
    batches of 1 and of 100 jobs, ms per call, each claim won (ticks of the last hour by the real
    clock, so none is refused as ahead or stale); then a run lease taken and released, ms."""
    backend = open_backend(url)
    backend.check()
    now = datetime.now(UTC).replace(microsecond=0)
    keep = now + timedelta(days=1)
    out: dict[str, list[float]] = {}
    for size in BATCHES:
        calls = n if size == 1 else max(5, n // 5)
        first = now - timedelta(seconds=calls + 60)
        times = []
        for i in range(calls):
            tick = first + timedelta(seconds=i)
            batch = [ClaimRequest(f"b{size}-j{k}", tick, keep) for k in range(size)]
            start = time.perf_counter()
            got = backend.claim_many(batch, "me", datetime.now(UTC))
            times.append((time.perf_counter() - start) * 1000)
            assert all(o.claim.won for o in got), got[0]
        out[f"batch{size}"] = times
    leases = []
    for _ in range(n):
        start = time.perf_counter()
        lease = backend.acquire_lease("bench", "me", 30.0)
        assert lease is not None
        backend.release_many([lease])
        leases.append((time.perf_counter() - start) * 1000)
    out["lease"] = leases
    backend.close()
    return out


def fleet(url: str, ticks: int, tmp: Path, clock: list[str] | None = None) -> dict[str, object]:
    """``clock``: run's clock options (default: no clock check, the local clocks as they are)."""
    out = tmp / f"runs-{random.randrange(10**9)}"
    record = 'echo "$PYJOB_TICK_UNIX $PYJOB_INSTANCE" >> "$OUT"'
    procs = []
    for n in range(4):
        env = {**os.environ, "TZ": "UTC", "OUT": str(out)}
        if n == 0 and Path(FAKETIME_LIB).exists():
            env.update(LD_PRELOAD=FAKETIME_LIB, FAKETIME="+0.3")
        procs.append(
            subprocess.Popen(
                [
                    pyjob(),
                    "run",
                    *(clock or ["--no-clock-check"]),
                    "--every",
                    "1s",
                    "--align",
                    "--lock",
                    url,
                    "--instance-id",
                    f"i{n}" + ("+300ms" if n == 0 else ""),
                    "--shell",
                    "--",
                    record,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(2.0)  # all started
    first = int(time.time()) + 1
    time.sleep(first + ticks - time.time() + 0.5)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    rows = [line.split() for line in out.read_text().splitlines() if line.strip()]
    window = {float(t) for t in range(first, first + ticks)}
    counts = Counter(float(r[0]) for r in rows if float(r[0]) in window)
    share = Counter(r[1] for r in rows if float(r[0]) in window)
    return {
        "ticks": ticks,
        "runs": sum(counts.values()),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "misses": sum(1 for t in window if counts[t] == 0),
        "share": ", ".join(f"{k} {v}" for k, v in sorted(share.items())),
    }


def tables(n: int, ticks: int) -> list[Table]:
    tmp = Path(tempfile.mkdtemp(prefix="pyjob-bench-"))
    redis_server = start_redis(tmp)
    pg = start_postgres()
    # on this machine's disk, not tmpfs: etcd fsyncs every transaction, and that is its cost
    etcd = start_etcd(tmp / "etcd")
    ntp = start_chronyd(tmp / "chrony")
    big = max(BATCHES)
    calls_big = max(5, n // 5)
    latency = Table(
        f"Claim latency: `claim_many` of 1 job ({n} calls) and of {big} jobs due on one tick "
        f"({calls_big} calls), as the scheduler batches them; then a run lease ({n} times)",
        [
            "backend",
            "1 job: p50 ms",
            f"1 job: {tail_name(n)} ms",
            f"{big} jobs: p50 ms",
            f"{big} jobs: {tail_name(calls_big)} ms",
            f"{big} jobs: µs per claim",
            "lease p50 ms",
            f"lease {tail_name(n)} ms",
        ],
    )
    fleet_t = Table(
        f"Fleet: 4 instances (one 300 ms ahead), --every 1s --align, {ticks} ticks",
        ["backend", "ticks", "runs", "duplicates", "misses", "runs per instance"],
    )
    try:
        import psycopg

        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
            conn.execute("CREATE DATABASE fleet")
        base = pg.url.rsplit("/", 1)[0]
        backends = {
            "file": (f"file:{tmp / 'file'}", f"file:{tmp / 'fleet-file'}"),
            "nfs (local dir)": (f"nfs:{tmp / 'nfs'}", f"nfs:{tmp / 'fleet-nfs'}"),
            "redis": (
                f"redis://127.0.0.1:{redis_server.port}/1",
                f"redis://127.0.0.1:{redis_server.port}/2",
            ),
            "postgresql": (base + "/bench", base + "/fleet"),
            "etcd": (f"{etcd.url}/bench", f"{etcd.url}/fleet"),
        }
        for name, (url, fleet_url) in backends.items():
            got = claim_latency(url, n)
            one, many, leases = got["batch1"], got[f"batch{big}"], got["lease"]
            latency.rows.append(
                [
                    name,
                    f"{statistics.median(one):.3f}",
                    f"{tail(one):.3f}",
                    f"{statistics.median(many):.3f}",
                    f"{tail(many):.3f}",
                    f"{statistics.median(many) * 1000 / big:.0f}",
                    f"{statistics.median(leases):.3f}",
                    f"{tail(leases):.3f}",
                ]
            )
            runs = [(name, fleet(fleet_url, ticks, tmp))]
            if name == "redis":
                ntp_clock = [
                    "--clock",
                    "ntp",
                    "--ntp-server",
                    ntp.address,
                    "--clock-policy",
                    "warn",
                ]
                url3 = f"redis://127.0.0.1:{redis_server.port}/3"
                runs.append(("redis, --clock ntp", fleet(url3, ticks, tmp, ntp_clock)))
            for label, r in runs:
                fleet_t.rows.append(
                    [
                        label,
                        str(r["ticks"]),
                        str(r["runs"]),
                        str(r["duplicates"]),
                        str(r["misses"]),
                        str(r["share"]),
                    ]
                )
    finally:
        ntp.stop()
        redis_server.stop()
        pg.destroy()
        etcd.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    latency.note = (
        "Every claim is won (a fresh tick of the last hour per call). Servers on loopback; nfs: "
        "on a local directory (NFS cannot be mounted on these machines); etcd: one member, its "
        "data on this machine's disk (it fsyncs every transaction)."
    )
    fleet_t.note = (
        "A tick ran when its command wrote a line, with the default --spread even: the "
        "instances take turns by the backend's clock, so the one 300 ms ahead (libfaketime) "
        "does not win every claim (with --spread off it does: see Fair share). With --clock ntp "
        "(a chronyd on loopback) all four also fire by NTP time."
    )
    return [latency, fleet_t]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 claims, 5 ticks (CI smoke)")
    args = parser.parse_args()
    n, ticks = (50, 5) if args.quick else (500, 30)
    print(f"machine: {machine()}\n")
    result = tables(n, ticks)
    for t in result:
        print(t.markdown())
    fleet_rows = result[1].rows
    return 0 if all(r[3] == "0" and r[4] == "0" for r in fleet_rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

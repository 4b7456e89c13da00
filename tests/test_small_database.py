"""A fleet on a small database (issue 13): 3 `pyjob run --file` instances × 100 jobs, every 1s
align, on a PostgreSQL started with max_connections = 20, for 10 s. Every tick of every job runs
exactly once, no instance exits, none logs "too many clients", and the fleet holds at most two
connections per instance. (`python -m benchmarks.smalldb` measures the same as a table row.)"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from .runproc import PyjobRun
from .servers import PostgresServer, start_postgres

pytestmark = [pytest.mark.slow, pytest.mark.long]

INSTANCES = 3
JOBS = 100
SECONDS = 10
RECORD = 'echo "$PYJOB_RUN_ID" >> "$OUT"'


@pytest.fixture(scope="module")
def small_pg() -> Iterator[PostgresServer]:
    server = start_postgres({"max_connections": "20"})
    yield server
    server.destroy()


def _connections(pg: PostgresServer, db: str) -> int:
    import psycopg

    with psycopg.connect(pg.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _tick(run_id: str) -> tuple[str, int]:
    job, stamp = run_id.rsplit("-", 1)  # <job>-<YYYYmmddTHHMMSS>Z
    return job, int(datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp())


def test_three_instances_of_100_jobs_on_max_connections_20_run_every_tick_once(
    small_pg: PostgresServer, tmp_path: Path
) -> None:
    url = small_pg.create_database("small")
    jobs = tmp_path / "jobs.toml"
    body = f"every = \"1s\"\nalign = true\nshell = '{RECORD}'\n"
    jobs.write_text("\n".join(f"[jobs.j{k:03d}]\n{body}" for k in range(JOBS)))
    out = tmp_path / "runs"
    runs = [
        PyjobRun(
            ["--instance-id", f"i{n}", "--lock", url, "--file", str(jobs)],
            tmp_path,
            f"i{n}",
            {"OUT": str(out)},
        )
        for n in range(INSTANCES)
    ]
    for run in runs:
        run.wait_for("jobs", timeout=60)
    first = int(time.time()) + 2  # the first whole second with every instance up
    last = first + SECONDS - 1
    peak = 0
    while time.time() < last + 1.5:  # the commands of the last tick have written
        peak = max(peak, _connections(small_pg, "small"))
        time.sleep(1.0)
    still = [run.proc.poll() for run in runs]
    codes = [run.stop() for run in runs]
    assert still == [None] * INSTANCES, f"an instance exited by itself: {still}"
    assert codes == [0] * INSTANCES

    for run in runs:
        assert "too many clients" not in run.log_path.read_text()
    errors = [e for run in runs for e in run.events("backend-error")]
    assert peak <= 2 * INSTANCES, f"{peak} connections for {INSTANCES} instances"

    run_ids = out.read_text().split()
    twice = {rid: n for rid, n in Counter(run_ids).items() if n > 1}
    assert not twice, f"{len(twice)} run ids ran more than once, e.g. {sorted(twice)[:5]}"
    ticks: dict[str, set[int]] = {}
    for rid in run_ids:
        job, tick = _tick(rid)
        ticks.setdefault(job, set()).add(tick)
    assert sorted(ticks) == [f"j{k:03d}" for k in range(JOBS)]
    # A tick may pass unrun only where an instance said so (`missed`: a machine too loaded to
    # start it within --misfire-grace; `refused`, `skipped`): none goes silently.
    told = _told(runs)
    for job, seen in ticks.items():
        missing = sorted(set(range(min(seen), max(seen) + 1)) - seen)
        missing += sorted(set(range(first, last + 1)) - seen - set(missing))
        silent = [t for t in missing if (job, t) not in told]
        assert not silent, f"{job}: ticks {silent} did not run; backend errors: {errors[:3]}"


def _told(runs: list[PyjobRun]) -> set[tuple[str, int]]:
    """The (job, tick) pairs some instance reported as not run, with a reason."""

    def unix(text: str) -> int:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())

    told: set[tuple[str, int]] = set()
    for run in runs:
        for e in run.events("missed"):
            told.update((e["job"], t) for t in range(unix(e["first"]), unix(e["last"]) + 1))
        for kind in ("refused", "skipped"):
            told.update((e["job"], unix(e["tick"])) for e in run.events(kind) if e["tick"])
    return told

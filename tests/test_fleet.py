"""Several `pyjob run` processes sharing each backend: every tick exactly once, with one clock
300 ms ahead (libfaketime), while instances are SIGKILLed and restarted, and through outages.
The nfs: backend runs on a local directory here (NFS cannot be mounted on these machines)."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from .runproc import PyjobRun
from .servers import PostgresServer, RedisServer, faketime_env, start_postgres, start_redis
from .stalls import Stalls, assert_each_once

pytestmark = pytest.mark.slow

TICKS = 30
RECORD = 'echo "$PYJOB_TICK_UNIX $PYJOB_INSTANCE" >> "$OUT"'


def _start(fleet_lock_url: str, tmp: Path, name: str, skewed: bool = False) -> PyjobRun:
    env = {"OUT": str(tmp / "runs")}
    if skewed:
        env.update(faketime_env("+0.3"))
    run = PyjobRun(
        ["--every", "1s", "--align", "--lock", fleet_lock_url, "--shell", "--", RECORD],
        tmp,
        name,
        env,
    )
    run.wait_for("next-tick", timeout=30)
    return run


def _counts(tmp: Path) -> Counter[float]:
    rows = [line.split() for line in (tmp / "runs").read_text().splitlines() if line.strip()]
    return Counter(float(r[0]) for r in rows)  # PYJOB_TICK_UNIX, exact (200 ms ticks too)


@pytest.mark.long
def test_four_instances_one_300ms_ahead_run_each_tick_exactly_once(
    fleet_lock_url: str, tmp_path: Path, stalls: Stalls
) -> None:
    runs = [_start(fleet_lock_url, tmp_path, "skewed", skewed=True)]
    runs += [_start(fleet_lock_url, tmp_path, f"i{n}") for n in range(3)]
    first = int(time.time()) + 2  # every instance is up for this tick and the ones after it
    time.sleep(first + TICKS - time.time() + 0.6)
    for r in runs:
        assert r.stop() == 0
    assert_each_once(_counts(tmp_path), range(first, first + TICKS), stalls, runs)
    shares = Counter(line.split()[1] for line in (tmp_path / "runs").read_text().splitlines())
    assert sum(shares.values()) >= TICKS


@pytest.mark.long
def test_no_tick_runs_twice_while_instances_are_killed_and_restarted(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    runs = [_start(fleet_lock_url, tmp_path, "skewed", skewed=True)]
    runs += [_start(fleet_lock_url, tmp_path, f"i{n}") for n in range(3)]
    rng = random.Random(7)
    end = time.monotonic() + TICKS
    n = 0
    while time.monotonic() < end:
        time.sleep(rng.uniform(2.0, 4.0))
        victim = runs.pop(rng.randrange(len(runs)))
        victim.proc.send_signal(signal.SIGKILL)
        victim.wait()
        n += 1
        runs.append(_start(fleet_lock_url, tmp_path, f"restart{n}", skewed=rng.random() < 0.3))
    for r in runs:
        assert r.stop() == 0
    counts = _counts(tmp_path)
    assert n >= 5 and counts
    assert [t for t, c in counts.items() if c > 1] == []


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
def test_backend_outage_skips_ticks_and_recovers(kind: str, tmp_path: Path) -> None:
    server: RedisServer | PostgresServer
    if kind == "redis":
        server = start_redis(tmp_path)
        url = server.url
    else:
        server = start_postgres()
        url = server.url
    try:
        args = ["--every", "200ms", "--align", "--lock", url, "--shell", "--", RECORD]
        env = {"OUT": str(tmp_path / "runs")}
        a = PyjobRun(args, tmp_path, "a", env)
        b = PyjobRun(args, tmp_path, "b", env)
        for r in (a, b):
            r.wait_for("run-finished", timeout=30) if r is a else r.wait_for("next-tick")
        server.stop()
        a.wait_for("backend-error", 2, timeout=30)
        b.wait_for("backend-error", 2, timeout=30)
        server.start()
        before = len(a.events("run-finished")) + len(b.events("run-finished"))
        deadline = time.monotonic() + 30
        while len(a.events("run-finished")) + len(b.events("run-finished")) < before + 5:
            assert time.monotonic() < deadline, "runs did not resume after the outage"
            time.sleep(0.1)
        assert a.proc.poll() is None and b.proc.poll() is None  # no crash
        assert a.stop() == 0 and b.stop() == 0
        claims = [e for r in (a, b) for e in r.events("backend-error") if "claim" in e["error"]]
        assert claims and all(e["action"] == "skip" for e in claims)  # failed claims: skipped
        assert max(_counts(tmp_path).values()) == 1
    finally:
        if isinstance(server, PostgresServer):
            server.destroy()
        else:
            server.stop()


def test_backend_down_at_start_exits_5(tmp_path: Path) -> None:
    import subprocess

    from .conftest import pyjob_exe
    from .servers import free_port

    for url in (
        f"redis://:pw@127.0.0.1:{free_port()}/0",
        f"postgresql://u:pw@127.0.0.1:{free_port()}/db",
    ):
        proc = subprocess.run(
            [*pyjob_exe(), "run", "--no-clock-check", "--every", "1s", "--lock", url, "--", "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 5, proc.stderr
        assert proc.stderr.startswith("Error: ") and "pw" not in proc.stderr
        assert proc.stderr.count("\n") == 1

"""Chaos (issue 14): three `pyjob run` instances share a Redis server (AOF, fsync always) through
a fault-injecting proxy that drops connections at random requests; mid-run the server restarts,
the proxy cuts every connection, one instance is SIGKILLed, and one instance's clock runs 2 s
ahead (tests/clockshim.py). No tick may run twice, fences grow with every claim (each instance's
in tick order), nothing prints a traceback, and every instance that was not killed is alive at
the end.

``PYJOB_CHAOS_SECONDS`` sets the length (default 60, as .ci/run runs it)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .clockshim import ClockShim
from .faultproxy import FaultProxy
from .runproc import PyjobRun
from .servers import _wait_port, free_port, need

SECONDS = float(os.environ.get("PYJOB_CHAOS_SECONDS", "60"))


def _redis(exe: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            *(exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_port(port)
    return proc


@pytest.mark.long
def test_chaos_no_tick_twice_fences_in_order_no_traceback_survivors_alive(
    tmp_path: Path,
) -> None:
    exe = need("redis-server")
    port = free_port()
    server = _redis(exe, port, tmp_path)
    proxy = FaultProxy(port, seed=14).start()
    proxy.drop(0.03)
    rng = random.Random(14)
    out = tmp_path / "runs"
    record = 'echo "$PYJOB_TICK_UNIX $PYJOB_FENCE $PYJOB_INSTANCE" >> "$OUT"'
    ahead = ClockShim(tmp_path / "clock", 2.0)
    runs = []
    try:
        for n in range(3):
            env = {"OUT": str(out), **(ahead.env() if n == 0 else {})}
            runs.append(
                PyjobRun(
                    [
                        *("--every", "1s", "--align", "--instance-id", f"i{n}"),
                        *("--lock", f"redis://127.0.0.1:{proxy.port}/0"),
                        # the default --overlap skip: claims with their run leases, whose
                        # failed releases the coordinator makes again once Redis answers
                        *("--shell", "--", record),
                    ],
                    tmp_path,
                    name=f"i{n}",
                    env=env,
                )
            )
        start = time.monotonic()
        events = [
            (0.3, "restart"),
            (0.5, "kill"),
            (0.7, "cut"),
        ]
        killed: set[int] = set()
        for at, what in events:
            time.sleep(max(0.0, start + at * SECONDS - time.monotonic()))
            if what == "restart":
                server.terminate()
                server.wait(timeout=20)
                time.sleep(0.5)
                server = _redis(exe, port, tmp_path)
            elif what == "kill":
                victim = rng.randrange(3)
                runs[victim].proc.send_signal(signal.SIGKILL)
                killed.add(victim)
            else:
                proxy.cut()
        time.sleep(max(0.0, start + SECONDS - time.monotonic()))
        alive = [n for n, r in enumerate(runs) if r.proc.poll() is None]
        assert sorted(alive + sorted(killed)) == [0, 1, 2], [
            r.log_path.read_text()[-2000:] for r in runs
        ]
        for n in alive:
            assert runs[n].stop() == 0
    finally:
        for r in runs:
            if r.proc.poll() is None:
                r.proc.kill()
            r.wait()
        proxy.stop()
        server.terminate()
        server.wait(timeout=20)
    for r in runs:
        assert "Traceback" not in r.log_path.read_text(), r.log_path.read_text()[-3000:]
    rows = [line.split() for line in out.read_text().splitlines()]
    ticks = [int(row[0]) for row in rows]
    assert len(ticks) == len(set(ticks)), sorted(t for t in ticks if ticks.count(t) > 1)
    assert len(ticks) > SECONDS / 3, len(ticks)  # the fleet kept running through it all
    # Fences grow with every claim (DESIGN §8): no two runs share one, and each instance, which
    # claims its ticks in order, sees them grow tick by tick. A tick another instance could not
    # claim (its requests dropped) is won after a later one, with a larger fence: fences follow
    # the claims, not the ticks.
    fences = [int(fence) for _, fence, _ in rows]
    assert len(set(fences)) == len(fences), sorted(fences)
    for name in {row[2] for row in rows}:
        mine = [int(f) for t, f, i in sorted(rows, key=lambda row: int(row[0])) if i == name]
        assert mine == sorted(mine), (name, mine)

"""Schedule computation: 10,000 successive ticks, pyjob's core against croniter called directly.

pyjob evaluates cron fields itself (parsed once into values, core/cron.py) and maps wall times to
instants by Debian cron's DST rules; croniter computes only wall times. Target: < 1.5x.

    python -m benchmarks.compute            # 10,000 ticks, 3 runs
    python -m benchmarks.compute --quick    # 1,000 ticks, 1 run (a smoke test)
"""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter
from pyjob.core.schedule import Schedule, parse

from .common import Table, run_alone, spread

EXPRESSIONS = ["*/5 * * * *", "0 9 * * MON-FRI", "30 2 * * *", "*/15 9-17 * * *", "0 0 1 * *"]
ZONES = ["UTC", "Europe/Berlin"]


def _croniter(expr: str, zone: str, n: int) -> float:
    it = croniter(expr, datetime(2026, 1, 1, tzinfo=ZoneInfo(zone)), ret_type=datetime)
    start = time.perf_counter()
    for _ in range(n):
        it.get_next()
    return time.perf_counter() - start


def _pyjob(expr: str, zone: str, n: int) -> float:
    sched = Schedule(parse(expr, tz=zone, env={}))
    after = datetime(2026, 1, 1, tzinfo=ZoneInfo(zone))
    start = time.perf_counter()
    for _ in range(n):
        nxt = sched.next_tick(after)
        assert nxt is not None
        after = nxt
    return time.perf_counter() - start


def table(n: int, repeat: int) -> Table:
    t = Table(
        f"Schedule computation: {n:,} successive ticks, {repeat} run(s) each",
        ["expression", "zone", "croniter ms", "pyjob ms", "pyjob / croniter"],
    )
    for zone in ZONES:
        for expr in EXPRESSIONS:
            base, mine, ratio = [], [], []
            for _ in range(repeat):
                b, m = _croniter(expr, zone, n), _pyjob(expr, zone, n)
                base.append(b * 1000)
                mine.append(m * 1000)
                ratio.append(m / b)
            t.rows.append([f"`{expr}`", zone, spread(base, 0), spread(mine, 0), spread(ratio)])
    return t


def main() -> int:
    return run_alone(__doc__, lambda quick: [table(1000 if quick else 10_000, 1 if quick else 3)])


if __name__ == "__main__":
    raise SystemExit(main())

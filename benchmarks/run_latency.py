"""How precisely and cheaply `pyjob run` fires, against a minimal loop measured in the same run.

    python -m benchmarks.run_latency            # 30 ticks at 1 s, 60 s idle (about 2.5 minutes)
    python -m benchmarks.run_latency --quick    # 5 ticks, 5 s idle (a smoke test for CI)

The firing and idle measurements of `python -m benchmarks`, for pyjob and the deadline loop only.
"""

from __future__ import annotations

import argparse

from . import firing, idle
from .common import machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 ticks and 5 s idle (CI smoke)")
    args = parser.parse_args()
    ticks, idle_s = (5, 5.0) if args.quick else (30, 60.0)
    print(f"machine: {machine()}\n")
    names = ["deadline loop (floor)", "pyjob run --every 1s --align"]
    t = firing.table(ticks, 1, only=names)
    print(t.markdown())
    pyjob_idle = idle.measure(idle_s, 1)["pyjob run"]
    print(
        f"Idle ({idle_s:g} s): CPU {pyjob_idle['cpu'][0]:.1f} ms/min, "
        f"{pyjob_idle['wakes'][0]:.1f} wake-ups/min, peak RSS {pyjob_idle['rss'][0]:.1f} MiB"
    )
    return 0 if t.rows[1][1] == str(ticks) else 1  # pyjob ran every tick


if __name__ == "__main__":
    raise SystemExit(main())

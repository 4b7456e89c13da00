"""How precisely and cheaply `pyjob run` fires, against a minimal loop measured in the same run.

    python -m benchmarks.run_latency            # 30 ticks at 1 s, 60 s idle (about 2.5 minutes)
    python -m benchmarks.run_latency --quick    # 5 ticks, 5 s idle (a smoke test for CI)

The firing and idle measurements of `python -m benchmarks`, for pyjob and the deadline loop only.
"""

from __future__ import annotations

import argparse

from . import firing, idle
from .common import Table, machine, spread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 ticks and 5 s idle (CI smoke)")
    args = parser.parse_args()
    ticks, idle_s = (5, 5.0) if args.quick else (30, 60.0)
    print(f"machine: {machine()}\n")
    names = ["deadline loop (floor)", "pyjob run --every 1s --align"]
    results = firing.measure(ticks, 1, only=names)
    t = Table(
        f"Firing: {ticks} ticks at 1 s; lateness of the command's own start, ms",
        ["tool", "runs", "p50 ms", "p99 ms", "max ms", "drift ms"],
    )
    for name, s in results.items():
        t.rows.append(
            [
                name,
                spread(s["runs"], 0),
                spread(s["p50"]),
                spread(s["p99"]),
                spread(s["max"]),
                spread(s["drift"]),
            ]
        )
    print(t.markdown())
    pyjob_idle = idle.measure(idle_s, 1)["pyjob run"]
    print(
        f"Idle ({idle_s:g} s): CPU {pyjob_idle['cpu'][0]:.1f} ms/min, "
        f"{pyjob_idle['wakes'][0]:.1f} wake-ups/min, peak RSS {pyjob_idle['rss'][0]:.1f} MiB"
    )
    ok = results[names[1]]["runs"] == [float(ticks)]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

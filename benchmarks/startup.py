"""Start-up time of pyjob's quick paths against bare Python and `import click`, in one run.

The shell runs pyjob on every TAB, and `next` and `validate` are what people type to check a
schedule, so each must cost little more than importing click, the one library pyjob's CLI cannot
start without (target: at most 1.3x). Each figure is the median wall time of N runs, with min-max;
the cases are measured round-robin so that drift in the machine's speed affects all of them alike.
Run it with a regular install: an editable one adds about 10 ms per start for its import hook
(the baseline pays it too when it imports click from the same environment).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

from .common import Goal, Table, pyjob, run_alone


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """One run: wall ms, and CPU ms (user + system, the child's own, from the kernel)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = (time.perf_counter() - t) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


CLICK = 'python -c "import click"'
COMPLETION = "completion: pyjob run --overlap <TAB>"
NEXT = 'pyjob next "0 * * * *"'
VALIDATE = 'pyjob validate "0 * * * *"'


def table(runs: int) -> Table:
    env = {**os.environ, "TZ": "UTC"}
    complete = {
        **env,
        "_PYJOB_COMPLETE": "bash_complete",
        "COMP_WORDS": "pyjob run --overlap ",
        "COMP_CWORD": "3",
    }
    py = sys.executable
    cases = [
        ("python -c pass", [py, "-c", "pass"], env),
        (CLICK, [py, "-c", "import click"], env),
        ("pyjob --version", [pyjob(), "--version"], env),
        ("pyjob --help", [pyjob(), "--help"], env),
        ("pyjob align 5m", [pyjob(), "align", "5m"], env),
        (COMPLETION, [pyjob()], complete),
        (NEXT, [pyjob(), "next", "0 * * * *"], env),
        (VALIDATE, [pyjob(), "validate", "0 * * * *"], env),
    ]
    wall: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _name, argv, e in cases:
        measure(argv, e)  # warm the page cache
    for _ in range(runs):  # round-robin: the machine's drift touches every case alike
        for name, argv, e in cases:
            w, c = measure(argv, e)
            wall[name].append(w)
            cpu[name].append(c)

    def ratio(name: str, of: dict[str, list[float]]) -> float:
        """The median of the round-by-round ratios to `import click` (a busy moment touches both
        runs of a round alike)."""
        return statistics.median(a / b for a, b in zip(of[name], of[CLICK], strict=True))

    t = Table(
        f"Start-up: {runs} runs of each, round-robin; ms",
        ["command", "wall median ms", "wall min-max ms", "× import click", "CPU × import click"],
    )
    for name, times in wall.items():
        t.rows.append(
            [
                name,
                f"{statistics.median(times):.1f}",
                f"{min(times):.1f}-{max(times):.1f}",
                f"{ratio(name, wall):.2f}",
                f"{ratio(name, cpu):.2f}",
            ]
        )
    t.note = (
        "Ratios are medians of each round's ratio to `import click` in the same round; CPU is "
        "the process's user + system time. Target: a completion request, `pyjob next` and "
        "`pyjob validate` each at most 1.3× `import click` in wall time (pyjob computes schedules "
        "itself: it never imports croniter)."
    )
    for name in (COMPLETION, NEXT, VALIDATE):
        r = ratio(name, wall)
        t.goals.append(
            Goal(f"`{name}` start-up", "at most 1.3× `import click`", f"{r:.2f}×", r <= 1.3)
        )
    return t


def main() -> int:
    return run_alone(__doc__, lambda quick: [table(5 if quick else 30)])


if __name__ == "__main__":
    raise SystemExit(main())

"""Start-up time of pyjob's quick paths against bare Python and `import click`, in one run.

The shell runs pyjob on every TAB, so a completion request must cost little more than importing
click (target: at most 1.3x). Each figure is the median wall time of N runs, with min-max; the
cases are measured round-robin so that drift in the machine's speed affects all of them alike.
Run it with a regular install: an editable one adds about 10 ms per start for its import hook.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from .common import Goal, Table, pyjob


def measure(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        times.append((time.perf_counter() - t) * 1000)
    return times


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
        ('python -c "import click"', [py, "-c", "import click"], env),
        ('python -c "import click, croniter"', [py, "-c", "import click, croniter"], env),
        ("pyjob --version", [pyjob(), "--version"], env),
        ("pyjob --help", [pyjob(), "--help"], env),
        ("pyjob align 5m", [pyjob(), "align", "5m"], env),
        ("completion: pyjob run --overlap <TAB>", [pyjob()], complete),
        (
            'pyjob next "0 * * * *" --format plain',
            [pyjob(), "next", "0 * * * *", "--format", "plain"],
            env,
        ),
    ]
    results: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _name, argv, e in cases:
        measure(argv, e, 1)  # warm the page cache
    for _ in range(runs):  # round-robin: the machine's drift touches every case alike
        for name, argv, e in cases:
            results[name] += measure(argv, e, 1)
    click_ms = statistics.median(results['python -c "import click"'])
    both_ms = statistics.median(results['python -c "import click, croniter"'])
    t = Table(
        f"Start-up: median of {runs} runs each, ms",
        ["command", "median ms", "min-max ms", "× import click", "× import click, croniter"],
    )
    for name, times in results.items():
        med = statistics.median(times)
        t.rows.append(
            [
                name,
                f"{med:.1f}",
                f"{min(times):.1f}-{max(times):.1f}",
                f"{med / click_ms:.2f}",
                f"{med / both_ms:.2f}",
            ]
        )
    t.note = (
        "Targets: a completion request at most 1.3× `import click`; `pyjob next` at most 1.2× "
        "`import click, croniter`."
    )
    nxt = statistics.median(results['pyjob next "0 * * * *" --format plain']) / both_ms
    t.goals.append(
        Goal(
            '`pyjob next "0 * * * *"` start-up',
            "at most 1.2× `import click, croniter`",
            f"{nxt:.2f}×",
            nxt <= 1.2,
        )
    )
    return t


def main() -> int:
    import argparse

    from .common import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs each (CI smoke)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print(table(5 if args.quick else 30).markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

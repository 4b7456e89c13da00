"""Start-up time of pyjob's quick paths against bare Python and `import click`, in one run.

    python benchmarks/startup.py            # 30 runs each
    python benchmarks/startup.py --quick    # 5 runs each (a smoke test for CI)

The shell runs pyjob on every TAB, so a completion request must cost little more than importing
click (target: at most 1.3x). Each figure is the median wall time of N runs, with min-max; the
cases are measured round-robin so that drift in the machine's speed affects all of them alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def pyjob() -> str:
    exe = Path(sys.executable).parent / "pyjob"
    return str(exe) if exe.exists() else (shutil.which("pyjob") or "pyjob")


def measure(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        times.append((time.perf_counter() - t) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs each (CI smoke)")
    args = parser.parse_args()
    runs = 5 if args.quick else 30
    env = {**os.environ, "TZ": "UTC"}
    complete = {
        **env,
        "_PYJOB_COMPLETE": "bash_complete",
        "COMP_WORDS": "pyjob run --overlap ",
        "COMP_CWORD": "3",
    }
    cases = [
        ("python -c pass", [sys.executable, "-c", "pass"], env),
        ('python -c "import click"', [sys.executable, "-c", "import click"], env),
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
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; median of {runs} runs"
    )
    print()
    print("| command | median ms | min-max ms | × import click |")
    print("| --- | --- | --- | --- |")
    # Round-robin over the cases, so that the machine's drift over time touches all of them alike.
    results: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _name, argv, e in cases:
        measure(argv, e, 1)  # warm the page cache
    for _ in range(runs):
        for name, argv, e in cases:
            results[name] += measure(argv, e, 1)
    click_ms = statistics.median(results['python -c "import click"'])
    for name, times in results.items():
        med = statistics.median(times)
        print(f"| {name} | {med:.1f} | {min(times):.1f}-{max(times):.1f} | {med / click_ms:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The runner on its own: real children, found on PATH as execvp finds them."""

from __future__ import annotations

import os
import select
from pathlib import Path

from pyjob.core.process import Command, FailedStart, RealRunner


def _wait(runner: RealRunner, handle: object) -> int:
    """Service the runner until ``handle`` has ended; its exit code."""
    for _ in range(500):
        fds = runner.fds()
        ready = [fd for fd, _ in _poll(fds)] if fds else []
        for h, code in runner.service(ready):
            if h is handle:
                return code
    raise AssertionError("the run did not end")


def _poll(fds: list[int]) -> list[tuple[int, int]]:
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return p.poll(10)


def _tool(directory: Path, name: str, code: int) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\nexit {code}\n")
    path.chmod(0o755)


def test_path_is_searched_anew_after_each_turn(tmp_path: Path) -> None:
    """One turn searches PATH once per program; the next turn sees a program installed, or
    installed earlier on PATH, since (as cron's execvp would at every run)."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    env = {**os.environ, "PATH": f"{first}:{second}:/usr/bin:/bin"}
    runner = RealRunner(reaper=False)
    try:
        missing = runner.start(Command(("pyjob-test-tool",)), env, None)
        assert isinstance(missing, FailedStart) and missing.code == 127
        runner.flush()  # the turn ends

        _tool(second, "pyjob-test-tool", 3)
        assert _wait(runner, runner.start(Command(("pyjob-test-tool",)), env, None)) == 3
        runner.flush()

        _tool(first, "pyjob-test-tool", 4)  # now earlier on PATH
        assert _wait(runner, runner.start(Command(("pyjob-test-tool",)), env, None)) == 4
        # Within the turn, the same program on another PATH is searched on that PATH.
        other = {**env, "PATH": f"{second}:/usr/bin:/bin"}
        assert _wait(runner, runner.start(Command(("pyjob-test-tool",)), other, None)) == 3
        runner.flush()

        (first / "pyjob-test-tool").unlink()
        (second / "pyjob-test-tool").unlink()
        gone = runner.start(Command(("pyjob-test-tool",)), env, None)
        assert isinstance(gone, FailedStart) and gone.code == 127
    finally:
        runner.close()


def test_a_program_resolved_ahead_is_started_from_where_it_was_found(tmp_path: Path) -> None:
    """The scheduler resolves a tick's program at its claim: the start uses that answer (found
    or not) instead of searching PATH again."""
    first, second = tmp_path / "first", tmp_path / "second"
    _tool(second, "pyjob-test-tool", 3)
    env = {**os.environ, "PATH": f"{first}:{second}:/usr/bin:/bin"}
    runner = RealRunner(reaper=False)
    try:
        found = runner.resolve(Command(("pyjob-test-tool",)), env)
        assert found == str(second / "pyjob-test-tool")
        runner.flush()
        _tool(first, "pyjob-test-tool", 4)  # installed after the claim, before the tick
        handle = runner.start(Command(("pyjob-test-tool",)), env, None, found)
        assert _wait(runner, handle) == 3
        missing = runner.resolve(Command(("pyjob-missing-tool",)), env)
        assert isinstance(missing, FileNotFoundError)
        failed = runner.start(Command(("pyjob-missing-tool",)), env, None, missing)
        assert isinstance(failed, FailedStart) and failed.code == 127
        # Without an answer from ahead, the start searches PATH itself.
        runner.flush()
        assert _wait(runner, runner.start(Command(("pyjob-test-tool",)), env, None)) == 4
    finally:
        runner.close()


# Issue 28, item 12: pyjob short of descriptors, through the installed CLI.


def _many_jobs(tmp_path: Path, count: int) -> Path:
    """``count`` jobs on the same aligned second, each a run that lasts (3 s: they all overlap
    however slowly a busy machine spawns them), its output captured:
    some three descriptors each (a pidfd, two pipes) while they run together."""
    path = tmp_path / "jobs.toml"
    path.write_text(
        '[defaults]\nevery = "1s"\nalign = true\nmax-runs = 1\nlog-output = true\n\n'
        + "".join(f'[jobs.j{i}]\ncommand = ["sleep", "3"]\n\n' for i in range(count))
    )
    return path


def _run_limited(jobs: Path, soft: int, hard: int) -> list[dict[str, object]]:
    """The run-finished events of `pyjob run --file jobs` started with RLIMIT_NOFILE
    (soft, hard)."""
    import json
    import resource
    import subprocess

    from .conftest import pyjob_exe

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYJOB_")}
    env.update(TZ="UTC", PYJOB_NO_CLOCK_CHECK="1")
    done = subprocess.run(
        [*pyjob_exe(), "run", "--file", str(jobs), "--lock", "none", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return [e for e in events if e["event"] == "run-finished"]


def test_pyjobs_own_descriptor_shortage_is_not_blamed_on_the_command(tmp_path: Path) -> None:
    """A hard limit of 48 cannot be raised: 40 runs at once do not fit. Each run that cannot
    start fails on its own, as pyjob's shortage (125, 'pyjob: too many open files'), never as
    the command's 126 'cannot execute'; the others run."""
    finished = _run_limited(_many_jobs(tmp_path, 40), 48, 48)
    assert len(finished) == 40
    codes = sorted({int(str(e["exit_code"])) for e in finished})
    short = [e for e in finished if e["exit_code"] == 125]
    assert codes == [0, 125], codes
    assert all(
        str(e["error"]).startswith("pyjob: too many open files (EMFILE) when starting the command")
        for e in short
    ), short[0]


def test_run_raises_its_soft_descriptor_limit_to_the_hard_one(tmp_path: Path) -> None:
    """A soft limit of 48 under a hard one of 4096 is raised at start: the 40 runs all start."""
    finished = _run_limited(_many_jobs(tmp_path, 40), 48, 4096)
    assert [e["exit_code"] for e in finished] == [0] * 40, [
        e.get("error") for e in finished if e["exit_code"]
    ]

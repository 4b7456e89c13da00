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

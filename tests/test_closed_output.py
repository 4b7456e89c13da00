"""`pyjob run` whose own stdout or stderr closes under it (issue 24, item 9): `… 2>&1 | head -3`,
a log collector that restarts, a terminal that goes away. The schedule goes on (the lines are
dropped), the loss is said once where something can still be written, and a stop is still clean.

Each test is a real pipeline: pyjob's stream is a pipe (or a pseudo-terminal) whose reading end
the test closes, as `head -3` does when it has its lines.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest

from .conftest import pyjob_exe

pytestmark = pytest.mark.slow

# Appends a line per run to `count` and writes one line of output: the schedule is alive while the
# file grows.
COMMAND = "echo x >> count; echo out; sleep 0.2"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYJOB_") and k != "NO_COLOR"}
    env.update(TZ="UTC", PYJOB_NO_CLOCK_CHECK="1", XDG_RUNTIME_DIR=str(tmp_path), **extra)
    return env


def _runs(tmp_path: Path) -> int:
    count = tmp_path / "count"
    return len(count.read_text().splitlines()) if count.exists() else 0


def _wait(
    what: str, ok: Callable[[], bool], proc: subprocess.Popen[Any], seconds: float = 60
) -> None:
    """Until ``ok()``; fails at once if pyjob ended on the way."""
    deadline = time.monotonic() + seconds
    while not ok():
        assert proc.poll() is None, f"pyjob ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds:g}s"
        time.sleep(0.1)


def _keeps_running(tmp_path: Path, proc: subprocess.Popen[Any], more: int = 3) -> None:
    """The command keeps running: ``more`` runs after now."""
    before = _runs(tmp_path)
    _wait(f"{more} more runs", lambda: _runs(tmp_path) >= before + more, proc)


def _history(tmp_path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [*pyjob_exe(), "history", "j", "--lock", f"file:{tmp_path}/locks", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path),
        check=True,
    )
    runs: list[dict[str, Any]] = json.loads(done.stdout)["runs"]
    return runs


def _stop(tmp_path: Path, proc: subprocess.Popen[Any]) -> None:
    """SIGTERM: a clean stop, exit 0, every run with its final record."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    runs = _history(tmp_path)
    assert len(runs) >= _runs(tmp_path) >= 3  # one record per run (a stop may end one early)
    assert [r for r in runs if r["result"] in ("running", "lost")] == []


def _start(
    tmp_path: Path, *args: str, stdout: Any, stderr: Any, **env: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*pyjob_exe(), "run", "--instance-id", "i1", "--lock", f"file:{tmp_path}/locks", *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=_env(tmp_path, **env),
        cwd=tmp_path,
    )


def _head(pipe: IO[bytes], lines: int = 3) -> list[bytes]:
    """Read ``lines`` lines, then close the pipe, as `head -3` does."""
    got = [pipe.readline() for _ in range(lines)]
    pipe.close()
    return got


@pytest.mark.parametrize(
    "args",
    [[], ["--log-format", "json"], ["--log-format", "json", "--log-output"]],
    ids=["text", "json", "json-log-output"],
)
def test_a_log_pipe_closed_by_its_reader_never_stops_the_schedule(
    tmp_path: Path, args: list[str]
) -> None:
    """`pyjob run … 2>&1 | head -3`: the runs go on after head exits; SIGTERM still stops it
    cleanly; the metrics say the lines are dropped (nothing else is left to say it)."""
    textfile = tmp_path / "pyjob.prom"
    proc = _start(
        tmp_path,
        "--every",
        "1s",
        "--name",
        "j",
        "--metrics-textfile",
        str(textfile),
        *args,
        "--shell",
        "--",
        COMMAND,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    assert all(_head(proc.stdout))
    _keeps_running(tmp_path, proc)
    _stop(tmp_path, proc)
    metrics = textfile.read_text()
    assert 'pyjob_output_lost{stream="stderr"} 1.0' in metrics
    assert 'pyjob_output_lost{stream="stdout"} 1.0' in metrics  # the same pipe (2>&1)


@pytest.mark.parametrize("jobs", ["one", "file"])
def test_a_closed_stdout_is_said_once_on_stderr_and_later_commands_do_not_die_of_it(
    tmp_path: Path, jobs: str
) -> None:
    """`pyjob run … | head -3`, the log to a file: the commands' output passing through (as it
    is, or after the job's name with several jobs) no longer kills them with SIGPIPE; one
    output-closed event in the log."""
    log_path = tmp_path / "log"
    if jobs == "one":
        args = ["--every", "1s", "--name", "j", "--shell", "--", COMMAND]
    else:
        (tmp_path / "crontab").write_text(f"* * * * * * {COMMAND}\n")
        args = ["--file", str(tmp_path / "crontab")]
    with log_path.open("wb") as log:
        proc = _start(tmp_path, "--log-format", "json", *args, stdout=subprocess.PIPE, stderr=log)
        assert proc.stdout is not None
        assert [line.rstrip(b"\n").rpartition(b" ")[2] for line in _head(proc.stdout)] == [
            b"out"
        ] * 3

        def events(kind: str) -> list[dict[str, Any]]:
            docs = [json.loads(line) for line in log_path.read_text().splitlines()]
            return [d for d in docs if d["event"] == kind]

        _wait("output-closed", lambda: bool(events("output-closed")), proc)
        (closed,) = events("output-closed")
        at = datetime.fromisoformat(closed["time"])

        def after() -> list[int]:
            """The exit codes of the runs that ended after the stream closed."""
            ended = events("run-finished")
            return [e["exit_code"] for e in ended if datetime.fromisoformat(e["time"]) > at]

        _wait("3 runs after it", lambda: len(after()) >= 4, proc)
        # Not 141 (SIGPIPE); the run going on when the pipe closed may have died of it.
        codes = after()
        assert codes[1:] == [0] * (len(codes) - 1)
        assert len(events("output-closed")) == 1
        assert (closed["level"], closed["stream"]) == ("warning", "stdout")
        assert closed["action"].endswith("/dev/null as stdout; the schedule goes on")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert events("stopped")


@pytest.mark.parametrize(
    ("redirect", "error"),
    [("2>&-", "Bad file descriptor"), ("2>/dev/full", "No space left on device")],
)
def test_a_stderr_that_cannot_be_written_is_said_once_on_stdout(
    tmp_path: Path, redirect: str, error: str
) -> None:
    """`pyjob run … 2>&-` (closed from the start) or `2>/dev/full` (every write fails): the
    schedule runs; stdout gets the one line that says so, beside the command's own output."""
    out_path = tmp_path / "out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                "sh",
                "-c",
                f'exec "$@" {redirect}',
                "sh",
                *pyjob_exe(),
                "run",
                "--log-format",
                "json",
                "--lock",
                f"file:{tmp_path}/locks",
                "--every",
                "1s",
                "--name",
                "j",
                "--shell",
                "--",
                COMMAND,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            env=_env(tmp_path),
            cwd=tmp_path,
        )
        _keeps_running(tmp_path, proc)
        _stop(tmp_path, proc)
    lines = out_path.read_text().splitlines()
    notes = [json.loads(line) for line in lines if line != "out"]
    assert [(n["event"], n["stream"], n["error"]) for n in notes] == [
        ("output-closed", "stderr", error)
    ]
    assert lines.count("out") >= 3


def test_a_terminal_that_goes_away_never_stops_the_schedule(tmp_path: Path) -> None:
    """The readable log (rich, on a terminal) when the terminal's other side closes: writes
    fail with EIO; the runs go on, and SIGTERM still stops cleanly."""
    controller, terminal = pty.openpty()
    proc = _start(
        tmp_path,
        "--every",
        "1s",
        "--name",
        "j",
        "--shell",
        "--",
        COMMAND,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        TERM="xterm-256color",
        COLUMNS="300",
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 60
    while b"run-started" not in seen and time.monotonic() < deadline:
        seen += os.read(controller, 65536)
    assert b"\x1b[" in seen  # rich's colours: the terminal path
    os.close(controller)
    _keeps_running(tmp_path, proc)
    _stop(tmp_path, proc)


class _BrokenPipe:
    """A stream whose reader is gone."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        pass


def test_a_lost_stream_is_told_once_and_not_written_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process: the loss is told once, later lines are dropped without trying, and a file
    object put in the stream's place (not on its descriptor) leaves the descriptor alone."""
    from pyjob.cli.outputs import Outputs

    broken = _BrokenPipe()
    monkeypatch.setattr("sys.stderr", broken)
    told: list[tuple[str, str, bool]] = []
    outputs = Outputs(lambda *args: told.append(args))
    before = os.fstat(2)
    assert [outputs.write("stderr", "a\n"), outputs.write("stderr", "b\n")] == [False, False]
    assert told == [("stderr", "Broken pipe", True)]
    assert broken.writes == 1
    assert outputs.lost == {"stderr": "Broken pipe"}
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)

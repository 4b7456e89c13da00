"""Starting and stopping the scheduled command.

Each run is a child in its own process group (as supercronic does), so that a timeout or a stop
signals the command and everything it started, and a Ctrl-C on the terminal reaches pyjob (the
foreground group) rather than the command: pyjob forwards SIGTERM itself. The group stays in pyjob's
session on purpose: with Linux's autogroup scheduling a new session is a new scheduling group, and
under full CPU load its first run waited 4-10 ms longer (measured here). stdin is /dev/null.

So that no command outlives a pyjob that is killed outright (SIGKILL, OOM killer), a tiny reaper
(`/bin/sh`, in a session of its own so that terminal signals pass it by) reads a pipe on which pyjob
announces each run's process group as it starts and ends. When pyjob dies the pipe reaches EOF and
the reaper SIGKILLs every group still announced — grandchildren included, which PR_SET_PDEATHSIG
would miss — and exits. Nothing runs in the child between fork and exec, so Python keeps its fast
vfork path: a preexec_fn (needed for PDEATHSIG) made every spawn about 4 ms slower here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Protocol

REAPER_SCRIPT = r"""
trap '' INT TERM HUP QUIT
live=' '
while IFS=' ' read -r op pg; do
  case "$op" in
    add) live="$live$pg " ;;
    del) case "$live" in *" $pg "*) live="${live%% $pg *} ${live#* $pg }" ;; esac ;;
  esac
done
for pg in $live; do kill -s KILL -- "-$pg" 2>/dev/null; done
"""


class Reaper:
    """Kills the announced process groups when this process dies (see the module doc)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", REAPER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        assert self._proc.stdin is not None
        self._pipe = self._proc.stdin.fileno()
        self.pid = self._proc.pid

    def _say(self, line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self._pipe, line.encode())  # one short write: atomic on a pipe

    def add(self, pgid: int) -> None:
        self._say(f"add {pgid}\n")

    def remove(self, pgid: int) -> None:
        self._say(f"del {pgid}\n")

    def close(self) -> None:
        """Normal end: let the reaper go (it kills any group still announced)."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    shell: bool = False

    def popen_args(self) -> list[str]:
        if self.shell:
            return ["/bin/sh", "-c", " ".join(self.argv)]
        return list(self.argv)

    def __str__(self) -> str:
        import shlex

        return " ".join(self.argv) if self.shell else shlex.join(self.argv)


class Handle(Protocol):
    """A started run: wait for it, signal its process group."""

    pid: int | None

    def wait(self) -> int:
        """Block until the command ends; its exit code (128+N when killed by signal N)."""
        ...

    def signal_group(self, signum: int) -> None: ...


class Runner(Protocol):
    def start(
        self,
        command: Command,
        env: Mapping[str, str],
        on_line: Callable[[str, str], None] | None,
    ) -> Handle:
        """Start ``command``. With ``on_line``, stdout/stderr lines go to it as (stream, line).
        A command that cannot be started gives a handle whose wait() is 127 (not found) or 126
        (not executable), like a shell, and ``start_error`` says why."""
        ...


class _Started:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        readers: list[threading.Thread],
        reaper: Reaper | None,
    ) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self._readers = readers
        self._reaper = reaper

    def wait(self) -> int:
        code = self.proc.wait()
        for reader in self._readers:
            reader.join()
        if self._reaper is not None:
            self._reaper.remove(self.proc.pid)
        return 128 - code if code < 0 else code

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)


class FailedStart:
    """A command that could not be started: it "exits" at once with a shell's code."""

    pid: int | None = None

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.start_error = reason

    def wait(self) -> int:
        return self.code

    def signal_group(self, signum: int) -> None:
        return None


def _pump(stream: IO[bytes], name: str, on_line: Callable[[str, str], None]) -> None:
    with stream:
        for raw in iter(stream.readline, b""):
            on_line(name, raw.decode(errors="replace").rstrip("\n"))


class RealRunner:
    def __init__(self, reaper: bool = True) -> None:
        self.reaper = Reaper() if reaper else None

    def close(self) -> None:
        if self.reaper is not None:
            self.reaper.close()

    def start(
        self,
        command: Command,
        env: Mapping[str, str],
        on_line: Callable[[str, str], None] | None,
    ) -> Handle:
        capture = subprocess.PIPE if on_line else None
        try:
            proc = subprocess.Popen(
                command.popen_args(),
                stdin=subprocess.DEVNULL,
                stdout=capture,
                stderr=capture,
                env=dict(env),
                process_group=0,  # see the module doc: a group, not a session
                close_fds=True,
            )
        except FileNotFoundError as e:
            return FailedStart(127, f"command not found: {e.filename or command.argv[0]}")
        except PermissionError as e:
            return FailedStart(126, f"permission denied: {e.filename or command.argv[0]}")
        except OSError as e:
            return FailedStart(126, f"cannot execute {command.argv[0]}: {e.strerror or e}")
        readers: list[threading.Thread] = []
        if on_line is not None:
            for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
                assert stream is not None
                t = threading.Thread(target=_pump, args=(stream, name, on_line), daemon=True)
                t.start()
                readers.append(t)
        if self.reaper is not None:
            self.reaper.add(proc.pid)  # after the spawn: nothing slow before it
        return _Started(proc, readers, self.reaper)


def check_command(command: Command, env: Mapping[str, str]) -> str | None:
    """What can be known before the first run: a missing or non-executable program."""
    if command.shell or not command.argv:
        return None if command.argv else "no command given"
    prog = command.argv[0]
    if "/" in prog:
        if not os.path.exists(prog):
            return f"command not found: {prog}"
        if not os.access(prog, os.X_OK) or os.path.isdir(prog):
            return f"not executable: {prog}"
        return None
    import shutil

    if shutil.which(prog, path=env.get("PATH")) is None:
        return f"command not found: {prog} (not on PATH)"
    return None

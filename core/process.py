"""Starting and stopping the scheduled command.

Each run is a child in its own session and process group (as supercronic does), so that a timeout
or a stop signals the command and everything it started. stdin is /dev/null. On Linux the child
also asks the kernel for SIGKILL when pyjob dies (PR_SET_PDEATHSIG), so a pyjob killed with
SIGKILL does not leave its command running unsupervised.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Protocol

PR_SET_PDEATHSIG = 1
_libc = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _child_setup() -> None:  # runs in the child between fork and exec: keep it tiny
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
    def __init__(self, proc: subprocess.Popen[bytes], readers: list[threading.Thread]) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self._readers = readers

    def wait(self) -> int:
        code = self.proc.wait()
        for reader in self._readers:
            reader.join()
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
                start_new_session=True,
                preexec_fn=_child_setup if _libc is not None else None,
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
        return _Started(proc, readers)


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

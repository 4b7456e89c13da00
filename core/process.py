"""Starting and stopping the scheduled command.

Each run is a child in its own process group (as supercronic does), so that a timeout or a stop
signals the command and everything it started, and a Ctrl-C on the terminal reaches pyjob (the
foreground group) rather than the command: pyjob forwards SIGTERM itself. The group stays in pyjob's
session on purpose: with Linux's autogroup scheduling a new session is a new scheduling group, and
under full CPU load its first run waited 4-10 ms longer (measured here). stdin is /dev/null.

So that no command outlives a pyjob that is killed outright (SIGKILL, OOM killer), a tiny reaper
(`/bin/sh`, in a session of its own so that terminal signals pass it by) reads a pipe on which pyjob
announces each run's process group as it starts and ends. The announcements of one turn of the
scheduler go in one write at its end (``Runner.flush``): a shell woken at every spawn of a 100-job
tick took CPU from the spawns themselves. When pyjob dies the pipe reaches EOF and
the reaper SIGKILLs every group still announced — grandchildren included, which PR_SET_PDEATHSIG
would miss — and exits. Nothing runs in the child between fork and exec: a preexec_fn (needed for
PDEATHSIG) made every spawn about 4 ms slower here.

Runs are started with ``os.posix_spawn`` (glibc's clone-and-exec), not ``subprocess.Popen``: the
environment is converted in C rather than in a Python loop, and the child closes nothing before
its exec. Measured here, 100 commands in a row started 10-12 % sooner than with Popen (p99 53 ms
against 60 ms with no other descriptor open, 49 against 54 ms with 300 open). The child gets only
descriptors 0-2: every descriptor Python opens is close-on-exec (PEP 446), and the ones pyjob
inherited are made so when the runner starts (``_no_inherited_fds``). One gap remains, which
close_fds closed: a descriptor that a C library opens in another thread and marks close-on-exec
a moment later (libpq does so with a new PostgreSQL socket) reaches a run started in between.
The signals Python ignores (SIGPIPE, SIGXFSZ) are set back to their defaults in the child, as
Popen's restore_signals does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

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
        self._pending: list[str] = []

    def add(self, pgid: int) -> None:
        self._pending.append(f"add {pgid}\n")

    def remove(self, pgid: int) -> None:
        self._pending.append(f"del {pgid}\n")

    def flush(self) -> None:
        """Send what was announced since the last flush, in order."""
        if not self._pending:
            return
        data, self._pending = "".join(self._pending).encode(), []
        with contextlib.suppress(OSError):
            while data:  # pyjob is the only writer; a long batch may take several writes
                data = data[os.write(self._pipe, data) :]

    def close(self) -> None:
        """Normal end: let the reaper go (it kills any group still announced)."""
        self.flush()
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)


@dataclass(frozen=True, slots=True)
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
    """A started run: its process group can be signalled."""

    pid: int | None

    def signal_group(self, signum: int) -> None: ...


# Where a command's program was found ahead of its start (Runner.resolve), or why it was not;
# None when it is to be looked up at the start.
Found = str | OSError | None


class Runner(Protocol):
    """Starts commands and tells which ended, without a thread per command: the scheduler waits
    on ``fds()`` (pidfds and output pipes) together with everything else, then calls
    ``service`` with the readable ones."""

    def resolve(self, command: Command, env: Mapping[str, str]) -> Found:
        """Look ``command``'s program up on ``env``'s PATH ahead of its start (at the claim
        before a tick), to be given to ``start``."""
        ...

    def start(
        self,
        command: Command,
        env: Mapping[str, str],
        on_line: Callable[[str, str], None] | None,
        found: Found = None,
    ) -> Handle:
        """Start ``command`` (its program where ``found``, else looked up now). With
        ``on_line``, stdout/stderr lines go to it as (stream, line). A command that cannot be
        started gives a handle that ends at once with 127 (not found) or 126 (not executable),
        like a shell, and whose ``start_error`` says why."""
        ...

    def fds(self) -> list[int]:
        """The descriptors to wait on: readable when a child ended or printed."""
        ...

    def service(self, ready: Collection[int]) -> list[tuple[Handle, int]]:
        """Read the output that is ready; the runs that ended, with their exit codes (128+N
        when killed by signal N). A run ends when its process exited and its output closed."""
        ...

    def next_due(self) -> float | None:
        """The monotonic instant a child is known to end (fakes); None for real children."""
        ...

    def flush(self) -> None:
        """The end of the scheduler's turn: send what waited for it (the reaper's news)."""
        ...

    def close(self) -> None: ...


class FailedStart:
    """A command that could not be started: it "exits" at once with a shell's code."""

    pid: int | None = None

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.start_error = reason

    def signal_group(self, signum: int) -> None:
        return None


class _Child:
    """A running command: its pid, pidfd, and the output pipes still open."""

    def __init__(
        self, pid: int, pipes: Mapping[int, str], on_line: Callable[[str, str], None] | None
    ) -> None:
        self.pid: int | None = pid
        self.on_line = on_line
        self.code: int | None = None
        self.pidfd: int | None = None
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: polled instead
            self.pidfd = None
        self.pipes: dict[int, tuple[str, bytearray]] = {
            fd: (name, bytearray()) for fd, name in pipes.items()
        }

    def signal_group(self, signum: int) -> None:
        if self.pid is None:  # pragma: no cover - a started child always has one
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def read(self, fd: int) -> None:
        name, buf = self.pipes[fd]
        assert self.on_line is not None
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            buf.extend(chunk)
            *lines, rest = bytes(buf).split(b"\n")
            buf[:] = rest
            for raw in lines:
                self.on_line(name, raw.decode(errors="replace"))
            return
        if buf:
            self.on_line(name, bytes(buf).decode(errors="replace"))
        del self.pipes[fd]
        os.close(fd)

    def poll_exit(self) -> None:
        assert self.pid is not None
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - reaped elsewhere: its code is lost
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        self.code = 128 - code if code < 0 else code
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _no_inherited_fds() -> None:
    """Make the descriptors this process inherited (above 2) close-on-exec, so that no run
    inherits them: what Popen's close_fds did at every spawn, done once."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: the descriptors a parent could have passed, by hand
        names = [str(fd) for fd in range(3, 256)]
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


# Ignored by Python; a command starts with their defaults, as with Popen(restore_signals=True).
_DEFAULT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, n))


def _executable(prog: str, env: Mapping[str, str]) -> str:
    """``prog`` as execvp finds it on the run's own PATH (as Popen does): raises
    FileNotFoundError, or PermissionError when only a non-executable file is found."""
    if "/" in prog:
        return prog
    denied = None
    for d in os.get_exec_path(env):  # as Popen: an empty entry is the working directory
        path = os.path.join(d or ".", prog)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
        if denied is None and os.path.isfile(path):
            denied = path
    if denied is not None:
        raise PermissionError(13, "Permission denied", denied)
    raise FileNotFoundError(2, "No such file or directory", prog)


def _prefixed(label: str, write: Callable[[str, str], object]) -> Callable[[str, str], None]:
    """Passes a run's lines through to ``write(stream, text)``, each after ``label | ``."""

    def line(stream: str, text: str) -> None:
        write(stream, f"{label} | {text}\n")

    return line


class RealRunner:
    """``prefix``: when a run's output passes through (no ``on_line``), write each line after
    its job's name (``PYJOB_JOB``), as supercronic does, so that the output of several jobs can
    be told apart; the command's stdout and stderr are then pipes, not the terminal. It is
    called as ``prefix(stream, text)``, stream "stdout" or "stderr", and writes to pyjob's own
    (the CLI's writer, which survives their closing)."""

    def __init__(
        self, reaper: bool = True, prefix: Callable[[str, str], object] | None = None
    ) -> None:
        self.prefix = prefix
        _no_inherited_fds()
        self.reaper = Reaper() if reaper else None
        self._children: list[_Child] = []
        self._failed: list[FailedStart] = []
        # The PATH search of one turn, by (program, PATH): a tick of many jobs running the same
        # program searched PATH once per run, which was the costliest step of a spawn after the
        # spawn itself. Forgotten at the end of every turn (flush), so that a program installed
        # or removed is found, or not, from the next turn on, as execvp would. The scheduler
        # resolves a tick's program at its claim, shortly before the tick: one search cold,
        # after a long sleep, took 0.2 ms, half of what a one-job tick did before its spawn.
        self._found: dict[tuple[str, str | None], str | OSError] = {}

    def close(self) -> None:
        if self.reaper is not None:
            self.reaper.close()

    def flush(self) -> None:
        self._found.clear()
        if self.reaper is not None:
            self.reaper.flush()

    def resolve(self, command: Command, env: Mapping[str, str]) -> str | OSError:
        prog = command.popen_args()[0]
        key = (prog, env.get("PATH"))
        found = self._found.get(key)
        if found is None:
            try:
                found = _executable(prog, env)
            except OSError as e:
                found = e
            self._found[key] = found
        return found

    def start(
        self,
        command: Command,
        env: Mapping[str, str],
        on_line: Callable[[str, str], None] | None,
        found: Found = None,
    ) -> Handle:
        if on_line is None and self.prefix is not None:
            on_line = _prefixed(env.get("PYJOB_JOB", "job"), self.prefix)
        argv = command.popen_args()
        try:
            path = found if found is not None else self.resolve(command, env)
            if isinstance(path, OSError):
                raise path.with_traceback(None)
            pid, pipes = _spawn(path, argv, env, capture=on_line is not None)
        except FileNotFoundError as e:
            failed = FailedStart(127, f"command not found: {e.filename or command.argv[0]}")
        except PermissionError as e:
            failed = FailedStart(126, f"permission denied: {e.filename or command.argv[0]}")
        except OSError as e:
            failed = FailedStart(126, f"cannot execute {command.argv[0]}: {e.strerror or e}")
        else:
            if self.reaper is not None:
                self.reaper.add(pid)  # sent at the end of the turn (flush)
            child = _Child(pid, pipes, on_line)
            self._children.append(child)
            return child
        self._failed.append(failed)
        return failed

    def fds(self) -> list[int]:
        out: list[int] = []
        for c in self._children:
            if c.pidfd is not None:
                out.append(c.pidfd)
            out.extend(c.pipes)
        return out

    def next_due(self) -> float | None:
        return None

    def polling(self) -> bool:
        """True when some child has no pidfd: the caller must look again soon."""
        return any(c.pidfd is None and c.code is None for c in self._children)

    def service(self, ready: Collection[int]) -> list[tuple[Handle, int]]:
        ended: list[tuple[Handle, int]] = [(f, f.code) for f in self._failed]
        self._failed.clear()
        if not self._children:
            return ended
        ready_set = set(ready)
        still: list[_Child] = []
        for c in self._children:
            for fd in [fd for fd in c.pipes if fd in ready_set]:
                c.read(fd)
            if c.code is None and (c.pidfd is None or c.pidfd in ready_set):
                c.poll_exit()
            if c.code is not None and not c.pipes:
                if self.reaper is not None:
                    assert c.pid is not None
                    self.reaper.remove(c.pid)
                ended.append((c, c.code))
            else:
                still.append(c)
        self._children = still
        return ended


_STDIN = (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)


def _spawn(
    path: str, argv: list[str], env: Mapping[str, str], capture: bool
) -> tuple[int, dict[int, str]]:
    """Start ``argv`` (the program found at ``path``) in a process group of its own, stdin from
    /dev/null; with ``capture``, its stdout and stderr are pipes whose read ends (non-blocking)
    are returned with their names."""
    actions: list[tuple[object, ...]] = [_STDIN]
    pipes: dict[int, str] = {}
    ends: list[int] = []
    try:
        if capture:
            for target, name in ((1, "stdout"), (2, "stderr")):
                r, w = os.pipe2(os.O_CLOEXEC)
                pipes[r] = name
                ends.append(w)
                actions.append((os.POSIX_SPAWN_DUP2, w, target))
        pid = os.posix_spawn(
            path, argv, env, file_actions=actions, setpgroup=0, setsigdef=_DEFAULT_SIGNALS
        )
    except BaseException:
        for fd in [*pipes, *ends]:
            os.close(fd)
        raise
    for fd in ends:
        os.close(fd)
    for fd in pipes:
        os.set_blocking(fd, False)
    return pid, pipes


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
    try:
        _executable(prog, env)  # as the spawn will
    except OSError:
        return f"command not found: {prog} (not on PATH)"
    return None

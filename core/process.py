"""Starting and stopping the scheduled command.

Each run is a child in its own process group (as supercronic does), so that a timeout or a stop
signals the command and everything it started, and a Ctrl-C on the terminal reaches pyjob (the
foreground group) rather than the command: pyjob forwards SIGTERM itself. The group stays in pyjob's
session on purpose: with Linux's autogroup scheduling a new session is a new scheduling group, and
under full CPU load its first run waits longer (docs/architecture.md, Performance). stdin is
/dev/null.

So that no command outlives a pyjob that is killed outright (SIGKILL, OOM killer), a tiny reaper
(`/bin/sh`, in a session of its own so that terminal signals pass it by) reads a pipe on which pyjob
announces each run's process group as it starts and ends. The announcements of one turn of the
scheduler go in one write at its end (``Runner.flush``): a shell woken at every spawn of a 100-job
tick took CPU from the spawns themselves. When pyjob dies the pipe reaches EOF and
the reaper SIGKILLs every group still announced — grandchildren included, which PR_SET_PDEATHSIG
would miss — and exits. Nothing runs in the child between fork and exec: a preexec_fn (needed for
PDEATHSIG) makes every spawn several milliseconds slower.

Runs are started with ``os.posix_spawn`` (glibc's clone-and-exec), not ``subprocess.Popen``: the
environment is converted in C rather than in a Python loop, and the child closes nothing before
its exec, so a tick of many jobs starts them sooner (the figures are in docs/architecture.md,
Performance, and docs/benchmarks.md). The child gets only
descriptors 0-2: every descriptor Python opens is close-on-exec (PEP 446), and the ones pyjob
inherited are made so when the runner starts (``_no_inherited_fds``). One gap remains, which
close_fds closed: a descriptor that a C library opens in another thread and marks close-on-exec
a moment later (libpq does so with a new PostgreSQL socket) reaches a run started in between.
The signals Python ignores (SIGPIPE, SIGXFSZ) are set back to their defaults in the child, as
Popen's restore_signals does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import resource
import select
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from .capture import HOT, READ_MAX, SLICE, TURN_LINES, Capture

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
    # --kill-orphans: when the command's own process exits, kill what it left in its process
    # group (cron leaves it running, and so does pyjob by default).
    kill_orphans: bool = False

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
        ``on_line``, stdout/stderr lines go to it as (stream, line), and pyjob's word on them
        (lines dropped: BACKLOG_LINES) as ("pyjob", text). A command that cannot be started
        gives a handle that ends at once with 127 (not found) or 126 (not executable), like a
        shell, and whose ``start_error`` says why."""
        ...

    def fds(self) -> list[int]:
        """The descriptors to wait on: readable when a child ended or printed."""
        ...

    def service(self, ready: Collection[int]) -> list[tuple[Handle, int]]:
        """Read the output that is ready; the runs that ended, with their exit codes (128+N
        when killed by signal N). A run ends when its process exited and its output closed."""
        ...

    def next_due(self) -> float | None:
        """The monotonic instant a child is known to end (fakes, and a start that failed: at
        once); None when no end is known ahead."""
        ...

    def flush(self) -> None:
        """The end of the scheduler's turn: do what waited for its spawns to be done (the
        reaper's news, the new children's pidfds)."""
        ...

    def close(self) -> None: ...


class FailedStart:
    """A command that could not be started: it "exits" at once with a shell's code (127 not
    found, 126 not executable), or with OWN_SHORTAGE_CODE when pyjob itself ran short of
    descriptors or memory (``own``): the command was never tried, and is not to blame."""

    pid: int | None = None

    def __init__(self, code: int, reason: str, own: bool = False) -> None:
        self.code = code
        self.start_error = reason
        self.own = own

    def signal_group(self, signum: int) -> None:
        return None


# The errors of a spawn (or of the pipes made for it) that are pyjob's own shortage, not the
# command's fault: out of descriptors (the process's or the system's), of memory, of processes.
# Such a run fails on its own, with 125 (what env, timeout and nice exit with when they fail
# themselves, 126 and 127 being the command's), and "pyjob: ..." as its error; other runs of the
# same tick start or fail each on their own.
_OWN_SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}
OWN_SHORTAGE_CODE = 125


def _shortage(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "")
    what = {
        errno.EMFILE: "too many open files",
        errno.ENFILE: "too many open files in the system",
        errno.ENOMEM: "out of memory",
        errno.EAGAIN: "too many processes",
    }.get(e.errno or 0, e.strerror or str(e))
    hint = " (raise ulimit -n / LimitNOFILE=)" if e.errno in (errno.EMFILE, errno.ENFILE) else ""
    return f"pyjob: {what} ({name}) when starting the command, which was not run{hint}"


class _Child:
    """A running command: its pid, pidfd, the output pipes still open, its captured output."""

    def __init__(
        self,
        pid: int,
        pipes: Mapping[int, str],
        on_line: Callable[[str, str], None] | None,
        kill_orphans: bool = False,
        forget: Callable[[int], None] = lambda fd: None,
    ) -> None:
        self.pid: int | None = pid
        self.forget = forget  # told of each of its descriptors just before it is closed
        self.code: int | None = None
        self.kill_orphans = kill_orphans
        self.pidfd: int | None = None  # opened after the turn's spawns (RealRunner.flush)
        self.seq = 0  # its place among the runner's children, in the order they started
        self.pipes: dict[int, str] = dict(pipes)
        self.capture = Capture(on_line) if on_line is not None else None

    def open_pidfd(self) -> None:
        """Its pidfd, to be waited on: one can be opened as long as the child is not reaped,
        which only this runner does."""
        try:
            self.pidfd = os.pidfd_open(self.pid) if self.pid is not None else None
        except (AttributeError, OSError):  # not Linux >= 5.3: polled instead
            self.pidfd = None

    def signal_group(self, signum: int) -> None:
        if self.pid is None:  # pragma: no cover - a started child always has one
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def read(self, fd: int, limit: int) -> int:
        """Read what pipe ``fd`` holds, up to about ``limit`` bytes; how many were read. The
        lines are cut apart once it is empty: the command is not kept waiting meanwhile."""
        chunks: list[bytes] = []
        got, end = 0, False
        while got < limit:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                end = True
                break
            chunks.append(chunk)
            got += len(chunk)
        capture, name = self.capture, self.pipes[fd]
        assert capture is not None
        if chunks:
            capture.feed(name, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if end:
            capture.close(name)
            del self.pipes[fd]
            self.forget(fd)
            os.close(fd)
        return got

    def pump(self, limit: int) -> int:
        """Read every open pipe of the run (about ``limit`` bytes at most in all)."""
        got = 0
        for fd in list(self.pipes):
            got += self.read(fd, limit - got)
        return got

    def ended(self) -> bool:
        """Exited, its output closed, and all of it handed on."""
        return (
            self.code is not None
            and not self.pipes
            and (self.capture is None or self.capture.idle())
        )

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
            self.forget(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        if self.kill_orphans:
            # What the command left running in its group (`sleep 300 &`). A group outlives its
            # reaped leader while members remain, so its id is not reused meanwhile.
            self.signal_group(signal.SIGKILL)


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
    """Passes a run's lines through to ``write(stream, text)``, each after ``label | ``;
    pyjob's own word on them (stream "pyjob") goes to stderr, after ``label | pyjob: ``."""

    def line(stream: str, text: str) -> None:
        if stream == "pyjob":
            write("stderr", f"{label} | pyjob: {text}\n")
        else:
            write(stream, f"{label} | {text}\n")

    return line


def _label(env: Mapping[str, str]) -> str:
    """Whose output a prefixed line is: the job's name, and a hook's after it
    (``backup[on-failure]``), so that a hook's answer is not read as the job's."""
    job = env.get("PYJOB_JOB", "job")
    hook = env.get("PYJOB_HOOK")
    return f"{job}[{hook}]" if hook else job


class RealRunner:
    """``prefix``: when a run's output passes through (no ``on_line``), write each line after
    its job's name (``PYJOB_JOB``), as supercronic does, so that the output of several jobs can
    be told apart; the command's stdout and stderr are then pipes, not the terminal. It is
    called as ``prefix(stream, text)``, stream "stdout" or "stderr", and writes to pyjob's own
    (the CLI's writer, which survives their closing). A hook's output (``PYJOB_HOOK`` set) goes
    to ``hooks`` (default: ``prefix``) after ``job[hook] | ``: it is not the job's."""

    def __init__(
        self,
        reaper: bool = True,
        prefix: Callable[[str, str], object] | None = None,
        hooks: Callable[[str, str], object] | None = None,
        child_limits: tuple[int, int] | None = None,
    ) -> None:
        self.prefix = prefix
        # The RLIMIT_NOFILE (soft, hard) each command gets, when pyjob raised its own: given back
        # with prlimit(2) as soon as the spawn returns (posix_spawn cannot set it before the
        # exec), so that a command sees the limit it would have had without pyjob.
        self.child_limits = child_limits
        self.hooks = hooks or prefix
        _no_inherited_fds()
        # Readable for as long as it is open: among fds() while some output waits to be handed
        # on, so that the scheduler's wait returns at once and its next turn hands on more.
        self._backlog_r, backlog_w = os.pipe2(os.O_CLOEXEC)
        os.write(backlog_w, b"x")
        os.close(backlog_w)
        self.reaper = Reaper() if reaper else None
        # The running children, by their order of start (seq); each turn looks at those that
        # something happened to (by_fd), those with output waiting (busy), and those without
        # a pidfd (polled): with 1,000 runs going on, a turn that hears of a few costs a few.
        self._children: dict[int, _Child] = {}
        self._seq = 0
        self._by_fd: dict[int, _Child] = {}  # the pidfds and output pipes of the children
        # Which of them are ready, from the kernel: the loop waits on this one descriptor, not
        # on all of theirs, which poll(2) looks at one by one each time (a thousand runs ending
        # one after another cost a thousand looks at the thousands still open).
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._busy: list[_Child] = []
        self._unwatched: list[_Child] = []  # no pidfd: looked at every turn
        # Started in this turn, not waited on yet: their pidfds are opened, and their pipes
        # made non-blocking and watched, once the turn's spawns are done. Every spawn copies the
        # parent's descriptor table into the child, so a descriptor opened between two spawns
        # of a tick costs each later spawn of it, and each system call between them delays the
        # later spawns.
        self._new: list[_Child] = []
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
        with contextlib.suppress(OSError):
            os.close(self._backlog_r)
        if self._epoll is not None:
            self._epoll.close()

    def _watch(self, fd: int, child: _Child) -> None:
        self._by_fd[fd] = child
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)

    def _forget(self, fd: int) -> None:
        """``fd`` is about to be closed: no longer waited on."""
        self._by_fd.pop(fd, None)
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def flush(self) -> None:
        self._found.clear()
        self._watch_new()
        if self.reaper is not None:
            self.reaper.flush()

    def _watch_new(self) -> None:
        """Wait on the children started in this turn: their pipes, made non-blocking (nothing
        reads them before the turn's end), and their pidfds, opened now."""
        if self._new:
            new, self._new = self._new, []
            for c in new:
                for fd in c.pipes:
                    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)  # a new pipe has no other flag
                    self._watch(fd, c)
                c.open_pidfd()
                if c.pidfd is not None:
                    self._watch(c.pidfd, c)
                else:
                    self._unwatched.append(c)

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
        if on_line is None:
            write = self.hooks if "PYJOB_HOOK" in env else self.prefix
            if write is not None:
                on_line = _prefixed(_label(env), write)
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
            if e.errno in _OWN_SHORTAGE:
                failed = FailedStart(OWN_SHORTAGE_CODE, _shortage(e), own=True)
            else:
                failed = FailedStart(126, f"cannot execute {command.argv[0]}: {e.strerror or e}")
        except ValueError as e:  # a NUL in an argument or the environment: the exec cannot be
            failed = FailedStart(126, f"cannot execute {command.argv[0]}: {e}")
        else:
            if self.child_limits is not None:
                with contextlib.suppress(OSError):  # ended already: nothing to give back
                    resource.prlimit(pid, resource.RLIMIT_NOFILE, self.child_limits)
            if self.reaper is not None:
                self.reaper.add(pid)  # sent at the end of the turn (flush)
            child = _Child(pid, pipes, on_line, command.kill_orphans, self._forget)
            self._seq += 1
            child.seq = self._seq
            self._children[child.seq] = child
            self._new.append(child)
            return child
        self._failed.append(failed)
        return failed

    def fds(self) -> list[int]:
        self._watch_new()
        out = [self._epoll.fileno()] if self._epoll is not None else list(self._by_fd)
        if self._busy:
            out.append(self._backlog_r)
        return out

    def next_due(self) -> float | None:
        # A command that could not start has ended already: the loop hears of it at once, not
        # at its next wake-up for something else, so its end, hooks and ping come now.
        return -math.inf if self._failed else None

    def polling(self) -> bool:
        """True when some child has no pidfd: the caller must look again soon."""
        self._watch_new()
        return any(c.code is None for c in self._unwatched)

    def service(self, ready: Collection[int]) -> list[tuple[Handle, int]]:
        self._watch_new()
        ended: list[tuple[Handle, int]] = [(f, f.code) for f in self._failed]
        self._failed.clear()
        if not self._children:
            return ended
        if self._epoll is not None and self._epoll.fileno() in ready:
            found = self._epoll.poll(0, max(1, len(self._by_fd)))
            ready = [*ready, *(fd for fd, _ in found)]
        children = self._touched(ready)
        ready_set = set(ready)
        read: dict[int, int] = {}  # bytes read this turn, by child
        for c in children:
            for fd in [fd for fd in c.pipes if fd in ready_set]:
                read[id(c)] = read.get(id(c), 0) + c.read(fd, READ_MAX)
        self._hand_on(children, read)
        for c in children:
            if c.code is None and (c.pidfd is None or c.pidfd in ready_set):
                c.poll_exit()
            if c.code is not None and c.ended():
                if self.reaper is not None:
                    assert c.pid is not None
                    self.reaper.remove(c.pid)
                ended.append((c, c.code))
                del self._children[c.seq]
        self._busy = [c for c in children if c.capture is not None and not c.capture.idle()]
        if self._unwatched:
            self._unwatched = [c for c in self._unwatched if c.seq in self._children]
        return ended

    def _touched(self, ready: Collection[int]) -> list[_Child]:
        """The children something can have happened to since the last turn: those of the
        ready descriptors, those with output waiting, those without a pidfd; in their order of
        start, as if every child were looked at."""
        touched = {c.seq: c for c in (*self._busy, *self._unwatched)}
        for fd in ready:
            c = self._by_fd.get(fd)
            if c is not None:
                touched[c.seq] = c
        return [touched[seq] for seq in sorted(touched)]

    def _hand_on(self, children: list[_Child], read: Mapping[int, int]) -> None:
        """Hand on this turn's share of the waiting output (TURN_LINES in all), reading the
        run's pipes again between slices, so that its command need not wait for the log. A run
        that writes faster than its lines are logged (HOT bytes in a turn) gets one slice: the
        lines handed on are logged at the end of the turn, while its pipe is not read."""
        busy = [c for c in children if c.capture is not None and not c.capture.idle()]
        for c in busy:
            assert c.capture is not None
            budget, got = max(SLICE, TURN_LINES // len(busy)), read.get(id(c), 0)
            while budget > 0 and not c.capture.idle():
                budget -= c.capture.deliver(min(SLICE, budget))
                if c.pipes:
                    got += c.pump(READ_MAX - got)
                if got >= HOT:
                    break


_STDIN = (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)


def _spawn(
    path: str, argv: list[str], env: Mapping[str, str], capture: bool
) -> tuple[int, dict[int, str]]:
    """Start ``argv`` (the program found at ``path``) in a process group of its own, stdin from
    /dev/null; with ``capture``, its stdout and stderr are pipes whose read ends are returned
    with their names (blocking: the runner makes them non-blocking after the turn's spawns)."""
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

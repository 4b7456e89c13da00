"""pyjob's own stdout and stderr, which may close while `pyjob run` goes on.

`pyjob run … 2>&1 | head -3`, a log collector that restarts, an ssh session's pipe: the reader
goes away, and the next write fails (EPIPE, ECONNRESET, EBADF, EIO). Losing a stream never stops
the schedule: its lines are dropped, the descriptor is pointed at /dev/null (so that commands
started from then on do not die of SIGPIPE, and the interpreter's last flush at exit cannot fail),
and the loss is told once through ``on_lost``, which `pyjob run` turns into an ``output-closed``
event: on the stream that is left, in the metrics, nowhere if nothing is left.

A pipe or socket whose reader leaves is noticed at once by a watcher thread (``watch``), so that
it is also noticed when pyjob itself writes nothing there (one job's output passes through
without pyjob writing it).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import TextIO

STREAMS = {"stdout": 1, "stderr": 2}

# The other end is gone for good; any other error (ENOSPC, EAGAIN…) drops the line, and the next
# line is tried again.
_GONE = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF, errno.EIO}
    | {errno.ENXIO}
)


def fill_closed_std_fds() -> None:
    """Descriptors 0, 1 and 2 that are closed at start (`pyjob run … 2>&-`) get /dev/null, so
    that nothing pyjob opens later (a lock file, a backend's socket) is given their number and
    receives log lines."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


class Outputs:
    """Writes lines to stdout and stderr, from any thread, and never raises.

    ``on_lost(stream, error, gone)`` is called once per stream whose writes fail: ``gone`` when
    its other end went away for good (the stream is then pointed at /dev/null and never written
    again), else (a full disk) the failing lines are dropped and later ones tried. It is called
    outside this object's lock, so that it may write what happened to the stream that is left.
    """

    def __init__(self, on_lost: Callable[[str, str, bool], None] | None = None) -> None:
        self.on_lost = on_lost
        self.lost: dict[str, str] = {}  # stream -> why
        self._told: set[str] = set()
        self._lock = threading.Lock()
        self._wake: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None

    def write(self, stream: str, text: str) -> bool:
        """Write ``text`` to ``stream`` ("stdout" or "stderr") and flush; False: dropped."""

        def put(f: TextIO) -> None:
            f.write(text)
            f.flush()

        return self.call(stream, put)

    def call(self, stream: str, put: Callable[[TextIO], None]) -> bool:
        """``put(file)`` with the stream's file object; False when the stream is lost or
        ``put`` failed (what it wrote is dropped)."""
        with self._lock:
            if stream in self.lost:
                return False
            f = sys.stdout if stream == "stdout" else sys.stderr
            try:
                if f is None:  # closed when Python started (`2>&-`)
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                put(f)
                return True
            except (OSError, ValueError) as e:  # ValueError: its file object was closed
                if isinstance(e, OSError) and e.errno not in _GONE:
                    failed = [(stream, e.strerror or str(e), False)]
                else:
                    why = e.strerror or str(e) if isinstance(e, OSError) else "closed"
                    # Only a file object on the descriptor itself (not one put in its place, as
                    # tests do) has its descriptor pointed elsewhere.
                    on_fd = f is None or _fileno(f) == STREAMS[stream]
                    failed = [(name, why, True) for name in self._lose(stream, why, on_fd)]
        self._tell(failed)
        return False

    def lose(self, stream: str, why: str) -> None:
        """``stream`` is gone (its reader went away)."""
        with self._lock:
            if stream in self.lost:
                return
            failed = [(name, why, True) for name in self._lose(stream, why)]
        self._tell(failed)

    def watch(self) -> None:
        """Notice, on a thread of its own, when the reader of a pipe or socket on stdout or
        stderr leaves, until ``stop_watching``. A terminal is not watched: its hang-up is a
        SIGHUP, which stops `pyjob run`."""
        fds = [fd for fd in STREAMS.values() if _pipe_or_socket(fd)]
        if not fds or self._wake is not None:
            return
        self._wake = os.pipe2(os.O_CLOEXEC)
        self._watcher = threading.Thread(
            target=self._watch, args=(fds, self._wake[0]), name="pyjob-outputs", daemon=True
        )
        self._watcher.start()

    def stop_watching(self) -> None:
        if self._wake is None or self._watcher is None:
            return
        os.write(self._wake[1], b"x")
        self._watcher.join()
        for fd in self._wake:
            os.close(fd)
        self._wake = self._watcher = None

    # ------------------------------------------------------------------ helpers

    def _watch(self, fds: list[int], wake: int) -> None:
        import select

        names = {fd: name for name, fd in STREAMS.items()}
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        for fd in fds:
            poller.register(fd, 0)  # nothing asked for: only POLLERR, POLLHUP, POLLNVAL come
        while True:
            for fd, _ in poller.poll():
                if fd == wake:
                    return
                poller.unregister(fd)
                self.lose(names[fd], "the reader went away")

    def _lose(self, stream: str, why: str, on_fd: bool = True) -> list[str]:
        """(Under the lock.) Point the stream's descriptor at /dev/null, and the other one's when
        it is the same pipe (``2>&1``); the streams lost. Not ``on_fd``: only mark it lost."""
        if not on_fd:
            self.lost[stream] = why
            return [stream]
        fd = STREAMS[stream]
        lost = [stream]
        for other, other_fd in STREAMS.items():
            if other != stream and other not in self.lost and _same_file(fd, other_fd):
                lost.append(other)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            for name in lost:
                self.lost[name] = why
                os.dup2(null, STREAMS[name])
        finally:
            os.close(null)
        return lost

    def _tell(self, failed: list[tuple[str, str, bool]]) -> None:
        with self._lock:
            news = [f for f in failed if f[0] not in self._told]
            self._told.update(name for name, _, _ in news)
        if self.on_lost is not None:
            for name, why, gone in news:
                self.on_lost(name, why, gone)


def _fileno(f: TextIO) -> int | None:
    try:
        return f.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None


def _pipe_or_socket(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)

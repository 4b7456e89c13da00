"""A watch on one local directory: a descriptor that becomes readable when a file in it is
created, written, renamed into it or removed (Linux inotify), so that a reader of that directory
waits on it instead of reading it every second.

Only where the kernel sees every change: a local file system. On NFS and other shared file
systems a change made by another host makes no event here, so `nfs:` never uses it. Where
inotify is missing (not Linux, no inotify, no instances left) ``DirWatch.open`` says None and the
caller polls.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
# a file written and closed, renamed in or out, created, removed; the directory itself
# removed or renamed (the watch ends then: ``renew`` says whether it could be set again)
_MASK = 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
_IN_ONLYDIR = 0x01000000


class DirWatch:
    def __init__(self, fd: int, path: Path, add: Callable[[int, bytes, int], int]) -> None:
        self.fd = fd
        self.path = path
        self._add = add

    @classmethod
    def open(cls, path: Path) -> DirWatch | None:
        """A watch on ``path`` (a directory that exists), or None where none can be set."""
        if not sys.platform.startswith("linux"):
            return None
        import ctypes  # here: only a process that waits on a watch loads it

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, add = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError):
            return None
        fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return None
        watch = cls(fd, path, add)
        if not watch.renew():
            watch.close()
            return None
        return watch

    def renew(self) -> bool:
        """Set the watch again (a directory removed and made again is a new one to the kernel);
        False when the directory cannot be watched now (it is gone)."""
        return self._add(self.fd, os.fsencode(self.path), _MASK | _IN_ONLYDIR) >= 0

    def drain(self) -> bool:
        """Take the events that woke the reader, and set the watch again; False when it could
        not be (the reader polls then)."""
        with contextlib.suppress(OSError):  # EAGAIN: nothing (left) to take
            while os.read(self.fd, 65536):
                pass
        return self.renew()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


__all__ = ["DirWatch"]

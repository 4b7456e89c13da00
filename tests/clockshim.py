"""A clock shim for tests: an LD_PRELOAD library, built here with ``cc``, that moves only
CLOCK_REALTIME (``clock_gettime``, ``gettimeofday``, ``time``) by an offset read from a file, so
a test can step a running process's clock (or a server's) forward and back. The monotonic clock
is left alone, so sleeps and timeouts work (libfaketime 0.9.10 breaks Python's ``time.sleep``
when told to leave the monotonic clock alone).

    shim = ClockShim(tmp_path / "clock")     # offset 0
    env = {**os.environ, **shim.env()}       # for subprocess.Popen(..., env=env)
    shim.set(660)                            # the process's clock is now 11 minutes ahead

The file holds the offset in seconds (a float); the library re-reads it at most every 10 ms.
Processes that read the file system's time (file mtimes) still get the kernel's: only what the
process asks the C library is moved.

A step is also told as the kernel tells a real one: a timerfd armed with TFD_TIMER_ABSTIME |
TFD_TIMER_CANCEL_ON_SET (pyjob's StepWatch) is armed at the process's instant on the kernel's
clock, and a thread of the library, started by the first such timer, fires it within about 10 ms
of a change of the offset, as the kernel wakes it when the wall clock is set.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .servers import CI

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long offset_ns;
static long long checked_ns = -1;

typedef int (*clock_fn)(clockid_t, struct timespec *);

/* No stdio and no malloc here: a program's allocator (Redis' jemalloc) may read the clock while
   it initialises, and must not find itself called back. */
static void reload(void) {
    static __thread int busy;
    if (!real_clock_gettime)
        real_clock_gettime = (clock_fn)dlsym(RTLD_NEXT, "clock_gettime");
    if (busy)
        return;
    busy = 1;
    struct timespec m;
    real_clock_gettime(CLOCK_MONOTONIC, &m);
    long long now = m.tv_sec * 1000000000LL + m.tv_nsec;
    if (checked_ns < 0 || now - checked_ns >= 10000000LL) {
        checked_ns = now;
        const char *path = getenv("PYJOB_CLOCKSHIM_FILE");
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd >= 0) {
            char buf[64];
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                offset_ns = (long long)(strtod(buf, NULL) * 1e9);
            }
        }
    }
    busy = 0;
}

static void shift(struct timespec *ts) {
    long long ns = ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ns;
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000LL;
        ts->tv_sec -= 1;
    }
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    reload();
    int r = real_clock_gettime(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
        shift(ts);
    return r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return r;
}

typedef int (*settime_fn)(int, int, const struct itimerspec *, struct itimerspec *);

#define WATCHED_MAX 16
static int watched[WATCHED_MAX];         /* timerfds armed to be cancelled by a step */
static long long watched_offset[WATCHED_MAX];  /* the offset each was armed under */
static int watched_n;
static int watcher_started;
static pthread_mutex_t watched_lock = PTHREAD_MUTEX_INITIALIZER;

static void *watcher(void *arg) {
    (void)arg;
    settime_fn real = (settime_fn)dlsym(RTLD_NEXT, "timerfd_settime");
    struct timespec pause = {0, 10000000L};
    for (;;) {
        nanosleep(&pause, NULL);
        reload();
        pthread_mutex_lock(&watched_lock);
        for (int i = 0; i < watched_n; i++) {
            if (watched[i] >= 0 && watched_offset[i] != offset_ns) {
                /* The offset changed: the timer expires at once, readable as after a step. */
                struct itimerspec soon = {{0, 0}, {0, 1}};
                real(watched[i], 0, &soon, NULL);
                watched[i] = -1;  /* until it is armed again */
            }
        }
        pthread_mutex_unlock(&watched_lock);
    }
    return NULL;
}

int timerfd_settime(int fd, int flags, const struct itimerspec *new, struct itimerspec *old) {
    settime_fn real = (settime_fn)dlsym(RTLD_NEXT, "timerfd_settime");
    if (!(flags & TFD_TIMER_CANCEL_ON_SET) || !(flags & TFD_TIMER_ABSTIME) || !new)
        return real(fd, flags, new, old);
    reload();
    struct itimerspec moved = *new;  /* the process's instant, on the kernel's clock */
    long long ns = moved.it_value.tv_sec * 1000000000LL + moved.it_value.tv_nsec - offset_ns;
    moved.it_value.tv_sec = ns / 1000000000LL;
    moved.it_value.tv_nsec = ns % 1000000000LL;
    int r = real(fd, flags, &moved, old);
    if (r != 0)
        return r;
    pthread_mutex_lock(&watched_lock);
    int slot = -1;
    for (int i = 0; i < watched_n; i++)
        if (watched[i] == fd || (slot < 0 && watched[i] < 0))
            slot = i;
    if (slot < 0 && watched_n < WATCHED_MAX)
        slot = watched_n++;
    if (slot >= 0) {
        watched[slot] = fd;
        watched_offset[slot] = offset_ns;
    }
    if (!watcher_started) {
        pthread_t t;
        watcher_started = pthread_create(&t, NULL, watcher, NULL) == 0;
        if (watcher_started)
            pthread_detach(t);
    }
    pthread_mutex_unlock(&watched_lock);
    return r;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


def build() -> Path:
    """The shared library, compiled once per source version into the temporary directory."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    lib = Path(tempfile.gettempdir()) / f"pyjob-clockshim-{digest}-{os.getuid()}.so"
    if lib.exists():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        if CI:
            pytest.fail("cc is missing: .ci/run should have installed it")
        pytest.skip("no C compiler (cc) to build the clock shim")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "clockshim.c"
        src.write_text(SOURCE)
        out = Path(tmp) / "clockshim.so"
        subprocess.run(
            [cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", str(out), str(src), "-ldl"],
            check=True,
            capture_output=True,
        )
        os.replace(out, lib)
    return lib


class ClockShim:
    """One shifted clock: every process started with ``env()`` reads its offset from one file."""

    def __init__(self, path: Path, offset: float = 0.0) -> None:
        self.path = path
        self.lib = build()
        self.set(offset)

    def set(self, offset: float) -> None:
        """Step the clocks of the processes using this shim to ``offset`` seconds from true."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(f"{offset:.6f}\n")
        os.replace(tmp, self.path)

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(self.lib), "PYJOB_CLOCKSHIM_FILE": str(self.path)}

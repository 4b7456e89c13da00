"""Helpers the backends share (file names, URLs, claim files on disk, the file system's clock).

Backends import this module and ``protocol``, never the package ``__init__``, so that
``core/backends/`` has no import circle.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..clock import coarse_tick
from ..durations import human_duration as _human
from ..errors import BackendError
from ..instants import iso_ms
from ..names import safe_name as safe_name  # where the backends take it from
from .protocol import ClaimOutcome, ClaimResult


def probe_mtime(directory: Path) -> tuple[float, float]:
    """The time a file system stamps on a new file in ``directory``: on NFS the server's clock
    sets it, locally this host's kernel. Returned as (mtime + half a tick, tick): the stamp comes
    from the kernel's coarse clock, which lags real time by up to one timer tick."""
    probe = directory / f".clock-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, b"t")
        finally:
            os.close(fd)
        stamp = os.stat(probe).st_mtime_ns / 1e9
    except OSError as e:
        raise BackendError(f"{directory}: clock probe failed: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    tick = coarse_tick()
    return stamp + tick / 2, tick


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:  # not even a URL: hide whatever sits between "user:" and "@"
        return _USERINFO.sub(r"\1***@", url)
    del port  # read only to see that the URL parses
    if password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:***@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_USERINFO = re.compile(r"(//[^/@:]*:)[^@]*@")


def make_private_dirs(path: Path | str) -> bool:
    """Make ``path`` and every missing parent, each mode 0700 (``Path.mkdir(parents=True,
    mode=...)`` gives the mode to the last one only, and the umask's to the others: a lock
    directory deleted and made again came back 0755, which the next start refuses). One mkdir
    when the directory exists; True when anything was made (it had been deleted)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    except FileNotFoundError:
        parent = os.path.dirname(os.fspath(path).rstrip("/"))
        if not parent or parent == os.fspath(path):
            raise
        make_private_dirs(parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # another process made it meanwhile
            return True
    if _umask_strips(0o700):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)  # mkdir's mode passed through the umask
    return True


@functools.cache
def _umask_strips(mode: int) -> bool:
    """Whether this process's umask takes bits of ``mode`` away (read once: pyjob never
    changes it; unknown counts as yes). A registration makes two directories a job, and a
    chmod after each cost a tenth of a 10,000-job start's registration on file:."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return bool(int(line.split()[1], 8) & mode)
    except (OSError, ValueError):
        pass
    return True


def read_small(path: Path) -> str:
    """A small file's text (UTF-8), in open, read and close: ``Path.read_text`` also asks
    whether the file is a terminal, seeks twice and stats twice, which for the few bytes of a
    mark or a lease holder read at every claim cost more than the read. Bytes that are not
    UTF-8 read as U+FFFD: a damaged file is damage for its parser to name, never a
    UnicodeDecodeError that fails a whole batch."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        while True:
            chunk = os.read(fd, 65536)
            if chunk:
                parts.append(chunk)
            if len(chunk) < 65536:  # a regular file reads short only at its end
                break
    finally:
        os.close(fd)
    return b"".join(parts).decode(errors="replace")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text``: written to a temporary name and renamed, so a
    reader never sees half of it; the temporary file is removed when the write fails (a full file
    system must leave nothing behind)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def create_new(path: Path, text: str) -> None:
    """Create ``path`` holding ``text`` in place (O_EXCL): one file-system operation fewer than
    write_atomic, for files that no one reads while they are written, or whose readers skip
    what they cannot parse. Removed again if the write fails (a full file system)."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write", str(path))
        finally:
            os.close(fd)  # inside: a close that fails (NFS reports ENOSPC there) fails the write
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def overwrite(path: Path, data: bytes) -> bool:
    """Write ``data`` over ``path`` in place, in one pwrite, when it fits in the blocks the file
    already has (so that, on ext4, xfs or tmpfs, the write cannot fail for space half-way);
    False, with nothing written, when it does not or the file is gone. A shorter ``data`` is
    padded with spaces to the old length (JSON allows them) rather than truncated after the
    write, so that a process killed at any point leaves the old content or the new, whole."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_blocks * 512 < len(data):
            return False
        data = data.ljust(st.st_size, b" ")
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(errno.EIO, "short write", str(path))
        return True
    finally:
        os.close(fd)


def claim_record(instance: str, fence: int, tick_us: int, keep_us: int, keep_until_us: int) -> str:
    """A claim file's content. ``keep_us`` is how long the claim is kept, counted from the file's
    own mtime, which the file system's clock stamps (the NFS server's on a shared mount): clean-up
    compares it with a fresh stamp of that same clock, never with a host's wall clock."""
    return json.dumps(
        {
            "instance": instance,
            "fence": fence,
            "tick_us": tick_us,
            "keep_us": keep_us,
            "keep_until_us": keep_until_us,
        }
    )


def _keep_us(path: Path, record: dict[str, object]) -> int:
    keep = record.get("keep_us")
    if isinstance(keep, int):
        return keep
    # written before keep_us existed: the claim was made at about its tick
    return int(str(record["keep_until_us"])) - int(path.stem)


STRAY_AGE = 600.0  # seconds a temporary file may stand before clean-up takes it for a stray


def remove_expired_claims(claims: Path, clock_now: float) -> int:
    """Delete the claim files in ``claims`` kept past their time: a file goes when ``clock_now``
    (the file system's clock, as stamped on a fresh file) is over its mtime plus its ``keep_us``.

    Shared by the file and nfs backends. A file that cannot be read (a claimer killed while it
    wrote the file in place) goes once it is STRAY_AGE old: the mark goes on refusing its tick."""
    removed = 0
    for path in claims.glob("*.json"):
        try:
            st = path.stat()
            try:
                record = json.loads(path.read_text())
                keep_us = _keep_us(path, record)
            except (ValueError, KeyError, TypeError, AttributeError):
                keep_us = int(STRAY_AGE * 1e6)
            if (clock_now - st.st_mtime) * 1e6 > keep_us:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def remove_strays(directory: Path, clock_now: float) -> int:
    """Delete temporary files (``.<name>.<random>``) left by a process killed between write and
    rename, older than STRAY_AGE by the file system's clock."""
    removed = 0
    for tmp in directory.glob(".*"):
        try:
            if clock_now - tmp.lstat().st_mtime > STRAY_AGE:
                tmp.unlink()
                removed += 1
        except OSError:
            continue
    return removed


@dataclass
class Mark:
    """A job's high-water mark: the last fence handed out and the latest tick claimed. It never
    expires, so a tick at or before it whose claim would be gone by now is never won again,
    whatever clean-ups and TTLs did. ``since_us``: from when on (by the file system's clock) every
    claim made is in this directory; None when that is not known (written by an older pyjob, or
    the directory was deleted and made again), and then no tick at or before the mark is won."""

    fence: int = 0
    tick_us: int | None = None
    since_us: int | None = None

    def raise_to(self, other: Mark) -> None:
        self.fence = max(self.fence, other.fence)
        if other.tick_us is not None:
            self.tick_us = (
                other.tick_us if self.tick_us is None else max(self.tick_us, other.tick_us)
            )

    def text(self) -> str:
        doc: dict[str, int | None] = {"fence": self.fence, "tick_us": self.tick_us}
        if self.since_us is not None:
            doc["since_us"] = self.since_us
        return json.dumps(doc) + "\n"


class DamagedMark(ValueError):
    """The mark file exists but cannot be read: truncated, garbled."""


class DamagedState(BackendError):
    """One job's state on disk is damaged beyond what pyjob can rebuild by itself; the message
    says what to do. That job's claims are refused with it; the other jobs of the batch go on."""


def refused_damaged(job: str, error: Exception) -> ClaimOutcome:
    """The outcome for a job whose files could not be read (DESIGN §5, damaged files): refused,
    saying why, so that one job's damage never fails the claims of the others in its batch."""
    if isinstance(error, DamagedState):
        why = str(error)
    elif isinstance(error, OSError):
        why = (
            f"the files of job {job} in the lock directory cannot be used ({error.strerror}: "
            f"{error.filename}); not run, since no one can tell whether it ran: give them back "
            "to this user (directories 0700, files 0600), or remove what stands where a "
            "directory should be"
        )
    else:
        why = (
            f"a file of job {job} in the lock directory is damaged ({type(error).__name__}: "
            f"{error}); not run, since no one can tell whether it ran: restore the file, or "
            "remove the job's directory while no instance runs the job (its fences then start "
            "again at 1)"
        )
    return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why))


# What one job's damaged files raise while it is claimed (a parse error of any kind).
DAMAGE = (DamagedState, ValueError, KeyError, TypeError, AttributeError)
# The OSErrors of one job's own paths (a file where its directory should be, permissions changed
# on it): that job's state, refused like damage. Any other (a full or read-only file system, an
# I/O error) is the file system's and fails the batch as a backend error.
JOB_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ELOOP})


def is_job_damage(error: BaseException) -> bool:
    """Whether ``error``, raised while one job of a batch was claimed, is that job's alone."""
    if isinstance(error, OSError):
        return error.errno in JOB_PATH_ERRNOS
    return isinstance(error, DAMAGE)


# Out of descriptors (the process's or the system's) while a claim opens its files: pyjob's own
# shortage, neither the lock directory's nor the command's. The claims that cannot open what they
# need are refused, each saying so, and the others of the batch go on (a lease holds its lock file
# open, so a large batch of leases is where the descriptors run out).
SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


def refused_shortage(error: OSError) -> ClaimOutcome:
    """The outcome of a claim that failed for want of descriptors: refused, as pyjob's
    shortage."""
    name = errno.errorcode.get(error.errno or 0, "")
    what = (
        "too many open files"
        if error.errno == errno.EMFILE
        else "too many open files in the system"
    )
    why = (
        f"pyjob: {what} ({name}) when claiming the tick, which was not run "
        "(raise ulimit -n / LimitNOFILE=)"
    )
    return ClaimOutcome(ClaimResult(False, "unknown", None, refused=why))


def refused_for(job: str, error: BaseException) -> ClaimOutcome | None:
    """The refusal of one job's claim that ``error`` calls for (its files are damaged, or pyjob
    is out of descriptors); None when ``error`` is the whole batch's."""
    if isinstance(error, OSError) and error.errno in SHORTAGE_ERRNOS:
        return refused_shortage(error)
    if isinstance(error, Exception) and is_job_damage(error):
        return refused_damaged(job, error)
    return None


def parse_mark(text: str) -> Mark:
    """Strict: a truncated or garbled file is an error, never a fence of 0."""
    try:
        doc = json.loads(text)
        fence, tick = doc["fence"], doc["tick_us"]
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedMark(f"unreadable ({e})") from e
    if not isinstance(fence, int) or fence < 0 or not (tick is None or isinstance(tick, int)):
        raise DamagedMark(f"unreadable ({text[:60]!r})")
    since = doc.get("since_us")
    return Mark(fence, tick, since if isinstance(since, int) else None)


def read_mark(job_dir: Path, known: Mark) -> Mark:
    """The job's mark from ``<job_dir>/mark`` (or the ``fence`` file of older versions), raised to
    what this process has seen (``known``: a deleted directory must not restart the fences). A
    damaged file is recovered from the claims on disk; with none left, the claim is refused."""
    path = job_dir / "mark"
    mark = Mark()
    try:
        text = read_small(path)
    except FileNotFoundError:
        legacy = job_dir / "fence"
        if legacy.exists():
            raw = read_small(legacy).strip()
            if not (raw.isascii() and raw.isdigit()):
                raise DamagedState(
                    f"{legacy} is damaged ({raw[:40]!r}): write the last fence handed out "
                    "(a number) into it"
                ) from None
            mark.fence = int(raw)
    else:
        try:
            mark = parse_mark(text)
        except DamagedMark as e:
            recovered = _recover_mark(job_dir)
            if recovered is None and known.fence == 0:
                raise DamagedState(
                    f"{path} is damaged ({e}) and no claim is left to recover the fence from: "
                    f'write {{"fence": N, "tick_us": null}} into it, N at least the last fence '
                    "handed out, so that fences keep growing"
                ) from e
            mark = recovered or Mark()
    mark.raise_to(known)
    return mark


def _recover_mark(job_dir: Path) -> Mark | None:
    """The mark as the claims on disk tell it: the latest claim has the highest fence."""
    found: Mark | None = None
    for path in (job_dir / "claims").glob("*.json"):
        try:
            record = json.loads(path.read_text())
            fence, tick = int(record["fence"]), int(path.stem)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found = found or Mark()
        found.raise_to(Mark(fence, tick))
    return found


def refused_too_old(
    tick_us: int, keep_until_us: int, backend_now_us: int, skew_limit: float
) -> str:
    """Why a tick older than the claims kept, by the backend's clock, is not run."""
    return (
        f"tick {iso_ms(tick_us)} is older than its claim is kept (until {iso_ms(keep_until_us)}) "
        f"by {_human((backend_now_us - keep_until_us) / 1e6)} by the backend's clock "
        f"({iso_ms(backend_now_us)}), beyond the skew limit of {_human(skew_limit)}: this host's "
        "clock or the backend's is off by more than that; not run, since no one can tell whether "
        "it ran"
    )


def refused_behind_mark(
    tick_us: int, mark_us: int, keep_until_us: int, backend_now_us: int, skew_limit: float
) -> str:
    """Why a tick at or before the job's latest claimed tick, with no claim kept, is not run:
    by the backend's clock its claim would be gone by now had it been made, so no one can tell
    whether it ran."""
    return (
        f"tick {iso_ms(tick_us)} is not after {iso_ms(mark_us)}, the latest tick claimed for this "
        "job, and its claim, if it was ever made, is no longer kept (claims of it are kept until "
        f"{iso_ms(keep_until_us)}; the backend's clock says {iso_ms(backend_now_us)}): it may have "
        "run; not run, so that no tick runs twice (if that is wrong, a clock is off, this host's "
        f"or the backend's: claims hold for clocks off by up to {_human(skew_limit)})"
    )


def refused_clock_ahead(tick_us: int, backend_now_us: int, ahead: float, limit: float) -> str:
    """Why a tick too far ahead of the backend's clock is not claimed (nothing was written)."""
    return (
        f"clock-ahead: tick {iso_ms(tick_us)} is {_human((tick_us - backend_now_us) / 1e6)} ahead "
        f"of the backend's clock ({iso_ms(backend_now_us)}); this host's clock is "
        f"{_human(ahead)} ahead of the backend's, more than the {_human(limit)} allowed: not "
        "claimed, and nothing the other instances rely on was changed; fix this host's clock "
        "(pyjob check-clock --lock URL measures both)"
    )


def claim_verdict(
    tick_us: int,
    keep_until_us: int,
    mark_us: int | None,
    backend_now_us: int,
    claimer_now_us: int,
    since_us: int | None,
) -> tuple[str, float | None] | None:
    """The protocol's refusals of a tick that has no claim (DESIGN §8), by the backend's clock:
    None when it may be won, else (why, how far the claimer's clock is ahead or None). The
    backends that decide in a script or a SQL function (Redis, PostgreSQL) apply the same rules
    there. ``since_us``: from when on every claim made is kept where it is looked for (the
    mark's since_us); a claim of a tick at or before the mark could only be missing for want of
    that evidence unless it was made after then (no claim is made more than AHEAD_LIMIT before
    its tick)."""
    from .protocol import AHEAD_LIMIT, KEPT_MARGIN, SKEW_LIMIT

    if tick_us > backend_now_us + AHEAD_LIMIT * 1e6:
        ahead = max(0.0, (claimer_now_us - backend_now_us) / 1e6)
        return refused_clock_ahead(tick_us, backend_now_us, ahead, AHEAD_LIMIT), ahead
    if backend_now_us > keep_until_us + SKEW_LIMIT * 1e6:
        return refused_too_old(tick_us, keep_until_us, backend_now_us, SKEW_LIMIT), None
    if mark_us is not None and tick_us <= mark_us:
        if backend_now_us >= keep_until_us - KEPT_MARGIN * 1e6:
            why = refused_behind_mark(tick_us, mark_us, keep_until_us, backend_now_us, SKEW_LIMIT)
            return why, None
        if since_us is None or tick_us <= since_us + AHEAD_LIMIT * 1e6:
            why = (
                f"tick {iso_ms(tick_us)} is not after {iso_ms(mark_us)}, the latest tick claimed "
                "for this job, and the claims made before the lock directory was made again (or "
                "by an older pyjob) are not kept there: no one can tell whether it ran; not run, "
                "so that no tick runs twice"
            )
            return why, None
    return None


class BackendClock:
    """The backend's clock as this process last read it, carried forward on the monotonic clock:
    it gives each request a deadline by the backend's own clock, past which the backend does
    nothing with it. A request the client gave up on (a stall, a partition) and that reaches the
    backend later therefore takes no claim and no lease that nobody waits for (DESIGN §8)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._offset_us: int | None = None

    def learn(self, backend_us: int, sent: float, received: float) -> None:
        """A reading ``backend_us`` answered a request sent at monotonic ``sent``."""
        self._offset_us = backend_us - int((sent + received) / 2 * 1e6)

    def deadline_us(self, sent: float) -> int:
        """The backend time after which a request sent at monotonic ``sent`` is of no use: 0
        (none) until the backend's clock was read once."""
        if self._offset_us is None:
            return 0
        return int(sent * 1e6) + self._offset_us + int(self.timeout * 1e6)

"""The run records and registry of `file:` and `nfs:`: files in the lock directory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import BackendError
from ..records import (
    RECENT_MAX,
    UNREADABLE,
    InstanceInfo,
    JobInfo,
    RecordsNotWritten,
    RegistrationsNotWritten,
    RunRecord,
)
from ..results import FINISHED, Result
from .common import create_new, make_private_dirs, overwrite, safe_name, write_atomic


def _write(path: Path, text: str) -> None:
    write_atomic(path, text)


def _create(path: Path, text: str) -> None:
    """A file in a directory this process just made: created in place, without the temporary
    file and rename of _write (readers skip a file they cannot parse yet); replaced as _write
    does when another instance registering the same job wrote it meanwhile."""
    try:
        create_new(path, text)
    except FileExistsError:
        _write(path, text)


def _make_dirs(path: Path | str) -> bool:
    return make_private_dirs(path)


_MARK = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC


class DirectoryRecords:
    """file: and nfs: keep records beside the claims:

    <dir>/<job>/job.json                 the job's registration
    <dir>/<job>/instances/<instance>     instances serving it (empty files)
    <dir>/<job>/runs/<tick µs>.json      one record per tick
    <dir>/.instances/<instance>.json     each instance's heartbeat

    Every directory is made 0700 with its parents. When someone deletes the directory (or a
    job's) while instances run, what they registered is written again: at the next heartbeat
    (which finds ``.instances`` gone) or the job's next record (which finds ``runs`` and
    ``job.json`` gone), so that `pyjob status` and `pyjob history` list the jobs again without a
    restart. A registration makes no ``runs``: the job's first record makes it.
    """

    # A file per record: a claim queued behind a write waits for 25 files at most.
    batch = 25

    def __init__(self, directory: Path, url: str, local: bool = False) -> None:
        self.directory = Path(directory)
        self.url = url
        self.local = local  # file: (one host's file system), where records are rewritten in place
        self._written: dict[str, int] = {}  # writes per job since its directory was trimmed
        self._made: set[str] = set()  # jobs whose runs directory is known to exist
        self._registered: dict[str, JobInfo] = {}  # what this process registered, to redo
        self._me: InstanceInfo | None = None
        self._beat = False  # a heartbeat was written (so .instances gone means deleted)
        # per job, its job.json (inode, size, mtime ns) and document when ``missing`` last
        # found it right
        self._verified: dict[str, tuple[int, int, int, bytes]] = {}

    def _fail(self, what: str, e: OSError) -> BackendError:
        return BackendError(f"{self.url}: {what}: {e.strerror or e}")

    def _runs_dir(self, job: str) -> Path:
        return self.directory / safe_name(job) / "runs"

    def put_runs(self, records: Sequence[RunRecord], keep: int = 100) -> None:
        """A tick's first record creates its file in place; readers skip a file they cannot
        parse, as one being written. The ones after it replace the file whole (renamed) or, on
        file:, are written over it in place when they fit in the blocks it already has (so that
        the write cannot fail for space half-way on ext4, xfs or tmpfs). Each record is written
        on its own: RecordsNotWritten names those that failed."""
        unwritten: set[tuple[str, int]] = set()
        first: OSError | None = None
        for r in records:
            try:
                try:
                    self._put(r)
                except FileNotFoundError:  # its directory was deleted since it was made
                    self._made.discard(r.job)
                    self._put(r)
            except OSError as e:
                unwritten.add((r.job, r.tick_us))
                first = first or e
                continue
            self._written[r.job] = self._written.get(r.job, 0) + 1
        for job in {r.job for r in records}:
            # At most ``keep`` per job: trimmed once every ``keep`` writes (a run writes two),
            # so a busy job lists its directory rarely, and holds at most twice ``keep``.
            if self._written.get(job, 0) < keep:
                continue
            self._written[job] = 0
            d = self._runs_dir(job)
            for tick in self._ticks(job)[keep:]:
                with contextlib.suppress(FileNotFoundError):
                    (d / f"{tick}.json").unlink()
        if first is not None:
            error = self._fail("run record not written", first)
            raise RecordsNotWritten(str(error), unwritten) from first

    def _put(self, r: RunRecord) -> None:
        d = self._runs_dir(r.job)
        if r.job not in self._made:
            if self._make_runs(d) and r.job in self._registered:  # deleted since it registered
                self._register_one(self._registered[r.job])
            self._made.add(r.job)
        path = d / f"{r.tick_us}.json"
        text = r.to_json()
        # A run's final record goes over its first, in place on file:; every other is new.
        if self.local and r.result != Result.RUNNING and overwrite(path, text.encode()):
            return
        try:
            create_new(path, text)
        except FileExistsError:
            if not (self.local and overwrite(path, text.encode())):
                _write(path, text)

    def register(self, jobs: Sequence[JobInfo], instance: InstanceInfo) -> None:
        """Each job on its own: RegistrationsNotWritten names those that failed."""
        self._me = instance
        refused: set[str] = set()
        first: OSError | None = None
        for j in jobs:
            self._registered[j.job] = j
            try:
                self._register_one(j)
            except OSError as e:
                refused.add(j.job)
                first = first or e
        if first is not None and not os.path.isdir(self.directory):
            raise self._fail("jobs not registered", first) from first  # the directory's failure
        self.heartbeat(instance)
        if first is not None:
            error = self._fail("jobs not registered", first)
            raise RegistrationsNotWritten(str(error), refused) from first

    @staticmethod
    def _make_runs(d: Path) -> bool:
        """Make a job's runs directory; True when it had to be made and the job's registration
        is gone too (deleted with the job's directory, which the job's claim, made before its
        first record, has made again). A registration makes no runs directory (a mkdir is the
        dearest step of a registration on ext4): one missing beside the registration is the
        job's first record, or its records deleted."""
        return _make_dirs(d) and not os.path.exists(d.parent / "job.json")

    def _register_one(self, j: JobInfo) -> None:
        assert self._me is not None
        # Strings, not Paths: joining Paths cost a fifth of a 10,000-job registration.
        d = f"{self.directory}/{safe_name(j.job)}"
        new = _make_dirs(d)  # the job's directory first: one mkdir for each of its directories
        _make_dirs(f"{d}/instances")
        if new:
            _create(Path(d, "job.json"), j.to_json())
        else:
            _write(Path(d, "job.json"), j.to_json())
        # The mark is an empty file whose name is all it says: made, not touched.
        os.close(os.open(f"{d}/instances/{safe_name(self._me.instance)}", _MARK, 0o600))

    def heartbeat(self, instance: InstanceInfo) -> bool:
        d = self.directory / ".instances"
        try:
            made = _make_dirs(d)
            restored = made and self._beat and bool(self._registered)
            if restored:  # deleted: what this process registered is written again, here
                self._me = instance
                for j in self._registered.values():
                    self._register_one(j)
            path = d / f"{safe_name(instance.instance)}.json"
            found = restored or (not made and path.exists())
            _write(path, instance.to_json())
            self._beat = True
        except OSError as e:
            raise self._fail("heartbeat not written", e) from e
        return found

    def missing(self, jobs: Sequence[JobInfo], instance: str) -> list[JobInfo]:
        """Looked at, not written: two stats a job. A job file is read only when it is not the
        one last found right (its inode, size or modification time differ), so that a check
        costs no file's data (on a host whose caches dropped it, reading 2,000 small files cost
        four times the CPU of stating them)."""
        out = []
        me = safe_name(instance)
        try:
            for j in jobs:
                d = f"{self.directory}/{safe_name(j.job)}"
                doc = j.to_json().encode()
                try:
                    st = os.stat(f"{d}/job.json")
                    seen = (st.st_ino, st.st_size, st.st_mtime_ns, doc)
                    same = self._verified.get(j.job) == seen or self._reads_as(d, doc)
                    if same:
                        self._verified[j.job] = seen
                    same = same and os.path.exists(f"{d}/instances/{me}")
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    same = False
                except OSError:  # a loop, a permission, I/O: damage of this job's path alone,
                    if not os.path.isdir(self.directory):  # unless the directory fails too
                        raise
                    same = False
                if not same:
                    out.append(j)
        except OSError as e:
            raise self._fail("registrations not read", e) from e
        return out

    @staticmethod
    def _reads_as(d: str, doc: bytes) -> bool:
        fd = os.open(f"{d}/job.json", os.O_RDONLY)
        try:
            return os.read(fd, len(doc) + 1) == doc
        finally:
            os.close(fd)

    def jobs(self) -> list[JobInfo]:
        out = []
        try:
            paths = sorted(self.directory.glob("*/job.json"))
        except OSError as e:
            raise self._fail("jobs not read", e) from e
        for path in paths:
            try:
                info = JobInfo.from_json(path.read_text())
                info.instances = sorted(p.name for p in (path.parent / "instances").iterdir())
            except UNREADABLE:
                continue  # half-written, damaged, or removed meanwhile
            out.append(info)
        return out

    def instances(self) -> dict[str, InstanceInfo]:
        out: dict[str, InstanceInfo] = {}
        for path in (self.directory / ".instances").glob("*.json"):
            try:
                info = InstanceInfo.from_json(path.read_text())
            except UNREADABLE:
                continue
            out[safe_name(info.instance)] = info
        return out

    def _ticks(self, job: str) -> list[int]:
        d = self._runs_dir(job)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._fail("history not read", e) from e
        return sorted(
            (int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()),
            reverse=True,
        )

    def runs(self, job: str, limit: int, since_us: int | None = None) -> list[RunRecord]:
        out = []
        d = self._runs_dir(job)
        for tick in self._ticks(job):
            if since_us is not None and tick < since_us:
                break
            try:
                out.append(RunRecord.from_json((d / f"{tick}.json").read_text()))
            except UNREADABLE:
                continue
            if len(out) >= limit:
                break
        return out

    def newest(self, jobs: Sequence[str], limit: int) -> dict[str, list[RunRecord]]:
        # No round trips to save: a directory listing a job (none for a job with no records).
        out = {}
        for job in jobs:
            records = self.runs(job, limit)
            if records:
                out[job] = records
        return out

    def recent(self, job: str) -> list[RunRecord]:
        out: list[RunRecord] = []
        d = self._runs_dir(job)
        for tick in self._ticks(job)[:RECENT_MAX]:  # read one by one: usually one is enough
            try:
                record = RunRecord.from_json((d / f"{tick}.json").read_text())
            except UNREADABLE:
                continue
            out.append(record)
            if record.result in FINISHED:
                break
        return out

    def prune(self, jobs: Sequence[str], keep: int, oldest_us: int) -> int:
        removed = 0
        for job in jobs:
            d = self._runs_dir(job)
            for i, tick in enumerate(self._ticks(job)):
                if i >= keep or tick < oldest_us:
                    with contextlib.suppress(FileNotFoundError):
                        (d / f"{tick}.json").unlink()
                        removed += 1
            with contextlib.suppress(OSError):
                for stray in d.glob(".*"):  # a writer killed between write and rename
                    if stray.stat().st_mtime * 1e6 < oldest_us:
                        stray.unlink()
        for path in (self.directory / ".instances").glob("*.json"):
            with contextlib.suppress(*UNREADABLE):
                if InstanceInfo.from_json(path.read_text()).seen_us < oldest_us:
                    path.unlink()
        return removed

"""The file backend: the shared suite, plus what only a directory can get wrong."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pyjob.core.backends import default_lock_dir, open_backend
from pyjob.core.backends.file import FileBackend
from pyjob.core.errors import BackendError, InputError

from .backend_suite import *  # noqa: F403
from .backend_suite import KEEP, T0, claim_one


@pytest.fixture
def lock_url(tmp_path: Path) -> str:
    return f"file:{tmp_path / 'locks'}"


def test_directory_is_created_private(tmp_path: Path) -> None:
    FileBackend(tmp_path / "a" / "locks").check()
    assert (tmp_path / "a" / "locks").stat().st_mode & 0o777 == 0o700


def test_directory_that_is_not_private_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "mine"
    d.mkdir()
    d.chmod(0o750)
    with pytest.raises(BackendError, match=r"is not private \(mode 0750\): run chmod 700"):
        FileBackend(d).check()


@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_a_directory_shared_with_others_gets_a_private_subdirectory_not_chmod(
    tmp_path: Path, mode: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "tmp"
    d.mkdir()
    d.chmod(mode)
    monkeypatch.setenv("USER", "alice")
    with pytest.raises(BackendError) as e:
        FileBackend(d).check()
    assert str(e.value) == (
        f"lock directory {d} is shared with other users (mode {mode:04o}): use a private "
        f"subdirectory, like --lock file:{d}/pyjob-alice (pyjob creates it with mode 0700)"
    )
    assert "chmod" not in str(e.value)
    FileBackend(d / "pyjob-alice").check()  # the advice works


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(BackendError, match="cannot be created"):
        FileBackend(tmp_path / "file" / "locks").check()


def test_a_file_where_the_claims_directory_should_be_refuses_the_job(tmp_path: Path) -> None:
    """One job's storage failing mid-run (every write fails, also for root) is that job's
    state: its claims are refused saying what stands in the way, never won (a full or read-only
    file system is a backend error: test_backend_dirs)."""
    backend = FileBackend(tmp_path / "locks")
    backend.check()
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won
    claims = tmp_path / "locks" / "job" / "claims"
    for f in claims.iterdir():
        f.unlink()
    claims.rmdir()
    claims.write_text("")
    r = claim_one(backend, "job", T0 + timedelta(seconds=1), "a", KEEP, T0)
    assert not r.won and r.refused is not None and "cannot be used" in r.refused
    claims.unlink()
    again = claim_one(backend, "job", T0 + timedelta(seconds=2), "a", KEEP, T0)
    assert again.won and again.fence == 2  # the refused claim handed out no fence


def test_default_directory() -> None:
    assert default_lock_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/pyjob")
    assert default_lock_dir({"HOME": "/home/u"}) == Path("/home/u/.local/state/pyjob")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis-ish", "bad lock URL"),
        ("ftp://x", "unknown lock backend 'ftp:'"),
        ("file:", "needs a directory"),
        ("nfs:", "needs a directory"),
    ],
)
def test_bad_lock_urls(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        open_backend(url)


def test_job_names_are_made_file_safe(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "locks")
    backend.check()
    assert claim_one(backend, "../../etc/passwd", T0, "a", KEEP, T0).won
    names = [n for n in os.listdir(tmp_path / "locks") if n != "claims.lock"]
    assert len(names) == 1 and "/" not in names[0] and names[0].startswith(".._.._etc_passwd-")


def test_a_claim_left_unwritten_by_a_killed_claimer_refuses_its_tick_then_goes(
    tmp_path: Path,
) -> None:
    """A claim file is created in place: a claimer killed between creating and writing it
    leaves an empty file. Its tick is refused (never run twice), the other claims of the batch
    go on, and clean-up removes the file once it is old."""
    from pyjob.core.backends.protocol import ClaimRequest

    d = tmp_path / "locks"
    a = FileBackend(d)
    a.check()
    assert claim_one(a, "job", T0, "a", KEEP, T0).won
    tick = T0 + timedelta(seconds=1)
    tick_us = int(tick.timestamp() * 1e6)
    (d / "job" / "mark").write_text(f'{{"fence": 2, "tick_us": {tick_us}}}')
    left = d / "job" / "claims" / f"{tick_us}.json"
    left.write_text("")  # the killed claimer got this far
    b = FileBackend(d)
    out = b.claim_many(
        [ClaimRequest("job", tick, KEEP), ClaimRequest("other", tick, KEEP)], "b", T0
    )
    assert not out[0].claim.won and "unreadable" in (out[0].claim.refused or "")
    assert out[1].claim.won
    b.cleanup_many(["job"], T0)
    assert left.exists()  # young: it may still be being written
    old = left.stat().st_mtime - 3600
    os.utime(left, (old, old))
    b.cleanup_many(["job"], T0)
    assert not left.exists()
    assert not claim_one(b, "job", tick, "b", KEEP, T0).won  # the mark still refuses it
    assert claim_one(b, "job", tick + timedelta(seconds=1), "b", KEEP, T0).fence == 3


def test_the_mark_is_overwritten_in_place_and_an_older_mark_is_taken_up(tmp_path: Path) -> None:
    from pyjob.core.backends.file import MARK_SIZE

    d = tmp_path / "locks"
    d.mkdir(mode=0o700)
    (d / "job").mkdir()
    (d / "job" / "mark").write_text('{"fence": 7, "tick_us": 1}\n')  # unpadded: older pyjob
    backend = FileBackend(d)
    assert claim_one(backend, "job", T0, "a", KEEP, T0).fence == 8
    mark = d / "job" / "mark"
    inode = mark.stat().st_ino
    assert mark.stat().st_size == MARK_SIZE
    for i in range(1, 4):
        assert claim_one(backend, "job", T0 + timedelta(seconds=i), "a", KEEP, T0).fence == 8 + i
    assert mark.stat().st_ino == inode and mark.stat().st_size == MARK_SIZE  # one pwrite each
    doc = json.loads(mark.read_text())
    since = doc.pop("since_us")  # from the first claim of this pyjob on, claims are all here
    assert doc == {"fence": 11, "tick_us": int((T0 + timedelta(seconds=3)).timestamp() * 1e6)}
    assert abs(since / 1e6 - time.time()) < 60


def test_a_batch_that_fails_part_way_keeps_no_lease_it_took(tmp_path: Path) -> None:
    import subprocess

    from pyjob.core.backends.protocol import ClaimRequest

    from .servers import CI

    d = tmp_path / "locks"
    backend = FileBackend(d)
    backend.check()
    # A read-only file system under one job's claims: the file system's failure (not one job's
    # damaged state, which only refuses that job) fails the batch.
    ro = d / "broken" / "claims"
    ro.mkdir(parents=True)
    if os.getuid() != 0:
        if CI:
            pytest.fail("this test needs root under CI (mount -t tmpfs)")
        pytest.skip("mounting a tmpfs needs root")
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]
    proc = subprocess.run(mount, capture_output=True, text=True)
    if proc.returncode != 0:
        if CI:
            pytest.fail(f"mount -t tmpfs failed: {proc.stderr}")
        pytest.skip(f"mount -t tmpfs failed: {proc.stderr.strip()}")
    try:
        tick = T0 + timedelta(seconds=1)
        batch = [ClaimRequest("first", tick, KEEP, 30.0), ClaimRequest("broken", tick, KEEP, 30.0)]
        fresh = FileBackend(d)
        with pytest.raises(BackendError, match="claim failed"):
            fresh.claim_many(batch, "a", T0)
        lease = FileBackend(d).acquire_lease("first", "b", 30.0)  # another instance gets it
        assert lease is not None
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_the_wait_for_the_claims_lock_is_timed_by_the_clock_the_backend_is_given(
    tmp_path: Path,
) -> None:
    """Another process holds the claims lock: the batch waits for it on the backend's Clock (a
    fake one here, which moves only as the backend sleeps), gives up after lock_timeout by that
    clock with a backend error, and claims once the lock is free."""
    import fcntl

    from pyjob.core.backends import ClaimRequest
    from pyjob.core.clock import FakeClock

    clock = FakeClock(T0)
    d = tmp_path / "locks"
    backend = FileBackend(d, clock, lock_timeout=5.0)
    backend.check()
    fd = os.open(d / "claims.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(BackendError, match=r"claim lock not acquired within 5\.0s"):
            backend.claim_many([ClaimRequest("job", T0, KEEP)], "a", T0)
        assert 5.0 < clock.monotonic() - 1000.0 < 5.1 and clock.sleeps
    finally:
        os.close(fd)  # the other process lets go
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won

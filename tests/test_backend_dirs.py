"""What a lock directory (file: and nfs:) can suffer mid-run: deleted, a damaged mark (the fence
file), a full file system. Fences never go back, nothing is left behind, no tick is won twice."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pyjob.core.backends import Backend, open_backend
from pyjob.core.errors import BackendError

from .backend_suite import KEEP, T0, claim_one, release_one
from .servers import CI


@pytest.fixture(params=["file", "nfs"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _open(url: str) -> Backend:
    backend = open_backend(url)
    backend.check()
    return backend


def _tick(i: int) -> object:
    return T0 + timedelta(seconds=i)


def test_directory_deleted_mid_run_is_made_again_private_and_fences_go_on(
    scheme: str, tmp_path: Path
) -> None:
    d = tmp_path / "locks"
    a, b = _open(f"{scheme}:{d}"), _open(f"{scheme}:{d}")
    fences = [
        claim_one(x, "job", T0 + timedelta(seconds=i), "a" if x is a else "b", KEEP, T0)
        for i, x in enumerate([a, b, a, b])
    ]
    assert all(f.won for f in fences)
    last = max(f.fence or 0 for f in fences)
    for x, name in ((a, "a"), (b, "b")):  # every instance sees every tick (and its fence)
        for i in range(4):
            claim_one(x, "job", T0 + timedelta(seconds=i), name, KEEP, T0)
    subprocess.run(["rm", "-rf", str(d)], check=True)
    r = claim_one(a, "job", T0 + timedelta(seconds=10), "a", KEEP, T0)
    assert r.won and r.fence is not None and r.fence > last  # never restarts at 1
    r2 = claim_one(b, "job", T0 + timedelta(seconds=11), "b", KEEP, T0)
    assert r2.won and r2.fence is not None and r2.fence > r.fence
    # a tick claimed before the deletion is still never won again
    assert not claim_one(b, "job", T0 + timedelta(seconds=2), "b", KEEP, T0).won
    if scheme == "file":
        assert d.stat().st_mode & 0o777 == 0o700
    _open(f"{scheme}:{d}")  # and a restart accepts the directory made again


def test_file_lease_recreates_the_deleted_directory_private(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    backend = _open(f"file:{d}")
    subprocess.run(["rm", "-rf", str(d)], check=True)
    lease = backend.acquire_lease("job", "a", 5.0)
    assert lease is not None and d.stat().st_mode & 0o777 == 0o700
    release_one(backend, lease)
    _open(f"file:{d}")


@pytest.mark.parametrize("damage", ["", "{", '{"fence": 1', "\x00\x00\x00", "12", '{"fence": "x"}'])
def test_a_damaged_mark_is_recovered_from_the_claims_on_disk(
    scheme: str, tmp_path: Path, damage: str
) -> None:
    d = tmp_path / "locks"
    a = _open(f"{scheme}:{d}")
    fences = [claim_one(a, "job", T0 + timedelta(seconds=i), "a", KEEP, T0).fence for i in range(5)]
    (d / "job" / "mark").write_text(damage)
    fresh = _open(f"{scheme}:{d}")  # a restarted instance: nothing in memory
    r = claim_one(fresh, "job", T0 + timedelta(seconds=9), "b", KEEP, T0)
    assert r.won and r.fence == max(f or 0 for f in fences) + 1
    assert not claim_one(fresh, "job", T0 + timedelta(seconds=3), "b", KEEP, T0).won
    json.loads((d / "job" / "mark").read_text())  # written whole again


def test_a_damaged_mark_with_no_claim_left_is_refused_with_a_clear_error(
    scheme: str, tmp_path: Path
) -> None:
    d = tmp_path / "locks"
    a = _open(f"{scheme}:{d}")
    assert claim_one(a, "job", T0, "a", KEEP, T0).won
    for claim in (d / "job" / "claims").iterdir():
        claim.unlink()
    (d / "job" / "mark").write_text('{"fen')
    fresh = _open(f"{scheme}:{d}")
    refused = claim_one(fresh, "job", T0 + timedelta(seconds=1), "b", KEEP, T0)
    assert not refused.won and refused.refused is not None
    assert re.search(r"mark is damaged .* no claim is left to recover", refused.refused)
    # the instance that handed the fence out remembers it and carries on
    r = claim_one(a, "job", T0 + timedelta(seconds=2), "a", KEEP, T0)
    assert r.won and r.fence == 2


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, mounted for the test (root only)."""
    d = tmp_path / "small"
    d.mkdir()
    if os.getuid() != 0:
        if CI:
            pytest.fail("the full-file-system test needs root under CI (mount -t tmpfs)")
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        if CI:
            pytest.fail(f"mount -t tmpfs failed: {proc.stderr}")
        pytest.skip(f"mount -t tmpfs failed: {proc.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(d: Path) -> None:
    with contextlib.suppress(OSError), open(d / "filler", "wb") as f:
        while True:
            f.write(b"x" * 4096)
            f.flush()


def test_a_full_file_system_fails_claims_cleanly_and_leaves_nothing_behind(
    scheme: str, full_fs: Path
) -> None:
    d = full_fs / "locks"
    backend = _open(f"{scheme}:{d}")
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won
    _fill(full_fs)
    for i in range(1, 30):
        with pytest.raises(BackendError):
            claim_one(backend, "job", T0 + timedelta(seconds=i), "a", KEEP, T0)
    strays = [p for p in d.rglob(".*")]
    assert strays == [], strays  # no .mark.<uuid> or other temporary file per failed claim
    (full_fs / "filler").unlink()
    r = claim_one(backend, "job", T0 + timedelta(seconds=40), "a", KEEP, T0)
    assert r.won and r.fence == 2  # and the fence did not move while claims failed


def test_cleanup_removes_stray_temporary_files(scheme: str, tmp_path: Path) -> None:
    import time

    d = tmp_path / "locks"
    backend = _open(f"{scheme}:{d}")
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won
    old = time.time() - 3600
    strays = [d / "job" / ".mark.deadbeef", d / "job" / "claims" / ".123.json.x.1.abc", d / ".x"]
    for p in strays:
        p.write_text("left by a process killed between write and rename")
        os.utime(p, (old, old))
    fresh = d / "job" / ".mark.fresh"  # may be a write in progress: kept
    fresh.write_text("")
    backend.cleanup_many(["job"], T0)
    assert not any(p.exists() for p in strays) and fresh.exists()


# A child that claims a batch of jobs with a low soft RLIMIT_NOFILE. "leases": every job asks
# for its run lease, which on file: holds the lock file open, so descriptors run out part-way
# through the batch. "hoard": every descriptor is taken first, so not one claim can open a file.
# Then the descriptors and the leases are given back, the limit raised again, and the batch
# claimed again. It prints each claim's (won, refused, lease taken), per round.
_SHORT_OF_DESCRIPTORS = """
import json, os, resource, sys
from datetime import datetime
from pyjob.core.backends import ClaimRequest, open_backend
url, mode, t0, keep = sys.argv[1], sys.argv[2], *map(datetime.fromisoformat, sys.argv[3:5])
b = open_backend(url); b.check()
ttl = 30.0 if mode == "leases" else None
batch = [ClaimRequest(f"job{i}", t0, keep, lease_ttl=ttl) for i in range(80)]
limits = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (48, limits[1]))
hoard = []
if mode == "hoard":
    try:
        while True:
            hoard.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
rounds = [b.claim_many(batch, "a", t0)]
for fd in hoard:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, limits)
b.release_many([o.lease for o in rounds[0] if o.lease is not None])
rounds.append(b.claim_many(batch, "a", t0))
print(json.dumps([[[o.claim.won, o.claim.refused, o.lease is not None] for o in r]
                  for r in rounds]))
"""


def _claim_short_of_descriptors(url: str, mode: str) -> list[list[list[object]]]:
    import json
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _SHORT_OF_DESCRIPTORS, url, mode, T0.isoformat(), KEEP.isoformat()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rounds: list[list[list[object]]] = json.loads(done.stdout)
    return rounds


SHORTAGE = "pyjob: too many open files (EMFILE) when claiming the tick, which was not run"


def test_out_of_descriptors_part_way_refuses_the_claims_left_not_the_batch(
    tmp_path: Path,
) -> None:
    """Each run lease of file: holds a descriptor: under a limit of 48, the first jobs of a batch
    of 80 get their claims and leases, and each of the others is refused as pyjob's own
    shortage, instead of the whole batch failing. Nothing is lost: with the leases given back
    and the limit raised, the same batch is won whole."""
    first, again = _claim_short_of_descriptors(f"file:{tmp_path / 'locks'}", "leases")
    won = [o for o in first if o[0]]
    refused = [o for o in first if not o[0]]
    assert 10 < len(won) < 48 and len(refused) == 80 - len(won), first
    assert first[: len(won)] == [[True, None, True]] * len(won)  # the first ones, whole
    assert all(str(o[1]).startswith(SHORTAGE) and not o[2] for o in refused), refused[0]
    assert again == [[True, None, True]] * 80


def test_no_descriptor_left_refuses_every_claim_of_the_batch_not_the_backend(
    scheme: str, tmp_path: Path
) -> None:
    """With every descriptor taken, not even the batch's lock can be made: each claim is refused
    as pyjob's shortage (never a backend error, which the scheduler would take for an outage
    and which --on-backend-error run would run without a claim), and nothing is written: once
    descriptors are free again, the batch is won."""
    first, again = _claim_short_of_descriptors(f"{scheme}:{tmp_path / 'locks'}", "hoard")
    assert len(first) == 80 and all(not o[0] and str(o[1]).startswith(SHORTAGE) for o in first)
    assert again == [[True, None, False]] * 80

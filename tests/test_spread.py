"""--spread: real `pyjob run` fleets share the ticks of a job evenly whatever their clocks (one
host 300 ms ahead through the clock shim), keep a job on one instance with --spread sticky, and
lose no tick when the top-ranked instance is killed; never a tick twice. The ranking itself is
pure and tested first."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pyjob.core.sched.spread import rank, weight

from .clockshim import ClockShim
from .runproc import PyjobRun
from .stalls import Stalls, assert_each_once, missed_ticks
from .test_records import pyjob

RECORD = 'echo "$PYJOB_TICK_UNIX $PYJOB_INSTANCE" >> "$OUT"'
BACKENDS = ["file", "redis", "postgresql", "etcd"]


# ------------------------------------------------------------------ the ranking


def test_rank_is_a_permutation_the_same_on_every_host() -> None:
    members = ("a", "b", "c")
    for tick in range(50):
        key = f"job\0{tick}"
        assert sorted(rank(key, m, members) for m in members) == [0, 1, 2]


def test_rank_spreads_ticks_evenly_and_moves_only_the_leaver_s_share() -> None:
    three, two = ("a", "b", "c"), ("a", "b")
    firsts = Counter(next(m for m in three if rank(f"j\0{t}", m, three) == 0) for t in range(3000))
    assert all(900 < n < 1100 for n in firsts.values()), firsts
    for t in range(300):  # c leaves: only the ticks c was first for change hands
        key = f"j\0{t}"
        first3 = next(m for m in three if rank(key, m, three) == 0)
        first2 = next(m for m in two if rank(key, m, two) == 0)
        assert first3 == "c" or first2 == first3


def test_weight_depends_on_key_and_instance() -> None:
    assert weight("j", "a") == weight("j", "a")
    assert weight("j", "a") != weight("j", "b")
    assert weight("j", "a") != weight("k", "a")


# ------------------------------------------------------------------ real fleets


def _start(url: str, tmp: Path, name: str, extra: list[str], env: dict[str, str]) -> PyjobRun:
    args = ["--every", "1s", "--align", "--lock", url, "--instance-id", name, *extra]
    run = PyjobRun([*args, "--shell", "--", RECORD], tmp, name, {"OUT": str(tmp / "runs"), **env})
    run.wait_for("next-tick", timeout=30)
    return run


def _fleet(url: str, tmp: Path, extra: list[str], skewed: float | None) -> list[PyjobRun]:
    """Three instances (the first one's clock ``skewed`` seconds ahead), each having seen the
    other two live."""
    env: dict[str, str] = {}
    if skewed is not None:
        shim = ClockShim(tmp / "clock", skewed)
        env = shim.env()
    runs = [_start(url, tmp, "i0", extra, env)]
    runs += [_start(url, tmp, f"i{n}", extra, {}) for n in (1, 2)]
    for r in runs:
        _wait_members(r, 3)
    return runs


def _wait_members(run: PyjobRun, n: int, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleets = run.events("fleet")
        if fleets and len(fleets[-1]["instances"]) == n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{run.log_path.name} never saw {n} instances: {run.events('fleet')}")


def _runs(tmp: Path) -> list[tuple[int, str]]:
    rows = [line.split() for line in (tmp / "runs").read_text().splitlines() if line.strip()]
    return [(int(float(r[0])), r[1]) for r in rows]


def _window(tmp: Path, first: int, ticks: int) -> list[tuple[int, str]]:
    return [(t, i) for t, i in _runs(tmp) if first <= t < first + ticks]


def _each_once(
    window: list[tuple[int, str]], first: int, ticks: int, stalls: Stalls, runs: list[PyjobRun]
) -> None:
    assert_each_once(Counter(t for t, _ in window), range(first, first + ticks), stalls, runs)


def test_the_stall_witness_sees_a_pause_of_the_whole_process_and_only_near_it(
    stalls: Stalls,
) -> None:
    import os
    import subprocess

    me = os.getpid()
    before = time.time()
    subprocess.run(["sh", "-c", f"kill -STOP {me}; sleep 1.5; kill -CONT {me}"], check=True)
    time.sleep(0.2)
    assert len(stalls.seen) == 1, stalls.seen
    start, end = stalls.seen[0]
    assert end - start >= 1.4 and before - 0.1 <= start
    assert stalls.near(start + 0.5) and stalls.near(end + 0.9) and not stalls.near(end + 1.5)
    assert missed_ticks([{"first": "2030-01-01T00:00:05+00:00", "count": 3}]) == {
        1893456005,
        1893456006,
        1893456007,
    }


def _quiet_window(stalls: Stalls, ticks: int) -> int:
    """The first of ``ticks`` ticks from 2 s on that no pause of the machine came near (a late
    instance wakes with the others and claims first-come), waiting for them to pass."""
    for _ in range(3):
        first = int(time.time()) + 2
        time.sleep(first + ticks - time.time() + 0.5)
        if not any(stalls.near(t) for t in range(first, first + ticks)):
            return first
    raise AssertionError(f"the machine paused in three windows running: {stalls.seen}")


TICKS = 30
# 30 ticks shared by 3: Binomial(30, 1/3) has mean 10 and deviation 2.6; 3..18 is beyond 2.7
# deviations either way (a false alarm about once in 200 runs per instance), while first-come
# with one host 300 ms ahead gives it all 30.
LOW, HIGH = 3, 18


@pytest.mark.slow
# Not etcd: its clock is known only to the second there (docs/fleets.md), so claims go out by
# the hosts' own clocks and the one ahead claims first.
@pytest.mark.parametrize("fleet_lock_url", [b for b in BACKENDS if b != "etcd"], indirect=True)
def test_three_instances_share_the_ticks_evenly_with_one_clock_300ms_ahead(
    fleet_lock_url: str, tmp_path: Path, stalls: Stalls
) -> None:
    runs = _fleet(fleet_lock_url, tmp_path, [], skewed=0.3)
    first = int(time.time()) + 2
    time.sleep(first + TICKS - time.time() + 0.8)
    shown = pyjob("status", "--lock", fleet_lock_url, "--format", "json")
    table = pyjob("status", "--lock", fleet_lock_url)
    for r in runs:
        assert r.stop() == 0
    window = _window(tmp_path, first, TICKS)
    _each_once(window, first, TICKS, stalls, runs)
    assert max(Counter(t for t, _ in _runs(tmp_path)).values()) == 1  # never twice
    shares = Counter(i for _, i in window)
    assert all(LOW <= shares[f"i{n}"] <= HIGH for n in range(3)), shares
    # `pyjob status` shows the shares and each instance's offset to the backend's clock.
    assert shown.returncode == 0, shown.stderr
    fleet = {d["instance"]: d for d in json.loads(shown.stdout)["instances"]}
    assert sorted(fleet) == ["i0", "i1", "i2"] and all(d["live"] for d in fleet.values())
    assert abs(sum(d["share"] for d in fleet.values()) - 1) < 0.01
    assert all(d["share"] > 0 and d["runs"] > 0 for d in fleet.values())
    assert -0.4 < fleet["i0"]["offset"] < -0.2 and fleet["i0"]["clock"] == "minor"
    assert all(abs(fleet[i]["offset"]) < 0.1 for i in ("i1", "i2"))
    assert table.returncode == 0 and "SHARE" in table.stdout and "OFFSET" in table.stdout


def _kill_between_ticks(run: PyjobRun) -> None:
    """SIGKILL ``run`` 0.4 s past a tick: after that tick's run, before the next one's claim."""
    time.sleep((0.4 - time.time()) % 1.0)
    run.proc.send_signal(signal.SIGKILL)
    run.wait()


@pytest.mark.slow
# Not etcd: its clock is read from 1 s Date headers, so a host 300 ms ahead may still claim a
# few ticks before its turn there (the shares stay even; the share test runs on it).
@pytest.mark.parametrize("fleet_lock_url", BACKENDS[:3], indirect=True)
def test_sticky_keeps_a_job_on_one_instance_and_its_killed_owner_loses_no_tick(
    fleet_lock_url: str, tmp_path: Path, stalls: Stalls
) -> None:
    # A 3 s lease TTL: heartbeats every second, so the dead owner leaves the ranking in ~4 s.
    runs = _fleet(fleet_lock_url, tmp_path, ["--spread", "sticky", "--lease-ttl", "3s"], 0.3)
    first = _quiet_window(stalls, 10)
    # The owner runs them all; at 1 s the next rank claims 125 ms after it, so on a busy machine
    # one owner's claim may come late and lose a tick (the claim decides; it is not run twice).
    # Round robin (--spread even) would give the owner about a third.
    owner_name, held = Counter(i for _, i in _window(tmp_path, first, 10)).most_common(1)[0]
    assert held >= 9, _window(tmp_path, first, 10)
    owner = next(r for r in runs if r.log_path.stem == owner_name)
    _kill_between_ticks(owner)
    rest = [r for r in runs if r is not owner]
    for r in rest:
        _wait_members(r, 2)
    known = int(time.time()) + 1  # every survivor ranks without the dead owner from here
    end = int(time.time()) + 6
    time.sleep(end - time.time() + 0.8)
    for r in rest:
        assert r.stop() == 0
    _each_once(_window(tmp_path, first, end - first), first, end - first, stalls, runs)
    assert max(Counter(t for t, _ in _runs(tmp_path)).values()) == 1  # never twice
    after = [(t, i) for t, i in _window(tmp_path, known, end - known) if not stalls.near(t)]
    quiet = [t for t in range(known, end) if not stalls.near(t)]
    heir, kept = Counter(i for _, i in after).most_common(1)[0]
    assert heir != owner_name and kept >= len(quiet) - 1, (after, stalls.seen)


@pytest.mark.slow
@pytest.mark.parametrize("fleet_lock_url", ["redis"], indirect=True)
def test_even_a_killed_instance_loses_no_tick_and_the_others_share_its_ticks(
    fleet_lock_url: str, tmp_path: Path, stalls: Stalls
) -> None:
    runs = _fleet(fleet_lock_url, tmp_path, ["--lease-ttl", "3s"], None)
    first = int(time.time()) + 2
    time.sleep(first + 3 - time.time() + 0.5)
    _kill_between_ticks(runs[0])
    for r in runs[1:]:
        _wait_members(r, 2)
    known = int(time.time()) + 1  # both survivors rank without the dead one from here
    end = known + 8
    time.sleep(end - time.time() + 0.8)
    for r in runs[1:]:
        assert r.stop() == 0
    window = _window(tmp_path, first, end - first)
    _each_once(window, first, end - first, stalls, runs)
    assert max(Counter(t for t, _ in _runs(tmp_path)).values()) == 1
    # Its ticks go where the ranking of the two survivors sends them (which of them a handful
    # of ticks favours is chance; the ranking is not): on a busy machine one claim may be late.
    job = next(e["job"] for r in runs for e in r.events("claimed"))
    two = ("i1", "i2")
    top = {t: next(m for m in two if rank(f"{job}\0{t * 10**6}", m, two) == 0) for t, _ in window}
    after = [(t, i) for t, i in _window(tmp_path, known, end - known) if not stalls.near(t)]
    quiet = [t for t in range(known, end) if not stalls.near(t)]
    assert sum(i == top[t] for t, i in after) >= len(quiet) - 1, (after, stalls.seen)


def test_metrics_count_claims_won_and_export_the_offset_to_the_backend_clock() -> None:
    from pyjob.core.clock import FakeClock
    from pyjob.core.events import make

    from .test_metrics import NOW, _metrics, value

    m = _metrics(FakeClock(NOW))
    for kind, fields in [
        ("claimed", {"fence": 1}),
        ("claimed", {"fence": 2}),
        ("lost", {"holder": "other", "fence": 3}),
        ("backend-clock", {"backend": "redis://h:6379/0", "offset": -0.3}),
    ]:
        m.on_event(make(kind, "j", "me", NOW, NOW, **fields))
    text = m.render().decode()
    assert value(text, "pyjob_claims_won_total", job_name="j") == 2
    assert value(text, "pyjob_backend_clock_offset_seconds", backend="redis") == -0.3


def _spreading(instance: str, members: tuple[str, ...], offset: float | None, mode: str) -> Any:
    from types import SimpleNamespace

    from pyjob.core.coordinator import Coordinator
    from pyjob.core.jobsettings import JobSettings
    from pyjob.core.sched.spread import Spreading

    sp = Spreading(SimpleNamespace(instance=instance))  # type: ignore[arg-type]
    state = SimpleNamespace(
        id="job",
        job=SimpleNamespace(lock=None),
        s=JobSettings(spread=mode),  # type: ignore[arg-type]
    )
    sp.members["job"] = members
    if offset is not None:
        sp.offsets[Coordinator.key(None)] = offset
    return sp, state


@pytest.mark.parametrize("mode", ["even", "sticky"])
def test_each_rank_claims_one_step_later_by_the_backend_clock(mode: str) -> None:
    from datetime import UTC, datetime, timedelta

    tick = datetime(2030, 1, 1, 12, 0, 5, tzinfo=UTC)
    members = ("a", "b", "c")
    # Host a's clock is 300 ms ahead of the backend's (offset -0.3): it claims 0.3 s later by it.
    ats = {}
    for me, offset in (("a", -0.3), ("b", 0.0), ("c", 0.0)):
        sp, state = _spreading(me, members, offset, mode)
        ats[me] = sp.claim_at(state, tick, 0.5) - timedelta(seconds=-offset)
    by_backend = sorted((at - tick).total_seconds() for at in ats.values())
    assert by_backend == pytest.approx([-0.5, -0.25, 0.0])
    # A fourth instance claims at the tick too: no claim is made after it.
    sp, state = _spreading("d", ("a", "b", "c", "d"), 0.0, mode)
    assert -0.5 <= (sp.claim_at(state, tick, 0.5) - tick).total_seconds() <= 0.0


def test_a_lone_instance_an_unknown_fleet_and_spread_off_claim_at_the_lead() -> None:
    from datetime import UTC, datetime, timedelta

    tick = datetime(2030, 1, 1, 12, 0, 5, tzinfo=UTC)
    lead = tick - timedelta(seconds=0.5)
    for members, mode in ((("b",), "even"), (("a", "b", "c"), "off")):
        sp, state = _spreading("b", members, -0.3, mode)
        assert sp.claim_at(state, tick, 0.5) == lead
    sp, state = _spreading("b", ("a", "b"), None, "even")
    del sp.members["job"]  # the registry not read yet
    assert sp.claim_at(state, tick, 0.5) == lead


def test_an_offset_beyond_what_the_claims_tolerate_is_not_corrected() -> None:
    sp, state = _spreading("a", ("a", "b"), -60.0, "even")
    assert sp.shift(state) == 0.0
    sp, state = _spreading("a", ("a", "b"), -4.0, "even")
    assert sp.shift(state) == 4.0


def test_a_jobs_file_sets_spread_per_job_and_in_defaults_and_refuses_a_bad_mode() -> None:
    from pyjob.core.jobsettings import JobSettings
    from pyjob.core.jobsfile import JobsFileError, parse_toml
    from pyjob.core.settings import Spread

    text = (
        '[defaults]\nspread = "sticky"\n'
        '[jobs.a]\nevery = "1m"\nshell = "true"\n'
        '[jobs.b]\nevery = "1m"\nshell = "true"\nspread = "off"\n'
    )
    a, b = parse_toml(text, "jobs.toml", {})
    assert JobSettings.from_values(a.settings).spread is Spread.STICKY
    assert JobSettings.from_values(b.settings).spread is Spread.OFF
    assert JobSettings.from_values({}).spread is Spread.EVEN
    with pytest.raises(JobsFileError, match="'spread' must be one of even, sticky, off"):
        parse_toml('[jobs.a]\nevery = "1m"\nshell = "true"\nspread = "fair"\n', "jobs.toml", {})

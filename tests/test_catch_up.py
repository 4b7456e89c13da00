"""--catch-up on every backend: ticks the whole fleet missed run once when instances come back,
judged by the run records in the backend. The nfs: backend runs on a local directory here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .runproc import PyjobRun

pytestmark = pytest.mark.slow

RECORD = 'echo "$PYJOB_TICK_UNIX $PYJOB_INSTANCE" >> "$OUT_DIR/$PYJOB_JOB"'
# The jobs, each with its --catch-up settings as jobs-file keys.
VARIANTS = {
    "one": 'catch-up = "1m"',
    "none": "",
    "short": 'catch-up = "200ms"',
    "all2": 'catch-up = "1m"\ncatch-up-all = true\ncatch-up-max = 2',
}
PERIOD = 5  # seconds between ticks: the instances coming back have 4.5 s to start


def _fleet(url: str, tmp: Path, instance: str, jobs: dict[str, str]) -> PyjobRun:
    """One process holding ``jobs`` (name: extra keys): a process per instance rather than per
    job, so that a loaded machine starts two processes, not seven, in the time it has."""
    path = tmp / f"{instance}.toml"
    path.write_text(
        "".join(
            f"[jobs.{name}]\nevery = \"{PERIOD}s\"\nalign = true\n{extra}\nshell = '{RECORD}'\n\n"
            for name, extra in jobs.items()
        )
    )
    args = ["--file", str(path), "--lock", url, "--instance-id", instance]
    return PyjobRun(args, tmp, instance, {"OUT_DIR": str(tmp)})


@pytest.mark.long
def test_two_instances_coming_back_catch_up_the_missed_tick_once(
    fleet_lock_url: str, tmp_path: Path
) -> None:
    # Every variant's job runs one tick, then nothing runs it for two ticks. They all start
    # from one boundary, well ahead, so that all of them (however slow to start) run it.
    first_tick = int(time.time() // PERIOD * PERIOD + 2 * PERIOD)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first_tick))
    once = f'max-runs = 1\nstart-at = "{at}"'
    early = _fleet(fleet_lock_url, tmp_path, "early", {name: once for name in VARIANTS})
    assert early.wait(timeout=60) == 0
    t0 = {name: int((tmp_path / name).read_text().split()[0]) for name in VARIANTS}
    assert set(t0.values()) == {first_tick}, t0  # the expectations below are from it
    start = first_tick
    time.sleep(max(0.0, start + 2 * PERIOD + 0.5 - time.time()))
    # Instances start 0.5 s after the second missed tick: two together where they race.
    back = [
        _fleet(fleet_lock_url, tmp_path, "back0", VARIANTS),
        _fleet(fleet_lock_url, tmp_path, "back1", {n: VARIANTS[n] for n in ("one", "all2")}),
    ]
    time.sleep(max(0.0, start + 3 * PERIOD + 1.5 - time.time()))
    for r in back:
        assert r.stop() == 0
    ran = {}
    for name in VARIANTS:
        rows = [line.split() for line in (tmp_path / name).read_text().splitlines()]
        ticks = [(int(row[0]) - start) // PERIOD for row in rows]
        assert len(ticks) == len(set(ticks)), (name, ticks)  # nothing ran twice
        ran[name] = ticks
    assert ran["one"] == [0, 2, 3]  # the most recent missed tick once, then the grid
    assert ran["none"] == [0, 3]
    assert ran["short"] == [0, 3]  # tick 2 was missed longer ago than the window
    assert ran["all2"] == [0, 1, 2, 3]  # the two most recent, oldest first
    caught = [e for r in back for e in r.events("caught-up")]
    assert sorted(e["job"] for e in caught) == ["all2", "all2", "one"]
    assert all(e["late"] > 0 and e["window"] == 60 for e in caught)


@pytest.mark.parametrize("command", ["next", "validate"])
def test_next_and_validate_state_the_catch_up_window(command: str, tmp_path: Path) -> None:
    import json
    import subprocess

    from .conftest import pyjob_exe

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*pyjob_exe(), *args], capture_output=True, text=True, timeout=30)

    out = run(command, "0 3 * * *", "--tz", "UTC", "--catch-up", "6h")
    assert out.returncode == 0, out.stderr
    assert "a tick the fleet missed within 6h of now runs once" in out.stdout
    doc = json.loads(run(command, "0 3 * * *", "--catch-up", "90m", "--format", "json").stdout)
    found = doc["catch_up"] if command == "next" else doc["schedules"][0]["catch_up"]
    assert found == 5400.0
    plain = run(command, "0 3 * * *")
    assert "catch-up" not in plain.stdout.lower()
    jobs = tmp_path / "jobs.toml"
    jobs.write_text('[jobs.nightly]\ncron = "0 3 * * *"\ncatch-up = "6h"\nshell = "true"\n')
    if command == "validate":
        checked = run("validate", "--file", str(jobs))
        assert checked.returncode == 0 and "catch-up: a tick the fleet missed within 6h" in (
            checked.stdout
        )
    bad = run(command, "0 3 * * *", "--catch-up", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("Error:")


@pytest.mark.parametrize(("backend_ahead", "runs"), [(None, True), (0.0, True), (7200.0, False)])
def test_the_window_is_judged_by_the_backends_clock(
    backend_ahead: float | None, runs: bool
) -> None:
    from datetime import timedelta

    from pyjob.core.clock import FakeClock

    from .fakes import FakeRunner
    from .test_scheduler import T0, job, make

    clock = FakeClock(T0)
    runner = FakeRunner(clock)
    s, events = make([job("every 10m align tz UTC", clock, catch_up=3600.0)], runner, clock)
    state = s.jobs["job"]
    last_handled = T0 - timedelta(minutes=30)  # 12:00 was missed, 11:40 and 11:50 too
    backend = None if backend_ahead is None else int((T0.timestamp() + backend_ahead) * 1e6)
    s._plan_catch_up(state, int(last_handled.timestamp() * 1e6), backend)
    s.coordinator.drain()
    caught = [e for e in events if e.kind == "caught-up"]
    missed = [e for e in events if e.kind == "missed"]
    assert bool(caught) is runs
    if not runs:  # 2 h ahead, the backend sees the missed ticks outside the 1 h window
        assert missed and "before the --catch-up window" in missed[0].fields["reason"]


@pytest.mark.parametrize("newest_won_elsewhere", [False, True])
def test_only_the_instance_that_wins_the_newest_missed_tick_catches_up_the_older_ones(
    newest_won_elsewhere: bool,
) -> None:
    """Two instances back at once must not split a job's catch-up: the newest missed tick is
    claimed alone first, and the one that wins it claims and runs the older ones, oldest first.
    Here another instance has won the newest (or not): this one runs nothing (or both)."""
    from datetime import timedelta

    from pyjob.core.clock import FakeClock

    from .fakes import FakeRunner, RecordingBackend
    from .test_scheduler import T0, job, make

    clock = FakeClock(T0)
    runner = FakeRunner(clock)
    settings = {"catch_up": 3600.0, "catch_up_all": True, "catch_up_max": 2}
    newest, older = T0, T0 - timedelta(minutes=10)  # 11:40 is over --catch-up-max
    backend = RecordingBackend(lose={newest} if newest_won_elsewhere else set())
    s, events = make([job("every 10m align tz UTC", clock, **settings)], runner, clock, backend)
    last_handled = T0 - timedelta(minutes=30)
    s._plan_catch_up(s.jobs["job"], int(last_handled.timestamp() * 1e6), None)
    s.coordinator.drain()
    s.coordinator.drain()
    caught = [e.tick for e in events if e.kind == "caught-up"]
    if newest_won_elsewhere:
        assert caught == [] and backend.batches == [1]
        assert [e.tick for e in events if e.kind == "lost"] == [newest]
    else:  # both won; the oldest runs first (the newest once it ended)
        assert backend.batches[:2] == [1, 1] and caught == [older]  # then its run lease
        assert [e.tick for e in events if e.kind == "claimed"] == [newest, older]

"""Clock checks (DESIGN §6, issue #5) against real NTP servers on loopback.

Two chronyd instances serve their own clocks: one with this host's time, one under libfaketime
2.5 s ahead. A fake responder (tests/fake_ntp.py) plays the bad servers.
"""

from __future__ import annotations

import ctypes
import json
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyjob.core.clock import FakeClock, OffsetClock, SystemClock
from pyjob.core.clockcheck import (
    ClockWatch,
    _Timex,
    backend_clock,
    impact,
    interval_limit,
    kernel_state,
    offset_limit,
    schedule_interval,
    skew_of,
)
from pyjob.core.errors import ClockError, ClockOffsetError, InputError
from pyjob.core.ntp import Measurement, Sample, measure_all, parse_server
from pyjob.core.schedule import Schedule, parse

from .conftest import pyjob_exe
from .fake_ntp import FakeNtp
from .runproc import PyjobRun
from .servers import ChronyServer, faketime_env, start_chronyd

SKEW = 2.5


@pytest.fixture(scope="module")
def chrony(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChronyServer]:
    server = start_chronyd(tmp_path_factory.mktemp("chrony"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChronyServer]:
    server = start_chronyd(tmp_path_factory.mktemp("chrony-skewed"), offset=f"+{SKEW}")
    yield server
    server.stop()


@pytest.fixture
def fake() -> Iterator[FakeNtp]:
    server = FakeNtp()
    yield server
    server.close()


def check_clock(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pyjob_exe(), "check-clock", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "TZ": "UTC", "NO_COLOR": "1"},
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


# ------------------------------------------------------------------------------ rules


@pytest.mark.parametrize(
    ("seconds", "name"),
    [
        (0.0, "negligible"),
        (-0.099, "negligible"),
        (0.1, "minor"),
        (0.999, "minor"),
        (-1.0, "noticeable"),
        (4.99, "noticeable"),
        (5.0, "severe"),
        (-3600.0, "severe"),
    ],
)
def test_impact_classes(seconds: float, name: str) -> None:
    assert impact(seconds).name == name
    assert ("fix" in impact(seconds).advice) == (name in ("noticeable", "severe"))


@pytest.mark.parametrize(
    ("interval", "limit"), [(0.25, 0.1), (1, 0.1), (60, 1), (300, 5), (3600, 60), (86400, 1440)]
)
def test_interval_to_tolerated_skew(interval: float, limit: float) -> None:
    assert interval_limit(interval) == pytest.approx(limit)


def test_offset_limit_sources() -> None:
    assert offset_limit(0.5, 3600) == (0.5, "--max-offset")
    assert offset_limit(None, 300) == (5.0, "1/60 of the 5m interval")
    assert offset_limit(None, None) == (1.0, "default")


@pytest.mark.parametrize(
    ("text", "interval"),
    [
        ("*/5 * * * *", 300),
        ("every 1h align", 3600),
        ("0 9 * * MON-FRI", 86400),
        ("every 250ms", 0.25),
        ("once at 2027-01-01T00:00", None),
    ],
)
def test_schedule_interval(text: str, interval: float | None) -> None:
    after = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # a Monday
    spec = parse(text, tz="UTC", now=after)
    assert schedule_interval(Schedule(spec, anchor=after), after) == interval


def _m(server: str, offset: float | None, error: float = 0.001) -> Measurement:
    sample = None
    if offset is not None:
        sample = Sample(server, offset, 2 * error, 2, "x", 0, 0.0)
    return Measurement(server, sample, [sample] if sample else [], [] if sample else ["lost"])


def test_skew_is_the_widest_pair_local_included() -> None:
    skew = skew_of("local", [_m("a", 0.3), _m("b", -0.2), _m("c", None)])
    assert skew is not None
    assert skew.value == pytest.approx(0.5) and skew.between == ("b", "a")
    assert skew.error == pytest.approx(0.002)
    only_ahead = skew_of("local", [_m("a", 0.3)])
    assert only_ahead is not None and only_ahead.between == ("local", "a")
    assert skew_of("local", [_m("c", None)]) is None


def test_offset_clock_adds_the_offset_and_keeps_monotonic_time() -> None:
    base = FakeClock(datetime(2026, 11, 28, tzinfo=UTC))
    clock = OffsetClock(base, -0.3)
    assert clock.now() == base.now() - timedelta(seconds=0.3)
    clock.offset = 1.5
    assert clock.now() == base.now() + timedelta(seconds=1.5)
    clock.sleep(2)
    assert clock.monotonic() == base.monotonic() == 1002.0


def test_timex_matches_the_kernel_abi() -> None:
    # glibc's struct timex is 208 bytes on 64-bit Linux; a wrong layout reads garbage.
    assert ctypes.sizeof(_Timex) == (208 if ctypes.sizeof(ctypes.c_long) == 8 else 128)
    state = kernel_state()
    assert state is not None  # this suite runs on Linux
    assert state.state in (
        "ok",
        "insert-leap",
        "delete-leap",
        "leap-in-progress",
        "leap-done",
        "unsynchronised",
    )
    # the kernel clamps its error estimates at 16 s (NTP_PHASE_LIMIT); garbage would not fit
    assert 0 <= state.est_error <= state.max_error <= 16.0


@given(st.text(max_size=40))
def test_server_parser_only_raises_input_errors(text: str) -> None:
    try:
        host, port = parse_server(text)
    except InputError as e:
        assert e.message and "\n" not in e.message
    else:
        assert host and 0 < port < 65536


# ------------------------------------------------------------------------ core, fake servers


def test_measure_all_keeps_to_its_budget(fake: FakeNtp) -> None:
    silent = FakeNtp("silent")
    try:
        start = time.monotonic()
        results = measure_all([silent.address, fake.address], SystemClock(), 4, 1.0, budget=0.5)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    # 4 samples × 1 s would take 4 s: the budget cuts it (a bound, not a benchmark)
    assert elapsed < 1.5, elapsed
    assert results[0].best is None and results[0].rejected
    assert results[1].best is not None


def _watch(servers: list[str], **kw: Any) -> tuple[ClockWatch, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    options: dict[str, Any] = {"limit": 1.0, "limit_reason": "--max-offset", "budget": 1.0}
    options.update(kw)
    watch = ClockWatch(
        servers, SystemClock(), lambda kind, **f: events.append((kind, f)), timeout=0.3, **options
    )
    return watch, events


def test_watch_refuses_an_offset_over_the_limit(fake: FakeNtp) -> None:
    fake.offset = SKEW
    watch, events = _watch([fake.address])
    with pytest.raises(ClockOffsetError, match=r"offset \+2\.5\d+s .* over the limit 1s"):
        watch.check_start()
    watch, events = _watch([fake.address], policy="warn")
    best = watch.check_start()
    assert best is not None and events[0][0] == "clock-warning"
    assert (
        events[0][1]["impact"] == "noticeable" and "--clock-policy warn" in events[0][1]["action"]
    )


def test_watch_corrects_instead_of_refusing(fake: FakeNtp) -> None:
    fake.offset = SKEW
    corrected = OffsetClock(SystemClock())
    watch, events = _watch([fake.address], correct=corrected)
    watch.check_start()
    assert corrected.offset == pytest.approx(SKEW, abs=0.01)
    fake.offset = -0.5
    watch.recheck()
    assert corrected.offset == pytest.approx(-0.5, abs=0.01)
    assert [k for k, _ in events] == ["clock", "clock"]


def test_watch_without_a_usable_reply(fake: FakeNtp) -> None:
    fake.behaviour = "kod-DENY"
    watch, events = _watch([fake.address])
    assert watch.check_start() is None
    assert events[0][0] == "clock-warning" and "kiss-o'-death DENY" in events[0][1]["problem"]
    watch, events = _watch([fake.address], require=True)
    with pytest.raises(ClockError, match=r"DENY.*--require-clock"):
        watch.check_start()


def test_watch_rechecks_on_its_own_thread(fake: FakeNtp) -> None:
    watch, events = _watch([fake.address], every=0.1)
    watch.start()
    deadline = time.monotonic() + 10
    while len(events) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    watch.stop()
    assert len(events) >= 3 and all(k == "clock" for k, _ in events)


# ------------------------------------------------------------------------ check-clock, real NTP


def test_check_clock_measures_a_real_server(chrony: ChronyServer) -> None:
    proc = check_clock("--server", chrony.address, "--interval", "1m", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = as_json(proc)
    assert doc["status"] == "ok" and doc["limit"] == 1.0 and doc["impact"] == "negligible"
    assert abs(doc["offset"]) < 0.005 and 0 <= doc["error"] < 0.005
    server = doc["servers"][0]
    assert server["stratum"] == 8 and server["leap"] == "none" and server["samples"] == 4
    assert server["ref_id"] == "127.127.1.1" and server["best"] is True
    assert doc["kernel"]["state"] in ("ok", "unsynchronised", "insert-leap", "delete-leap")


def test_check_clock_finds_the_skewed_server(chrony: ChronyServer, skewed: ChronyServer) -> None:
    proc = check_clock("--server", skewed.address, "--interval", "1m", "--format", "json")
    assert proc.returncode == 1, proc.stderr
    doc = as_json(proc)
    assert doc["offset"] == pytest.approx(SKEW, abs=0.01)
    assert doc["impact"] == "noticeable" and "fix soon" in doc["advice"]
    assert doc["problems"] == [
        f"offset {doc['offset']:+.6f}s from {skewed.address} is over 1s (--interval 1m)"
    ]
    # the same offset is fine for 5-minute jobs (limit 5 s)
    assert check_clock("--server", skewed.address, "--interval", "5m").returncode == 0


def test_check_clock_table(chrony: ChronyServer, skewed: ChronyServer) -> None:
    args = ["--server", chrony.address, "--peer", skewed.address, "--max-skew", "5s"]
    proc = check_clock(*args, "--max-offset", "1s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == [
        "Source",
        "Kind",
        "Offset",
        "±Error",
        "Delay",
        "Stratum",
        "Ref",
        "ID",
        "Leap",
        "Note",
    ]
    number = r"([+-]?\d+\.\d{6})s"
    row = re.match(rf"{chrony.address}\s+server\s+{number} .* best; \d/\d samples", lines[1])
    peer = re.match(rf"{skewed.address}\s+peer\s+{number} ", lines[2])
    offset = re.search(
        rf"^Offset:\s+{number} .*negligible, within 1s \(--max-offset\)$", proc.stdout, re.M
    )
    skew = re.search(rf"^Skew:\s+{number} .*noticeable, within 5s$", proc.stdout, re.M)
    assert row and peer and offset and skew, proc.stdout
    assert float(row.group(1)) == float(offset.group(1)) == pytest.approx(0, abs=0.01)
    assert float(peer.group(1)) == pytest.approx(SKEW, abs=0.01)
    assert float(skew.group(1)) == pytest.approx(SKEW, abs=0.01)
    assert proc.stdout.endswith("\nVerdict: OK\n")


def test_check_clock_peers_and_skew(chrony: ChronyServer, skewed: ChronyServer) -> None:
    args = ["--server", chrony.address, "--peer", chrony.address, "--peer", skewed.address]
    proc = check_clock(*args, "--max-skew", "1s", "--format", "json")
    assert proc.returncode == 1
    doc = as_json(proc)
    assert [p["offset"] for p in doc["peers"]] == [
        pytest.approx(0, abs=0.01),
        pytest.approx(SKEW, abs=0.01),
    ]
    skew = doc["skew"]
    assert skew["value"] == pytest.approx(SKEW, abs=0.01) and skew["impact"] == "noticeable"
    assert skew["between"][1] == skewed.address and skew["limit"] == 1.0
    assert check_clock(*args, "--max-skew", "3s").returncode == 0


@pytest.mark.parametrize(
    ("which", "extra", "code", "state"),
    [
        ("real", [], 0, "OK"),
        ("skewed", ["--warn", "1s", "--crit", "5s"], 1, "WARNING"),
        ("skewed", [], 2, "CRITICAL"),
    ],
)
def test_nagios_states(
    chrony: ChronyServer,
    skewed: ChronyServer,
    which: str,
    extra: list[str],
    code: int,
    state: str,
) -> None:
    server = chrony if which == "real" else skewed
    proc = check_clock("--server", server.address, "--format", "nagios", *extra)
    assert proc.returncode == code, proc.stdout + proc.stderr
    warn, crit = ("1.000000", "5.000000") if extra else ("0.100000", "1.000000")
    pattern = rf"NTP {state}: Offset (-?\d+\.\d+) secs\|offset=(-?\d+\.\d{{6}})s;{warn};{crit};"
    match = re.fullmatch(pattern, proc.stdout.strip())
    assert match, proc.stdout
    expected = 0.0 if which == "real" else SKEW
    assert float(match.group(1)) == pytest.approx(expected, abs=0.01)
    assert float(match.group(2)) == pytest.approx(float(match.group(1)), abs=1e-6)


def test_nagios_unknown(fake: FakeNtp) -> None:
    fake.behaviour = "silent"
    proc = check_clock("--server", fake.address, "--format", "nagios", "--timeout", "200ms")
    assert proc.returncode == 3
    assert (
        proc.stdout.strip()
        == f"NTP UNKNOWN: no usable NTP reply ({fake.address}: no reply within 0.2s)"
    )


def test_inconsistent_real_server_is_rejected(tmp_path: Path) -> None:
    # chronyd under libfaketime +0.3 s stamps receipt with the kernel's true clock and
    # transmission with its fake one: the reply claims it was held 0.3 s, longer than the round
    # trip. Believed, it would read as a +0.15 s offset.
    server = start_chronyd(tmp_path, offset="+0.3")
    try:
        proc = check_clock("--server", server.address, "--samples", "2", "--format", "json")
    finally:
        server.stop()
    assert proc.returncode == 3
    rejected = as_json(proc)["servers"][0]["rejected"]
    assert len(rejected) == 2 and all("inconsistent server timestamps" in r for r in rejected)


@pytest.mark.parametrize("behaviour", ["kod-RATE", "leap3", "stratum16", "echo", "wrong-origin"])
def test_check_clock_names_a_rejected_reply(fake: FakeNtp, behaviour: str) -> None:
    fake.behaviour = behaviour
    proc = check_clock("--server", fake.address, "--samples", "2", "--format", "json")
    assert proc.returncode == 3
    doc = as_json(proc)
    assert doc["status"] == "unknown" and doc["offset"] is None
    assert len(doc["servers"][0]["rejected"]) == 2


def test_check_clock_against_the_lock_backend(tmp_path: Path, chrony: ChronyServer) -> None:
    lock = tmp_path / "locks"
    proc = check_clock("--server", chrony.address, "--lock", f"nfs:{lock}", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    backend = as_json(proc)["backend"]
    assert backend["url"] == f"nfs:{lock}"
    # the local file system stamps with this host's clock: the offset is 0 within its bound
    assert abs(backend["offset"]) <= backend["error"] + 0.002
    none = as_json(check_clock("--server", chrony.address, "--lock", "none", "--format", "json"))
    assert none["backend"]["offset"] is None and none["status"] == "unknown"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-offset", "1s", "--interval", "1m"], "--max-offset and --interval both"),
        (["--server", "host:0"], "bad port in 'host:0'"),
        (["--warn", "2s", "--crit", "1s"], "'--warn': is above --crit"),
        (["--samples", "0"], "'--samples'"),
        (["--lock", "ftp://x"], "unknown lock backend 'ftp:'"),
    ],
)
def test_check_clock_usage_errors(args: list[str], message: str) -> None:
    proc = check_clock(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_backend_clock_of_a_directory(tmp_path: Path) -> None:
    from pyjob.core.backends import open_backend

    backend = open_backend(f"file:{tmp_path / 'd'}")
    backend.check()
    reading = backend_clock(backend, SystemClock())
    assert reading is not None and abs(reading.offset) <= reading.error + 0.002
    assert backend_clock(open_backend("none"), SystemClock()) is None


# ------------------------------------------------------------------------------ pyjob run


def _run(
    tmp_path: Path, *args: str, name: str = "run", env: dict[str, str] | None = None
) -> PyjobRun:
    return PyjobRun(
        ["--lock", "none", *args],
        tmp_path,
        name=name,
        env={"PYJOB_NO_CLOCK_CHECK": "", **(env or {})},
    )


def test_run_refuses_a_clock_over_the_limit(tmp_path: Path, skewed: ChronyServer) -> None:
    run = _run(
        tmp_path,
        "--ntp-server",
        skewed.address,
        "--max-offset",
        "1s",
        "--every",
        "250ms",
        "--",
        "true",
    )
    assert run.wait() == 4
    err = run.log_path.read_text().strip()
    match = re.match(r"Error: clock offset ([+-]\d+\.\d{6})s ±0\.\d{6}s", err)
    assert match and float(match.group(1)) == pytest.approx(SKEW, abs=0.01), err
    assert f"(from {skewed.address}) is over the limit 1s (--max-offset)" in err
    assert err.count("\n") == 0


def test_run_warns_and_runs_with_policy_warn(tmp_path: Path, skewed: ChronyServer) -> None:
    run = _run(
        tmp_path,
        "--ntp-server",
        skewed.address,
        "--clock-policy",
        "warn",
        "--every",
        "250ms",
        "--max-runs",
        "2",
        "--",
        "true",
    )
    assert run.wait() == 0
    (warning,) = run.events("clock-warning")
    assert warning["offset"] == pytest.approx(SKEW, abs=0.01) and warning["limit"] == 0.1
    assert warning["impact"] == "noticeable"
    assert len(run.events("run-finished")) == 2


def test_run_default_limit_comes_from_the_interval(tmp_path: Path, skewed: ChronyServer) -> None:
    # 2.5 s is within 1/60 of 5 minutes, so the check passes and is logged
    run = _run(tmp_path, "--ntp-server", skewed.address, "--every", "5m", "--", "true")
    (clock,) = run.wait_for("clock")
    run.stop()
    assert clock["limit"] == 5.0 and clock["offset"] == pytest.approx(SKEW, abs=0.01)


def test_run_without_a_usable_reply(tmp_path: Path, fake: FakeNtp) -> None:
    fake.behaviour = "silent"
    args = ["--ntp-server", fake.address, "--clock-budget", "500ms", "--every", "250ms"]
    run = _run(tmp_path, *args, "--max-runs", "1", "--", "true")
    assert run.wait() == 0
    (warning,) = run.events("clock-warning")
    assert "no usable NTP reply" in warning["problem"]
    required = _run(tmp_path, *args, "--require-clock", "--", "true", name="required")
    assert required.wait() == 3
    assert "--require-clock is set" in required.log_path.read_text()


def test_run_without_clock_check(tmp_path: Path) -> None:
    run = _run(tmp_path, "--no-clock-check", "--every", "250ms", "--max-runs", "1", "--", "true")
    assert run.wait() == 0
    (note,) = run.events("clock")
    assert note["action"] == "not measured (--no-clock-check)"
    bad = subprocess.run(
        [*pyjob_exe(), "run", "--no-clock-check", "--clock", "ntp", "--every", "1s", "--", "true"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 2
    assert bad.stderr == "Error: --clock ntp needs the clock check: drop --no-clock-check\n"


def test_run_rechecks_beside_the_loop(tmp_path: Path, chrony: ChronyServer) -> None:
    args = ["--ntp-server", chrony.address, "--clock-check-every", "200ms", "--every", "250ms"]
    run = _run(tmp_path, *args, "--max-runs", "8", "--", "true")
    assert run.wait() == 0
    checks = run.events("clock")
    assert len(checks) >= 5 and all(abs(c["offset"]) < 0.01 for c in checks)
    assert len(run.events("run-finished")) == 8


REPORT = 'echo "$PYJOB_TICK_UNIX $(env -u LD_PRELOAD -u FAKETIME date +%s.%N)" >> "$OUT"'


def _starts(path: Path) -> dict[float, float]:
    """tick -> when the command really started (the child reads the true clock)."""
    out = {}
    for line in path.read_text().split("\n"):
        if line:
            tick, started = line.split()
            out[float(tick)] = float(started)
    return out


def _pair(
    tmp_path: Path, chrony: ChronyServer, clock: str
) -> tuple[dict[float, float], dict[float, float]]:
    args = ["--ntp-server", chrony.address, "--clock", clock, "--clock-policy", "warn"]
    args += ["--every", "250ms", "--align", "--max-runs", "12", "--shell", "--", REPORT]
    runs = [
        _run(tmp_path, *args, name=f"{clock}-true", env={"OUT": str(tmp_path / f"{clock}-true")}),
        _run(
            tmp_path,
            *args,
            name=f"{clock}-ahead",
            env={"OUT": str(tmp_path / f"{clock}-ahead"), **faketime_env("+0.3")},
        ),
    ]
    for run in runs:
        assert run.wait() == 0, run.log_path.read_text()
    return _starts(tmp_path / f"{clock}-true"), _starts(tmp_path / f"{clock}-ahead")


def test_clock_ntp_makes_skewed_instances_fire_together(
    tmp_path: Path, chrony: ChronyServer
) -> None:
    # The control: by their own clocks the instance 300 ms ahead fires 300 ms early.
    true, ahead = _pair(tmp_path, chrony, "system")
    common = sorted(set(true) & set(ahead))
    assert len(common) >= 10
    assert all(0.25 < true[t] - ahead[t] < 0.35 for t in common)
    # With --clock ntp both fire by NTP time: at the tick, within 20 ms of each other.
    true, ahead = _pair(tmp_path, chrony, "ntp")
    common = sorted(set(true) & set(ahead))
    assert len(common) >= 10
    gaps = [abs(true[t] - ahead[t]) for t in common]
    print(f"--clock ntp: {len(common)} ticks, largest gap {max(gaps) * 1000:.2f} ms")
    # Far under the 300 ms their own clocks put between them; a busy machine delays a wake-up
    # by tens of milliseconds, so the bound leaves room for that, not for the skew.
    assert max(gaps) < 0.150, gaps
    # Not early (by its own clock it fired 300 ms early), and at the tick, not 300 ms after it.
    late = [ahead[t] - t for t in common]
    assert all(-0.005 < x < 0.150 for x in late), late


def test_a_falseticker_is_outvoted_even_with_the_shortest_round_trip() -> None:
    from pyjob.core.ntp import best_sample, falsetickers

    def m(server: str, offset: float, delay: float) -> Measurement:
        sample = Sample(server, offset, delay, 2, "x", 0, 0.001)
        return Measurement(server, sample, [sample])

    three = [m("a", 0.0004, 0.020), m("b", -0.0003, 0.030), m("liar", 2.5, 0.001)]
    assert falsetickers(three) == {"liar"}
    best = best_sample(three)
    assert best is not None and best.server == "a"
    # two that disagree: neither can be outvoted, the shorter round trip wins
    assert falsetickers(three[1:]) == set() and best_sample(three[1:]).server == "liar"  # type: ignore[union-attr]
    # no majority at all: nobody is excluded
    split = [m("a", 0.0, 0.02), m("b", 0.0, 0.03), m("c", 2.5, 0.01), m("d", 2.5, 0.04)]
    assert falsetickers(split) == set()


def test_check_clock_marks_the_falseticker(chrony: ChronyServer, skewed: ChronyServer) -> None:
    # the same true server twice, and the skewed one: two against one
    args = ["--server", chrony.address, "--server", f"localhost:{chrony.port}"]
    proc = check_clock(*args, "--server", skewed.address, "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = as_json(proc)
    assert [s.get("falseticker", False) for s in doc["servers"]] == [False, False, True]
    assert abs(doc["offset"]) < 0.01 and doc["server"] != skewed.address


def test_an_offset_that_changes_wakes_the_wait_that_went_through_the_clock() -> None:
    # --clock ntp: a new correction is a step of the scheduler's clock, and must end its wait
    # as a step of the host's clock does
    from pyjob.core.clock import Waker

    clock = OffsetClock(FakeClock(datetime(2026, 11, 28, tzinfo=UTC)))
    waker = Waker()
    try:
        clock.wait_for(waker, 1.0, [])
        clock.offset = 0.0  # no change: no wake-up
        assert not waker.block(0)
        clock.offset = 2.5
        assert waker.block(0)
    finally:
        waker.close()


STEPPED_WAIT = r"""
import sys, time
from pyjob.core.clock import SystemClock, Waker
clock = SystemClock()
print(clock.longest_wait(), flush=True)
sys.stdin.readline()  # the test steps the clock once it sees this one waiting
start = time.monotonic()
ready = clock.wait_for(Waker(), 600.0, [])
print(ready, time.monotonic() - start, flush=True)
"""


def test_a_step_of_the_wall_clock_ends_a_long_wait(tmp_path: Path) -> None:
    # On Linux nothing polls for steps: a wait of 10 minutes ends when the clock is stepped
    # (here by the shim, which fires the step watch as the kernel does), not at its end.
    import os
    import sys

    from .clockshim import ClockShim

    shim = ClockShim(tmp_path / "clock")
    proc = subprocess.Popen(
        [sys.executable, "-c", STEPPED_WAIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **shim.env()},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "inf"  # no slices: steps end the wait
        proc.stdin.write("\n")
        proc.stdin.flush()
        time.sleep(1.0)  # let it enter the wait (a step before it would be in its reading)
        shim.set(660.0)
        out, _ = proc.communicate(timeout=120)  # far below the 600 s it was asked to wait
    finally:
        proc.kill()
    ready, waited = out.split("] ")
    assert ready == "[" and float(waited) < 600.0, out


def test_a_tick_the_clock_is_stepped_past_runs_without_waiting_for_a_slice(
    tmp_path: Path,
) -> None:
    # The tick is 10 minutes away; the clock steps 10 minutes and 5 seconds ahead. The run
    # starts at once, not when a slice of the wait would have re-read the clock (20 s). No lock:
    # a backend's clock is not stepped, and would refuse a tick so far ahead of it.
    from .clockshim import ClockShim

    shim = ClockShim(tmp_path / "clock")
    at = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = PyjobRun(
        ["--once", at, "--lock", "none", "--", "true"],
        tmp_path,
        env=shim.env(),
    )
    try:
        run.wait_for("next-tick", timeout=60)
        time.sleep(1.0)  # waiting for the tick
        shim.set(605.0)
        run.wait_for("run-started", timeout=10)  # a 20 s slice would miss this half the time
    finally:
        run.stop()

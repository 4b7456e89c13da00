"""--metrics-listen and --metrics-textfile: Prometheus metrics parsed with prometheus_client's own
parser, from real `pyjob run` processes and over real HTTP on loopback."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from prometheus_client.parser import text_string_to_metric_families
from pyjob.core.backends import open_backend
from pyjob.core.clock import FakeClock, SystemClock, Waker, WrappedClock
from pyjob.core.events import make
from pyjob.core.metrics import (
    LIVENESS,
    BeatingClock,
    FleetReader,
    Metrics,
    MetricsServer,
    skip_reason,
)
from pyjob.core.records import RunRecord
from pyjob.core.results import event_result

from .runproc import PyjobRun
from .servers import RedisServer

FAIL_ON_ODD = "exit $(( ${PYJOB_TICK_UNIX%%.*} % 2 ))"
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# ------------------------------------------------------------------------------ the catalogue


@pytest.mark.parametrize(
    ("fields", "result"),
    [
        ({"exit_code": 0}, "success"),
        ({"exit_code": 3}, "failure"),
        ({"exit_code": 143, "terminated": "timeout"}, "timeout"),
        ({"exit_code": 143, "terminated": "stop"}, "stopped"),
        ({"exit_code": 143, "terminated": "replace"}, "stopped"),
        ({"exit_code": 127, "error": "not found: ./nope"}, "start-failed"),
    ],
)
def test_a_run_result_is_named_as_in_the_run_records(fields: dict[str, Any], result: str) -> None:
    assert event_result(fields) == result


@pytest.mark.parametrize(
    ("kind", "tick", "fields", "reason"),
    [
        ("skipped", True, {"reason": "overlap: the previous run is still going"}, "overlap"),
        ("skipped", True, {"reason": "overlap: one run is already queued"}, "queue-full"),
        ("skipped", True, {"reason": "something new"}, "other"),
        ("skipped", True, {"reason": "paused"}, "paused"),
        ("skipped", True, {"reason": "pool full: p (2 running)"}, "pool-full"),
        ("refused", True, {"reason": "clocks 2h apart"}, "refused"),
        (
            "refused",
            True,
            {"reason": "clock-ahead: tick … 11m ahead", "offset": 660},
            "clock-ahead",
        ),
        ("backend-error", True, {"error": "down", "action": "skip"}, "backend-error"),
        ("backend-error", True, {"error": "down", "action": "run"}, None),
        ("backend-error", False, {"error": "down", "action": "cleanup later"}, None),
        ("run-started", True, {"run_id": "x"}, None),
    ],
)
def test_skip_reasons_are_a_fixed_set(
    kind: str, tick: bool, fields: dict[str, Any], reason: str | None
) -> None:
    event = make(kind, "j", "me", NOW if tick else None, NOW, **fields)
    assert skip_reason(event) == reason


# ------------------------------------------------------------------------------ in process


def _metrics(clock: FakeClock) -> Metrics:
    return Metrics(clock, "me", "9.9", {"j": 60.0}, {"j": "redis"})


def test_pauses_triggers_and_pool_waits_are_counted() -> None:
    m = _metrics(FakeClock(NOW))
    text = m.render().decode()
    assert value(text, "pyjob_paused", job_name="j") == 0
    assert value(text, "pyjob_triggered_runs_total", job_name="j") == 0
    m.on_event(make("paused", "j", "me", None, NOW, by="a@h", since="2026-12-01T08:00:00+00:00"))
    m.on_event(make("skipped", "j", "me", NOW, NOW, reason="paused"))
    m.on_event(make("triggered", "j", "me", NOW, NOW, run_id="j-trigger-1", by="a@h"))
    m.on_event(make("pool-waited", "j", "me", NOW, NOW, pool="p", waited=0.4))
    text = m.render().decode()
    assert value(text, "pyjob_paused", job_name="j") == 1
    assert value(text, "pyjob_skipped_ticks_total", job_name="j", reason="paused") == 1
    assert value(text, "pyjob_triggered_runs_total", job_name="j") == 1
    assert value(text, "pyjob_pool_wait_seconds_count", pool="p") == 1
    m.on_event(make("resumed", "j", "me", None, NOW, paused_for=3.0))
    assert value(m.render().decode(), "pyjob_paused", job_name="j") == 0


def test_healthz_is_200_while_the_loop_beats_and_503_after_it_stopped() -> None:
    clock = FakeClock(NOW)
    m = _metrics(clock)
    server = MetricsServer(m, "127.0.0.1", 0)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/healthz") == (200, "ok\n")
        clock.advance(LIVENESS + 1)
        code, text = get(base + "/healthz")
        assert code == 503 and "last seen 1m1s ago" in text
        assert value(get(base + "/metrics")[1], "pyjob_loop_silence_seconds") == LIVENESS + 1
        # the scheduler's wait is a beat: the wrapped clock gives one before and after
        BeatingClock(clock, m.beat).wait_for(Waker(), 5.0, [])
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/nope")[0] == 404
        code, text = get(base + "/metrics")
        assert code == 200 and value(text, "pyjob_info", version="9.9", pyjob_instance="me") == 1
    finally:
        server.stop()


def test_counters_start_at_zero_and_count_each_event() -> None:
    clock = FakeClock(NOW)
    m = _metrics(clock)
    text = m.render().decode()
    assert value(text, "pyjob_runs_total", job_name="j", result="failure") == 0
    assert value(text, "pyjob_skipped_ticks_total", job_name="j", reason="overlap") == 0
    # never yet: since the job is served
    assert value(text, "pyjob_last_success_timestamp_seconds", job_name="j") == NOW.timestamp()
    assert "pyjob_clock_offset_seconds" not in types(text)  # not measured: absent, not 0
    for kind, fields in [
        ("run-started", {"run_id": "r", "pid": 1, "lateness": 0.02}),
        ("run-finished", {"run_id": "r", "exit_code": 0, "duration": 2.0, "lateness": 0.02}),
        ("missed", {"count": 3, "first": "a", "last": "b", "reason": "late"}),
        ("backend-error", {"error": "timeout", "action": "skip"}),
        ("clock", {"offset": -0.25}),
        ("ping-failed", {"run_id": "r", "ping": "start", "error": "timed out"}),
    ]:
        m.on_event(make(kind, "j", "me", NOW, NOW, **fields))
    text = m.render().decode()
    assert value(text, "pyjob_runs_total", job_name="j", result="success") == 1
    assert value(text, "pyjob_run_duration_seconds_count", job_name="j") == 1
    assert value(text, "pyjob_run_duration_seconds_bucket", job_name="j", le="2.5") == 1
    assert value(text, "pyjob_lateness_seconds_bucket", job_name="j", le="0.01") == 0
    assert value(text, "pyjob_lateness_seconds_bucket", job_name="j", le="0.025") == 1
    assert value(text, "pyjob_last_success_timestamp_seconds", job_name="j") == NOW.timestamp()
    assert value(text, "pyjob_running", job_name="j") == 0
    assert value(text, "pyjob_missed_ticks_total", job_name="j") == 3
    assert value(text, "pyjob_skipped_ticks_total", job_name="j", reason="backend-error") == 1
    assert value(text, "pyjob_backend_errors_total", backend="redis") == 1
    assert value(text, "pyjob_clock_offset_seconds") == -0.25
    assert value(text, "pyjob_ping_failures_total", job_name="j") == 1
    assert value(text, "pyjob_schedule_interval_seconds", job_name="j") == 60
    # a reload without the job: its staleness series go (no alert for a job no longer served)
    m.set_jobs({"k": None}, {"k": "redis"})
    text = m.render().decode()
    assert value(text, "pyjob_last_success_timestamp_seconds", job_name="j") is None
    assert value(text, "pyjob_schedule_interval_seconds", job_name="j") is None
    assert value(text, "pyjob_runs_total", job_name="k", result="success") == 0


def _every_event(m: Metrics) -> None:
    """One event of each kind that the metrics count."""
    for kind, fields in [
        ("run-started", {"run_id": "r", "pid": 1, "lateness": 0.02}),
        ("run-finished", {"run_id": "r", "exit_code": 0, "duration": 2.0, "lateness": 0.02}),
        ("missed", {"count": 3, "first": "a", "last": "b", "reason": "late"}),
        ("backend-error", {"error": "timeout", "action": "skip"}),
        ("skipped", {"reason": "overlap: the previous run is still going"}),
        ("clock", {"offset": -0.25}),
        ("ping-failed", {"run_id": "r", "ping": "start", "error": "timed out"}),
    ]:
        m.on_event(make(kind, "j", "me", NOW, NOW, **fields))


def test_no_label_is_one_prometheus_sets_on_a_target() -> None:
    """Prometheus gives every target the labels job and instance: an exposed one of the same
    name is renamed exported_job, or (honor_labels) replaces the target's own."""
    m = _metrics(FakeClock(NOW))
    _every_event(m)
    labels = {
        name
        for family in text_string_to_metric_families(m.render().decode())
        for sample in family.samples
        for name in sample.labels
    }
    assert {"job_name", "pyjob_instance", "result", "reason", "backend"} <= labels
    assert labels.isdisjoint({"job", "instance"}), labels


def test_every_series_of_a_job_exists_from_start() -> None:
    clock = FakeClock(NOW)
    m = _metrics(clock)
    clock.advance(30)
    m.set_jobs({"j": 60.0, "k": 10.0}, {"j": "redis", "k": "redis"})  # k: added by a reload
    text = m.render().decode()
    for job in ("j", "k"):
        assert value(text, "pyjob_ping_failures_total", job_name=job) == 0
        for result in ("success", "failure", "timeout", "stopped", "start-failed"):
            assert value(text, "pyjob_runs_total", job_name=job, result=result) == 0
            assert value(text, "pyjob_last_run_timestamp_seconds", job_name=job, result=result) == 0
        for reason in ("overlap", "queue-full", "backend-error", "refused", "other"):
            assert value(text, "pyjob_skipped_ticks_total", job_name=job, reason=reason) == 0
    # No success yet: since when the job is served here, so a job that never succeeds alerts.
    last = "pyjob_last_success_timestamp_seconds"
    assert value(text, last, job_name="j") == NOW.timestamp()
    assert value(text, last, job_name="k") == NOW.timestamp() + 30
    # A success the fleet's records know replaces it, even an older one; then only newer ones.
    m.success("j", NOW.timestamp() - 3600)
    assert value(m.render().decode(), last, job_name="j") == NOW.timestamp() - 3600
    m.success("j", NOW.timestamp() - 7200)
    assert value(m.render().decode(), last, job_name="j") == NOW.timestamp() - 3600


def test_the_metrics_say_when_they_were_produced(tmp_path: Path) -> None:
    """A textfile that a dead pyjob left behind keeps its last values, loop silence included:
    the time it was written is what shows it is stale."""
    clock = FakeClock(NOW)
    m = _metrics(clock)
    path = tmp_path / "pyjob.prom"
    m.write_textfile(str(path))
    assert value(path.read_text(), "pyjob_metrics_updated_timestamp_seconds") == NOW.timestamp()
    clock.advance(10)
    m.write_textfile(str(path))
    updated = value(path.read_text(), "pyjob_metrics_updated_timestamp_seconds")
    assert updated == NOW.timestamp() + 10
    assert types(m.render().decode())["pyjob_metrics_updated_timestamp_seconds"] == "gauge"


def test_the_textfile_is_replaced_whole_never_rewritten_in_place(tmp_path: Path) -> None:
    m = _metrics(FakeClock(NOW))
    path = tmp_path / "pyjob.prom"
    m.write_textfile(str(path))
    first = path.read_bytes()
    held = path.open("rb")  # a reader that opened the first version
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            m.on_event(make("missed", f"job{n % 50}", "me", NOW, NOW, count=1))
            m.write_textfile(str(path))

    writer = threading.Thread(target=churn)
    writer.start()
    reads = 0
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            text = path.read_text()
            assert text.endswith("\n"), text[-200:]
            assert value(text, "pyjob_info", version="9.9", pyjob_instance="me") == 1, text[-200:]
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert reads > 10, reads
    with held:  # renamed over, never rewritten in place: the reader still has it whole
        assert os.fstat(held.fileno()).st_nlink == 0
        assert held.read() == first
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["pyjob.prom"]  # no temporary left


@pytest.fixture(params=["file", "redis"])
def records_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file:{tmp_path / 'locks'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    import redis

    db = random.randint(1, 15)
    redis.Redis(port=server.port, db=db).flushdb()
    return f"redis://127.0.0.1:{server.port}/{db}"


def test_last_success_comes_from_the_fleets_run_records(records_url: str) -> None:
    backend = open_backend(records_url, os.environ)
    store = backend.records()
    assert store is not None
    t0 = int(NOW.timestamp() * 1e6)
    store.put_runs(
        [
            RunRecord("j", t0, "j-0", "host-a", "success", finished_us=t0 + 500_000),
            RunRecord("j", t0 + 60_000_000, "j-1", "host-b", "failure", finished_us=t0 + 61e6),
            RunRecord("j", t0 + 120_000_000, "j-2", "host-c", "running"),
        ]
    )
    m = _metrics(FakeClock(NOW))
    opened: list[Any] = []

    def open_store(url: str | None) -> tuple[Any, Callable[[], None]]:
        b = open_backend(url, os.environ)
        opened.append(b)
        return b.records(), b.close

    reader = FleetReader(m, {"j": records_url}, open_store)
    try:
        reader.read()
        assert m.render().decode().count("pyjob_last_success_timestamp_seconds{") == 1
        got = value(m.render().decode(), "pyjob_last_success_timestamp_seconds", job_name="j")
        assert got == (t0 + 500_000) / 1e6
        # the run still going on host-c ends in success: the next read sees it
        store.put_runs(
            [RunRecord("j", t0 + 120_000_000, "j-2", "host-c", "success", finished_us=t0 + 121e6)]
        )
        reader.read()
        got = value(m.render().decode(), "pyjob_last_success_timestamp_seconds", job_name="j")
        assert got == 121 + t0 / 1e6
    finally:
        reader.close()
        backend.close()
    assert len(opened) == 1  # one store per lock URL, kept between reads


class Later(WrappedClock):
    """The system's clock, whose monotonic time a test moves on (waits are real)."""

    def __init__(self) -> None:
        super().__init__(SystemClock())
        self.shift = 0.0

    def monotonic(self) -> float:
        return self.base.monotonic() + self.shift


def _system_metrics() -> Metrics:
    return Metrics(Later(), "me", "9.9", {"j": 60.0}, {"j": "redis"})


def test_a_scrape_reads_the_fleets_run_records_at_once(records_url: str) -> None:
    """Another instance's success shows in the next scrape, not up to 15 s later."""
    backend = open_backend(records_url, os.environ)
    store = backend.records()
    assert store is not None
    t0 = int(NOW.timestamp() * 1e6)
    m = _system_metrics()

    def open_store(url: str | None) -> tuple[Any, Callable[[], None]]:
        b = open_backend(url, os.environ)
        return b.records(), b.close

    reader = FleetReader(m, {"j": records_url}, open_store)
    server = MetricsServer(m, "127.0.0.1", 0, before=lambda: reader.refresh(wait=30))
    server.start()
    scrape = f"http://127.0.0.1:{server.port}/metrics"
    try:
        for n in range(1, 4):
            done = t0 + n * 1_000_000
            store.put_runs(
                [RunRecord("j", t0 + n, f"j-{n}", "host-b", "success", finished_us=done)]
            )
            got = value(get(scrape)[1], "pyjob_last_success_timestamp_seconds", job_name="j")
            assert got == done / 1e6, n
    finally:
        server.stop()
        reader.close()
        backend.close()


def test_a_fleet_read_that_fails_leaves_the_scrape_its_values() -> None:
    class Down:
        calls = 0

        def runs(self, *args: Any, **kwargs: Any) -> Any:
            Down.calls += 1
            from pyjob.core.errors import BackendError

            raise BackendError("redis://x: connection refused")

    m = _system_metrics()
    before = value(m.render().decode(), "pyjob_last_success_timestamp_seconds", job_name="j")
    reader = FleetReader(m, {"j": "redis://x"}, lambda url: (Down(), lambda: None))
    try:
        reader.refresh(wait=30)  # does not raise
        assert Down.calls == 1
        reader.refresh(wait=30)  # nor asks again at once: the backend is down
        assert Down.calls == 1
        assert isinstance(m.clock, Later)
        m.clock.shift = 60
        reader.refresh(wait=30)
        assert Down.calls == 2
        after = value(m.render().decode(), "pyjob_last_success_timestamp_seconds", job_name="j")
        assert after == before
    finally:
        reader.close()


def test_a_scrape_waits_a_bounded_time_for_a_backend_that_hangs() -> None:
    """Prometheus gives up on a scrape after its timeout (1 s for a 1 s interval): a store call
    that hangs (a backend bounds its calls at about 2 s) must not hold the answer."""
    release = threading.Event()

    class Hung:
        def runs(self, *args: Any, **kwargs: Any) -> Any:
            release.wait(30)
            return []

    m = _system_metrics()
    reader = FleetReader(m, {"j": "redis://x"}, lambda url: (Hung(), lambda: None))
    server = MetricsServer(m, "127.0.0.1", 0, before=lambda: reader.refresh(wait=0.2))
    server.start()
    try:
        t0 = time.monotonic()
        code, text = get(f"http://127.0.0.1:{server.port}/metrics")
        assert code == 200 and time.monotonic() - t0 < 10  # 0.2 s, on a busy machine
        assert value(text, "pyjob_last_success_timestamp_seconds", job_name="j")
    finally:
        release.set()
        server.stop()
        reader.close()


def test_a_missing_extra_is_exit_2_with_the_pip_command(
    invoke: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    result = invoke(
        ["run", "--every", "1s", "--lock", "none", "--metrics-listen", ":9464", "--", "true"]
    )
    assert result.exit_code == 2
    assert "--metrics-listen needs prometheus-client: pip install 'pyjob[metrics]'" in (
        result.output
    )


def test_run_without_the_metrics_extra_works_when_no_metrics_are_asked_for(
    tmp_path: Path,
) -> None:
    import os
    import subprocess

    from .conftest import pyjob_exe

    hidden = tmp_path / "site"
    (hidden / "prometheus_client").mkdir(parents=True)
    (hidden / "prometheus_client" / "__init__.py").write_text("raise ImportError('not here')\n")
    env = {**os.environ, "PYTHONPATH": str(hidden), "PYJOB_NO_CLOCK_CHECK": "1"}
    out = subprocess.run(
        [
            *pyjob_exe(),
            "run",
            "--every",
            "200ms",
            "--max-runs",
            "1",
            "--lock",
            "none",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-listen", "localhost"], "is not HOST:PORT"),
        (["--metrics-listen", "1.2.3.4:99999"], "is not HOST:PORT"),
        (["--ping", "hc-ping.com/abc"], "is not an http:// or https:// URL"),
    ],
)
def test_bad_monitoring_options_are_usage_errors(
    invoke: Callable[..., Result], args: list[str], message: str
) -> None:
    result = invoke(["run", "--every", "1s", "--lock", "none", *args, "--", "true"])
    assert result.exit_code == 2 and message in result.output, result.output


# ------------------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_metrics_of_a_real_run_count_the_runs_made(tmp_path: Path) -> None:
    prom = tmp_path / "pyjob.prom"
    run = PyjobRun(
        [
            *("--every", "1s", "--align", "--lock", f"file:{tmp_path / 'locks'}", "--name", "m"),
            # port 0: the kernel's free port, named by the `metrics` event
            *("--metrics-listen", "127.0.0.1:0", "--metrics-textfile", str(prom)),
            *("--shell", "--", FAIL_ON_ODD),
        ],
        tmp_path,
    )
    listening = run.wait_for("metrics", timeout=30)[0]
    port = int(listening["listen"].rsplit(":", 1)[1].split("/")[0])
    assert port > 0 and listening["listen"] == f"http://127.0.0.1:{port}/metrics"
    base = f"http://127.0.0.1:{port}"
    assert get(base + "/healthz") == (200, "ok\n")
    run.wait_for("run-finished", count=4, timeout=30)
    before = len(run.events("run-finished"))
    code, live = get(base + "/metrics")
    after = len(run.events("run-finished"))
    assert code == 200
    made = sum(
        value(live, "pyjob_runs_total", job_name="m", result=r) or 0 for r in ("success", "failure")
    )
    assert before - 1 <= made <= after
    kinds = types(live)
    assert kinds["pyjob_run_duration_seconds"] == "histogram"
    assert kinds["pyjob_lateness_seconds"] == "histogram"
    assert value(live, "pyjob_run_duration_seconds_bucket", job_name="m", le="+Inf") is not None
    assert run.stop() == 0

    final = prom.read_text()  # written again at exit
    finished = run.events("run-finished")
    ok = [e for e in finished if e["exit_code"] == 0]
    assert value(final, "pyjob_runs_total", job_name="m", result="success") == len(ok)
    failed = len(finished) - len(ok)
    assert value(final, "pyjob_runs_total", job_name="m", result="failure") == failed
    assert value(final, "pyjob_run_duration_seconds_count", job_name="m") == len(finished)
    starts = run.events("run-started")
    assert value(final, "pyjob_lateness_seconds_count", job_name="m") == len(starts)
    assert value(final, "pyjob_running", job_name="m") == 0
    assert value(final, "pyjob_missed_ticks_total", job_name="m") == 0
    last_ok = datetime.fromisoformat(ok[-1]["time"]).timestamp()
    got = value(final, "pyjob_last_success_timestamp_seconds", job_name="m")
    assert got is not None and abs(got - last_ok) < 0.05
    failed_at = datetime.fromisoformat(
        [e for e in finished if e["exit_code"] != 0][-1]["time"]
    ).timestamp()
    got = value(final, "pyjob_last_run_timestamp_seconds", job_name="m", result="failure")
    assert got is not None and abs(got - failed_at) < 0.05
    instance = starts[0]["instance"]
    assert value(final, "pyjob_info", version="0.1.0", pyjob_instance=instance) == 1
    assert value(final, "pyjob_backend_errors_total", backend="file") == 0
    assert "pyjob_clock_offset_seconds" not in types(final)  # --no-clock-check
    assert sorted(p.name for p in tmp_path.glob("pyjob.prom*")) == ["pyjob.prom"]


@pytest.mark.slow
def test_an_instance_that_ran_nothing_reports_the_fleets_last_success(tmp_path: Path) -> None:
    lock = f"file:{tmp_path / 'locks'}"
    worker = PyjobRun(
        ["--every", "1s", "--align", "--lock", lock, "--name", "shared", "--", "true"],
        tmp_path,
        "worker",
    )
    worker.wait_for("run-finished", count=2, timeout=30)
    assert worker.stop() == 0
    last = datetime.fromisoformat(worker.events("run-finished")[-1]["time"]).timestamp()
    prom = tmp_path / "idle.prom"
    idle = PyjobRun(  # the same job, whose next tick is far away: it runs nothing
        [
            *("--daily", "--at", "03:00", "--lock", lock, "--name", "shared"),
            *("--metrics-textfile", str(prom), "--", "true"),
        ],
        tmp_path,
        "idle",
    )
    idle.wait_for("next-tick", timeout=30)
    time.sleep(1)  # its fleet reader reads the records at start, on its own thread
    assert idle.stop() == 0
    assert idle.events("run-started") == []
    got = value(prom.read_text(), "pyjob_last_success_timestamp_seconds", job_name="shared")
    assert got is not None and abs(got - last) < 0.05, (got, last)


def test_a_port_that_cannot_be_bound_is_exit_2(invoke: Callable[..., Result]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke(
            [
                *("run", "--every", "1s", "--lock", "none", "--no-clock-check"),
                *("--metrics-listen", f"127.0.0.1:{port}", "--", "true"),
            ]
        )
    assert result.exit_code == 2
    assert f"Error: --metrics-listen 127.0.0.1:{port}: Address already in use" in result.output


@pytest.mark.slow
def test_three_instances_on_redis_count_each_run_once_and_agree_on_the_last_success(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import redis

    db = random.randint(1, 15)
    redis.Redis(port=redis_server.port, db=db).flushdb()
    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    runs = [
        PyjobRun(
            [
                *("--every", "1s", "--align", "--lock", url, "--name", "fleetjob"),
                *("--metrics-textfile", str(tmp_path / f"i{n}.prom"), "--", "true"),
            ],
            tmp_path,
            f"i{n}",
        )
        for n in range(3)
    ]
    for r in runs:
        r.wait_for("next-tick", timeout=30)
    time.sleep(5)
    time.sleep(1.5 - time.time() % 1)  # half a second after a tick: no run is going on
    for r in runs:
        r.signal(signal.SIGTERM)  # all at once: no instance runs a tick after another stopped
    for r in runs:
        assert r.wait() == 0
    finished = {f"i{n}": r.events("run-finished") for n, r in enumerate(runs)}
    made = sum(len(v) for v in finished.values())
    assert made >= 4
    texts = {f"i{n}": (tmp_path / f"i{n}.prom").read_text() for n in range(3)}
    for name, text in texts.items():  # this instance's runs
        assert value(text, "pyjob_runs_total", job_name="fleetjob", result="success") == len(
            finished[name]
        )
    last = max(datetime.fromisoformat(e["time"]).timestamp() for v in finished.values() for e in v)
    seen = {
        name: value(text, "pyjob_last_success_timestamp_seconds", job_name="fleetjob")
        for name, text in texts.items()
    }
    for got in seen.values():  # the fleet's: the same on every instance, ran it or not
        assert got is not None and abs(got - last) < 0.05, seen

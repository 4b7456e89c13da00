"""Prometheus metrics of `pyjob run`, built from the scheduler's events (`pip install
'pyjob[metrics]'`, which brings prometheus-client).

``Metrics`` consumes every event (``on_event``, called on the thread that emitted it, so it only
updates counters) and holds one registry. ``MetricsServer`` serves it on ``/metrics`` with
``/healthz`` beside it; ``write_textfile`` writes it for node_exporter's textfile collector;
``FleetReader`` reads the run records of the backend, at each scrape and before each textfile
write, so that ``pyjob_last_success_timestamp_seconds`` says when the job last succeeded on any
instance as of that moment.

Run counters, durations and lateness count this instance's runs: each run is run by one instance,
so ``sum by (job_name)`` over the instances is the fleet's. Label values are job ids, results and
fixed reason kinds; never commands, URLs or free text. No label is named ``job`` or ``instance``:
Prometheus sets those on every target (the scrape job and the target's address), and a clashing
one is either renamed ``exported_job`` or, with ``honor_labels``, replaces the target's own.

Liveness: ``/healthz`` answers 200 while the scheduler loop is seen alive: ``beat()`` is called
each time the loop goes to wait (``BeatingClock`` wraps the scheduler's clock to do that), and
the loop's waits last at most MAX_SLEEP_SLICE (20 s) while it beats; 503 after LIVENESS (60 s)
without a beat.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .clock import MAX_SLEEP_SLICE, Clock, Waker, WrappedClock
from .durations import human_duration
from .events import Event
from .records import RecordStore
from .results import FINISHED, Result, event_result
from .settings import BY_NAME

LIVENESS = 3 * MAX_SLEEP_SLICE  # seconds without a beat before /healthz says 503
TEXTFILE_EVERY = 10.0
FLEET_WAIT = 2.0  # seconds a scrape (or a textfile write) waits for the fleet's run records
FLEET_RETRY = 15.0  # after a fleet read failed, scrapes use the values they have this long
# records read per job at the first fleet read: as many as a job keeps by default
FLEET_FIRST: int = BY_NAME["history-keep"].default

RESULTS = FINISHED
# skipped ticks, by kind of reason (a fixed set: the event's reason is free text)
SKIP_REASONS = (
    "overlap",
    "queue-full",
    "paused",
    "pool-full",
    "backend-error",
    "refused",
    "clock-ahead",
    "other",
)
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def skip_reason(event: Event) -> str | None:
    """The reason kind of a tick that was not run, or None when ``event`` is not one."""
    if event.kind == "skipped":
        text = str(event.fields.get("reason", ""))
        if "queued" in text:
            return "queue-full"
        if text.startswith("paused"):
            return "paused"
        if text.startswith("pool full"):
            return "pool-full"
        return "overlap" if text.startswith("overlap") else "other"
    if event.kind == "refused":
        # a claim refused because this host's clock is ahead of the backend's (DESIGN §8)
        clock_ahead = str(event.fields.get("reason", "")).startswith("clock-ahead")
        return "clock-ahead" if clock_ahead else "refused"
    if event.kind == "backend-error" and event.tick is not None:
        return "backend-error" if event.fields.get("action") == "skip" else None
    return None


class Metrics:
    """The metrics of one `pyjob run` process. ``backends``: job -> the kind of its lock backend
    (file, nfs, redis, postgresql, etcd, none); ``intervals``: job -> the longest gap between its
    ticks (None when it has fewer than two left)."""

    def __init__(
        self,
        clock: Clock,
        instance: str,
        version: str,
        intervals: Mapping[str, float | None],
        backends: Mapping[str, str],
    ) -> None:
        self.clock = clock
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "pyjob_runs", "Runs this instance made, by result.", ["job_name", "result"], registry=r
        )
        self.duration = Histogram(
            "pyjob_run_duration_seconds",
            "How long the runs took.",
            ["job_name"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.lateness = Histogram(
            "pyjob_lateness_seconds",
            "How long after its tick each run's command started.",
            ["job_name"],
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.last_run = Gauge(
            "pyjob_last_run_timestamp_seconds",
            "When this instance's last run of the job ended, by result (Unix time; 0 until then).",
            ["job_name", "result"],
            registry=r,
        )
        self.last_success = Gauge(
            "pyjob_last_success_timestamp_seconds",
            "When the job last ended successfully on any instance, as of this scrape (from the "
            "run records where the backend keeps them, else this instance's runs; Unix time). "
            "Until it has, when this instance started serving the job.",
            ["job_name"],
            registry=r,
        )
        self.running = Gauge(
            "pyjob_running", "Runs of the job going on in this instance.", ["job_name"], registry=r
        )
        self.missed = Counter(
            "pyjob_missed_ticks",
            "Ticks that passed without running (late wake-up, --misfire-grace).",
            ["job_name"],
            registry=r,
        )
        self.skipped = Counter(
            "pyjob_skipped_ticks",
            "Ticks this instance did not run. overlap (the previous run still going), "
            "queue-full and other are decided by the instance that won the tick's claim: once "
            "per tick across the fleet, and so is pool-full (the pool had no slot until "
            "--misfire-grace). backend-error (claim failed, fail closed), refused, "
            "clock-ahead (this host's clock ahead of the backend's) and paused (`pyjob pause`) "
            "are decided by each instance for itself: every instance counts the tick.",
            ["job_name", "reason"],
            registry=r,
        )
        self.claims_won = Counter(
            "pyjob_claims_won",
            "Ticks whose claim this instance won (--spread shares them across the fleet).",
            ["job_name"],
            registry=r,
        )
        self.backend_offset = Gauge(
            "pyjob_backend_clock_offset_seconds",
            "This host's clock's last measured offset to the lock backend's clock (positive when "
            "this host is behind); --spread claims by the backend's clock.",
            ["backend"],
            registry=r,
        )
        self.paused = Gauge(
            "pyjob_paused",
            "1 while the job is paused (`pyjob pause`) as this instance last read it, else 0.",
            ["job_name"],
            registry=r,
        )
        self.triggered = Counter(
            "pyjob_triggered_runs",
            "`pyjob trigger` runs this instance won (once per trigger across the fleet).",
            ["job_name"],
            registry=r,
        )
        self.pool_waits = Histogram(
            "pyjob_pool_wait_seconds",
            "How long runs that found their --pool full waited for a slot (those that got one).",
            ["pool"],
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter(
            "pyjob_backend_errors",
            "Backend calls that failed or took too long.",
            ["backend"],
            registry=r,
        )
        self.ping_failures = Counter(
            "pyjob_ping_failures",
            "--ping requests that failed after their retries, or were not sent.",
            ["job_name"],
            registry=r,
        )
        self.interval = Gauge(
            "pyjob_schedule_interval_seconds",
            "The longest gap between the job's next ticks (for staleness alerts).",
            ["job_name"],
            registry=r,
        )
        self.info = Gauge(
            "pyjob_info",
            "The version and instance of this pyjob.",
            ["version", "pyjob_instance"],
            registry=r,
        )
        self.info.labels(version, instance).set(1)
        self.silence = Gauge(
            "pyjob_loop_silence_seconds",
            f"Seconds since the scheduler loop was last seen; /healthz fails over {LIVENESS:g} "
            "(for the textfile, which has no /healthz).",
            registry=r,
        )
        self.silence.set_function(lambda: round(self.health()[1], 3))
        self.output_lost = Gauge(
            "pyjob_output_lost",
            "1 once lines for pyjob's own stdout or stderr are dropped: the stream closed (its "
            "reader went away), or writing to it failed.",
            ["stream"],
            registry=r,
        )
        for stream in ("stdout", "stderr"):
            self.output_lost.labels(stream).set(0)
        self.updated = Gauge(
            "pyjob_metrics_updated_timestamp_seconds",
            "When these metrics were produced (Unix time): each scrape of /metrics, each write "
            "of the textfile. A textfile whose value stops advancing is no longer written.",
            registry=r,
        )
        self.updated.set_function(lambda: clock.now().timestamp())
        self._offset: Gauge | None = None  # registered at the first clock measurement
        self._lock = threading.Lock()
        self._success: dict[str, float] = {}
        # Jobs without a success seen yet: their last-success value is when this instance
        # started serving them, which any real success replaces, even an older one.
        self._unproven: set[str] = set()
        self._backends: dict[str, str] = {}
        self._beat = clock.monotonic()
        self.set_jobs(intervals, backends)

    # ------------------------------------------------------------------ jobs

    def set_jobs(self, intervals: Mapping[str, float | None], backends: Mapping[str, str]) -> None:
        """The jobs served (at start, and after a reload): every series of a job exists from
        then, at zero, so that ``increase()`` sees its first failure and a job that never
        succeeds still has a last success to alert on (when it began to be served here). A job
        no longer served loses its staleness series (last success, interval), so it stops
        alerting; its counters stay."""
        now = self.clock.now().timestamp()
        with self._lock:
            gone = set(self._backends) - set(intervals)
            self._backends = dict(backends)
            for job in gone:
                self._success.pop(job, None)
                self._unproven.discard(job)
                for g in (self.last_success, self.interval):
                    with contextlib.suppress(KeyError):
                        g.remove(job)
            for job in intervals:
                if job not in self._success:
                    self._success[job] = now
                    self._unproven.add(job)
                    self.last_success.labels(job).set(now)
        for job, every in intervals.items():
            for result in RESULTS:
                self.runs.labels(job, result)
                self.last_run.labels(job, result)
            for reason in SKIP_REASONS:
                self.skipped.labels(job, reason)
            self.duration.labels(job)
            self.lateness.labels(job)
            self.running.labels(job)
            self.missed.labels(job)
            self.ping_failures.labels(job)
            self.paused.labels(job)
            self.triggered.labels(job)
            if every is not None:
                self.interval.labels(job).set(every)
        for kind in set(backends.values()):
            self.backend_errors.labels(kind)

    def _backend(self, job: str) -> str:
        kind = self._backends.get(job)
        if kind is not None:
            return kind
        kinds = set(self._backends.values())
        return kinds.pop() if len(kinds) == 1 else "unknown"

    # ------------------------------------------------------------------ events

    def on_event(self, event: Event) -> None:
        kind, job, f = event.kind, event.job, event.fields
        if kind == "output":
            return
        first = int(f.get("attempt") or 1) == 1
        if kind == "run-started":
            self.running.labels(job).inc()
            if first and event.tick is not None and f.get("lateness") is not None:
                self.lateness.labels(job).observe(max(0.0, float(f["lateness"])))
        elif kind == "run-finished" and "retry_in" in f:
            self.running.labels(job).dec()  # an attempt that is retried: the run goes on
        elif kind == "retry-dropped" and "result" in f:
            self.runs.labels(job, str(f["result"])).inc()  # a stop ended it between attempts
        elif kind == "run-finished":
            result = event_result(f)
            self.running.labels(job).dec()
            self.runs.labels(job, result).inc()
            if f.get("duration") is not None:
                self.duration.labels(job).observe(float(f["duration"]))
            at = event.at.timestamp()
            self.last_run.labels(job, result).set(at)
            if result is Result.SUCCESS:
                self.success(job, at)
        elif kind in ("claimed", "backend-clock"):
            self._spread(kind, job, f)
        elif kind == "missed":
            self.missed.labels(job).inc(int(f.get("count") or 1))
        elif kind == "backend-error":
            self.backend_errors.labels(self._backend(job)).inc()
        elif kind in ("paused", "resumed", "triggered", "pool-waited"):
            self._control(kind, job, f)
        elif kind == "ping-failed":
            self.ping_failures.labels(job).inc()
        elif kind == "output-closed":
            self.output_lost.labels(str(f.get("stream"))).set(1)
        elif kind in ("clock", "clock-warning") and f.get("offset") is not None:
            self._clock_offset(float(f["offset"]))
        reason = skip_reason(event)
        if reason is not None:
            self.skipped.labels(job, reason).inc()

    def _control(self, kind: str, job: str, f: Mapping[str, Any]) -> None:
        """Pauses, triggers and pool waits."""
        if kind in ("paused", "resumed"):
            self.paused.labels(job).set(1 if kind == "paused" else 0)
        elif kind == "triggered":
            self.triggered.labels(job).inc()
        else:
            self.pool_waits.labels(str(f.get("pool"))).observe(float(f.get("waited") or 0))

    def success(self, job: str, at: float) -> None:
        """``job`` succeeded at ``at`` (Unix time), here or on another instance."""
        with self._lock:
            if at <= self._success.get(job, 0.0) and job not in self._unproven:
                return
            if job not in self._backends and self._backends:
                return  # no longer served (a reload removed it)
            self._unproven.discard(job)
            self._success[job] = at
            self.last_success.labels(job).set(at)

    def _spread(self, kind: str, job: str, f: Mapping[str, Any]) -> None:
        """What --spread is seen by: claims won, and the offset to the backend's clock."""
        if kind == "claimed":
            self.claims_won.labels(job).inc()
        elif f.get("offset") is not None:
            # Labelled by the backend's kind, never its URL (it may hold a password).
            scheme = str(f.get("backend") or "file").partition(":")[0]
            kind = {"rediss": "redis", "postgres": "postgresql"}.get(scheme, scheme)
            self.backend_offset.labels(kind).set(float(f["offset"]))

    def _clock_offset(self, offset: float) -> None:
        with self._lock:
            if self._offset is None:
                self._offset = Gauge(
                    "pyjob_clock_offset_seconds",
                    "The clock's last measured offset from NTP time (NTP's sign: positive when "
                    "this host is behind).",
                    registry=self.registry,
                )
        self._offset.set(offset)

    # ------------------------------------------------------------------ liveness

    def beat(self) -> None:
        """The scheduler loop is alive (it went to wait, or says so)."""
        self._beat = self.clock.monotonic()

    def health(self) -> tuple[bool, float]:
        """Whether the loop was seen within LIVENESS, and how many seconds ago."""
        age = self.clock.monotonic() - self._beat
        return age <= LIVENESS, age

    # ------------------------------------------------------------------ output

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def write_textfile(self, path: str) -> None:
        """Write the metrics to ``path`` atomically: a temporary file beside it, then rename, so
        node_exporter never reads half a file (the temporary name does not end in .prom)."""
        data = self.render()
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class BeatingClock(WrappedClock):
    """The scheduler's clock, beating ``beat`` each time the loop goes to wait and comes back
    (the loop is the only caller of ``wait_for``). Everything else is the base clock's."""

    def __init__(self, base: Clock, beat: Callable[[], None]) -> None:
        super().__init__(base)
        self._beat = beat

    def wait_for(self, waker: Waker, seconds: float, fds: Sequence[int]) -> list[int]:
        self._beat()
        try:
            return self.base.wait_for(waker, seconds, fds)
        finally:
            self._beat()

    def longest_wait(self) -> float:
        """A wait ends within MAX_SLEEP_SLICE even where steps of the clock would end it: a
        loop seen waiting no longer than that is a loop seen alive."""
        return min(self.base.longest_wait(), MAX_SLEEP_SLICE)


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` on HOST:PORT, on threads of their own.
    Binds at construction (OSError: address in use, not allowed). ``before`` is called before
    each scrape is rendered (the fleet's run records are read then)."""

    def __init__(
        self, metrics: Metrics, host: str, port: int, before: Callable[[], None] | None = None
    ) -> None:
        m = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    if before is not None:
                        before()
                    self._answer(200, m.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, age = m.health()
                    text = (
                        "ok\n"
                        if ok
                        else f"the scheduler loop was last seen {human_duration(age)} ago\n"
                    )
                    self._answer(200 if ok else 503, text.encode(), "text/plain; charset=utf-8")
                elif path == "/":
                    body = b"pyjob: /metrics (Prometheus), /healthz (liveness)\n"
                    self._answer(200, body, "text/plain; charset=utf-8")
                else:
                    self._answer(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _answer(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes are not events

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # A scraper that gave up (its scrape timeout) closed the connection: nothing to
                # tell, and a traceback on stderr would break the JSON log.
                if isinstance(sys.exc_info()[1], ConnectionError):
                    return
                super().handle_error(request, client_address)

        self.httpd = Server((host, port), Handler)
        self.port: int = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="pyjob-metrics-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()


class Periodic:
    """Call ``fn`` every ``every`` seconds on a thread of its own (the first time after
    ``first``, default one period), and once more at ``stop()`` when ``at_stop``. An exception of
    ``fn`` is given to ``failed``."""

    def __init__(
        self,
        fn: Callable[[], None],
        every: float,
        clock: Clock,
        name: str,
        failed: Callable[[BaseException], None],
        at_stop: bool = False,
        first: float | None = None,
    ) -> None:
        self.fn, self.every, self.clock, self.failed = fn, every, clock, failed
        self.at_stop = at_stop
        self.first = every if first is None else first
        self._waker = Waker()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _call(self) -> None:
        try:
            self.fn()
        except Exception as e:
            self.failed(e)

    def _loop(self) -> None:
        wait = self.first
        while not self._stopped:
            if self.clock.wait(self._waker, wait) or self._stopped:
                return
            self._call()
            wait = self.every

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped = True
        self._waker.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._waker.close()
            if self.at_stop:
                self._call()


class FleetReader:
    """Reads the run records of the jobs' backends, so ``pyjob_last_success_timestamp_seconds``
    is the fleet's: every instance reports the same value, current when it is scraped or
    written. ``refresh()`` asks for a read and waits for it a bounded time; the reads run on a
    thread of their own (never the scheduler's, nor a scrape's, which a hung backend would hold
    past Prometheus' scrape timeout). One store per lock URL, opened on first use (a connection
    of its own, not the scheduler's). ``jobs``: job -> its lock URL; ``open_store(url)`` gives
    the store (None: the backend keeps no records) and a function that closes it."""

    def __init__(
        self,
        metrics: Metrics,
        jobs: Mapping[str, str | None],
        open_store: Callable[[str | None], tuple[RecordStore | None, Callable[[], None]]],
    ) -> None:
        self.metrics = metrics
        self.open_store = open_store
        self._jobs = dict(jobs)
        self._lock = threading.Lock()
        self._stores: dict[str | None, tuple[RecordStore | None, Callable[[], None]]] = {}
        self._since: dict[str, int] = {}  # job -> the oldest tick worth reading again
        self._retry_at = 0.0  # monotonic: after a failed read, the values are kept until then
        # The reader thread: reads are numbered; a refresh waits for one that starts after it.
        self._state = threading.Lock()
        self._asked = 0
        self._started = 0
        self._waiting: list[tuple[int, Waker]] = []
        self._waker = Waker()
        self._thread: threading.Thread | None = None
        self._closed = False

    def refresh(self, wait: float = FLEET_WAIT) -> None:
        """Read the records now, for a scrape or a textfile write, and wait at most ``wait``
        seconds for it: a scrape must answer, with the values of the last read if this one is
        slow or fails (an outage is told by the scheduler's events). After a failed read, the
        values are kept for FLEET_RETRY seconds without asking again."""
        clock = self.metrics.clock
        if clock.monotonic() < self._retry_at:
            return
        done = Waker()
        with self._state:
            if self._closed:
                done.close()
                return
            number = self._started + 1
            self._asked = max(self._asked, number)
            self._waiting.append((number, done))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="pyjob-metrics-fleet", daemon=True
                )
                self._thread.start()
        self._waker.wake()
        try:
            clock.wait(done, wait)
        finally:
            with self._state:
                self._waiting.remove((number, done))
            done.close()

    def _work(self) -> None:
        clock = self.metrics.clock
        while True:
            with self._state:
                if self._closed:
                    return
                number = self._asked if self._asked > self._started else None
                if number is not None:
                    self._started = number
            if number is None:
                clock.wait(self._waker, 3600.0)
                continue
            try:
                self.read()
            except Exception:
                self._retry_at = clock.monotonic() + FLEET_RETRY
            with self._state:
                ready = [w for n, w in self._waiting if n <= number]
            for w in ready:
                w.wake()

    def update(self, jobs: Mapping[str, str | None]) -> None:
        with self._lock:
            self._jobs = dict(jobs)

    def read(self) -> None:
        """One pass over the jobs; a backend that fails raises, and is tried again at the next
        pass."""
        with self._lock:
            jobs = list(self._jobs.items())
        for job, url in jobs:
            store = self._store(url)
            if store is None:
                continue
            since = self._since.get(job)
            records = store.runs(job, FLEET_FIRST, since_us=since)
            if not records:
                continue
            done = [r for r in records if r.result == Result.SUCCESS]
            if done:
                best = max(done, key=lambda r: r.finished_us or r.tick_us)
                self.metrics.success(job, (best.finished_us or best.tick_us) / 1e6)
            # Next time, read from the oldest record still running (it may end in success), else
            # from the newest seen: the rest cannot change.
            running = [r.tick_us for r in records if r.result == Result.RUNNING]
            self._since[job] = min([*running, records[0].tick_us])

    def _store(self, url: str | None) -> RecordStore | None:
        if url not in self._stores:
            self._stores[url] = self.open_store(url)
        return self._stores[url][0]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the reader thread (a read under way gets ``timeout`` seconds), close the stores."""
        with self._state:
            self._closed = True
            thread = self._thread
        self._waker.wake()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return  # a read hangs in a store: closing it under the read would not help
        self._waker.close()
        for _, close in self._stores.values():
            with contextlib.suppress(Exception):
                close()
        self._stores.clear()


__all__ = [
    "LIVENESS",
    "RESULTS",
    "SKIP_REASONS",
    "BeatingClock",
    "FleetReader",
    "Metrics",
    "MetricsServer",
    "Periodic",
    "skip_reason",
]

"""What `pyjob run` tells the outside world beside its log: --ping and the Prometheus metrics
(--metrics-listen, --metrics-textfile).

Both consume the scheduler's events: ``serve()`` hands the scheduler ``Monitoring.fan_out(log)``
as its emit, which logs each event and then gives it to the consumers (pyjob.core.pings,
pyjob.core.metrics). Consumers only queue or count, on the emitting thread; their network and
file work runs on threads of their own, so nothing here can delay a tick.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pyjob.core.clock import Clock
    from pyjob.core.events import Emit, Event, Wants
    from pyjob.core.metrics import FleetReader, Metrics, MetricsServer, Periodic
    from pyjob.core.pings import PingSender
    from pyjob.core.records import RecordStore
    from pyjob.core.scheduler import Job

METRICS_EXTRA = "pip install 'pyjob[metrics]'"


@dataclass(frozen=True)
class MonitorOptions:
    listen: tuple[str, int] | None  # --metrics-listen
    textfile: str | None  # --metrics-textfile

    @property
    def metrics(self) -> bool:
        return self.listen is not None or self.textfile is not None


def parse_listen(text: str | None) -> tuple[str, int] | None:
    """``HOST:PORT``, ``:PORT`` (every interface) or ``[IPv6]:PORT``."""
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(
            f"'{text}' is not HOST:PORT (like 127.0.0.1:9464, :9464 or [::]:9464)",
            param_hint="'--metrics-listen'",
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def backend_kind(url: str | None) -> str:
    """The backend label of a lock URL: its kind, never the URL (it may hold a password)."""
    if not url:
        return "file"
    if url == "none":
        return "none"
    scheme = url.partition(":")[0]
    return {"rediss": "redis", "postgres": "postgresql"}.get(scheme, scheme)


def longest_gap(job: Job, now: datetime, count: int = 8) -> float | None:
    """The longest gap between the job's next ``count`` ticks: twice that without a success is
    overdue, weekends of a MON-FRI job included."""
    ticks: list[datetime] = []
    tick = job.schedule.next_tick(now)
    while tick is not None and len(ticks) < count:
        ticks.append(tick)
        tick = job.schedule.next_tick(tick)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    return max(gaps) if gaps else None


class Monitoring:
    """The consumers `pyjob run` feeds, built from its jobs and options; a missing extra exits 2
    here, before anything is opened (--ping URLs are checked with the settings).

    For the scheduler's author: ``beat()`` says the loop is alive (until it is called from the
    loop, ``loop_clock()`` beats each time the loop waits); ``update_jobs(jobs)`` takes the jobs
    after a reload (``reloading()`` already calls it when the loader succeeds)."""

    def __init__(
        self,
        jobs: Sequence[Job],
        options: MonitorOptions,
        instance: str,
        clock: Clock,
        environ: Any,
    ) -> None:
        from pyjob.core import __version__

        self.options = options
        self.instance = instance
        self.clock = clock
        self.environ = environ
        self._log: Emit | None = None
        self._consumers: list[Callable[[Event], None]] = []
        self.pings: PingSender | None = None
        self.metrics: Metrics | None = None
        self.server: MetricsServer | None = None
        self.fleet: FleetReader | None = None
        self._periodic: list[Periodic] = []
        self._started = False
        self._user_agent = f"pyjob/{__version__}"
        if any(job.settings.ping for job in jobs):
            self._add_pings(jobs)
        if options.metrics:
            try:
                import prometheus_client  # noqa: F401
            except ImportError:
                flag = "--metrics-listen" if options.listen else "--metrics-textfile"
                click.echo(f"Error: {flag} needs prometheus-client: {METRICS_EXTRA}", err=True)
                raise click.exceptions.Exit(2) from None
            from pyjob.core import metrics

            now = clock.now()
            self.metrics = metrics.Metrics(
                clock,
                instance,
                __version__,
                {j.job_id: longest_gap(j, now) for j in jobs},
                {j.job_id: backend_kind(j.lock) for j in jobs},
            )
            self._consumers.append(self.metrics.on_event)
            self.fleet = metrics.FleetReader(
                self.metrics, {j.job_id: j.lock for j in jobs}, self._open_store
            )

    # ------------------------------------------------------------------ wiring

    def fan_out(self, log: Emit) -> Emit:
        """The scheduler's emit: log the event, then give it to each consumer."""
        self._log = log
        consumers = self._consumers  # a reload may add one (the first --ping)

        def emit(event: Event) -> None:
            log(event)
            for consume in consumers:
                try:
                    consume(event)
                except Exception as e:  # a bug in a consumer must never stop the scheduler
                    self._warn(event.job, f"{type(e).__name__}: {e}")

        return emit

    def wants(self, log: Wants) -> Wants:
        """Which events the scheduler is to make: those ``log`` keeps, all when some consumer
        (metrics, pings) listens."""
        consumers = self._consumers  # a reload may add one (the first --ping)

        def wants(kind: str) -> bool:
            return bool(consumers) or log(kind)

        return wants

    def loop_clock(self, clock: Clock) -> Clock:
        """The scheduler's clock; with metrics, each wait of the loop is a liveness beat."""
        if self.metrics is None:
            return clock
        from pyjob.core.metrics import BeatingClock

        return BeatingClock(clock, self.metrics.beat)

    def beat(self) -> None:
        if self.metrics is not None:
            self.metrics.beat()

    def reloading(self, reload: Callable[[], list[Job]] | None) -> Callable[[], list[Job]] | None:
        """``reload``, telling the consumers the new jobs when it succeeds."""
        if reload is None:
            return None
        loader = reload

        def load() -> list[Job]:
            jobs = loader()
            self.update_jobs(jobs)
            return jobs

        return load

    def update_jobs(self, jobs: Sequence[Job]) -> None:
        """The jobs after a reload: their ping URLs, metric series and fleet reads."""
        if self.pings is not None:
            self.pings.update(self._ping_urls(jobs), {j.job_id for j in jobs})
        elif any(job.settings.ping for job in jobs):
            self._add_pings(jobs)
        if self.metrics is not None:
            now = self.clock.now()
            self.metrics.set_jobs(
                {j.job_id: longest_gap(j, now) for j in jobs},
                {j.job_id: backend_kind(j.lock) for j in jobs},
            )
        if self.fleet is not None:
            self.fleet.update({j.job_id: j.lock for j in jobs})

    # ------------------------------------------------------------------ start and stop

    def start(self, who: str) -> None:
        """Bind the metrics port (exit 2 when it cannot be), start the workers."""
        self._started = True
        if self.pings is not None:
            self.pings.start()
        if self.metrics is None:
            return
        # Only now: pyjob.core.metrics needs the optional prometheus-client (pyjob[metrics]).
        from pyjob.core.metrics import TEXTFILE_EVERY, MetricsServer, Periodic

        # The fleet's last successes are read when they are shown: at each scrape, before each
        # textfile write.
        refresh = self.fleet.refresh if self.fleet is not None else _nothing
        listen = None
        if self.options.listen is not None:
            host, port = self.options.listen
            try:
                self.server = MetricsServer(self.metrics, host, port, before=refresh)
            except OSError as e:
                text = f"{host}:{port}"
                click.echo(f"Error: --metrics-listen {text}: {e.strerror or e}", err=True)
                raise click.exceptions.Exit(2) from None
            self.server.start()
            shown = f"[{host}]" if ":" in host else host
            listen = f"http://{shown}:{self.server.port}/metrics"
        textfile = self.options.textfile
        if textfile is not None:
            path = textfile
            metrics = self.metrics
            try:
                metrics.write_textfile(path)  # at once: a path that cannot be written shows now
            except OSError as e:
                click.echo(f"Error: --metrics-textfile {path}: {e.strerror or e}", err=True)
                raise click.exceptions.Exit(2) from None

            def write() -> None:
                refresh()
                metrics.write_textfile(path)

            self._periodic.append(
                Periodic(
                    write,
                    TEXTFILE_EVERY,
                    self.clock,
                    "pyjob-metrics-textfile",
                    lambda e: self._warn("*", f"--metrics-textfile {path}: {e}"),
                    at_stop=True,
                    first=0.0,  # again at once, with the fleet's records read
                )
            )
        for p in self._periodic:
            p.start()
        self.report("metrics", who, None, listen=listen, textfile=textfile)

    def stop(self) -> None:
        """After the scheduler ended: send the last pings, write the textfile a last time."""
        if self.pings is not None:
            self.pings.stop()
        for p in self._periodic:  # the last textfile, with the fleet's latest
            p.stop()
        if self.server is not None:
            self.server.stop()
        if self.fleet is not None:
            self.fleet.close()

    # ------------------------------------------------------------------ helpers

    def report(self, kind: str, job: str, tick: Any, **fields: Any) -> None:
        from pyjob.core import events

        event = events.make(kind, job, self.instance, tick, self.clock.now(), **fields)
        for consume in (self._log, *self._consumers):
            if consume is not None:
                consume(event)

    def _warn(self, job: str, problem: str) -> None:
        from pyjob.core import events

        if self._log is not None:
            self._log(
                events.make(
                    "warning",
                    job,
                    self.instance,
                    None,
                    self.clock.now(),
                    problem=problem,
                    action="going on without it",
                )
            )

    def _add_pings(self, jobs: Sequence[Job]) -> None:
        from pyjob.core.pings import PingSender

        self.pings = PingSender(
            self._ping_urls(jobs), self.clock, self.report, user_agent=self._user_agent
        )
        self._consumers.append(self.pings.on_event)
        if self._started:
            self.pings.start()

    @staticmethod
    def _ping_urls(jobs: Sequence[Job]) -> dict[str, str]:
        return {j.job_id: j.settings.ping for j in jobs if j.settings.ping}

    def _open_store(self, url: str | None) -> tuple[RecordStore | None, Callable[[], None]]:
        from pyjob.core.backends import open_backend

        backend = open_backend(url, self.environ, self.clock)
        return backend.records(), backend.close


def _nothing() -> None:
    """No fleet to read (no metrics, or no records)."""

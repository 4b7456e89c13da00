"""`--ping URL`: tell a healthchecks.io-style monitor when each run starts and how it ended.

The protocol is healthchecks.io's, which Cronitor-style and self-hosted monitors also accept:
``GET URL/start?rid=UUID`` when a run starts and ``GET URL/<exit-code>?rid=UUID`` when it ends
(``URL/0`` is a success). The rid is ``uuid5(NAMESPACE_URL, run_id)``: the run id is
``<job>-<tick>`` on every host, so the monitor pairs a start and its end whichever instance ran
the run, and only the instance that ran it pings (claims make that one per run across the fleet).
When the run's output is captured (--log-output), the end is a ``POST`` whose body is the output's
last lines, at most TAIL_BYTES: healthchecks.io shows a ping's body as the run's log (it keeps the
first 100 kB of a body; the tail is what says why a run failed).

Pings are sent by one background thread from a bounded queue, each with a short timeout and a few
retries with backoff, so a slow, hung or absent monitor never delays the scheduler. A ping that
still fails (or that a full queue drops) is logged as a ``ping-failed`` event; the run is not
affected.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .clock import Clock, Waker
from .events import Event

TIMEOUT = 3.0  # seconds per request
BACKOFF = (0.5, 1.0, 2.0)  # the waits before each retry: 4 attempts in all
QUEUE_MAX = 1000  # pings waiting; beyond it new ones are dropped (and that is logged, once)
DRAIN = 3.0  # at stop, the longest time spent sending what is still queued
TAIL_BYTES = 10_000  # the most output a final ping carries (healthchecks.io keeps 100 kB)


def ping_rid(run_id: str) -> str:
    """The rid of a run's pings: the same on every host (uuid5 of the run id)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, run_id))


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a --ping URL, or None: the CLI option and a jobs file's ``ping``
    key ask this one function, so `validate` refuses what `run` would."""
    from .hosts import host_problem

    if not url.isprintable() or any(c.isspace() for c in url):
        return "is not a URL: it has a space or a control character"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:  # an unclosed [IPv6 literal, a port that is not one
        return f"is not a URL: {e}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http:// or https:// URL"
    if port == 0:
        return "is not a URL: port 0"
    problem = host_problem(parts.hostname)
    return f"has a bad host: {problem}" if problem else None


def ping_url(base: str, what: str, rid: str) -> str:
    """``base`` + ``/what``, with ``rid`` added to any query it already has."""
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/") + "/" + what
    query = "&".join(q for q in (parts.query, f"rid={rid}") if q)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


@dataclass(frozen=True)
class _Ping:
    job: str
    tick: datetime | None
    run_id: str
    what: str  # "start" or the exit code
    url: str
    body: bytes | None = None  # the output's tail, POSTed; None: a GET


# report(kind, job, tick, **fields): a ping-failed event, through the scheduler's emit.
Report = Callable[..., None]


class PingSender:
    """Consumes the scheduler's events (``on_event``) and sends the pings of jobs that have a
    --ping URL. ``on_event`` only queues: it is called on the scheduler's thread."""

    def __init__(
        self,
        urls: Mapping[str, str],
        clock: Clock,
        report: Report,
        *,
        timeout: float = TIMEOUT,
        backoff: tuple[float, ...] = BACKOFF,
        queue_max: int = QUEUE_MAX,
        user_agent: str = "pyjob",
    ) -> None:
        self._urls = dict(urls)
        self.clock = clock
        self.report = report
        self.timeout = timeout
        self.backoff = backoff
        self.queue_max = queue_max
        self.user_agent = user_agent
        self._queue: collections.deque[_Ping] = collections.deque()
        # run id -> the last lines of its output (jobs with a URL, runs not ended yet)
        self._tails: dict[str, _Tail] = {}
        self._lock = threading.Lock()
        self._waker = Waker()
        self._stopping = False
        self._dropping = False
        self._drain_until: float | None = None
        self._thread: threading.Thread | None = None

    def update(self, urls: Mapping[str, str], served: Collection[str] = ()) -> None:
        """The --ping URLs after a reload; ``served``: every job id the reload kept or added. A
        job in ``served`` without a URL in ``urls`` is pinged no more; a job not in ``served``
        (removed) keeps its URL, so the run it still has going pings its end."""
        with self._lock:
            kept = {job: url for job, url in self._urls.items() if job not in served}
            self._urls = {**kept, **urls}

    def on_event(self, event: Event) -> None:
        # A run's retries (--retries) are the same run: one start, one end with its final result.
        end = False
        if event.kind == "output":
            self._output(event)
            return
        if event.kind == "run-started" and int(event.fields.get("attempt") or 1) == 1:
            what = "start"
        elif event.kind == "run-finished" and "retry_in" not in event.fields:
            what, end = str(event.fields.get("exit_code")), True
        elif event.kind == "retry-dropped" and "exit_code" in event.fields:
            # a stop ended the run between attempts
            what, end = str(event.fields["exit_code"]), True
        else:
            return
        run_id = event.fields.get("run_id")
        with self._lock:
            tail = self._tails.pop(run_id, None) if end and run_id is not None else None
            url = self._urls.get(event.job)
            if url is None or run_id is None:
                return
            body = tail.body() if tail is not None else None
            if len(self._queue) >= self.queue_max:
                dropped, self._dropping = not self._dropping, True
            else:
                self._queue.append(_Ping(event.job, event.tick, run_id, what, url, body))
                dropped = False
        if dropped:  # once per episode of a full queue, not once per ping
            self._failed(
                _Ping(event.job, event.tick, run_id, what, url),
                0,
                f"queue full ({self.queue_max} pings waiting): dropping pings until it drains",
            )
        self._waker.wake()

    def _output(self, event: Event) -> None:
        """A line of a run's output: kept in the run's tail when its job pings."""
        run_id = event.fields.get("run_id")
        line = event.fields.get("line")
        if run_id is None or line is None:
            return
        with self._lock:
            tail = self._tails.get(run_id)
            if tail is None:
                if event.job not in self._urls:
                    return
                tail = self._tails[run_id] = _Tail()
            tail.add(str(line))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pyjob-ping", daemon=True)
        self._thread.start()

    def stop(self, drain: float = DRAIN) -> None:
        """Send what is queued for up to ``drain`` seconds, then give up on the rest (logged)."""
        with self._lock:
            self._stopping = True
            self._drain_until = self.clock.monotonic() + drain
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(drain + self.timeout + 1)
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
            self._tails.clear()
        if left:
            self._failed(left[0], 0, f"not sent: pyjob stopped with {len(left)} pings queued")
        if self._thread is None or not self._thread.is_alive():
            self._waker.close()

    # ------------------------------------------------------------------ the worker

    def _loop(self) -> None:
        while True:
            with self._lock:
                ping = self._queue.popleft() if self._queue else None
                stopping = self._stopping
                if not self._queue:
                    self._dropping = False  # drained: a full queue is worth a new warning
            if ping is None:
                if stopping:
                    return
                self.clock.wait(self._waker, 60.0)
                continue
            if stopping and self._past_drain():
                with self._lock:
                    self._queue.appendleft(ping)
                return
            try:
                self._send(ping)
            except Exception as e:  # a bug must not end the worker: later pings still go
                self._failed(ping, 0, f"{type(e).__name__}: {e}")

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` before a retry; False when stop()'s drain time ran out first."""
        deadline = self.clock.monotonic() + seconds
        while not self._past_drain():
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return True
            self.clock.wait(self._waker, left)
        return False

    def _past_drain(self) -> bool:
        return self._drain_until is not None and self.clock.monotonic() >= self._drain_until

    def _send(self, ping: _Ping) -> None:
        import http.client
        import urllib.error
        import urllib.request

        rid = ping_rid(ping.run_id)
        url = ping_url(ping.url, ping.what, rid)
        headers = {"User-Agent": self.user_agent}
        if ping.body is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        request = urllib.request.Request(url, data=ping.body, headers=headers)
        error = ""
        attempts = 0
        for wait in (0.0, *self.backoff):
            if wait and not self._pause(wait):
                break
            attempts += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read(1024)
                with self._lock:
                    self._dropping = False
                return
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code} {e.reason}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    break  # the monitor refuses this URL: retrying will not help
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                error = _reason(e)
        self._failed(ping, attempts, error)

    def _failed(self, ping: _Ping, attempts: int, error: str) -> None:
        host = urllib.parse.urlsplit(ping.url).hostname or ""
        with contextlib.suppress(Exception):  # a broken log must not kill the worker
            self.report(
                "ping-failed",
                ping.job,
                ping.tick,
                run_id=ping.run_id,
                ping=ping.what,
                host=host,
                attempts=attempts,
                error=error,
            )


class _Tail:
    """The last lines of a run's output, at most TAIL_BYTES once encoded (older lines are
    dropped whole; a line longer than that alone keeps its end)."""

    def __init__(self) -> None:
        self.lines: collections.deque[bytes] = collections.deque()
        self.size = 0

    def add(self, line: str) -> None:
        data = line.encode("utf-8", "replace")[-TAIL_BYTES:] + b"\n"
        self.lines.append(data)
        self.size += len(data)
        while self.size > TAIL_BYTES and len(self.lines) > 1:
            self.size -= len(self.lines.popleft())

    def body(self) -> bytes:
        data = b"".join(self.lines)[-TAIL_BYTES:]
        # Cut where a character starts, not inside one (a kept end of a long line).
        start = 0
        while start < len(data) and start < 4 and (data[start] & 0xC0) == 0x80:
            start += 1
        return data[start:]


def _reason(e: BaseException) -> str:
    """A short reason that never repeats the URL (which may hold a check's secret key)."""
    inner: Any = getattr(e, "reason", None) or e
    text = str(inner) or type(inner).__name__
    if isinstance(inner, TimeoutError) or "timed out" in text:
        return "timed out"
    return text


__all__ = ["PingSender", "ping_rid", "ping_url", "url_problem"]

"""The HTTP side of the etcd backend: etcd's v3 JSON gateway over one keep-alive connection, and
the etcd server's clock as its HTTP ``Date`` headers tell it.

The gateway answers plain HTTP/1.1 (``POST /v3/kv/txn`` and friends; keys and values base64,
64-bit integers as strings, fields at their zero value left out), so the standard library's
http.client is all it takes: no gRPC, no protobuf, no new dependency.

etcd keeps no clock of its own in its data model (leases are timed by the leader's monotonic
clock), but its gateway is a Go HTTP server, which stamps every answer with the server host's
wall clock in a ``Date`` header, to the second. ``DateClock`` turns those stamps into bounds on the
server's clock: an answer stamped D that came between monotonic instants m0 and m1 says that the
server's clock read some time in [D, D+1) at some instant in [m0, m1], so its offset from this
host's monotonic clock lies in [D - m1, D + 1 - m0]. Intersecting the bounds of the answers seen
narrows the interval to far below a second once the answers have straddled a few second edges
(every tick's claims do), much as htpdate does.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
from collections import deque
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from ..clock import Clock
from ..errors import BackendError

# How long a bound on the server's clock is trusted: older ones are dropped, so that a clock
# stepped since (or the slow drift between two clocks) cannot leave a wrong, narrow interval.
BOUND_LIFETIME = 600.0
BOUNDS_KEPT = 64


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode(errors="replace")


def range_end(prefix: str) -> str:
    """The end of the key range of every key starting with ``prefix`` (ASCII)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class DateClock:
    """Bounds on the etcd server's wall clock, learnt from the Date headers of its answers."""

    def __init__(self) -> None:
        # (low, high, monotonic when learnt): offsets of the server's clock from the monotonic
        self._bounds: deque[tuple[float, float, float]] = deque(maxlen=BOUNDS_KEPT)

    def learn(self, stamp: float, sent: float, received: float) -> None:
        self._bounds.append((stamp - received, stamp + 1.0 - sent, received))
        if self.offset(received) is None:  # the clock stepped: only the newest bound holds
            newest = self._bounds[-1]
            self._bounds.clear()
            self._bounds.append(newest)

    def offset(self, mono: float) -> tuple[float, float] | None:
        """The interval the offset (server clock minus monotonic) lies in; None when unknown."""
        while self._bounds and mono - self._bounds[0][2] > BOUND_LIFETIME:
            self._bounds.popleft()
        if not self._bounds:
            return None
        low = max(b[0] for b in self._bounds)
        high = min(b[1] for b in self._bounds)
        return (low, high) if low <= high else None

    def now_us(self, mono: float) -> tuple[int, int] | None:
        """(earliest, latest) the server's clock may read at monotonic ``mono``, in µs."""
        span = self.offset(mono)
        if span is None:
            return None
        return int((mono + span[0]) * 1e6), int((mono + span[1]) * 1e6)


class EtcdHttp:
    """One HTTP connection to the first of ``endpoints`` that answers. Every call is bounded by
    ``timeout`` (a socket timeout; a timeout is never retried: it is the bound); a connection
    found broken (a server that closed an idle connection, a restart) is made again once, to the
    next endpoint in turn, and the call sent again: every call pyjob makes is safe to repeat."""

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        url: str,
        timeout: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.endpoints = endpoints
        self.url = url
        self.timeout = timeout
        self._mono = monotonic
        self._at = 0  # the endpoint in use
        self._conn: http.client.HTTPConnection | None = None
        self.clock = DateClock()
        self.rtt = 0.0  # of the last answer

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port = self.endpoints[self._at % len(self.endpoints)]
            self._conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        return self._conn

    def _next_endpoint(self) -> None:
        self.close()
        self._at += 1
        if len(self.endpoints) > 1:
            self.clock = DateClock()  # another member, maybe on another host with its own clock

    def call(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """POST ``body`` to ``path``; the decoded answer. BackendError when it fails."""
        data = json.dumps(body, separators=(",", ":")).encode()
        attempts = max(2, len(self.endpoints))
        for attempt in range(1, attempts + 1):
            sent = self._mono()
            try:
                conn = self._connection()
                conn.request("POST", path, data, {"Content-Type": "application/json"})
                reply = conn.getresponse()
                payload = reply.read()
            except TimeoutError as e:
                self._next_endpoint()
                raise BackendError(f"{self.url}: {what}: no answer within {self.timeout:g}s") from e
            except (OSError, http.client.HTTPException) as e:
                self._next_endpoint()
                if attempt == attempts:
                    raise BackendError(f"{self.url}: {what}: {_reason(e)}") from e
                continue
            self._learn(reply.getheader("Date"), sent)
            return self._decode(reply.status, payload, what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _learn(self, date: str | None, sent: float) -> None:
        self.rtt = self._mono() - sent
        if date:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                self.clock.learn(parsedate_to_datetime(date).timestamp(), sent, self._mono())

    def _decode(self, status: int, payload: bytes, what: str) -> dict[str, Any]:
        try:
            doc = json.loads(payload)
        except ValueError as e:
            self._next_endpoint()
            raise BackendError(
                f"{self.url}: {what}: not an etcd answer (HTTP {status}: {payload[:80]!r})"
            ) from e
        if status != 200 or not isinstance(doc, dict) or "error" in doc:
            message = doc.get("message") or doc.get("error") if isinstance(doc, dict) else doc
            raise EtcdError(f"{self.url}: {what}: {message or f'HTTP {status}'}", doc)
        return doc


class EtcdError(BackendError):
    """etcd answered, with an error (``doc``: its answer)."""

    def __init__(self, message: str, doc: Any) -> None:
        super().__init__(message)
        self.doc = doc

    @property
    def lease_not_found(self) -> bool:
        return isinstance(self.doc, dict) and "lease not found" in str(self.doc.get("error"))


def _reason(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection"
    return str(e) or type(e).__name__


class ServerClock:
    """etcd keeps no clock in its data: the server's wall clock is bounded by the HTTP Date
    header of its answers (to the second), narrowed by each answer (DESIGN §8, "etcd")."""

    def __init__(self, http: EtcdHttp, check: Callable[[], None], clock: Clock, url: str) -> None:
        self.http = http
        self.check = check  # a cheap request, whose answer carries a Date header
        self._clock = clock
        self.url = url

    def now_us(self) -> tuple[int, int]:
        """(earliest, latest) the server's clock may read now, µs; read first when unknown."""
        span = self.http.clock.now_us(self._clock.monotonic())
        if span is None:
            self.check()
            span = self.http.clock.now_us(self._clock.monotonic())
        if span is None:
            raise BackendError(f"{self.url}: etcd's answers carry no Date header to judge time by")
        return span

    def read(self) -> tuple[float, float]:
        """The etcd server's wall clock, from the Date header of a fresh answer narrowed by the
        earlier ones; the resolution is the width of what they bound it to (one second at
        first)."""
        sent = self._clock.monotonic()
        self.check()
        mid = (sent + self._clock.monotonic()) / 2
        span = self.http.clock.offset(mid)
        if span is None:
            raise BackendError(f"{self.url}: etcd's answers carry no Date header to judge time by")
        return mid + (span[0] + span[1]) / 2, span[1] - span[0]

    def calibrate(self, target: float = 0.01, probes: int = 10) -> None:
        """Narrow the bounds on the server's clock to ``target`` seconds, for check-clock: each
        probe is sent to reach the server when, by the middle of the bounds so far, its Date
        header turns to the next second, so that its answer halves them (htpdate's method).
        At most ``probes`` probes, each waiting less than a second for its edge."""
        for _ in range(probes):
            sent = self._clock.monotonic()
            span = self.http.clock.offset(sent)
            if span is not None and span[1] - span[0] <= target:
                return
            if span is not None:
                middle = (span[0] + span[1]) / 2
                edge = math.floor(sent + middle) + 1 - middle  # monotonic, by that middle
                wait = edge - sent - self.http.rtt / 2
                if wait > 0:
                    self._clock.sleep(wait)
            self.check()

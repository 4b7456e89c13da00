"""Measuring this host's clock against NTP servers (DESIGN §6).

Packets use ntplib's format, but ntplib 0.4.0 believes any reply; pyjob checks each one first and
names the reason when it rejects it:

- the reply comes from the address and port that were asked, and is at least 48 bytes;
- mode 4 (server) — a mode-3 echo is someone bouncing our own packet back;
- stratum 1-15 — 0 is a kiss-o'-death, whose code (RATE, DENY, RSTR, ...) is reported; 16 means
  the server is unsynchronised;
- leap indicator not 3 (alarm: the server's clock is not synchronised);
- a non-zero transmit time;
- the origin timestamp equals, bit for bit, the transmit timestamp we sent (the request's low bits
  are random, so a reply cannot be forged or be an old one);
- a sane root distance (root delay / 2 + root dispersion at most 1.5 s, RFC 5905's MAXDIST);
- consistent server timestamps: the server cannot have held the request (transmit − receive)
  longer than the whole round trip took (beyond 1 ms of timestamp precision).

Offset and delay follow RFC 5905 from four timestamps; the round trip is timed on the monotonic
clock (t4 = t1 + elapsed), so a wall-clock step during the query cannot distort it. Of several
samples the one with the smallest delay wins; its error bound is delay / 2.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .clock import Clock
from .errors import ClockError, InputError

NTP_PORT = 123
MAX_ROOT_DISTANCE = 1.5  # seconds, RFC 5905 MAXDIST
MAX_NEGATIVE_DELAY = 0.001  # seconds of negative delay put down to timestamp precision
_NTP_DELTA = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_LEN = 48


@dataclass(frozen=True)
class Sample:
    server: str
    offset: float  # seconds the local clock is behind the server (add it to local time)
    delay: float  # round-trip delay, seconds
    stratum: int
    ref_id: str
    leap: int
    root_distance: float

    @property
    def error(self) -> float:
        """The measured offset is within ± this of the true offset to the server."""
        return self.delay / 2


@dataclass
class Measurement:
    server: str
    best: Sample | None
    samples: list[Sample] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # one reason per rejected or lost reply


class RejectedReply(Exception):
    """A reply that failed a check; the message says which."""


def parse_server(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT``."""
    s = text.strip()
    host, port = s, NTP_PORT
    if s.startswith("["):
        host, bracket, rest = s[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InputError(
                f"bad NTP server '{_shown(text)}' (an IPv6 address is written [ADDRESS] or "
                "[ADDRESS]:PORT)",
                source=text,
                pos=0,
            )
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        port = _port(p, text)
    if not host or not host.isprintable() or any(c.isspace() for c in host):
        raise InputError(f"bad NTP server '{_shown(text)}' (HOST or HOST:PORT)", source=text, pos=0)
    from .hosts import host_problem

    problem = host_problem(host)
    if problem:
        raise InputError(f"bad NTP server '{_shown(text)[:120]}': {problem}", source=text, pos=0)
    return host, port


def _shown(text: str) -> str:
    """``text`` for a one-line message: control characters escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _port(text: str, source: str) -> int:
    if text.isascii() and text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    raise InputError(f"bad port in '{_shown(source)}' (1-65535)", source=source, pos=0)


def _ntp_bits(seconds_since_epoch: float) -> int:
    value = seconds_since_epoch + _NTP_DELTA
    return int(value * 2**32) & 0xFFFF_FFFF_FFFF_FFFF


def _from_bits(bits: int) -> float:
    return bits / 2**32 - _NTP_DELTA


def _kiss_code(ref_id: int) -> str:
    raw = ref_id.to_bytes(4, "big")
    text = raw.decode("ascii", errors="replace").strip("\x00 ")
    return text if text.isprintable() and text else f"0x{ref_id:08x}"


def _ref_id_text(stratum: int, ref_id: int) -> str:
    if stratum <= 1:
        return _kiss_code(ref_id)
    return socket.inet_ntoa(ref_id.to_bytes(4, "big"))


def check_reply(
    data: bytes, sent: bytes, source: tuple[str, int], expected: tuple[str, int]
) -> dict[str, float | int]:
    """Validate one reply to the request ``sent``; the parsed fields, or RejectedReply."""
    if (source[0], source[1]) != expected:
        raise RejectedReply(
            f"reply from {source[0]}:{source[1]}, not from {expected[0]}:{expected[1]}"
        )
    if len(data) < _LEN:
        raise RejectedReply(f"short packet ({len(data)} bytes, NTP needs 48)")
    (
        flags,
        stratum,
        _poll,
        _precision,
        root_delay,
        root_disp,
        ref_id,
        _ref_bits,
        orig_bits,
        recv_bits,
        tx_bits,
    ) = _unpack(data)
    leap, mode = flags >> 6, flags & 0x7
    if mode != 4:
        what = "our own request echoed back" if mode == 3 else f"mode {mode}"
        raise RejectedReply(f"not a server reply ({what})")
    if stratum == 0:
        raise RejectedReply(f"kiss-o'-death {_kiss_code(ref_id)} (the server refuses to answer)")
    if stratum >= 16:
        raise RejectedReply(f"server unsynchronised (stratum {stratum})")
    if leap == 3:
        raise RejectedReply("server clock not synchronised (leap indicator 3)")
    if tx_bits == 0:
        raise RejectedReply("zero transmit time")
    if orig_bits != struct.unpack("!Q", sent[40:48])[0]:
        raise RejectedReply("origin timestamp does not match our request (stale or forged reply)")
    distance = (root_delay / 2**16) / 2 + root_disp / 2**16
    if distance > MAX_ROOT_DISTANCE:
        raise RejectedReply(f"root distance {distance:.3f}s is over {MAX_ROOT_DISTANCE}s")
    return {
        "leap": leap,
        "stratum": stratum,
        "ref_id": ref_id,
        "recv": _from_bits(recv_bits),
        "tx": _from_bits(tx_bits),
        "root_distance": distance,
    }


def _unpack(data: bytes) -> tuple[int, ...]:
    flags, stratum, poll, precision, root_delay, root_disp, ref_id = struct.unpack(
        "!BBbbIII", data[:16]
    )
    ref_bits, orig_bits, recv_bits, tx_bits = struct.unpack("!QQQQ", data[16:48])
    return (
        flags,
        stratum,
        poll,
        precision,
        root_delay,
        root_disp,
        ref_id,
        ref_bits,
        orig_bits,
        recv_bits,
        tx_bits,
    )


REFUSED = "connection refused: nothing listens on its NTP port"


def query(server: str, clock: Clock, timeout: float = 1.0) -> Sample:
    """One request to ``server`` (HOST[:PORT]); a validated Sample, or RejectedReply."""
    import ntplib

    host, port = parse_server(server)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise RejectedReply(f"cannot resolve {host}: {e.strerror or e}") from e
    family, _, _, _, address = infos[0]
    expected = (str(address[0]), int(address[1]))
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        t1 = clock.now().timestamp()
        request = ntplib.NTPPacket(version=4, mode=3).to_data()
        # The transmit field carries our send time with random low bits: the reply must echo
        # exactly these 64 bits as its origin timestamp.
        tx = (_ntp_bits(t1) & ~0xFFFF) | int.from_bytes(os.urandom(2), "big")
        request = request[:40] + struct.pack("!Q", tx)
        start = clock.monotonic()
        try:
            # Connected, so that the ICMP port-unreachable of a host with nothing listening is
            # reported at once (ECONNREFUSED) instead of waited out as "no reply".
            sock.connect(address)
            sock.send(request)
            data, source = sock.recvfrom(1024)
            elapsed = clock.monotonic() - start
        except TimeoutError as e:
            raise RejectedReply(f"no reply within {timeout:g}s") from e
        except ConnectionRefusedError as e:
            raise RejectedReply(REFUSED) from e
        except OSError as e:
            raise RejectedReply(f"network error: {e.strerror or e}") from e
    # A bad packet is rejected with its reason rather than waited past: the caller's other
    # samples (and servers) are the retry.
    fields = check_reply(data, request, (str(source[0]), int(source[1])), expected)
    t4 = t1 + elapsed
    t2, t3 = float(fields["recv"]), float(fields["tx"])
    offset = ((t2 - t1) + (t3 - t4)) / 2
    delay = (t4 - t1) - (t3 - t2)
    if delay < -MAX_NEGATIVE_DELAY:
        # The server says it held our packet longer than the whole round trip took: its receive
        # and transmit stamps come from different clocks, and the offset would be a blend.
        raise RejectedReply(
            f"inconsistent server timestamps (it held the request {t3 - t2:.6f}s, longer than "
            f"the {elapsed:.6f}s round trip)"
        )
    delay = max(0.0, delay)
    stratum = int(fields["stratum"])
    return Sample(
        server,
        offset,
        delay,
        stratum,
        _ref_id_text(stratum, int(fields["ref_id"])),
        int(fields["leap"]),
        float(fields["root_distance"]),
    )


def measure(
    server: str,
    clock: Clock,
    samples: int = 4,
    timeout: float = 1.0,
    deadline: float | None = None,
) -> Measurement:
    """Several queries to one server; the lowest-delay valid sample wins. ``deadline`` (on
    ``clock.monotonic()``) bounds the whole measurement: no sample starts or waits past it."""
    result = Measurement(server, None)
    for _ in range(samples):
        wait = timeout
        if deadline is not None:
            wait = min(timeout, deadline - clock.monotonic())
            if wait <= 0.001:
                result.rejected.append("time budget used up")
                break
        try:
            result.samples.append(query(server, clock, wait))
        except RejectedReply as e:
            result.rejected.append(str(e))
            if str(e).startswith("cannot resolve") or str(e) == REFUSED:
                break  # asking again would not change the answer
    if result.samples:
        result.best = min(result.samples, key=lambda s: s.delay)
    return result


def measure_all(
    servers: Sequence[str],
    clock: Clock,
    samples: int = 4,
    timeout: float = 1.0,
    budget: float | None = None,
) -> list[Measurement]:
    """Measure every server at once (one thread each), in the order given.

    With a ``budget`` (seconds) the call returns by then whatever happens: a server still
    resolving its name or waiting for a reply is reported as out of time, and its thread is left
    to finish on its own."""
    import threading

    from .clock import Waker

    if not servers:
        return []
    start = clock.monotonic()
    deadline = None if budget is None else start + budget
    results: dict[int, Measurement] = {}
    waker = Waker()
    lock = threading.Lock()
    state = {"running": len(servers), "abandoned": False}

    def work(i: int, server: str) -> None:
        try:
            outcome = measure(server, clock, samples, timeout, deadline)
        except InputError as e:
            outcome = Measurement(server, None, rejected=[e.message])
        with lock:
            results[i] = outcome
            state["running"] -= 1
            if state["abandoned"]:
                if not state["running"]:
                    waker.close()  # the caller left; the last straggler tidies up
            else:
                waker.wake()

    for i, server in enumerate(servers):
        threading.Thread(target=work, args=(i, server), daemon=True).start()
    # Every server answers within samples × timeout, plus a margin for name resolution.
    limit = budget if budget is not None else samples * timeout + 5.0
    while True:
        with lock:
            if not state["running"] or clock.monotonic() >= start + limit:
                done = dict(results)
                state["abandoned"] = bool(state["running"])
                if not state["running"]:
                    waker.close()
                break
        clock.wait(waker, start + limit - clock.monotonic())
    return [
        done.get(i) or Measurement(s, None, rejected=[f"no answer within {limit:g}s"])
        for i, s in enumerate(servers)
    ]


AGREE_FLOOR = 0.002  # seconds: two servers this close agree whatever their error bounds say


def agree(a: Sample, b: Sample) -> bool:
    """Whether two servers' readings can both be right: their offsets differ by no more than
    their error bounds and root distances together (plus a small floor)."""
    slack = a.error + b.error + a.root_distance + b.root_distance + AGREE_FLOOR
    return abs(a.offset - b.offset) <= slack


def falsetickers(measurements: Sequence[Measurement]) -> set[str]:
    """Servers that disagree with a majority of the usable ones (NTP's "falsetickers"). Needs at
    least three usable servers: of two that disagree, neither can be outvoted."""
    usable = [m.best for m in measurements if m.best is not None]
    if len(usable) < 3:
        return set()
    wrong = {s.server for s in usable if sum(agree(s, o) for o in usable) * 2 <= len(usable)}
    return set() if len(wrong) == len(usable) else wrong  # no majority at all: no verdict


def best_sample(measurements: Sequence[Measurement]) -> Sample | None:
    """The best sample across servers, falsetickers left out: the smallest delay plus root
    distance."""
    wrong = falsetickers(measurements)
    usable = [m.best for m in measurements if m.best is not None and m.server not in wrong]
    return min(usable, key=lambda s: s.delay + s.root_distance) if usable else None


def unusable(measurements: Sequence[Measurement]) -> str:
    """Why ``measurements`` gave no usable reply: the last reason of each server."""
    return "; ".join(
        f"{m.server}: {m.rejected[-1] if m.rejected else 'no samples'}" for m in measurements
    )


def best_of(measurements: Sequence[Measurement]) -> Sample:
    """The best sample across servers, or ClockError naming every server's reasons."""
    best = best_sample(measurements)
    if best is None:
        raise ClockError(f"no usable NTP reply ({unusable(measurements)})")
    return best

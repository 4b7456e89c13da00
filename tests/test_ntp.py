"""NTP replies are validated before they are believed (DESIGN §6), against a fake responder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyjob.core.clock import SystemClock
from pyjob.core.errors import ClockError, InputError
from pyjob.core.ntp import best_of, measure, parse_server

from .fake_ntp import FakeNtp


@pytest.fixture
def fake() -> Iterator[FakeNtp]:
    server = FakeNtp()
    yield server
    server.close()


@pytest.mark.parametrize("offset", [0.0, 2.5, -1.25])
def test_good_server_offset_is_measured(fake: FakeNtp, offset: float) -> None:
    fake.offset = offset
    m = measure(fake.address, SystemClock(), samples=4, timeout=1.0)
    assert m.best is not None and not m.rejected
    assert abs(m.best.offset - offset) < 0.01
    assert m.best.delay < 0.05 and m.best.error == m.best.delay / 2
    assert m.best.stratum == 2 and m.best.ref_id == "127.0.0.1" and m.best.leap == 0
    assert m.best.delay == min(s.delay for s in m.samples)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("kod-RATE", "kiss-o'-death RATE"),
        ("kod-DENY", "kiss-o'-death DENY"),
        ("leap3", "leap indicator 3"),
        ("stratum16", "server unsynchronised (stratum 16)"),
        ("wrong-origin", "origin timestamp does not match"),
        ("echo", "our own request echoed back"),
        ("zero-tx", "zero transmit time"),
        ("short", "short packet (20 bytes"),
        ("far", "is over 1.5s"),
        ("held", "inconsistent server timestamps (it held the request 0.3"),
        ("silent", "no reply within 0.3s"),
    ],
)
def test_bad_replies_are_rejected_with_their_reason(
    fake: FakeNtp, behaviour: str, reason: str
) -> None:
    fake.behaviour = behaviour
    m = measure(fake.address, SystemClock(), samples=2, timeout=0.3)
    assert m.best is None and not m.samples
    assert len(m.rejected) == 2 and all(reason in r for r in m.rejected), m.rejected
    with pytest.raises(ClockError, match="no usable NTP reply"):
        best_of([m])


def test_reply_from_another_port_is_rejected(fake: FakeNtp) -> None:
    fake.behaviour = "other-port"
    m = measure(fake.address, SystemClock(), samples=1, timeout=0.3)
    # the kernel may drop it (connected-style filtering) or deliver it: never believed either way
    assert m.best is None
    assert "not from 127.0.0.1" in m.rejected[0] or "no reply" in m.rejected[0]


def test_best_of_picks_the_best_server() -> None:
    good, bad = FakeNtp("good", 0.2), FakeNtp("kod-DENY")
    try:
        clock = SystemClock()
        sample = best_of(
            [measure(bad.address, clock, 1, 0.3), measure(good.address, clock, 2, 0.5)]
        )
        assert abs(sample.offset - 0.2) < 0.01
    finally:
        good.close()
        bad.close()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("pool.ntp.org", ("pool.ntp.org", 123)),
        ("127.0.0.1:1123", ("127.0.0.1", 1123)),
        ("[::1]:1123", ("::1", 1123)),
        ("[::1]", ("::1", 123)),
    ],
)
def test_parse_server(text: str, parsed: tuple[str, int]) -> None:
    assert parse_server(text) == parsed


@pytest.mark.parametrize("text", ["", ":123", "host:0", "host:99999", "host:x"])
def test_bad_server_text(text: str) -> None:
    with pytest.raises(InputError):
        parse_server(text)

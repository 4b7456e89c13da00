"""The etcd backend against a real etcd: the shared suite and etcd specifics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyjob.core.backends import ClaimRequest, open_backend
from pyjob.core.errors import BackendError, InputError

from .backend_suite import *  # noqa: F403
from .backend_suite import KEEP, T0, claim_one
from .conftest import etcd_lock_url
from .servers import EtcdServer, free_port


@pytest.fixture
def lock_url(etcd_server: EtcdServer) -> str:
    """A fresh, empty key space for each test (a prefix of its own)."""
    return etcd_lock_url(etcd_server)


def test_fences_are_cluster_revisions_and_one_batch_holds_a_job_once(lock_url: str) -> None:
    backend = open_backend(lock_url)
    backend.check()
    batch = [ClaimRequest("a", T0, KEEP), ClaimRequest("b", T0, KEEP)]
    batch += [ClaimRequest("a", T0 + timedelta(seconds=1), KEEP)]  # job a twice: two txns
    out = backend.claim_many(batch, "x", T0)
    assert [o.claim.won for o in out] == [True] * 3
    fences = [o.claim.fence or 0 for o in out]
    assert fences[0] == fences[1] < fences[2]  # one transaction, one revision


def test_several_endpoints_are_tried_in_turn(etcd_server: EtcdServer) -> None:
    dead = free_port()
    backend = open_backend(f"etcd://127.0.0.1:{dead},127.0.0.1:{etcd_server.port}/turns")
    backend.check()
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won


def test_unreachable_server_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="cannot reach etcd"):
        open_backend(f"etcd://127.0.0.1:{free_port()}").check()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcds://127.0.0.1:2379", "not supported yet"),
        ("etcd://u:pw@127.0.0.1:2379", "no user, password or options"),
        ("etcd://127.0.0.1:2379?x=1", "no user, password or options"),
        ("etcd://127.0.0.1:99999", "bad port '99999'"),
        ("etcd://127.0.0.1:2379/a b", "bad key prefix"),
        ("etcd://127.0.0.1:2379/a//b", "bad key prefix"),
    ],
)
def test_bad_etcd_urls_are_input_errors(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        open_backend(url)
    assert "pw" not in str(info.value)


def test_reconnects_after_the_server_restarts(lock_url: str, etcd_server: EtcdServer) -> None:
    backend = open_backend(lock_url)
    backend.check()
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won
    etcd_server.stop()
    try:
        with pytest.raises(BackendError):
            claim_one(backend, "job", T0 + timedelta(seconds=1), "a", KEEP, T0)
    finally:
        etcd_server.start()
    assert not claim_one(backend, "job", T0, "b", KEEP, T0).won  # the claim survived the restart


def test_one_backend_object_is_one_connection(
    lock_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import http.client

    made = []
    connect = http.client.HTTPConnection.connect

    def counted(self: http.client.HTTPConnection) -> None:
        made.append(self.port)
        connect(self)

    monkeypatch.setattr(http.client.HTTPConnection, "connect", counted)
    backend = open_backend(lock_url)
    backend.check()
    for i in range(10):
        batch = [
            ClaimRequest(f"j{j}", T0 + timedelta(seconds=i), KEEP, lease_ttl=5.0) for j in range(5)
        ]
        out = backend.claim_many(batch, "a", T0)
        leases = [o.lease for o in out if o.lease is not None]
        assert len(leases) == 5
        assert backend.renew_many(leases) == [True] * 5
        backend.release_many(leases)
        backend.lease_holder("j0")
        backend.server_time()
    assert len(made) == 1
    backend.close()


def test_the_server_clock_narrows_below_a_second_over_answers_that_straddle_its_edges(
    lock_url: str,
) -> None:
    import time

    backend = open_backend(lock_url)
    first = backend.server_time()
    assert first is not None and first[1] <= 1.0 + 0.1
    for _ in range(12):
        time.sleep(0.13)  # answers at every phase of the server's second
        reading = backend.server_time()
    assert reading is not None and reading[1] < 0.5
    assert abs(reading[0] - datetime.now(UTC).timestamp()) < reading[1] / 2 + 0.05


def test_run_exits_5_when_etcd_is_unreachable_at_start() -> None:
    import subprocess

    from .conftest import pyjob_exe

    url = f"etcd://127.0.0.1:{free_port()}/p"
    done = subprocess.run(
        [*pyjob_exe(), "run", "--every", "1s", "--lock", url, "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 5, done.stderr
    assert (
        done.stderr.strip().splitlines()[-1]
        == f"Error: {url}: cannot reach etcd: connection refused"
    )


def test_check_clock_measures_etcd_to_within_milliseconds(etcd_server: EtcdServer) -> None:
    import json
    import subprocess

    from .conftest import pyjob_exe

    args = ["check-clock", "--lock", etcd_server.url, "--server", "127.0.0.1:1", "--format", "json"]
    done = subprocess.run(
        [*pyjob_exe(), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    backend = json.loads(done.stdout)["backend"]
    assert backend["url"] == etcd_server.url
    # its clock is this host's: zero, within the bound the probes reached (well under a second)
    assert backend["error"] < 0.1 and abs(backend["offset"]) <= backend["error"] + 0.002


def test_date_header_bounds_intersect_and_start_over_when_the_server_clock_steps() -> None:
    from pyjob.core.backends.etcd_http import BOUND_LIFETIME, DateClock

    clock = DateClock()
    assert clock.now_us(10.0) is None
    # stamped 100 (so 100 <= its clock < 101) by an answer between monotonic 10.0 and 10.2
    clock.learn(100.0, 10.0, 10.2)
    assert clock.offset(10.2) == pytest.approx((89.8, 91.0))
    clock.learn(101.0, 10.5, 10.6)  # its second turned before 10.6: the offset is at least 90.4
    assert clock.offset(10.6) == pytest.approx((90.4, 91.0))
    assert clock.now_us(11.0) == (int(101.4e6), int(102.0e6))
    clock.learn(200.0, 11.0, 11.1)  # contradicts both: the clock stepped, the newest holds
    assert clock.offset(11.1) == pytest.approx((188.9, 190.0))
    assert clock.offset(11.1 + BOUND_LIFETIME + 1) is None  # too old to be trusted


def test_a_claim_that_reaches_etcd_after_its_client_gave_up_does_nothing(
    lock_url: str, etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stall: the request sits in etcd's socket while its client times out, and lands later.
    Here it is held back by the test and sent by hand after the client's next call."""
    import http.client
    import json

    from pyjob.core.backends.etcd import EtcdBackend
    from pyjob.core.backends.protocol import LostAnswer

    backend = open_backend(lock_url)
    assert isinstance(backend, EtcdBackend)
    backend.check()
    held: list[dict[str, object]] = []
    real = backend.http.call

    def stalled(path: str, body: dict[str, object], what: str) -> dict[str, object]:
        if path == "/v3/kv/txn":
            held.append(body)
            raise BackendError(f"{backend.url}: {what}: no answer within 2s")
        return real(path, body, what)

    monkeypatch.setattr(backend.http, "call", stalled)
    request = ClaimRequest("job", T0, KEEP, lease_ttl=30.0)
    with pytest.raises(LostAnswer) as lost:
        backend.claim_many([request], "a", T0)
    assert [x.job for x in lost.value.leases] == ["job"]
    monkeypatch.setattr(backend.http, "call", real)
    backend.release_many(lost.value.leases)  # the next call: the session is written again
    conn = http.client.HTTPConnection("127.0.0.1", etcd_server.port, timeout=10)
    conn.request("POST", "/v3/kv/txn", json.dumps(held[0]).encode())
    late = json.loads(conn.getresponse().read())
    conn.close()
    assert not late.get("succeeded")  # it found the session changed: nothing was done
    other = open_backend(lock_url)
    won = other.claim_many([request], "b", T0)[0]
    assert won.claim.won and won.lease is not None  # no claim, no lease left by the late one


def test_a_lease_taken_late_in_its_etcd_lease_still_lives_its_whole_ttl(lock_url: str) -> None:
    """Run leases share one etcd lease per TTL; a key put on it lives as long as it does, so a
    lease taken when that etcd lease had little left must find it kept alive first."""
    import time

    backend = open_backend(lock_url)
    backend.check()
    first = backend.acquire_lease("a", "x", 4.0)
    assert first is not None
    time.sleep(3.0)  # nothing renewed: the etcd lease has about 1 s left
    second = backend.acquire_lease("b", "x", 4.0)
    assert second is not None
    time.sleep(2.0)  # past the etcd lease's first expiry, within the second lease's TTL
    assert backend.lease_holder("b") == "x"

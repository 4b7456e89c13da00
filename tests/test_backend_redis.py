"""The Redis backend against a real redis-server: the shared suite and Redis specifics."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pyjob.core.backends import open_backend, redact
from pyjob.core.errors import BackendError

from .backend_suite import *  # noqa: F403
from .backend_suite import KEEP, T0, claim_one
from .servers import RedisServer, start_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


_db = iter(range(1, 16))


@pytest.fixture
def lock_url(redis_server: RedisServer) -> str:
    """A fresh, empty database for each test (Redis has 16)."""
    import redis

    db = next(_db, None)
    if db is None:
        db = 15
    r = redis.Redis(port=redis_server.port)
    r.select(db)
    r.flushdb()
    return f"redis://127.0.0.1:{redis_server.port}/{db}"


def test_claim_keys_expire_by_themselves(lock_url: str) -> None:
    import redis

    backend = open_backend(lock_url)
    backend.check()
    claim_one(backend, "job", T0, "a", KEEP, T0)
    r = redis.Redis.from_url(lock_url)
    keys = [k for k in r.keys("pyjob:job:claim:*")]
    assert len(keys) == 1 and 0 < r.pttl(keys[0]) <= 86_400_000


def test_unreachable_server_is_a_backend_error_naming_the_url_without_password() -> None:
    from .servers import free_port

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(BackendError) as info:
        open_backend(url).check()
    assert "s3cret" not in str(info.value) and ":***@127.0.0.1" in str(info.value)
    assert "cannot reach Redis" in str(info.value)


def test_redact() -> None:
    assert redact("redis://user:pw@host:6380/2") == "redis://user:***@host:6380/2"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_password_is_used(tmp_path: Path) -> None:
    from .servers import RedisServer, free_port, need

    server = RedisServer(need("redis-server"), free_port(), tmp_path)
    server.start()
    try:
        import redis

        redis.Redis(port=server.port).config_set("requirepass", "s3cret")
        with pytest.raises(BackendError, match="cannot reach Redis"):
            open_backend(server.url).check()
        ok = open_backend(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        ok.check()
        assert claim_one(ok, "job", T0, "a", KEEP, T0).won
    finally:
        server.stop()


def test_one_backend_object_is_one_connection(lock_url: str) -> None:
    import redis
    from pyjob.core.backends import ClaimRequest

    probe = redis.Redis.from_url(lock_url)
    # By id: a connection another test left to the garbage collector may close meanwhile.
    before = {c["id"] for c in probe.client_list()}
    backend = open_backend(lock_url)
    backend.check()
    for i in range(20):
        batch = [
            ClaimRequest(f"j{j}", T0 + timedelta(seconds=i), KEEP, lease_ttl=5.0) for j in range(5)
        ]
        out = backend.claim_many(batch, "a", T0)
        leases = [o.lease for o in out if o.lease is not None]
        backend.renew_many(leases)
        backend.release_many(leases)
        backend.lease_holder("j0")
        backend.server_time()
    assert len({c["id"] for c in probe.client_list()} - before) == 1
    backend.close()


def test_a_batch_over_the_limit_goes_in_several_round_trips_in_order(
    lock_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyjob.core.backends import ClaimRequest
    from pyjob.core.backends import redis as module

    monkeypatch.setattr(module, "BATCH_LIMIT", 3)
    backend = open_backend(lock_url)
    batch = [ClaimRequest(f"j{j}", T0, KEEP) for j in range(10)]
    assert [o.claim.won for o in backend.claim_many(batch, "a", T0)] == [True] * 10
    again = open_backend(lock_url).claim_many(batch[::-1], "b", T0)
    assert [o.claim.holder for o in again] == ["a"] * 10
    assert [o.claim.fence for o in again] == [1] * 10

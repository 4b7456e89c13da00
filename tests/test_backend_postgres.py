"""The PostgreSQL backend against a real server: the shared suite and PostgreSQL specifics."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pyjob.core.backends import open_backend
from pyjob.core.errors import BackendError

from .backend_suite import *  # noqa: F403
from .backend_suite import KEEP, T0, claim_one
from .servers import PostgresServer, free_port, start_postgres

_n = itertools.count()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.destroy()


@pytest.fixture
def lock_url(pg_server: PostgresServer) -> str:
    """A fresh database for each test."""
    import psycopg

    name = f"t{next(_n)}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.url.rsplit("/", 1)[0] + f"/{name}"


def test_tables_are_created_on_first_use(lock_url: str) -> None:
    import psycopg

    backend = open_backend(lock_url)
    backend.check()
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won
    with psycopg.connect(lock_url) as conn:
        tables = {
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'pyjob_%'")
        }
    assert tables == {"pyjob_claims", "pyjob_fences", "pyjob_leases"}


def test_role_that_may_not_create_tables_gets_a_clear_error(lock_url: str) -> None:
    import psycopg

    with psycopg.connect(lock_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE weak LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    url = lock_url.replace("postgres@", "weak@")
    with pytest.raises(BackendError, match="the role may not create pyjob's tables"):
        open_backend(url).check()


def test_unreachable_server_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="cannot reach PostgreSQL"):
        open_backend(f"postgresql://u:pw@127.0.0.1:{free_port()}/db").check()


def test_reconnects_after_the_server_restarts(lock_url: str, pg_server: PostgresServer) -> None:
    backend = open_backend(lock_url)
    backend.check()
    assert claim_one(backend, "job", T0, "a", KEEP, T0).won
    pg_server.stop()
    with pytest.raises(BackendError):
        claim_one(backend, "job", T0 + timedelta(seconds=1), "a", KEEP, T0)
    pg_server.start()
    assert not claim_one(backend, "job", T0, "b", KEEP, T0).won  # the claim survived the restart


def test_one_backend_object_is_one_connection(lock_url: str) -> None:
    import psycopg
    from pyjob.core.backends import ClaimRequest

    def connections() -> int:
        with psycopg.connect(lock_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            ).fetchone()
            assert row is not None
            return int(row[0]) - 1

    backend = open_backend(lock_url)
    backend.check()
    for i in range(20):
        tick = T0 + timedelta(seconds=i)
        batch = [ClaimRequest(f"j{j}", tick, KEEP, lease_ttl=5.0) for j in range(5)]
        out = backend.claim_many(batch, "a", T0)
        leases = [o.lease for o in out if o.lease is not None]
        backend.renew_many(leases)
        backend.release_many(leases)
        backend.cleanup_many(["j0", "j1"], T0)
        backend.server_time()
    assert connections() == 1
    backend.close()


def test_a_batch_over_the_limit_goes_in_several_round_trips_in_order(
    lock_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyjob.core.backends import ClaimRequest
    from pyjob.core.backends import postgres as module

    monkeypatch.setattr(module, "BATCH_LIMIT", 3)
    backend = open_backend(lock_url)
    batch = [ClaimRequest(f"j{j}", T0, KEEP) for j in range(10)]
    assert [o.claim.won for o in backend.claim_many(batch, "a", T0)] == [True] * 10
    again = open_backend(lock_url).claim_many(batch[::-1], "b", T0)
    assert [o.claim.holder for o in again] == ["a"] * 10
    assert [o.claim.fence for o in again] == [1] * 10

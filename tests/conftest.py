from __future__ import annotations

import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from pyjob.cli.env import Env
from pyjob.cli.main import cli
from pyjob.core.clock import FakeClock

from .servers import (
    EtcdServer,
    PostgresServer,
    RedisServer,
    start_etcd,
    start_postgres,
    start_redis,
)
from .stalls import Stalls

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)  # a fixed "now" for CLI tests


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, hand out one test at a time per worker (unless told otherwise): with the long
    tests first (below), the 20-35 s ones then spread over the workers instead of queueing on
    one."""
    if config.pluginmanager.hasplugin("xdist") and config.getoption("maxschedchunk") is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first (a stable sort, the same on every xdist worker), so that with one test
    per worker at a time they are shared out at the start rather than left to the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(autouse=True)
def _own_default_lock_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test has its own default lock directory ($XDG_RUNTIME_DIR/pyjob), for the `pyjob`
    processes it starts too: two tests that run the same command without --lock at once (the
    workers of -n 4) would otherwise share its jobs' claims, and one would lose the tick."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("runtime")))


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """A test that fails before stopping its `pyjob run` processes must not leave them running."""
    from .runproc import PyjobRun

    yield
    while PyjobRun.live:
        run = PyjobRun.live.pop()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=30)


def pyjob_exe() -> list[str]:
    """The installed console script of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "pyjob"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pyjob")
    return [found] if found else [sys.executable, "-m", "pyjob.cli"]


@dataclass
class Invoker:
    clock: FakeClock
    environ: dict[str, str]

    def __call__(self, args: Sequence[str], *, terminal: bool = False) -> Result:
        env = Env(
            clock=self.clock,
            environ=self.environ,
            stdout_terminal=terminal,
            stderr_terminal=terminal,
        )
        runner = CliRunner()
        return runner.invoke(cli, list(args), obj=env, catch_exceptions=False, env=self.environ)


@pytest.fixture
def stalls() -> Iterator[Stalls]:
    """A witness of pauses of the whole machine (tests/stalls.py)."""
    with Stalls() as witness:
        yield witness


@pytest.fixture
def invoke() -> Callable[..., Result]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYJOB_")}
    environ.update({"TZ": "UTC", "NO_COLOR": "1"})
    return Invoker(FakeClock(NOW), environ)


# The real servers of the fleet tests (tests/test_fleet.py, tests/test_records.py): one per module,
# and ``lock_url`` runs a test once per backend, each with a fresh store.


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    server = start_etcd()
    yield server
    server.destroy()


_etcd_prefix = iter(range(1, 10**9))


def etcd_lock_url(server: EtcdServer) -> str:
    """A fresh, empty key space on ``server`` (a prefix of its own)."""
    return f"{server.url}/t{next(_etcd_prefix)}-{random.randrange(10**9)}"


@pytest.fixture(params=["file", "nfs", "redis", "postgresql", "etcd"])
def fleet_lock_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "file":
        return f"file:{tmp_path / 'locks'}"
    if kind == "nfs":
        return f"nfs:{tmp_path / 'shared'}"
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        import redis

        db = random.randint(1, 15)
        redis.Redis(port=server.port, db=db).flushdb()
        return f"redis://127.0.0.1:{server.port}/{db}"
    if kind == "etcd":
        return etcd_lock_url(request.getfixturevalue("etcd_server"))
    server = request.getfixturevalue("pg_server")
    import psycopg

    name = f"fleet_{random.randrange(10**9)}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + f"/{name}"

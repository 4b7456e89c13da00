"""Real Redis and PostgreSQL servers for the tests, started from their own binaries on free ports.

A missing binary skips the test on a developer's machine, with the reason; under CI=true it fails
(.ci/run installs the servers).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CI = os.environ.get("CI") == "true"


def need(binary: str, *extra_paths: str) -> str:
    found = shutil.which(binary)
    for pattern in extra_paths:
        if found is None:
            matches = sorted(glob.glob(pattern))
            found = matches[-1] if matches else None
    if found is None:
        if CI:
            pytest.fail(f"{binary} is missing: .ci/run should have installed it")
        pytest.skip(f"{binary} is not installed on this machine")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class RedisServer:
    exe: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


@dataclass
class PostgresServer:
    bindir: Path
    port: int
    datadir: Path
    as_user: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def init(self) -> None:
        subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._pg_ctl("-o", options, "-l", str(self.datadir / "log"), "-w", "start")
        _wait_port(self.port)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_redis(tmp: Path) -> RedisServer:
    server = RedisServer(need("redis-server"), free_port(), tmp)
    server.start()
    return server


def start_postgres() -> PostgresServer:
    initdb = need("initdb", "/usr/lib/postgresql/*/bin/initdb")
    bindir = Path(os.path.realpath(initdb)).parent
    base = Path(tempfile.mkdtemp(prefix="pyjob-pg-", dir="/tmp"))
    base.chmod(0o755)
    datadir = base / "data"
    as_user: list[str] = []
    if os.getuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs a 'postgres' user for the test server")
        datadir.mkdir()
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bindir, free_port(), datadir, as_user)
    server.init()
    server.start()
    return server

"""Real Redis, PostgreSQL, etcd and chronyd servers on free loopback ports, started from their own
binaries, for the tests and the benchmarks alike.

Nothing here imports pytest (the benchmarks must run without the test extra): a missing binary
raises ``Missing``, which tests/servers.py turns into a skip on a developer's machine, or a
failure under CI=true (.ci/run installs the servers).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class Missing(RuntimeError):
    """A server binary or library this machine lacks; the message says which and how to get it."""


def need(binary: str, *extra_paths: str) -> str:
    found = shutil.which(binary)
    for pattern in extra_paths:
        if found is None:
            matches = sorted(glob.glob(pattern))
            found = matches[-1] if matches else None
    if found is None:
        raise Missing(f"{binary} is not installed on this machine")
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
    # Server settings given as -c NAME=VALUE at start, e.g. {"max_connections": "20"}.
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on this server (create_database makes one)."""
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

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
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        self._pg_ctl("-o", options, "-l", str(self.datadir / "log"), "-w", "start")
        _wait_port(self.port)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def faketime_env(offset: str) -> dict[str, str]:
    """Environment that runs a program with its clock moved by ``offset`` (e.g. "+2.5")."""
    need("faketime")
    if not Path(FAKETIME_LIB).exists():
        raise Missing(f"{FAKETIME_LIB} is missing (Debian package faketime)")
    return {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": offset}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ChronyServer:
    """chronyd serving its own clock on a loopback port: no sources, ``local stratum 8``, no
    control of the system clock (-x), no command socket.

    Under libfaketime give it an offset over 1 s: chronyd stamps received packets with the
    kernel's (true) clock unless that differs from its own by more than about a second, so a
    smaller fake offset yields replies whose receive and transmit stamps disagree (pyjob rejects
    those as inconsistent; tests/test_clock.py checks it)."""

    exe: str
    port: int
    workdir: Path
    offset: str | None = None  # libfaketime offset of the server's clock, e.g. "+2.5"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "chrony.conf"
        conf.write_text(
            f"port {self.port}\n"
            "bindaddress 127.0.0.1\n"
            "cmdport 0\n"
            "local stratum 8\n"
            "allow 127.0.0.1\n"
            f"pidfile {self.workdir}/chronyd.pid\n"
            f"driftfile {self.workdir}/drift\n"
        )
        env = dict(os.environ)
        if self.offset is not None:
            env.update(faketime_env(self.offset))
        # -x: never touch the system clock; -d: stay in the foreground; as root keep root (the
        # _chrony user could not read the work directory), otherwise -U allows a normal user.
        user = ["-u", "root"] if os.getuid() == 0 else ["-U"]
        self.proc = subprocess.Popen(
            [self.exe, "-x", "-d", *user, "-f", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "chronyd.log").open("w"),
            env=env,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        from pyjob.core.clock import SystemClock
        from pyjob.core.ntp import RejectedReply, query

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                query(self.address, SystemClock(), timeout=0.2)
                return
            except RejectedReply as e:
                if not str(e).startswith(("no reply", "network error")):
                    return  # it answers, if not well: the test is about that
                if self.proc is not None and self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        log = (self.workdir / "chronyd.log").read_text()
        raise RuntimeError(f"chronyd on {self.address} did not answer: {log[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


def start_chronyd(tmp: Path, offset: str | None = None) -> ChronyServer:
    exe = need("chronyd", "/usr/sbin/chronyd", "/sbin/chronyd")
    tmp.mkdir(parents=True, exist_ok=True)
    server = ChronyServer(exe, free_udp_port(), tmp, offset)
    server.start()
    return server


def start_redis(tmp: Path) -> RedisServer:
    server = RedisServer(need("redis-server"), free_port(), tmp)
    server.start()
    return server


@dataclass
class EtcdServer:
    """A one-member etcd cluster on two free loopback ports (client and peer). Its data
    directory outlives stop(), so that start() brings the same cluster back (a restart)."""

    exe: str
    port: int
    peer_port: int
    datadir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}"

    def start(self) -> None:
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--name",
                "pyjob-test",
                "--data-dir",
                str(self.datadir),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"pyjob-test={peer}",
                "--log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the cluster answers a read (it has elected its leader)."""
        import http.client

        deadline = time.monotonic() + timeout
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("POST", "/v3/kv/range", b'{"key":"AA=="}')
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd on 127.0.0.1:{self.port} never became ready")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown; what it wrote is on its data directory, nothing more."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies on SIGKILL too
            self.proc.kill()
            self.proc.wait(timeout=20)
            self.proc = None

    def start_again(self) -> None:
        """Start it again on its data directory (after kill or stop), unless it runs."""
        if self.proc is None:
            self.start()

    def destroy(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)


def start_etcd(datadir: Path | None = None) -> EtcdServer:
    """A fresh etcd (``datadir``: where it keeps its data; by default a new directory on
    /dev/shm where there is one: etcd 3.4 fsyncs every write and has no switch to stop it, and
    on tmpfs an fsync costs nothing). destroy() stops it and removes its data."""
    exe = need("etcd", "/usr/bin/etcd")
    if datadir is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        datadir = Path(tempfile.mkdtemp(prefix="pyjob-etcd-", dir=base))
    server = EtcdServer(exe, free_port(), free_port(), datadir)
    server.start()
    return server


def start_postgres(settings: dict[str, str] | None = None) -> PostgresServer:
    """A fresh PostgreSQL (initdb in a temporary directory), started; ``settings`` are server
    settings such as ``{"max_connections": "20"}``. destroy() stops it and removes its data."""
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
            raise Missing("running as root needs a 'postgres' user for the test server") from None
        datadir.mkdir()
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bindir, free_port(), datadir, as_user, dict(settings or {}))
    server.init()
    server.start()
    return server

"""The claim protocol under random faults (docs/design.md §8): a fleet of three real `pyjob run`
instances shares one backend while a seeded plan of faults hits it — connection drops, hangs and
cuts (tests/faultproxy.py), the server SIGSTOPped, an instance SIGKILLed mid-run and started
again, one host's clock stepped by ±(2 s … 1 h), the backend's own clock stepped (the clock shim
on the server; not on etcd, a Go program that reads the clock without libc: instead etcd is
SIGKILLed and started again on its data directory). Then the fleet runs in quiet, and every
invariant is checked from what the commands wrote, the hooks wrote, the instances logged and the
backend's records.

    python -m tests.soak --backend redis --seconds 600 --seed 7     # by hand, as long as you like
    python -m tests.soak --backend all --seconds 120                # every backend, a random seed

The suite runs it briefly for each backend (tests/test_soak.py). A failure prints the seed; the
same seed gives the same plan of faults (what the processes do in between is real, so timing still
varies).

Invariants (docs/design.md §8, named here for the report):
- S1 at most one run per tick: no (tick, attempt) ran twice, and no tick's attempts ran on two
  instances at once;
- S2 fences: each tick has one fence, and no fence is given to two ticks;
- S3 alerts at most once: the on-failure hook fired at most once per tick;
- L1 the fleet is live after a fault: every tick due from ``BOUND`` after the last fault ends
  ran, until the fleet stops;
- L2 every run ends once: every tick whose command ran has a final record (not running or
  retrying) and, when it failed, exactly one on-failure hook (a run lost with a killed host
  included: another instance records it lost and fires its hook);
- L3 survivors: no process printed a traceback, and every instance not killed was alive at the
  end and stopped with exit 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from localservers import (
    EtcdServer,
    Missing,
    PostgresServer,
    _wait_port,
    free_port,
    need,
    start_etcd,
    start_postgres,
)

from .clockshim import ClockShim
from .conftest import pyjob_exe
from .faultproxy import FaultProxy
from .runproc import PyjobRun

PERIOD = 2  # seconds between ticks: `--every 2s --align`
LEASE_TTL = 3.0  # seconds: `--lease-ttl 3s`, so a killed holder's lease lapses quickly
# How long after the last fault ends the fleet may still lose ticks: a killed holder's lease
# lapsing, one tick in flight when the fault ended, and a restarted instance's start-up.
BOUND = LEASE_TTL + 2 * PERIOD + 2
FAILING = 5  # ticks whose Unix time is a multiple of FAILING * PERIOD fail every attempt
BACKENDS = ("redis", "postgresql", "etcd", "file")
HOST_FAULTS = ("kill", "host-clock")
SERVER_FAULTS = ("drop", "hang", "cut", "stall", "backend-clock")
# etcd's clock cannot be shimmed (see above); it is killed and restarted instead
ETCD_FAULTS = ("drop", "hang", "cut", "stall", "restart")
CLOCK_FAULTS = ("host-clock", "backend-clock")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the fleet started
    kind: str
    length: float  # seconds the fault lasts (kill: until the instance is started again)
    target: int = 0  # the instance, for host faults
    value: float = 0.0  # a clock step in seconds, or a drop rate

    def __str__(self) -> str:
        extra = f" i{self.target}" if self.kind in HOST_FAULTS else ""
        if self.value:
            extra += f" {self.value:+.3g}"
        return f"{self.at:6.1f}s {self.kind}{extra} for {self.length:.1f}s"


def plan(seed: int, backend: str, faulty: float) -> list[Fault]:
    """A seeded plan of faults over the first ``faulty`` seconds; faults may overlap, except two
    clock faults: the contract holds while any one clock is wrong (docs/design.md §8)."""
    rng = random.Random(f"{seed}/{backend}")
    server = {"file": (), "etcd": ETCD_FAULTS}.get(backend, SERVER_FAULTS)
    kinds = HOST_FAULTS + server
    faults = []
    at = rng.uniform(1.0, 3.0)
    clock_free = 0.0  # when the last clock fault ends
    while at < faulty:
        kind = rng.choice(kinds)
        if kind in CLOCK_FAULTS and at < clock_free:
            kind = rng.choice([k for k in kinds if k not in CLOCK_FAULTS])
        length = min(rng.uniform(0.5, 4.0), max(0.5, faulty - at))
        if kind in CLOCK_FAULTS:
            clock_free = at + length
        value = 0.0
        if kind in ("host-clock", "backend-clock"):
            # log-uniform between 2 s and an hour, either way
            value = math.exp(rng.uniform(math.log(2), math.log(3600))) * rng.choice((1, -1))
        elif kind == "drop":
            value = rng.uniform(0.05, 0.5)
        faults.append(Fault(at, kind, length, rng.randrange(3), value))
        at += rng.uniform(1.0, 4.0)
    return faults


@dataclass
class Outcome:
    seed: int
    backend: str
    faults: list[Fault]
    violations: list[str]
    checked: dict[str, int] = field(default_factory=dict)

    def report(self) -> str:
        head = f"seed={self.seed} backend={self.backend}: "
        head += ", ".join(f"{k}={v}" for k, v in self.checked.items())
        lines = [head, "faults:", *(f"  {f}" for f in self.faults)]
        if self.violations:
            lines += ["VIOLATIONS:", *(f"  {v}" for v in self.violations)]
        else:
            lines.append("no invariant violated")
        return "\n".join(lines)


class _Server:
    """The backend under test: a real server (with the clock shim preloaded and a fault proxy in
    front) or a lock directory."""

    def __init__(self, backend: str, work: Path, seed: int) -> None:
        self.backend = backend
        self.work = work
        # The shim's file must be readable by the server's own user (PostgreSQL's is not root).
        shared = Path(tempfile.mkdtemp(prefix="pyjob-soak-", dir="/tmp"))
        shared.chmod(0o755)
        self._shared = shared
        self.clock = ClockShim(shared / "server-clock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.pg: PostgresServer | None = None
        self.etcd: EtcdServer | None = None
        self.proxy: FaultProxy | None = None
        if backend == "redis":
            self.port = free_port()
            self._start_redis()
        elif backend == "postgresql":
            self.pg = start_postgres()
            # again with the shim: pg_ctl passes its environment on to the server
            self.pg.stop()
            os.environ.update(self.clock.env())
            try:
                self.pg.start()
            finally:
                for key in self.clock.env():
                    os.environ.pop(key, None)
            self.port = self.pg.port
        elif backend == "etcd":
            self.etcd = start_etcd()
            self.port = self.etcd.port
        if backend != "file":
            self.proxy = FaultProxy(self.port, seed=seed).start()

    def _start_redis(self) -> None:
        exe = need("redis-server")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            cwd=self.work,
            env={**os.environ, **self.clock.env()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    @property
    def url(self) -> str:
        if self.backend == "file":
            return f"file:{self.work / 'locks'}"
        assert self.proxy is not None
        if self.backend == "redis":
            return f"redis://127.0.0.1:{self.proxy.port}/0"
        if self.backend == "etcd":
            return f"etcd://127.0.0.1:{self.proxy.port}"
        return f"postgresql://postgres@127.0.0.1:{self.proxy.port}/postgres"

    def pids(self) -> list[int]:
        """The server's processes, for SIGSTOP: Redis, etcd, or every PostgreSQL backend."""
        if self.proc is not None:
            return [self.proc.pid]
        if self.etcd is not None:
            return [self.etcd.proc.pid] if self.etcd.proc is not None else []
        if self.pg is not None:
            pidfile = self.pg.datadir / "postmaster.pid"
            main = int(pidfile.read_text().split()[0])
            out = subprocess.run(
                ["pgrep", "-P", str(main)], capture_output=True, text=True, check=False
            ).stdout
            return [main, *(int(p) for p in out.split())]
        return []

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for pid in self.pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        if self.pg is not None:
            self.pg.destroy()
        if self.etcd is not None:
            self.etcd.destroy()
        with suppress(OSError):
            for f in self._shared.iterdir():
                f.unlink()
            self._shared.rmdir()


class Fleet:
    def __init__(self, backend: str, work: Path, seed: int) -> None:
        self.work = work
        self.server = _Server(backend, work, seed)
        self.runs_file = work / "runs"
        self.hooks_file = work / "hooks"
        self.clocks = [ClockShim(work / f"clock-{n}") for n in range(3)]
        self.instances: list[PyjobRun | None] = [None, None, None]
        self.generation = [0, 0, 0]
        self.killed: set[str] = set()  # process names SIGKILLed
        self.restarts = 0  # instances started again after exit 5 at start
        self.all_runs: list[PyjobRun] = []

    def argv(self, n: int) -> list[str]:
        # Every attempt writes a line, then the tick's fate: ticks at multiples of FAILING periods
        # fail every attempt, so retries, take-overs and the on-failure hook are exercised.
        command = (
            'echo "$PYJOB_TICK_UNIX $PYJOB_ATTEMPT $PYJOB_FENCE $PYJOB_INSTANCE start" >> "$OUT";'
            " sleep 0.3;"
            ' echo "$PYJOB_TICK_UNIX $PYJOB_ATTEMPT $PYJOB_FENCE $PYJOB_INSTANCE end" >> "$OUT";'
            f" [ $(( ${{PYJOB_TICK_UNIX%.*}} % {FAILING * PERIOD} )) -ne 0 ]"
        )
        return [
            *("--every", f"{PERIOD}s", "--align", "--name", "soak", "--instance-id", f"i{n}"),
            *("--lock", self.server.url, "--lease-ttl", f"{LEASE_TTL:g}s"),
            *("--retries", "1", "--retry-delay", "0.5s"),
            *("--on-failure", 'echo "$PYJOB_TICK_UNIX $PYJOB_INSTANCE" >> "$HOOKS"'),
            *("--stop-timeout", "5s", "--shell", "--", command),
        ]

    def start(self, n: int) -> None:
        self.generation[n] += 1
        env = {"OUT": str(self.runs_file), "HOOKS": str(self.hooks_file), **self.clocks[n].env()}
        run = PyjobRun(
            self.argv(n),
            self.work,
            name=f"i{n}-{self.generation[n]}",
            env=env,
        )
        self.instances[n] = run
        self.all_runs.append(run)

    def supervise(self) -> None:
        """Start again an instance that found the backend unreachable at its start (exit 5, as
        documented), as systemd's Restart=on-failure or a container's restart policy would."""
        for n, run in enumerate(self.instances):
            if (
                run is not None
                and run.proc.poll() == 5
                and "started" not in run.log_path.read_text()
            ):
                run.wait()
                self.restarts += 1
                self.start(n)

    def kill(self, n: int) -> None:
        run = self.instances[n]
        if run is not None and run.proc.poll() is None:
            run.proc.send_signal(signal.SIGKILL)
            self.killed.add(run.log_path.name)
            run.wait()
        self.instances[n] = None

    def apply(self, fault: Fault) -> None:
        proxy = self.server.proxy
        if fault.kind == "kill":
            self.kill(fault.target)
        elif fault.kind == "host-clock":
            self.clocks[fault.target].set(fault.value)
        elif fault.kind == "backend-clock":
            self.server.clock.set(fault.value)
        elif fault.kind == "drop" and proxy is not None:
            proxy.drop(fault.value)
        elif fault.kind == "hang" and proxy is not None:
            proxy.hang()
        elif fault.kind == "cut" and proxy is not None:
            proxy.cut()
        elif fault.kind == "stall":
            for pid in self.server.pids():
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
        elif fault.kind == "restart" and self.server.etcd is not None:
            self.server.etcd.kill()

    def heal(self, fault: Fault) -> None:
        proxy = self.server.proxy
        if fault.kind == "kill":
            if self.instances[fault.target] is None:
                self.start(fault.target)
        elif fault.kind == "host-clock":
            self.clocks[fault.target].set(0)
        elif fault.kind == "backend-clock":
            self.server.clock.set(0)
        elif fault.kind in ("drop", "hang") and proxy is not None:
            proxy.forward()
        elif fault.kind == "stall":
            for pid in self.server.pids():
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        elif fault.kind == "restart" and self.server.etcd is not None:
            self.server.etcd.start_again()

    READ = ("-n", "100000", "--format", "json")

    def history(self) -> list[dict[str, object]]:
        env = {**os.environ, "TZ": "UTC"}
        for _ in range(3):  # the backend may still be settling after its last fault
            done = subprocess.run(
                [*pyjob_exe(), "history", "soak", "--lock", self.server.url, *self.READ],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )
            if done.returncode == 0:
                runs: list[dict[str, object]] = json.loads(done.stdout)["runs"]
                return runs
            time.sleep(1)
        raise AssertionError(f"pyjob history failed: {done.stderr}")

    def close(self) -> None:
        for run in self.all_runs:
            if run.proc.poll() is None:
                run.proc.kill()
            with suppress(Exception):
                run.wait()
        self.server.close()


def _drive(fleet: Fleet, faults: list[Fault], seconds: float) -> float:
    """Run the plan; the monotonic instant the fleet started."""
    for n in range(3):
        fleet.start(n)
    for run in fleet.instances:  # faults start once the fleet is up, however slow the machine
        assert run is not None
        run.wait_for("started", timeout=120)
    start = time.monotonic()
    pending = sorted(
        [(f.at, 0, i, f) for i, f in enumerate(faults)]
        + [(f.at + f.length, 1, i, f) for i, f in enumerate(faults)]
    )

    def until(at: float) -> None:
        while (left := start + at - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))
            fleet.supervise()

    for at, heal, _, fault in pending:
        until(at)
        (fleet.heal if heal else fleet.apply)(fault)
    until(seconds)
    return start


def check(
    fleet: Fleet, faults: list[Fault], started: float, stopped: float
) -> tuple[list[str], dict[str, int]]:
    """Every invariant of the module docstring; the violations, and what was counted."""
    bad: list[str] = []
    rows = [line.split() for line in fleet.runs_file.read_text().splitlines()]
    rows = [r for r in rows if len(r) == 5]
    starts: dict[tuple[int, int], list[str]] = defaultdict(list)
    fences: dict[int, set[int]] = defaultdict(set)
    tick_instances: dict[int, set[str]] = defaultdict(set)
    for tick_s, attempt, fence, instance, what in rows:
        tick = int(float(tick_s))
        if what == "start":
            starts[(tick, int(attempt))].append(instance)
            tick_instances[tick].add(instance)
        if fence:
            fences[tick].add(int(fence))
    # S1: at most one run per tick (an attempt may move to another instance only by take-over,
    # which is a later attempt, never the same one twice)
    for key, who in sorted(starts.items()):
        if len(who) > 1:
            bad.append(f"S1 tick {key[0]} attempt {key[1]} ran {len(who)} times: {who}")
    # S2: one fence per tick, no fence given twice, and growing in the order ticks were claimed
    # (docs/design.md §8: a tick nobody could claim in time may be won after a later one)
    owner: dict[int, int] = {}
    for tick in sorted(fences):
        if len(fences[tick]) > 1:
            bad.append(f"S2 tick {tick} ran under fences {sorted(fences[tick])}")
        for fence in fences[tick]:
            if owner.setdefault(fence, tick) != tick:
                bad.append(f"S2 fence {fence} was given to ticks {owner[fence]} and {tick}")
    # S3: alerts at most once
    hooks: dict[int, int] = defaultdict(int)
    if fleet.hooks_file.exists():
        for line in fleet.hooks_file.read_text().splitlines():
            hooks[int(float(line.split()[0]))] += 1
    for tick, count in sorted(hooks.items()):
        if count > 1:
            bad.append(f"S3 tick {tick}'s on-failure hook fired {count} times")
    # L1: every tick due from BOUND after the last fault ended ran
    quiet = max((f.at + f.length for f in faults), default=0.0) + BOUND
    epoch_at_start = time.time() - (time.monotonic() - started)
    first = math.ceil((epoch_at_start + quiet) / PERIOD) * PERIOD
    end = epoch_at_start + (stopped - started) - PERIOD  # the last tick may still be starting
    due = list(range(first, int(end), PERIOD))
    ran = {tick for tick, _ in starts}
    missing = [t for t in due if t not in ran]
    if missing:
        bad.append(f"L1 ticks due after the faults never ran: {missing} (of {len(due)})")
    # L2: every run ends once, with its record and (on failure) one hook
    records = {int(float(_unix(r["tick"]))): r for r in fleet.history()}
    open_runs = [
        t for t, r in records.items() if r["result"] in ("running", "retrying") and t in ran
    ]
    no_record = [t for t in sorted(ran) if t not in records and t < end - PERIOD]
    failed_unalerted = [
        t for t, r in records.items() if r["result"] == "failure" and hooks.get(t, 0) != 1
    ]
    if open_runs:
        bad.append(f"L2 runs without a final record: {sorted(open_runs)}")
    if no_record:
        bad.append(f"L2 runs without any record: {no_record}")
    if failed_unalerted:
        bad.append(f"L2 failed runs without exactly one hook: {sorted(failed_unalerted)}")
    # L3: survivors, no traceback
    for run in fleet.all_runs:
        text = run.log_path.read_text()
        if "Traceback" in text:
            bad.append(f"L3 {run.log_path.name} printed a traceback: {text[-1500:]}")
    counted = {
        "ticks_run": len(ran),
        "restarts": fleet.restarts,
        "attempts": len(starts),
        "quiet_ticks_checked": len(due),
        "hooks": sum(hooks.values()),
        "records": len(records),
        "open_runs": len(open_runs),
        "failed_without_one_hook": len(failed_unalerted),
    }
    return bad, counted


def _unix(iso: object) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(iso)).timestamp()


@contextmanager
def _fleet(backend: str, work: Path, seed: int) -> Iterator[Fleet]:
    fleet = Fleet(backend, work, seed)
    try:
        yield fleet
    finally:
        fleet.close()


def soak(backend: str, seconds: float, seed: int, work: Path) -> Outcome:
    """One run of the fleet: ``seconds`` long, faults in all but the last ``BOUND + 3 periods``."""
    faulty = max(2.0, seconds - BOUND - 3 * PERIOD - 4.0)
    faults = plan(seed, backend, faulty)
    with _fleet(backend, work, seed) as fleet:
        started = _drive(fleet, faults, seconds)
        stopped = time.monotonic()
        bad: list[str] = []
        for n, run in enumerate(fleet.instances):
            if run is None:
                continue
            if run.proc.poll() is not None:
                bad.append(f"L3 i{n} ended by itself with {run.proc.returncode}")
            elif (code := run.stop()) != 0:
                bad.append(f"L3 i{n} stopped with exit {code}")
        more, counted = check(fleet, faults, started, stopped)
    return Outcome(seed, backend, faults, bad + more, counted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--seconds", type=float, default=120.0, help="per backend")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument(
        "--keep", type=Path, help="work here and keep the logs (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    failed = False
    for backend in BACKENDS if args.backend == "all" else (args.backend,):
        with tempfile.TemporaryDirectory(prefix=f"pyjob-soak-{backend}-") as tmp:
            work = Path(tmp) if args.keep is None else args.keep / backend
            work.mkdir(parents=True, exist_ok=True)
            try:
                outcome = soak(backend, args.seconds, seed, work)
            except Missing as e:
                print(f"{backend}: skipped, {e}")
                continue
        print(outcome.report(), flush=True)
        failed |= bool(outcome.violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

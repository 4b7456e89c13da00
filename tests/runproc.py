"""Helpers to drive real `pyjob run` processes and read their JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

from .conftest import pyjob_exe


class PyjobRun:
    live: ClassVar[list[PyjobRun]] = []  # every one started; conftest kills what a test leaves

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        name: str = "run",
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.log_path = cwd / f"{name}.log"
        self.out_path = cwd / f"{name}.out"
        self._log = self.log_path.open("w")
        self._out = self.out_path.open("w")
        # No NTP check unless a test asks for one (tests/test_clock.py): offline it only logs.
        # Every event, debug ones too (next-tick, claimed, lost): the tests wait for them.
        full_env = {
            **os.environ,
            "TZ": "UTC",
            "PYJOB_NO_CLOCK_CHECK": "1",
            "PYJOB_LOG_LEVEL": "debug",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [*pyjob_exe(), "run", "--log-format", "json", *args],
            stdout=self._out,
            stderr=self._log,
            cwd=cwd,
            env=full_env,
            pass_fds=pass_fds,
        )
        PyjobRun.live.append(self)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
            self._out.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM once pyjob handles it (its `started` event follows the handlers), so that a
        start slowed by a busy machine is not taken for a crash (exit -15)."""
        deadline = time.monotonic() + 60
        while self.proc.poll() is None and time.monotonic() < deadline:
            if '"event": "started"' in self.log_path.read_text():
                break
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            doc = json.loads(line)  # every line is one JSON object
            if kind is None or doc["event"] == kind:
                out.append(doc)
        return out

    def wait_for(
        self, kind: str | tuple[str, ...], count: int = 1, timeout: float = 20
    ) -> list[dict[str, Any]]:
        """The events of ``kind`` (or of any of several kinds) once ``count`` of them are in."""
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e["event"] in kinds]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {count}x {kind} in {self.log_path.read_text()[-3000:]}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False

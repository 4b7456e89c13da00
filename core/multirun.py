"""Many jobs in one process (`pyjob run --file`): one Executor per job, each on its own thread with
its own ticks, claims, overlap state and backend connection, so a slow job never delays another's
tick. A reload (SIGHUP) keeps jobs whose definition did not change, starts new ones, and lets
removed or changed ones finish their current run before they stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .backends import Backend, open_backend
from .clock import MAX_SLEEP_SLICE, Clock, Waker
from .executor import Event, Executor, JobConfig
from .jobsfile import JobDef
from .process import Runner
from .schedule import Schedule


def config_for(
    job: JobDef, defaults: Mapping[str, Any], instance: str, env: Mapping[str, str], now: datetime
) -> JobConfig:
    """The executor settings of ``job``: built-in defaults < ``defaults`` (the command line's)
    < the job's own keys. Durations are microseconds, as the parsers return them."""
    s = {**defaults, **job.settings}

    def seconds(key: str, fallback: float) -> float:
        value = s.get(key)
        return fallback if value is None else value / 1e6

    grace = s.get("misfire-grace")
    timeout = s.get("timeout")
    return JobConfig(
        job_id=job.name,
        schedule=Schedule(job.spec, job_id=job.name, anchor=now),
        command=job.command,
        instance=instance,
        overlap=s.get("overlap", "skip"),
        misfire_grace=None if grace is None else grace / 1e6,
        timeout=None if timeout is None else timeout / 1e6,
        kill_after=seconds("kill-after", 10.0),
        stop_timeout=seconds("stop-timeout", 10.0),
        run_now=bool(s.get("run-now", False)),
        jitter=seconds("jitter", 0.0),
        max_runs=s.get("max-runs"),
        log_output=bool(s.get("log-output", False)),
        on_backend_error=s.get("on-backend-error", "skip"),
        env={**env, **dict(job.env)},
    )


@dataclass(eq=False)
class _Running:
    job: JobDef
    executor: Executor
    backend: Backend
    thread: threading.Thread | None = None
    code: int | None = None


@dataclass
class ReloadResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


class Supervisor:
    """Starts, reloads and stops the executors of a jobs file."""

    def __init__(
        self,
        clock: Clock,
        runner: Runner,
        emit: Callable[[Event], None],
        *,
        instance: str,
        defaults: Mapping[str, Any],
        env: Mapping[str, str],
        default_lock: str | None,
    ) -> None:
        self.clock = clock
        self.runner = runner
        self._emit = emit
        self.instance = instance
        self.defaults = dict(defaults)
        self.env = env
        self.default_lock = default_lock
        self.waker = Waker()  # woken by signals and by executors that end
        self.jobs: dict[str, _Running] = {}
        self.retiring: list[_Running] = []  # removed or replaced: finishing their current run
        self._stop = False
        self._force = False
        self._reload = False

    def emit(self, kind: str, **fields: Any) -> None:
        self._emit(Event(kind, "*", self.instance, None, self.clock.now(), fields))

    # ---------------------------------------------------------------- building

    def prepare(self, jobs: list[JobDef]) -> list[_Running]:
        """An executor and an open, checked backend per job (BackendError propagates)."""
        prepared: list[_Running] = []
        try:
            for job in jobs:
                url = job.settings.get("lock", self.defaults.get("lock", self.default_lock))
                backend = open_backend(url, self.env, self.clock)
                prepared.append(_Running(job, self._executor(job, backend), backend))
                backend.check()
        except Exception:
            for r in prepared:
                r.backend.close()
            raise
        return prepared

    def _executor(self, job: JobDef, backend: Backend) -> Executor:
        config = config_for(job, self.defaults, self.instance, self.env, self.clock.now())
        return Executor(config, backend, self.clock, self.runner, self._emit)

    def _start(self, running: _Running) -> None:
        def body() -> None:
            try:
                running.code = running.executor.run(self.clock.now())
            except Exception as e:  # pragma: no cover - a bug; keep the other jobs going
                self.emit("job-crashed", job=running.job.name, error=repr(e))
                running.code = 1
            finally:
                running.backend.close()
                self.waker.wake()

        running.thread = threading.Thread(target=body, name=running.job.name, daemon=True)
        running.thread.start()

    def start(self, prepared: list[_Running]) -> None:
        for r in prepared:
            self.jobs[r.job.name] = r
            self._start(r)
        self.emit("jobs", count=len(prepared), names=[r.job.name for r in prepared])

    # ---------------------------------------------------------------- requests (signal-safe)

    def request_stop(self, force: bool = False) -> None:
        self._force = self._force or force
        self._stop = True
        self.waker.wake()

    def request_reload(self) -> None:
        self._reload = True
        self.waker.wake()

    # ---------------------------------------------------------------- reload

    def reload(self, jobs: list[JobDef]) -> ReloadResult:
        result = ReloadResult()
        new = {j.name: j for j in jobs}
        to_start = []
        for name, job in new.items():
            old = self.jobs.get(name)
            if old is None:
                result.added.append(name)
                to_start.append(job)
            elif old.job.fingerprint() != job.fingerprint():
                result.changed.append(name)
                to_start.append(job)
            else:
                result.kept.append(name)
        result.removed = [n for n in self.jobs if n not in new]
        prepared = self.prepare(to_start)  # a backend error leaves everything as it was
        for name in result.removed + result.changed:
            self._retire(self.jobs.pop(name))
        for r in prepared:
            self.jobs[r.job.name] = r
            self._start(r)
        return result

    def _retire(self, running: _Running) -> None:
        running.executor.request_stop(drain=True)
        self.retiring.append(running)

    # ---------------------------------------------------------------- the loop

    def run(self, load: Callable[[], list[JobDef]]) -> int:
        """Until stopped (0; 130 when forced) or until every job's schedule has ended (0 if
        every run succeeded, else 1). ``load`` re-reads the file on SIGHUP."""
        while True:
            if self._stop:
                return self._shutdown()
            if self._reload:
                self._reload = False
                self._do_reload(load)
            self.retiring = [r for r in self.retiring if r.thread and r.thread.is_alive()]
            current = list(self.jobs.values())
            ended = all(r.thread is not None and not r.thread.is_alive() for r in current)
            if current and ended and not self.retiring:
                self.emit("exhausted", jobs=len(current))
                return 1 if any(r.code for r in current) else 0
            self.clock.wait(self.waker, MAX_SLEEP_SLICE)

    def _do_reload(self, load: Callable[[], list[JobDef]]) -> None:
        from .errors import PyjobError

        try:
            result = self.reload(load())
        except PyjobError as e:
            problems = getattr(e, "problems", None) or [str(e)]
            self.emit("reload-failed", problems=problems, action="the previous jobs keep running")
            return
        self.emit(
            "reloaded",
            added=result.added,
            changed=result.changed,
            removed=result.removed,
            kept=result.kept,
        )

    def _shutdown(self) -> int:
        everything = list(self.jobs.values()) + self.retiring
        for r in everything:
            r.executor.request_stop(force=self._force)
        while any(r.thread is not None and r.thread.is_alive() for r in everything):
            if self._force:
                for r in everything:
                    r.executor.request_stop(force=True)
            self.clock.wait(self.waker, 1.0)
        self.waker.close()
        return 130 if self._force else 0

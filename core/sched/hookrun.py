"""The hooks of a run that ended (--on-failure, --on-success, --on-finish; core/hooks.py decides
which): started like runs, in their own process groups, bounded by --hook-timeout. With
--notify-on change they wait for the job's previous result across the fleet.
"""

from __future__ import annotations

import signal
from typing import Any

from ..errors import BackendError
from ..hooks import hooks_to_run
from ..instants import to_us
from ..process import Command, FailedStart, Handle
from ..settings import NotifyOn
from .model import Hook, Run, hooks_env, run_result
from .shared import Shared
from .timers import HookTimeout


class HookRunner:
    def __init__(self, sh: Shared) -> None:
        self.sh = sh
        self.hooks: dict[int, Hook] = {}  # by id() of the handle
        self.pending = 0  # --notify-on change: hooks waiting for the previous result

    def running(self, handle: Handle) -> bool:
        return id(handle) in self.hooks

    def busy(self) -> bool:
        return bool(self.hooks) or self.pending > 0

    def after_run(self, run: Run, code: int, duration: float, result: str | None = None) -> None:
        """Fire the run's hooks (``result``: the run's, when not its last attempt's: ``lost``);
        with --notify-on change, once the job's previous result across the fleet is known."""
        sh = self.sh
        state = run.job
        s = state.s
        if not (s.on_failure or s.on_success or s.on_finish):
            return
        result = result or run_result(run, code)
        local_previous, state.last_result = state.last_result, result

        def fire(previous: str | None) -> None:
            for name, line in hooks_to_run(s, result, previous):
                self.start(run, name, line, hooks_env(run, name, result, code, duration))

        if s.notify_on is NotifyOn.CHANGE and run.tick is not None:

            def known(previous: str | BackendError | None) -> None:
                self.pending -= 1
                if isinstance(previous, BackendError) or previous is None:
                    previous = local_previous
                if not sh.force:
                    fire(previous)

            self.pending += 1
            asked = sh.coordinator.previous(state.job.lock, state.id, to_us(run.tick), known)
            if asked:
                return
            self.pending -= 1
        fire(local_previous)

    def start(self, run: Run, name: str, line: str, env: dict[str, str]) -> None:
        sh = self.sh
        hook = Hook(run.job, name, run.run_id, sh.clock.monotonic())
        on_line = None
        if run.job.s.log_output:  # the hook's lines go to the log too, marked as its own

            def on_line(stream: str, text: str) -> None:
                sh.emit(
                    "output",
                    run.job.id,
                    run.tick,
                    stream=stream,
                    line=text,
                    run_id=run.run_id,
                    hook=name,
                )

        handle = sh.runner.start(Command((line,), shell=True), env, on_line)
        hook.handle = handle
        self.hooks[id(handle)] = hook
        sh.mono.push(HookTimeout(hook.started_mono + run.job.s.hook_timeout, hook, 0))

    def done(self, handle: Handle, code: int) -> bool:
        """A child ended: if it is a hook, report it (True)."""
        hook = self.hooks.pop(id(handle), None)
        if hook is None:
            return False
        duration = round(self.sh.clock.monotonic() - hook.started_mono, 6)
        fields: dict[str, Any] = {"hook": hook.name, "run_id": hook.run_id, "exit_code": code}
        fields["duration"] = duration
        if isinstance(hook.handle, FailedStart):
            fields["error"] = hook.handle.start_error
        elif hook.timed_out:
            fields["error"] = f"ran past --hook-timeout {hook.job.s.hook_timeout:g}s"
        if code == 0 and "error" not in fields:
            self.sh.emit("hook-finished", hook.job.id, None, **fields)
        else:
            fields.setdefault("error", f"exit code {code}")
            self.sh.emit("hook-failed", hook.job.id, None, **fields)
        return True

    def kill_all(self) -> None:
        """The stop's time is up (or it is forced): kill every hook, wait for no more."""
        for hook in self.hooks.values():
            if hook.handle is not None:
                hook.handle.signal_group(signal.SIGKILL)
        self.pending = 0

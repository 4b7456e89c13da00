"""Hooks: shell lines run after a run ends (--on-failure, --on-success, --on-finish), by the
instance that ran the tick, so once per run across the fleet (DESIGN §5).

Which hooks a run fires is a pure function of its result, the job's previous result across the
fleet (from the run records) and ``--notify-on``, so tests can table it:

- ``always`` (default): on-failure after a failed run, on-success after a successful one,
  on-finish after every run;
- ``failure``: only failed runs fire (on-failure, on-finish);
- ``change``: only a run whose outcome differs from the job's previous one fires — the first
  failure after successes (on-failure, on-finish) and the first success after failures, the
  recovery (on-success, on-finish). A job with no previous run counts as succeeding.

A run is failed when its result is failure, timeout or start-failed; a run pyjob itself stopped
(``stopped``) is neither, and fires only on-finish (and nothing with ``failure``/``change``).
"""

from __future__ import annotations

from collections.abc import Mapping

from .jobsettings import JobSettings
from .results import FAILED, Result
from .settings import NotifyOn


def failed(result: str | None) -> bool:
    return result in FAILED


def hooks_to_run(settings: JobSettings, result: str, previous: str | None) -> list[tuple[str, str]]:
    """The hooks (name, shell line) that a run with ``result`` fires."""
    given = [
        ("on-failure", settings.on_failure),
        ("on-success", settings.on_success),
        ("on-finish", settings.on_finish),
    ]
    wanted: set[str]
    if result == Result.STOPPED:
        wanted = {"on-finish"} if settings.notify_on is NotifyOn.ALWAYS else set()
    elif settings.notify_on is NotifyOn.CHANGE:
        if failed(result) == failed(previous or Result.SUCCESS):
            wanted = set()
        else:
            wanted = {"on-failure" if failed(result) else "on-success", "on-finish"}
    elif settings.notify_on is NotifyOn.FAILURE:
        wanted = {"on-failure", "on-finish"} if failed(result) else set()
    else:
        wanted = {"on-failure" if failed(result) else "on-success", "on-finish"}
    return [(name, line) for name, line in given if line and name in wanted]


def hook_env(
    run_env: Mapping[str, str],
    hook: str,
    result: str,
    exit_code: int,
    duration: float,
    output_tail: str | None,
    attempt: int = 1,
) -> dict[str, str]:
    env = dict(run_env)
    env.update(
        PYJOB_HOOK=hook,
        PYJOB_RESULT=result,
        PYJOB_EXIT_CODE=str(exit_code),
        PYJOB_DURATION=f"{duration:.6f}",
        PYJOB_ATTEMPT=str(attempt),
    )
    if output_tail is not None:
        env["PYJOB_OUTPUT_TAIL"] = output_tail
    return env


__all__ = ["failed", "hook_env", "hooks_to_run"]

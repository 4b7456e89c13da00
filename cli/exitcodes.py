"""Exit codes (DESIGN §7) and the one place that maps core errors to them."""

from __future__ import annotations

from enum import IntEnum

from pyjob.core.errors import (
    BackendError,
    ClockError,
    ClockOffsetError,
    InputError,
    PyjobError,
)


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    CLOCK_UNMEASURED = 3
    CLOCK_OFFSET = 4
    BACKEND = 5
    INTERRUPTED = 130


def exit_code_for(error: PyjobError) -> ExitCode:
    if isinstance(error, InputError):
        return ExitCode.USAGE
    if isinstance(error, ClockError):
        return ExitCode.CLOCK_UNMEASURED
    if isinstance(error, ClockOffsetError):
        return ExitCode.CLOCK_OFFSET
    if isinstance(error, BackendError):
        return ExitCode.BACKEND
    return ExitCode.FAILED

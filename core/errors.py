"""Every error pyjob's core raises, in one place.

The CLI maps these classes to exit codes (cli/exitcodes.py); the core never exits. Messages say
what is wrong and what would be right: "bad minute '61' (0-59)".
"""

from __future__ import annotations

import re

# Compiled on the first error, not at import: every command imports this module.
_LONG_QUOTED = r"'([^']{41,})'"
_CONTROL = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"


def tidy(message: str) -> str:
    """One printable line: control characters (a newline in a bad token too) are escaped, and a
    quoted token longer than 40 characters is cut to its start and its length."""
    message = re.sub(_CONTROL, lambda m: repr(m.group())[1:-1], message)
    return re.sub(
        _LONG_QUOTED, lambda m: f"'{m.group(1)[:24]}...' ({len(m.group(1))} characters)", message
    )


class PyjobError(Exception):
    """Base of everything the core raises on purpose."""


class InputError(PyjobError):
    """Bad input from the user: a schedule, duration, time or zone. Exit code 2.

    ``source`` is the text the error was found in and ``pos``/``length`` the bad part of it, so
    that a terminal front end can put a caret under it.
    """

    def __init__(
        self, message: str, *, source: str | None = None, pos: int | None = None, length: int = 1
    ) -> None:
        message = tidy(message)
        super().__init__(message)
        self.message = message
        self.source = source
        self.pos = pos
        self.length = max(1, length)

    def at(self, source: str, pos: int, length: int | None = None) -> InputError:
        """The same error, located in ``source`` (used when a part is parsed on its own)."""
        if self.source is None:
            self.source = source
            self.pos = pos + (self.pos or 0)
            if length is not None:
                self.length = length
        return self


class DurationError(InputError):
    """A duration that is malformed, zero, negative or too large."""


class ZoneError(InputError):
    """An unknown time zone."""


class TimeParseError(InputError):
    """A date-time or time of day that cannot be read."""


class ScheduleError(InputError):
    """A schedule that cannot be parsed or can never fire."""


class ClockError(PyjobError):
    """The clock could not be measured (no usable NTP reply). Exit code 3."""


class ClockOffsetError(PyjobError):
    """The clock's offset is over the limit. Exit code 4 for `run`."""


class BackendError(PyjobError):
    """The lock backend is unreachable or misconfigured. Exit code 5 at start."""

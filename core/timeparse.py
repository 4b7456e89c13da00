"""Reading date-times and times of day from the command line and schedules."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, tzinfo

from .errors import TimeParseError
from .zones import resolve_wall

# ASCII digits only; compiled at its first use (re keeps it), not at every start
_TIME_OF_DAY = r"^([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?$"


def parse_time_of_day(text: str) -> time:
    """``HH:MM`` or ``HH:MM:SS`` (24-hour clock)."""
    m = re.match(_TIME_OF_DAY, text.strip())
    if m:
        h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if h < 24 and mi < 60 and s < 60:
            return time(h, mi, s)
    raise TimeParseError(
        f"bad time of day '{text}' (HH:MM or HH:MM:SS, 00:00 to 23:59:59)",
        source=text,
        pos=0,
        length=len(text),
    )


def format_time_of_day(t: time) -> str:
    return t.strftime("%H:%M:%S") if t.second else t.strftime("%H:%M")


def is_relative(text: str) -> bool:
    """Whether a date-time ``parse_datetime`` reads names an instant relative to the moment it is
    read (``now``), which each process that reads it resolves to its own instant."""
    return text.strip().lower() == "now"


def parse_datetime(text: str, zone: tzinfo, now: datetime | None = None) -> datetime:
    """An ISO 8601 date-time (or date, or ``now``) as an aware UTC instant.

    A naive value means wall time in ``zone``, resolved by the DST rule of ``zones.resolve_wall``.
    """
    s = text.strip()
    if not s.isascii():  # float() and parsers take '٥' and '５' for digits: not here
        s = ""
    if is_relative(s):
        if now is None:
            raise TimeParseError("'now' is not allowed here", source=text, pos=0)
        return now.astimezone(UTC)
    if s.startswith("@"):
        try:
            return datetime.fromtimestamp(float(s[1:]), UTC)
        except (ValueError, OverflowError, OSError):
            pass
    else:
        from dateutil.parser import isoparse  # ISO 8601 in all its forms, strictly

        try:
            value = isoparse(s.replace(" ", "T", 1) if " " in s else s)
        except (ValueError, OverflowError):
            value = None
        if value is not None:
            assert isinstance(value, datetime)
            if value.tzinfo is None:
                return resolve_wall(value, zone).instant
            return value.astimezone(UTC)
    raise TimeParseError(
        f"bad date-time '{text}' (ISO 8601 like 2026-12-01T09:00, 2026-12-01T09:00+01:00, "
        "@UNIX or now)",
        source=text,
        pos=0,
        length=len(text),
    )

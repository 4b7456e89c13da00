"""Instants as pyjob stores and writes them: whole microseconds since the Unix epoch (``int``),
aware datetimes (compared in UTC), and their texts.

Every module converts through here, so a tick's key in a lock backend, in a run record and in a
job's environment is the same number, computed with exact integer arithmetic (a float of
seconds loses the last microsecond of today's instants).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)


def to_us(instant: datetime) -> int:
    """An aware instant as whole microseconds since the Unix epoch."""
    return (instant - EPOCH) // US


def from_us(us: int) -> datetime:
    """Microseconds since the Unix epoch as an aware instant in UTC."""
    return EPOCH + timedelta(microseconds=us)


def iso(instant: datetime, zone: tzinfo | None = None) -> str:
    """ISO 8601 with offset, microseconds only when there are some; UTC is written with Z."""
    value = instant.astimezone(zone or UTC)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z") if zone is None else text


def iso_ms(us: int) -> str:
    """ISO 8601 in UTC to the millisecond, with Z: an instant in a message."""
    return from_us(us).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_iso(us: int, zone: tzinfo, timespec: str = "auto") -> str:
    """ISO 8601 in ``zone``; ``auto``: microseconds only when there are some."""
    if timespec == "auto":
        timespec = "microseconds" if us % 1_000_000 else "seconds"
    return from_us(us).astimezone(zone).isoformat(timespec=timespec)


def unix(us: int) -> int | float:
    """Seconds since the Unix epoch for JSON: an integer when whole."""
    return us // 1_000_000 if us % 1_000_000 == 0 else us / 1e6


def unix_text(us: int) -> str:
    """Seconds since the Unix epoch as text: whole, or with all six decimals."""
    return str(us // 1_000_000) if us % 1_000_000 == 0 else f"{us / 1e6:.6f}"


__all__ = ["EPOCH", "US", "from_us", "iso", "iso_ms", "local_iso", "to_us", "unix", "unix_text"]

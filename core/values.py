"""The values inside schedule phrases: weekday lists, days of the month, times of day, intervals,
one-time instants. Each parser raises an InputError that points at the bad item."""

from __future__ import annotations

from datetime import datetime, time, tzinfo

from .errors import InputError, ScheduleError
from .timeparse import is_relative, parse_datetime, parse_time_of_day

WEEKDAYS = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]  # ISO order, date.weekday()
_WEEKDAY_ALIASES = {
    **{d: i for i, d in enumerate(WEEKDAYS)},
    **{
        n: i
        for i, n in enumerate(
            ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]
        )
    },
}
MAX_INTERVAL = 1000


def split_list(text: str) -> list[tuple[str, int]]:
    """Comma-separated items, stripped, each with its position in ``text``."""
    out = []
    pos = 0
    for item in text.split(","):
        out.append((item.strip(), pos))
        pos += len(item) + 1
    return out


def weekdays(text: str) -> list[int]:
    """MON,FRI or MON-FRI (ISO order, 0 = Monday)."""
    out: list[int] = []
    for item, pos in split_list(text):
        lo_text, dash, hi_text = item.upper().partition("-")
        lo = _weekday(lo_text, text, pos)
        if not dash:
            out.append(lo)
            continue
        hi = _weekday(hi_text, text, pos + len(lo_text) + 1)
        if hi < lo:
            raise ScheduleError(
                f"bad weekday range '{item}' (MON-SUN order)",
                source=text,
                pos=pos,
                length=len(item),
            )
        out.extend(range(lo, hi + 1))
    return out


def _weekday(word: str, source: str, pos: int) -> int:
    if word in _WEEKDAY_ALIASES:
        return _WEEKDAY_ALIASES[word]
    raise ScheduleError(
        f"bad weekday '{word}' (MON, TUE, WED, THU, FRI, SAT, SUN, or a range like MON-FRI)",
        source=source,
        pos=pos,
        length=max(1, len(word)),
    )


def month_days(text: str) -> list[int]:
    """1,15,-1 or 1-7: days 1..31 and -1..-31 (counted from the month's end)."""
    out: set[int] = set()
    for item, pos in split_list(text):
        lo_text, dash, hi_text = item.partition("-") if not item.startswith("-") else (item, "", "")
        lo = _month_day(lo_text, text, pos)
        if not dash:
            out.add(lo)
            continue
        hi = _month_day(hi_text, text, pos + len(lo_text) + 1)
        if lo < 0 or hi < lo:
            raise ScheduleError(
                f"bad day range '{item}' (like 1-7)", source=text, pos=pos, length=len(item)
            )
        out.update(range(lo, hi + 1))
    return sorted(out, key=lambda d: (d < 0, abs(d)))


def _is_number(text: str) -> bool:
    """A few ASCII digits: int() also reads '٥' and '５', and fails on 4,301 digits."""
    return 0 < len(text) <= 6 and text.isascii() and text.isdigit()


def _month_day(word: str, source: str, pos: int) -> int:
    digits = word[1:] if word.startswith("-") else word
    value = int(word) if _is_number(digits) else 0
    if 1 <= abs(value) <= 31:
        return value
    raise ScheduleError(
        f"bad day of month '{word}' (1 to 31, or -1 to -31 counting from the month's end)",
        source=source,
        pos=pos,
        length=max(1, len(word)),
    )


def times_of_day(groups: list[str]) -> tuple[time, ...]:
    """The --at values (each a comma-separated list), sorted and unique; default midnight."""
    times: list[time] = []
    for group in groups or ["00:00"]:
        for item, pos in split_list(group):
            try:
                times.append(parse_time_of_day(item))
            except InputError as e:
                raise e.at(group, pos, len(item)) from None
    return tuple(sorted(set(times)))


def interval(text: str | None) -> int:
    """--interval N: a whole number 1..MAX_INTERVAL (1 when not given)."""
    if text is None:
        return 1
    stripped = text.strip()
    if not _is_number(stripped) or not 1 <= int(stripped) <= MAX_INTERVAL:
        raise ScheduleError(
            f"bad interval '{text}' (a whole number 1-{MAX_INTERVAL})",
            source=text,
            pos=0,
            length=len(text),
        )
    return int(stripped)


def fixed_instants(text: str, zone: tzinfo, now: datetime | None) -> tuple[datetime, ...]:
    """Every instant of a comma-separated list of date-times that does not depend on when it is
    read (past ones too, ``now`` left out), sorted and unique: what a job's identity holds."""
    fixed = {
        parse_datetime(item, zone, now) for item, _pos in split_list(text) if not is_relative(item)
    }
    return tuple(sorted(fixed))


def once_instants(text: str, zone: tzinfo, now: datetime | None) -> tuple[datetime, ...]:
    """The future instants of a comma-separated list of date-times, sorted and unique."""
    instants: set[datetime] = set()
    for item, pos in split_list(text):
        try:
            instants.add(parse_datetime(item, zone, now))
        except InputError as e:
            raise e.at(text, pos, len(item)) from None
    kept = sorted(i for i in instants if now is None or i > now)
    if not kept:
        raise ScheduleError(
            f"every time in 'once {text}' is in the past", source=text, pos=0, length=len(text)
        )
    return tuple(kept)

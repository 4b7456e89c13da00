"""The fields of a cron expression as values, and the day rule (``DayRule``): which dates its
day-of-month, month and day-of-week fields match. Parsing and validation of the text are in
core/cron.py; this module holds what its compiled form (``WallClock``) is made of.
"""

from __future__ import annotations

import functools
from datetime import date
from typing import Any

from .frozen import Frozen

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


class Field:
    """One field of a cron expression: its name, range and names (month and weekday names)."""

    __slots__ = ("hi", "lo", "name", "names")

    def __init__(self, name: str, lo: int, hi: int, names: dict[str, int]) -> None:
        self.name, self.lo, self.hi, self.names = name, lo, hi, names

    @property
    def range_text(self) -> str:
        return f"{self.lo}-{self.hi}"


SECOND = Field("second", 0, 59, {})
MINUTE = Field("minute", 0, 59, {})
HOUR = Field("hour", 0, 23, {})
DOM = Field("day-of-month", 1, 31, {})
MONTH = Field("month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTHS)})
DOW = Field("day-of-week", 0, 7, {n: i for i, n in enumerate(_DAYS)})
FIELDS_5 = (MINUTE, HOUR, DOM, MONTH, DOW)
FIELDS_6 = (SECOND, *FIELDS_5)


def field_values(field: Field, text: str) -> set[int] | None:
    """The values a plain field (numbers, names, ranges, steps) selects; None with L, W or #.

    ``a/n`` runs from a to the field's end (cronsim, Vixie cron); in day-of-week that end is 7, so
    ``7/1`` is Sunday alone and ``1/2`` is Monday, Wednesday, Friday and Sunday; 7 is Sunday.
    """

    def number(token: str) -> int | None:
        if token in field.names:
            return field.names[token]
        return int(token) if token.isascii() and token.isdigit() else None

    out: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            lo, hi = field.lo, field.hi
        else:
            lo_text, dash, hi_text = base.partition("-")
            lo_value = number(lo_text)
            hi_value = number(hi_text) if dash else (field.hi if step_text else lo_value)
            if lo_value is None or hi_value is None:
                return None
            lo, hi = lo_value, hi_value
        out.update(range(lo, hi + 1, step))
    if field is DOW and 7 in out:
        out = (out - {7}) | {0}
    return out


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def last_day(year: int, month: int) -> int:
    """The days of the month (the calendar module costs a start-up more than this)."""
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _MONTH_DAYS[month]


def _nearest_weekday(year: int, month: int, day: int) -> int | None:
    """Quartz's ``nW``: the weekday (Mon-Fri) nearest the day, never leaving the month; None when
    the month has no such day."""
    last = last_day(year, month)
    if day > last:
        return None
    weekday = date(year, month, day).weekday()  # 0 = Monday
    if weekday == 5:  # Saturday: the Friday before, or the Monday after on the 1st
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: the Monday after, or the Friday before on the last day
        return day + 1 if day < last else day - 2
    return day


def _last_weekday(year: int, month: int) -> int:
    """``LW``: the last Monday-Friday of the month."""
    last = last_day(year, month)
    weekday = date(year, month, last).weekday()
    return last - max(0, weekday - 4)


ALL_DOW = frozenset(range(7))


@functools.lru_cache(maxsize=4096)
def _shared(values: frozenset[Any]) -> frozenset[Any]:
    """One instance per distinct set of values: most fields of most expressions are alike."""
    return values


class DayRule(Frozen):
    """Which days a cron expression fires on: its day-of-month, month and day-of-week fields as
    values (parsed once; ``matches`` is arithmetic on a date)."""

    __slots__ = (
        "day_or",
        "dom",
        "dom_last",
        "dom_last_weekday",
        "dom_nearest",
        "dow",
        "dow_last",
        "dow_nth",
        "months",
    )
    months: frozenset[int]
    dom: frozenset[int]  # plain days 1-31
    dom_last: bool  # L
    dom_last_weekday: bool  # LW
    dom_nearest: frozenset[int]  # nW
    dow: frozenset[int]  # 0 = Sunday .. 6
    dow_nth: frozenset[tuple[int, int]]  # d#n: (weekday, n)
    dow_last: frozenset[int]  # dL / Ld: the last such weekday of the month
    day_or: bool  # Vixie cron: either field may match (neither starts with *)

    def __init__(
        self,
        months: frozenset[int],
        dom: frozenset[int],
        dom_last: bool,
        dom_last_weekday: bool,
        dom_nearest: frozenset[int],
        dow: frozenset[int],
        dow_nth: frozenset[tuple[int, int]],
        dow_last: frozenset[int],
        day_or: bool,
    ) -> None:
        object.__setattr__(self, "months", months)
        object.__setattr__(self, "dom", dom)
        object.__setattr__(self, "dom_last", dom_last)
        object.__setattr__(self, "dom_last_weekday", dom_last_weekday)
        object.__setattr__(self, "dom_nearest", dom_nearest)
        object.__setattr__(self, "dow", dow)
        object.__setattr__(self, "dow_nth", dow_nth)
        object.__setattr__(self, "dow_last", dow_last)
        object.__setattr__(self, "day_or", day_or)

    @classmethod
    def from_fields(cls, dom_text: str, month_text: str, dow_text: str, day_or: bool) -> DayRule:
        months = field_values(MONTH, month_text)
        assert months is not None
        dom: set[int] = set()
        nearest: set[int] = set()
        last = last_weekday = False
        for item in dom_text.split(","):
            if item == "L":
                last = True
            elif item == "LW":
                last_weekday = True
            elif item.endswith("W"):
                nearest.add(int(item[:-1]))
            else:
                values = field_values(DOM, item)
                assert values is not None, item
                dom |= values
        dow: set[int] = set()
        nth: set[tuple[int, int]] = set()
        last_dow: set[int] = set()
        for item in dow_text.split(","):
            if "#" in item:
                day, _, n = item.partition("#")
                nth.add((_dow_number(day), int(n)))
            elif item.startswith("L") or (item.endswith("L") and len(item) > 1):
                last_dow.add(_dow_number(item.strip("L")))
            else:
                values = field_values(DOW, item)
                assert values is not None, item
                dow |= values
        return cls(
            _shared(frozenset(months)),
            _shared(frozenset(dom)),
            last,
            last_weekday,
            _shared(frozenset(nearest)),
            _shared(frozenset(dow)),
            _shared(frozenset(nth)),
            _shared(frozenset(last_dow)),
            day_or,
        )

    def _dom_matches(self, d: date) -> bool:
        if d.day in self.dom:
            return True
        if self.dom_last and d.day == last_day(d.year, d.month):
            return True
        if self.dom_last_weekday and d.day == _last_weekday(d.year, d.month):
            return True
        return any(_nearest_weekday(d.year, d.month, n) == d.day for n in self.dom_nearest)

    def _dow_matches(self, d: date) -> bool:
        weekday = d.isoweekday() % 7  # 0 = Sunday
        if weekday in self.dow:
            return True
        if (weekday, (d.day + 6) // 7) in self.dow_nth:
            return True
        return weekday in self.dow_last and d.day + 7 > last_day(d.year, d.month)

    def matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        if self.day_or:
            return self._dom_matches(d) or self._dow_matches(d)
        return self._dom_matches(d) and self._dow_matches(d)


def _dow_number(token: str) -> int:
    return DOW.names[token] if token in DOW.names else int(token) % 7


BY_NAME = {f.name: f for f in FIELDS_6}


# Each distinct field once, and each distinct set of day fields: the lines of a large crontab
# that differ in their times mostly share these.
@functools.lru_cache(maxsize=4096)
def sorted_values(name: str, text: str) -> tuple[int, ...]:
    """The values of a plain field, given by its name, in order."""
    found = field_values(BY_NAME[name], text)
    assert found is not None, text
    return tuple(sorted(found))


day_rule = functools.lru_cache(maxsize=4096)(DayRule.from_fields)

"""Cron expressions: pyjob's own parser and evaluator, with Vixie/Debian cron's semantics.

Fields are parsed once into values (as cronsim does): sorted seconds, minutes and hours, and a
day rule (``DayRule``, core/crondays.py) for day-of-month, month and day-of-week. ``WallClock``
finds the next matching wall-clock time; ``CronTicks`` maps wall times to instants by pyjob's DST
rules (DESIGN §2-3). Where cron dialects differ, pyjob follows Vixie/Debian cron and cronsim:

- ``a-a`` means ``a`` (croniter reads it as "every"); ``a/n`` runs from a to the field's end, and
  in day-of-week that end is 7 = Sunday (``7/1`` is Sunday, not every day).
- Day-of-month and day-of-week: if either field starts with ``*`` both must match, otherwise
  either may (Vixie cron), whatever they contain: ``0 0 1 * MON#1`` fires on the 1st and on the
  first Monday, ``0 0 15W * FRI`` on the weekday nearest the 15th and on every Friday.
- Quartz's specials: ``L`` (last day), ``LW`` (last weekday), ``nW`` (weekday nearest the n-th,
  within the month; in lists too: ``1W,15W``), ``d#n`` (n-th weekday d), ``dL`` or ``Ld`` (last
  weekday d of the month; ``5L`` = ``L5`` = last Friday).
- A fixed time (minute and hour fields both not starting with ``*``) in a spring-forward gap fires
  once at the first instant after the gap; in a repeated fall-back hour, once at its first
  occurrence. This is Debian cron's rule, as cronsim implements it.
- Wildcard minute or hour fields follow elapsed time: the instants whose local wall time matches,
  so ``0 * * * *`` fires every real hour, twice in a repeated hour and never in a gap.

Every error names its field and bad token: "bad minute '61' (0-59)".
"""

from __future__ import annotations

import bisect
import functools
import re
from datetime import MAXYEAR, UTC, date, datetime, time, timedelta, tzinfo

from .crondays import (
    ALL_DOW,
    BY_NAME,
    DOM,
    DOW,
    FIELDS_5,
    FIELDS_6,
    Field,
    day_rule,
    last_day,
    sorted_values,
)
from .errors import ScheduleError
from .frozen import Frozen
from .names import sha256
from .zones import next_transition, offset_at, resolve_wall

DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


# The patterns of the items other than * and plain values (ranges, steps, names, L, W, #, H) are
# compiled the first time one is met: a process that parses none, such as
# `pyjob next "0 * * * *"`, does not pay for them.
@functools.cache
def _special(kind: str) -> re.Pattern[str]:
    if kind == "range":
        return re.compile(
            r"""^(?:
                (?P<star>\*)
              | (?P<hash>H)(?:\((?P<hlo>[^-()]+)-(?P<hhi>[^-()]+)\))?
              | (?P<a>[^-/]+)(?:-(?P<b>[^-/]+))?
            )(?:/(?P<step>.*))?$""",
            re.VERBOSE,
        )
    if kind == "dom":  # [0-9], not \d: only ASCII digits ('٥' and '５' are not 5)
        return re.compile(r"^(?:L|LW|([0-9]{1,2})W)$")
    if kind == "dow":  # d#n, Ld (croniter) and dL (Quartz, cronsim): d a weekday number or name
        return re.compile(
            r"^(?:([A-Z]{3}|[0-9])#([0-9]{1,3})|L([A-Z]{3}|[0-9])|([A-Z]{3}|[0-9])L)$"
        )
    return re.compile(r"^H(?:\(([0-9]+)-([0-9]+)\))?(?:/([0-9]+))?$")  # H, H(a-b), H/n


def _is_number(token: str) -> bool:
    """ASCII digits, at most 3 of them: every field's values fit; str.isdigit() alone takes
    '٥' and '５', and int() of 4,301 digits raises ValueError."""
    return 0 < len(token) <= 3 and token.isascii() and token.isdigit()


def _bad(field: Field, token: str, why: str, source: str, pos: int) -> ScheduleError:
    return ScheduleError(
        f"bad {field.name} '{token}' ({why})", source=source, pos=pos, length=len(token)
    )


def _value(field: Field, token: str, source: str, pos: int) -> int:
    up = token.upper()
    if up in field.names:
        return field.names[up]
    if not _is_number(token):
        allowed = field.range_text
        if field.names:
            allowed += " or " + "-".join((next(iter(field.names)), list(field.names)[-1]))
        raise _bad(field, token, allowed, source, pos)
    v = int(token)
    if not field.lo <= v <= field.hi:
        raise _bad(field, token, field.range_text, source, pos)
    return v


def _name_or_number(field: Field, token: str, v: int) -> str:
    return token.upper() if token.upper() in field.names else str(v)


def _parse_item(field: Field, item: str, source: str, pos: int) -> str:
    """Validate one comma-separated item and return its normalized text."""
    up = item.upper()
    if field is DOM and ("L" in up or "W" in up):
        m = _special("dom").match(up)
        if m is not None:
            return _dom_special(field, item, m, source, pos)
        if "W" in up:
            raise _bad(
                field, item, "W takes one day, like 15W or LW, not a range or step", source, pos
            )
    if field is DOW and ("L" in up or "#" in up):
        m = _special("dow").match(up)
        if m is not None:
            return _dow_special(field, item, m, source, pos)
        if "L" in up:  # no weekday name has an L
            raise _bad(
                field, item, "L needs one weekday, like 5L or FRIL: the last Friday", source, pos
            )
    if item == "?":
        return "*"
    return _range_item(field, item, source, pos)


def _dom_special(field: Field, item: str, m: re.Match[str], source: str, pos: int) -> str:
    """nW (the weekday nearest day n), L or LW in day-of-month."""
    if m.group(1) is not None:
        day = int(m.group(1))
        if not 1 <= day <= 31:
            raise _bad(field, item, "nW needs a day 1-31", source, pos)
        return f"{day}W"
    return item.upper()


def _dow_special(field: Field, item: str, m: re.Match[str], source: str, pos: int) -> str:
    """day#n (the nth such weekday of the month), or dayL / Lday (the last one), as L5."""
    if m.group(1) is not None:
        day = _value(field, m.group(1), source, pos)
        nth = int(m.group(2))
        if not 1 <= nth <= 5:
            raise _bad(field, item, "the n in day#n is 1-5", source, pos)
        return f"{_name_or_number(field, m.group(1), day)}#{nth}"
    token, at = (m.group(3), pos + 1) if m.group(3) is not None else (m.group(4), pos)
    day = _value(field, token, source, at)
    return f"L{_name_or_number(field, token, day)}"  # one normalized form: L5


def _range_item(field: Field, item: str, source: str, pos: int) -> str:
    """``*``, ``H``, ``H(a-b)``, a value or a range ``a-b``, each with an optional ``/step``."""
    if item == "*":
        return item
    if _is_number(item):  # the commonest item, without the pattern
        return str(_value(field, item, source, pos))
    m = _special("range").match(item.upper())
    if m is None or not item:
        raise _bad(field, item, f"{field.range_text}, a range a-b, a list, or */n", source, pos)
    step_text = m.group("step")
    step_norm = ""
    if step_text is not None:
        span = field.hi - field.lo + 1
        if not _is_number(step_text) or not 1 <= int(step_text) <= span:
            raise _bad(field, item, f"the step after / is 1-{span}", source, pos)
        step_norm = f"/{int(step_text)}"
    if m.group("star"):
        return "*" + step_norm
    if m.group("hash"):
        if m.group("hlo") is not None:
            lo = _value(field, m.group("hlo"), source, pos)
            hi = _value(field, m.group("hhi"), source, pos)
            if lo > hi:
                raise _bad(field, item, "range start after its end", source, pos)
            return f"H({lo}-{hi}){step_norm}"
        return "H" + step_norm
    a_tok, b_tok = m.group("a"), m.group("b")
    a = _value(field, item[: len(a_tok)], source, pos)
    if b_tok is None:
        return _name_or_number(field, a_tok, a) + step_norm
    b = _value(field, b_tok, source, pos + len(a_tok) + 1)
    if a > b:
        raise _bad(field, item, "range start after its end", source, pos)
    a_text = _name_or_number(field, a_tok, a)
    if a == b:
        return a_text  # "a-a" (with any step) is "a"; croniter would read it as "every"
    return f"{a_text}-{_name_or_number(field, b_tok, b)}{step_norm}"


def _parse_field(field: Field, text: str, source: str, pos: int) -> str:
    normalized = _field_text(field.name, text)
    if normalized is not None:
        return normalized
    return _parse_items(field, text, source, pos)  # raises, placed at ``pos`` in ``source``


@functools.lru_cache(maxsize=8192)
def _field_text(name: str, text: str) -> str | None:
    """A field's normalized text, or None when it is bad: the fields of a crontab's lines repeat
    ("0", "*", "1-5"), each parsed once. An error is not kept; it is raised again by the caller
    with its place in the whole expression."""
    try:
        return _parse_items(BY_NAME[name], text, text, 0)
    except ScheduleError:
        return None


def _parse_items(field: Field, text: str, source: str, pos: int) -> str:
    items = []
    offset = 0
    for item in text.split(","):
        if not item:
            raise _bad(field, text, "empty item in list", source, pos)
        items.append(_parse_item(field, item, source, pos + offset))
        offset += len(item) + 1
    return ",".join(items)


class CronExpr(Frozen):
    """A validated cron expression in normalized text (names upper-case, ``?`` as ``*``)."""

    __slots__ = ("fields",)
    fields: tuple[str, ...]  # 5 fields, or 6 with seconds first

    def __init__(self, fields: tuple[str, ...]) -> None:
        object.__setattr__(self, "fields", fields)

    def __str__(self) -> str:
        return " ".join(self.fields)

    @property
    def has_seconds(self) -> bool:
        return len(self.fields) == 6

    def _f(self, index_5: int) -> str:
        return self.fields[index_5 + (1 if self.has_seconds else 0)]

    @property
    def minute(self) -> str:
        return self._f(0)

    @property
    def hour(self) -> str:
        return self._f(1)

    @property
    def dom(self) -> str:
        return self._f(2)

    @property
    def month(self) -> str:
        return self._f(3)

    @property
    def dow(self) -> str:
        return self._f(4)

    @property
    def fixed_time(self) -> bool:
        """Debian cron's "fixed-time job": DST gap and repeat rules apply (module doc)."""
        return not self.minute.startswith("*") and not self.hour.startswith("*")

    @property
    def day_or(self) -> bool:
        """Vixie cron: day-of-month OR day-of-week, unless either starts with ``*``."""
        return not (self.dom.startswith("*") or self.dow.startswith("*"))


@functools.lru_cache(maxsize=4096)
def parse_cron(text: str, source: str | None = None, base: int = 0) -> CronExpr:
    """Parse 5 fields, or 6 with seconds first (gocron, Quartz) at ``base`` in ``source``. Each
    distinct expression once: the lines of a crontab mostly repeat a few (an error is raised
    again each time, not kept)."""
    source = text if source is None else source
    parts: list[tuple[str, int]] = [
        (m.group(), m.start() + base) for m in re.finditer(r"\S+", text)
    ]
    if len(parts) not in (5, 6):
        raise ScheduleError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 "
            f"with seconds first; got {len(parts)} in '{text.strip()}'",
            source=source,
            pos=base,
            length=max(1, len(text)),
        )
    fields = FIELDS_6 if len(parts) == 6 else FIELDS_5
    normalized = tuple(
        _parse_field(f, tok, source, pos) for f, (tok, pos) in zip(fields, parts, strict=True)
    )
    expr = CronExpr(normalized)
    _check_fires(expr, source, base, len(text))
    return expr


def _hash_value(job_id: str, index: int, lo: int, hi: int) -> int:
    digest = sha256(f"{job_id}\0{index}".encode()).digest()
    return lo + int.from_bytes(digest[:8], "big") % (hi - lo + 1)


_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT", "UCT", "Etc/UCT", "Zulu", "Universal"})


def resolve_hash(expr: CronExpr, job_id: str) -> str:
    """The expression with ``H`` replaced by values hashed from the job id (Jenkins' H).

    ``H`` is one value in the field's range; ``H(a-b)`` one in a-b; ``H/n`` every n starting at a
    hashed offset below n; ``H(a-b)/n`` the same inside a-b.
    """
    if not any("H" in text for text in expr.fields):
        return " ".join(expr.fields)  # nothing hashed (most expressions)
    fields = FIELDS_6 if expr.has_seconds else FIELDS_5
    out = []
    for index, (field, text) in enumerate(zip(fields, expr.fields, strict=True)):
        items = []
        for item in text.split(","):
            m = _special("hash").match(item)
            if m is None:
                items.append(item)
                continue
            lo, hi = field.lo, (6 if field is DOW else field.hi)
            if field is DOM:
                hi = 28  # a hashed day exists in every month
            if m.group(1) is not None:
                lo, hi = int(m.group(1)), int(m.group(2))
            if m.group(3) is None:
                items.append(str(_hash_value(job_id, index, lo, hi)))
            else:
                step = int(m.group(3))
                start = _hash_value(job_id, index, lo, min(hi, lo + step - 1))
                items.append(f"{start}-{hi}/{step}" if start < hi else str(start))
        out.append(",".join(items))
    return " ".join(out)


# A valid expression fires within this many years of any instant: Feb 29 on one weekday is
# the rarest date (40 years apart across a century that is not a leap year).
HORIZON_YEARS = 50


class WallClock:
    """The wall-clock times a cron expression matches, for one job (H resolved), as values:
    sorted seconds, minutes and hours, and the day rule. ``next_after`` is the first matching
    naive time strictly after a naive time, or None within HORIZON_YEARS.

    Immutable, so ``wall_clock`` shares one per resolved expression: the jobs of a large file
    that run on the same schedule hold one compiled form, not one each.
    """

    __slots__ = ("_plain_days", "days", "hours", "minutes", "seconds")

    def __init__(self, fields: tuple[str, ...], day_or: bool) -> None:
        """``fields``: the six fields (seconds first) with H resolved."""
        second, minute, hour, dom, month, dow = fields

        self.seconds = sorted_values("second", second)
        self.minutes = sorted_values("minute", minute)
        self.hours = sorted_values("hour", hour)
        self.days = day_rule(dom, month, dow, day_or)
        days = self.days
        plain = not (days.dom_last or days.dom_last_weekday or days.dom_nearest)
        # Only the day of the month decides (day-of-week '*'): skip straight to those days.
        self._plain_days: tuple[int, ...] = (
            tuple(sorted(days.dom))
            if plain and not days.day_or and days.dow == ALL_DOW and days.dom
            else ()
        )

    def _first_time(self, h: int, m: int, s: int) -> time | None:
        """The first matching time of day at or after h:m:s."""
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        i = bisect.bisect_left(hours, h)
        if i < len(hours) and hours[i] == h:
            j = bisect.bisect_left(minutes, m)
            if j < len(minutes) and minutes[j] == m:
                k = bisect.bisect_left(seconds, s)
                if k < len(seconds):
                    return time(h, m, seconds[k])
                j += 1
            if j < len(minutes):
                return time(h, minutes[j], seconds[0])
            i += 1
        if i < len(hours):
            return time(hours[i], minutes[0], seconds[0])
        return None

    def next_after(self, naive: datetime) -> datetime | None:
        t = naive.replace(microsecond=0) + timedelta(seconds=1)
        day, start = t.date(), (t.hour, t.minute, t.second)
        end_year = day.year + HORIZON_YEARS
        if end_year > MAXYEAR:
            end_year = MAXYEAR  # past 9999-12-31 date arithmetic overflows: no tick
        months = self.days.months
        while day.year <= end_year:
            if day.month not in months:
                year, month = day.year, day.month
                while month not in months:
                    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                if year > end_year:
                    break
                day, start = date(year, month, 1), (0, 0, 0)
                continue
            if self.days.matches(day):
                found = self._first_time(*start)
                if found is not None:
                    return datetime.combine(day, found)
            day, start = self._next_day(day), (0, 0, 0)
        return None

    def _next_day(self, day: date) -> date:
        """The day after ``day``, or for plain days of the month the next such day."""
        if self._plain_days:
            i = bisect.bisect_right(self._plain_days, day.day)
            if i < len(self._plain_days) and self._plain_days[i] <= last_day(day.year, day.month):
                return day.replace(day=self._plain_days[i])
            return (day.replace(day=1) + timedelta(days=32)).replace(day=1)
        return day + timedelta(days=1)


# Large enough for every distinct expression of a 100,000-line crontab: the jobs of a reload
# that keep their schedule find theirs here.
@functools.lru_cache(maxsize=1 << 17)
def _compiled(fields: tuple[str, ...], day_or: bool) -> WallClock:
    return WallClock(fields, day_or)


def wall_clock(expr: CronExpr, job_id: str) -> WallClock:
    """The compiled wall-clock matcher of ``expr`` for ``job_id`` (which seeds its H fields),
    shared by every job whose resolved expression is the same."""
    fields = resolve_hash(expr, job_id).split()
    if not expr.has_seconds:
        fields.insert(0, "0")
    return _compiled(tuple(fields), expr.day_or)


@functools.lru_cache(maxsize=4096)
def _days_fire(days: tuple[str, ...], day_or: bool) -> bool:
    """Whether any date matches the day fields: every matching date has every time of day."""
    return _compiled(("0", "0", "0", *days), day_or).next_after(datetime(2000, 1, 1)) is not None


def _check_fires(expr: CronExpr, source: str, base: int, length: int) -> None:
    """An expression that can never fire (``0 0 31 2 *``) is an error now, not a hang later.
    Only its day fields decide, so an expression is compiled once, when its job is scheduled."""
    if not _days_fire(tuple(resolve_hash(expr, "validate").split()[-3:]), expr.day_or):
        raise ScheduleError(
            f"'{expr}' can never fire: no date matches its day-of-month, month and "
            "day-of-week fields",
            source=source,
            pos=base,
            length=length,
        )


class CronTicks:
    """``next_tick(after)`` for one cron expression in one zone, with pyjob's DST rules.

    WallClock finds matching naive wall-clock times; this maps them to instants.
    """

    __slots__ = ("_fixed_offset", "_wall", "expr", "zone")

    def __init__(self, expr: CronExpr, zone: tzinfo, job_id: str = "") -> None:
        self.expr = expr
        self.zone = zone
        self._wall = wall_clock(expr, job_id)
        # UTC has one offset forever: its wall clock is elapsed time, no DST mapping needed.
        self._fixed_offset = zone is UTC or str(zone) in _UTC_NAMES

    def _next_wall(self, naive: datetime) -> datetime:
        """The first matching wall-clock time strictly after ``naive`` (whole seconds)."""
        found = self._wall.next_after(naive)
        if found is None and naive.year + HORIZON_YEARS >= MAXYEAR - 1:
            raise OverflowError("no tick before year 9999")  # Schedule: the schedule ends
        if found is None:
            raise ScheduleError(f"no tick found for '{self.expr}' after {naive.isoformat()}")
        return found

    def next_wall(self, after: datetime) -> tuple[datetime, datetime | None]:
        """The next tick strictly after ``after``, and the wall time a DST gap moved it from."""
        after = after.astimezone(UTC)
        if self._fixed_offset:
            off = offset_at(after, self.zone)
            wall = self._next_wall((after + off).replace(tzinfo=None))
            return (wall - off).replace(tzinfo=UTC), None
        if self.expr.fixed_time:
            return self._next_fixed(after)
        return self._next_elapsed(after), None

    def _next_fixed(self, after: datetime) -> tuple[datetime, datetime | None]:
        # Wall times at or before after's own wall time can never land after it (a wall time
        # earlier than after's maps to an instant before it, even across a fall-back), so the
        # search starts just after it; walls in a repeated hour that map to their first
        # occurrence before ``after`` are skipped.
        naive = after.astimezone(self.zone).replace(tzinfo=None)
        for _ in range(100_000):
            naive = self._next_wall(naive)
            wall = resolve_wall(naive, self.zone)
            if wall.instant > after:
                return wall.instant, (naive if wall.gap else None)
        raise ScheduleError(f"no tick found for '{self.expr}' after {after.isoformat()}")

    def _next_elapsed(self, after: datetime) -> datetime:
        # The instants whose local wall time matches. Within a stretch of constant UTC offset the
        # wall clock is elapsed time, so croniter's next wall time maps straight back; when the
        # candidate lies past an offset change, restart from the change.
        t = after
        for _ in range(10_000):
            off = offset_at(t, self.zone)
            naive = (t + off).replace(tzinfo=None)
            if t != after:
                naive -= timedelta(seconds=1)  # t is an offset change: t itself may match
            wall = self._next_wall(naive)
            candidate = (wall - off).replace(tzinfo=UTC)
            if offset_at(candidate, self.zone) == off and self._same_stretch(t, candidate, off):
                return candidate
            t = self._offset_change(t, candidate)
        raise ScheduleError(f"no tick found for '{self.expr}' after {after.isoformat()}")

    def _same_stretch(self, start: datetime, end: datetime, off: timedelta) -> bool:
        """No offset change between start and end (only checked where one could hide)."""
        if end - start <= timedelta(days=1):
            return offset_at(start + (end - start) / 2, self.zone) == off
        return next_transition(self.zone, start, end) is None

    def _offset_change(self, start: datetime, end: datetime) -> datetime:
        change = next_transition(self.zone, start, end)
        if change is None:  # pragma: no cover - offset differs at end, so a change exists
            raise AssertionError("offset changed without a transition")
        return change.instant

"""The rule kinds of a schedule (DESIGN §2), each one class that owns everything about its kind.

A rule is frozen data. It knows

- its normalized text (``str(rule)``, which the grammar parses back to an equal rule),
- how it is built from the grammar's Parts (``from_parts``, registered under its phrase heads),
- its description in words (``describe()``),
- its properties: ``kind``, ``tick_zone`` and ``unshared_reason`` (why instances on other hosts
  would compute other ticks, or None when every host computes the same ones),
- its ticker (``ticker(...)``): the pure ``next(after) -> Tick | None``, never reading the clock.

Adding a kind means one new class here with ``@register("head")``; the grammar, ``Schedule``,
``describe`` and the run path ask the rule, not ``isinstance``.

A ``Spec`` is a rule plus its bounds (start-at, stop-at).
"""

from __future__ import annotations

import re
from datetime import MAXYEAR, UTC, date, datetime, time, timedelta, tzinfo
from typing import ClassVar

from .cron import DESCRIPTORS, CronExpr, CronTicks, parse_cron
from .crondays import last_day
from .cronwords import DAY_NAMES, describe_cron, join_words, ordinal
from .durations import DAY, format_duration, parse_duration
from .errors import DurationError, ScheduleError
from .instants import EPOCH, US, from_us, iso, to_us
from .names import sha256
from .parts import Parts
from .rulebase import RULES, Rule, Spec, Tick, Ticker, register
from .timeparse import format_time_of_day
from .values import (
    WEEKDAYS,
    fixed_instants,
    interval,
    month_days,
    once_instants,
    times_of_day,
    weekdays,
)
from .zones import Wall, get_zone, is_repeated, next_transition, offset_at, resolve_wall

EPOCH_DATE = date(1970, 1, 1)
EPOCH_MONDAY = date(1970, 1, 5)  # ISO weeks for `weekly --interval` count from here


def _tick_from_wall(wall: Wall, naive: datetime, zone: tzinfo) -> Tick:
    if wall.gap:
        return Tick(wall.instant, moved_from=naive)
    return Tick(wall.instant, repeated=wall.repeated or is_repeated(wall.instant, zone))


# --------------------------------------------------------------------------------------------
# cron


@register("cron")
class CronRule(Rule):
    """A cron expression (or descriptor) in a zone."""

    __slots__ = ("expr", "zone")
    expr: CronExpr
    zone: str

    def __init__(self, expr: CronExpr, zone: str) -> None:
        object.__setattr__(self, "expr", expr)
        object.__setattr__(self, "zone", zone)

    keys: ClassVar[dict[str, frozenset[str]]] = {"cron": frozenset()}

    def __str__(self) -> str:
        return f"CRON_TZ={self.zone} {self.expr}"

    @property
    def kind(self) -> str:
        return "cron"

    @property
    def tick_zone(self) -> str | None:
        return self.zone

    def describe(self) -> str:
        return describe_cron(self.expr) + f" ({self.zone})"

    def ticker(self, *, job_id: str, anchor: datetime | None, start_at: datetime | None) -> Ticker:
        return _CronTicker(self, job_id)

    @classmethod
    def from_parts(cls, parts: Parts, zone_name: str, now: datetime | None) -> Rule:
        assert parts.value is not None
        text = parts.value
        stripped = text.strip()
        lowered = stripped.lower()
        if lowered.startswith("@every"):
            rest = stripped[len("@every") :]
            if not rest.strip():
                raise ScheduleError("@every needs a duration, like '@every 5m'", source=text, pos=0)
            try:
                return EveryRule(parse_duration(rest.strip()))
            except DurationError as e:
                raise e.at(text, text.index(rest.strip()), len(rest.strip())) from None
        if lowered.startswith("@"):
            words = stripped.split()
            word = words[0].lower()
            if word == "@reboot":
                raise ScheduleError(
                    "@reboot is not a schedule pyjob has: --run-now runs the command once when "
                    "pyjob starts (start pyjob at boot: a systemd unit, the container's entry "
                    "point)",
                    source=text,
                    pos=text.index(words[0]),
                    length=len(word),
                )
            if word in DESCRIPTORS and len(words) > 1:
                raise _command_hint(text, words[0], words[1:])
            if word not in DESCRIPTORS:
                import difflib

                close = difflib.get_close_matches(word, [*DESCRIPTORS, "@every"], n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ScheduleError(
                    f"unknown descriptor '{words[0]}' ({hint}one of "
                    + ", ".join(sorted(DESCRIPTORS))
                    + ", @every DURATION)",
                    source=text,
                    pos=text.index(words[0]),
                    length=len(word),
                )
            return cls(parse_cron(DESCRIPTORS[word]), zone_name)
        try:
            return cls(parse_cron(text), zone_name)
        except ScheduleError as e:
            raise (_cron_hint(text) or e) from None


_NAMES = "SUN|MON|TUE|WED|THU|FRI|SAT|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_FIELDISH = rf"^([0-9*?,/LWH#()-]|{_NAMES})+$"  # compiled by the hint that uses it


def _command_hint(text: str, schedule: str, rest: list[str]) -> ScheduleError:
    """A crontab line pasted whole: the schedule, then what can only be its command."""
    command = " ".join(rest)
    return ScheduleError(
        f"'{rest[0]}' is not part of the schedule \"{schedule}\": a command goes after -- "
        f'(pyjob run "{schedule}" -- {command})',
        source=text,
        pos=text.index(rest[0], text.index(schedule) + len(schedule)),
        length=len(rest[0]),
    )


def _cron_hint(text: str) -> ScheduleError | None:
    """A better message than the cron parser's for the usual mistakes: a duration given alone
    ('5m': meant 'every 5m') and a crontab line with its command (6 words or more whose first 5
    are a valid expression; a valid 6-field one with seconds never gets here)."""
    from .durations import suggest_duration

    words = text.split()
    if len(words) == 1:
        meant = suggest_duration(words[0])
        if meant is not None:
            return ScheduleError(
                f"'{words[0]}' is a duration, not a cron expression: did you mean "
                f'"every {meant}"?',
                source=text,
                pos=text.index(words[0]),
                length=len(words[0]),
            )
    for fields in (6, 5):  # the longest valid expression first
        if len(words) <= fields:
            continue
        if re.match(_FIELDISH, words[fields], re.IGNORECASE):  # one field too many, not a command
            continue
        try:
            parse_cron(" ".join(words[:fields]))
        except ScheduleError:
            continue
        start = end = text.index(words[0])
        for w in words[:fields]:
            end = text.index(w, end) + len(w)
        return _command_hint(text, text[start:end], words[fields:])
    return None


class _CronTicker:
    __slots__ = ("ticks", "zone")

    def __init__(self, rule: CronRule, job_id: str) -> None:
        self.zone = get_zone(rule.zone)
        self.ticks = CronTicks(rule.expr, self.zone, job_id)

    def next(self, after: datetime) -> Tick | None:
        instant, moved_from = self.ticks.next_wall(after)
        if moved_from is not None:
            return Tick(instant, moved_from=moved_from)
        return Tick(instant, repeated=is_repeated(instant, self.zone))


# --------------------------------------------------------------------------------------------
# every DURATION [align [offset D]]


@register("every")
class EveryRule(Rule, uncompared=("shown_zone",)):
    """A fixed duration in elapsed time, from the anchor or on an aligned grid (DESIGN §2)."""

    __slots__ = ("align", "every", "offset", "shown_zone", "zone")
    every: int  # microseconds
    align: bool
    offset: int
    zone: str | None  # only for grids on the local wall clock (D divides 24 h)
    # The job's zone for an epoch grid: its ticks do not depend on it (so it is not part of the
    # normalized form, nor of the job id), but they are shown in it.
    shown_zone: str | None

    def __init__(
        self,
        every: int,
        align: bool = False,
        offset: int = 0,
        zone: str | None = None,
        shown_zone: str | None = None,
    ) -> None:
        object.__setattr__(self, "every", every)
        object.__setattr__(self, "align", align)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "shown_zone", shown_zone)

    keys: ClassVar[dict[str, frozenset[str]]] = {"every": frozenset({"align", "offset"})}

    @property
    def divides_day(self) -> bool:
        return self.every <= DAY and DAY % self.every == 0

    def __str__(self) -> str:
        text = f"every {format_duration(self.every)}"
        if self.align:
            text += " align"
            if self.offset:
                text += f" offset {format_duration(self.offset)}"
            if self.zone:
                text += f" tz {self.zone}"
        return text

    @property
    def kind(self) -> str:
        return "every"

    @property
    def tick_zone(self) -> str | None:
        return self.zone

    @property
    def local_zone(self) -> str | None:
        return self.zone or self.shown_zone

    @property
    def unshared_reason(self) -> str | None:
        return None if self.align else "counts from this instance's start"

    def describe(self) -> str:
        text = f"every {format_duration(self.every)}"
        if not self.align:
            return text + ", counted from when pyjob run starts"
        if self.zone:
            text += f" on the local wall clock from midnight ({self.zone})"
        else:
            text += " on the grid from the Unix epoch"
        if self.offset:
            text += f", shifted by {format_duration(self.offset)}"
        return text

    def ticker(self, *, job_id: str, anchor: datetime | None, start_at: datetime | None) -> Ticker:
        start = start_at or anchor
        if start is None and not self.align:
            raise ValueError("an unaligned 'every' schedule needs an anchor instant")
        ticks = _EveryTicker(self, start or EPOCH)
        if start_at is not None and not self.align:
            ticks.anchor -= self.every  # so that start-at itself is the first tick
        return ticks

    @classmethod
    def from_parts(cls, parts: Parts, zone_name: str, now: datetime | None) -> Rule:
        value = parts.value
        assert value is not None
        if ".." in value:
            return RandomEveryRule.from_parts(parts, zone_name, now)
        every = parse_duration(value)
        if not parts.align:
            return cls(every)
        offset = parse_duration(parts.offset, allow_zero=True) % every if parts.offset else 0
        if cls(every).divides_day:
            return cls(every, True, offset, zone_name)
        return cls(every, True, offset, shown_zone=zone_name)


# A stretch of a zone's time line where the grid maps straight to instants: from its start to a
# day later, with no change of UTC offset from CALM_MARGIN before it to CALM_MARGIN after it. No
# wall time in it is repeated or skipped then: that would take a change of offset larger than the
# margin (the largest known is a day).
CALM_SPAN = timedelta(days=1)
CALM_MARGIN = timedelta(days=3)


class _EveryTicker:
    def __init__(self, rule: EveryRule, anchor: datetime) -> None:
        self.rule = rule
        self.zone = get_zone(rule.zone) if rule.zone else None
        self.anchor = to_us(anchor)
        # The stretch the last tick was found in: (start, end, its UTC offset in µs), the
        # offset None when a change is near (then every tick of it is found the long way).
        self._calm: tuple[datetime, datetime, int | None] | None = None

    def next(self, after: datetime) -> Tick | None:
        d = self.rule.every
        if self.zone is not None:
            return self._next_on_wall_grid(after, self.zone)
        base = self.anchor if not self.rule.align else self.rule.offset
        k = (to_us(after) - base) // d + 1
        return Tick(from_us(base + k * d))

    def _grid_wall(self, wall: datetime, strict: bool) -> datetime:
        """The first wall time of the grid after (or at, unless ``strict``) ``wall``: since D
        divides 24 h, the grid is offset + k·D counted on the naive wall clock."""
        d, off = self.rule.every, self.rule.offset
        us = (wall - _NAIVE_EPOCH) // US - off
        k = us // d + 1 if strict else -(-us // d)
        return _NAIVE_EPOCH + timedelta(microseconds=off + k * d)

    def _next_on_wall_grid(self, after: datetime, zone: tzinfo) -> Tick:
        """DESIGN §2: the grid is on the local wall clock, the same ticks as the cron grid. Within
        a stretch of constant UTC offset a grid wall time maps straight to its instant; at a
        transition, a grid time a spring-forward skips fires at the gap's end when D is longer
        than the jump (else it is absent), and a grid time a fall-back repeats fires at its first
        occurrence only when D is longer than the repeat (else at both)."""
        _, end, calm_us = self._calm_around(after, zone)
        if calm_us is not None:  # the common case: no change of offset within days
            d, grid = self.rule.every, self.rule.offset  # as _grid_wall, in µs
            k = (to_us(after) + calm_us - grid) // d + 1
            candidate = from_us(grid + k * d - calm_us)
            if candidate <= end:
                return Tick(candidate)
        d = self.rule.every
        t, strict = after, True
        for _ in range(1000):
            off = offset_at(t, zone)
            wall = self._grid_wall((t + off).replace(tzinfo=None), strict)
            candidate = (wall - off).replace(tzinfo=UTC)
            change = next_transition(zone, t, candidate)
            if change is not None:
                if change.is_gap and d > (change.after - change.before) // US:
                    start = (change.instant + change.before).replace(tzinfo=None)
                    skipped = self._grid_wall(start, strict=False)
                    if skipped < (change.instant + change.after).replace(tzinfo=None):
                        return Tick(change.instant, moved_from=skipped)
                t, strict = change.instant, False
                continue
            first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
            if first != candidate:  # the second occurrence of a repeated wall time
                repeat = offset_at(first, zone) - offset_at(candidate, zone)
                if d > repeat // US:
                    t, strict = candidate, True
                    continue
            return Tick(candidate, repeated=is_repeated(candidate, zone))
        raise ScheduleError(f"no tick found for '{self.rule}'")  # pragma: no cover

    def _calm_around(self, after: datetime, zone: tzinfo) -> tuple[datetime, datetime, int | None]:
        """The stretch ``after`` lies in, with its UTC offset (µs) when it is calm (see
        CALM_SPAN), else None. A stretch is looked at once a day: its probes cost as much as a
        few ticks."""
        calm = self._calm
        if calm is None or not calm[0] <= after <= calm[1]:
            try:
                end = after + CALM_SPAN
                changes = next_transition(zone, after - CALM_MARGIN, end + CALM_MARGIN) is not None
            except OverflowError:  # within days of year 1 or 9999: the long way
                end, changes = after, True
            off = None if changes else offset_at(after, zone) // US
            calm = self._calm = (after, end, off)
        return calm


_NAIVE_EPOCH = datetime(1970, 1, 1)


# --------------------------------------------------------------------------------------------
# every MIN..MAX


class RandomEveryRule(Rule):
    """A random duration in [lo, hi) after each tick (gocron's DurationRandomJob)."""

    __slots__ = ("hi", "lo")
    lo: int
    hi: int

    def __init__(self, lo: int, hi: int) -> None:
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    def __str__(self) -> str:
        return f"every {format_duration(self.lo)}..{format_duration(self.hi)}"

    @property
    def kind(self) -> str:
        return "every"

    @property
    def unshared_reason(self) -> str | None:
        return "draws each wait at random"

    def describe(self) -> str:
        return (
            f"at random intervals of {format_duration(self.lo)} to {format_duration(self.hi)}, "
            "a new one drawn after each tick"
        )

    def ticker(self, *, job_id: str, anchor: datetime | None, start_at: datetime | None) -> Ticker:
        return _RandomEveryTicker(self, job_id)

    @classmethod
    def from_parts(cls, parts: Parts, zone_name: str, now: datetime | None) -> Rule:
        value = parts.value
        assert value is not None
        lo_text, _, hi_text = value.partition("..")
        lo = parse_duration(lo_text)
        try:
            hi = parse_duration(hi_text)
        except DurationError as e:
            raise e.at(value, len(lo_text) + 2) from None
        if hi <= lo:
            raise DurationError(
                f"bad random interval '{value}': MIN..MAX needs MIN < MAX", source=value, pos=0
            )
        if parts.align:
            raise ScheduleError("'align' does not apply to a random interval MIN..MAX")
        return cls(lo, hi)


class _RandomEveryTicker:
    """Deterministic randomness: the gap after tick T is drawn from a hash of (job, T), so every
    instance that saw tick T computes the same next tick, and ``pyjob next`` is repeatable."""

    def __init__(self, rule: RandomEveryRule, job_id: str) -> None:
        self.rule = rule
        self.seed = job_id.encode()

    def next(self, after: datetime) -> Tick | None:
        a = to_us(after)
        digest = sha256(self.seed + a.to_bytes(16, "big", signed=True)).digest()
        span = self.rule.hi - self.rule.lo
        return Tick(from_us(a + self.rule.lo + int.from_bytes(digest[:8], "big") % span))


# --------------------------------------------------------------------------------------------
# daily / weekly / monthly

_CALENDAR_HEADS = {"day": "daily", "week": "weekly", "month": "monthly"}


@register("daily", "weekly", "monthly")
class CalendarRule(Rule):
    """daily / weekly / monthly at times of day in a zone."""

    __slots__ = ("days", "interval", "times", "unit", "zone")
    unit: str  # "day", "week", "month"
    days: tuple[int, ...]  # weekly: 0=MON..6=SUN; monthly: 1..31 and -1..-31; daily: ()
    times: tuple[time, ...]
    interval: int
    zone: str

    def __init__(
        self, unit: str, days: tuple[int, ...], times: tuple[time, ...], interval: int, zone: str
    ) -> None:
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "days", days)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "zone", zone)

    keys: ClassVar[dict[str, frozenset[str]]] = {
        "daily": frozenset({"at", "interval"}),
        "weekly": frozenset({"at", "interval", "on"}),
        "monthly": frozenset({"at", "interval", "on"}),
    }

    def __str__(self) -> str:
        text = _CALENDAR_HEADS[self.unit]
        if self.unit == "week":
            text += " on " + ",".join(WEEKDAYS[d] for d in self.days)
        elif self.unit == "month":
            text += " on " + ",".join(str(d) for d in self.days)
        text += " at " + ",".join(format_time_of_day(t) for t in self.times)
        if self.interval != 1:
            text += f" interval {self.interval}"
        return text + f" tz {self.zone}"

    @property
    def kind(self) -> str:
        return _CALENDAR_HEADS[self.unit]

    @property
    def tick_zone(self) -> str | None:
        return self.zone

    def describe(self) -> str:
        times = join_words([format_time_of_day(t) for t in self.times])
        every = self.unit
        period = f"every {self.interval} {every}s" if self.interval > 1 else f"every {every}"
        if self.unit == "day":
            text = f"at {times} {period}"
        elif self.unit == "week":
            names = join_words([DAY_NAMES[WEEKDAYS[d]] for d in self.days])
            text = f"at {times} on {names}, {period}"
        else:
            days = join_words([ordinal(d) if d > 0 else _last(d) for d in self.days])
            text = f"at {times} on the {days} day, {period}"
        return text + f" ({self.zone})"

    def ticker(self, *, job_id: str, anchor: datetime | None, start_at: datetime | None) -> Ticker:
        return _CalendarTicker(self)

    @classmethod
    def from_parts(cls, parts: Parts, zone_name: str, now: datetime | None) -> Rule:
        kind = parts.kind
        assert kind in ("daily", "weekly", "monthly")
        unit = {"daily": "day", "weekly": "week", "monthly": "month"}[kind]
        days: list[int] = []
        days_text = parts.on if parts.on is not None else parts.value
        if kind == "daily":
            if days_text:
                raise ScheduleError(
                    f"daily takes no days (got '{days_text}'); use weekly or monthly"
                )
        elif not days_text:
            example = "MON,FRI" if kind == "weekly" else "1,15,-1"
            raise ScheduleError(f"{kind} needs days, like '{kind} on {example}'")
        elif kind == "weekly":
            days = sorted(set(weekdays(days_text)))
        else:
            days = month_days(days_text)
        return cls(unit, tuple(days), times_of_day(parts.at), interval(parts.interval), zone_name)


def _last(d: int) -> str:
    return "last" if d == -1 else f"{ordinal(-d)}-to-last"


def _month_start(index: int) -> date:
    """The first day of the month ``index`` months after January 1970; past December 9999 there
    is none (OverflowError, as date arithmetic raises: ``Schedule`` then ends the schedule)."""
    year = 1970 + index // 12
    if year > MAXYEAR:
        raise OverflowError("no month after December 9999")
    return date(year, index % 12 + 1, 1)


class _CalendarTicker:
    def __init__(self, rule: CalendarRule) -> None:
        self.rule = rule
        self.zone = get_zone(rule.zone)

    def _on(self, day: date) -> date | None:
        """``day`` if it is on; else the next day worth checking."""
        rule, n = self.rule, self.rule.interval
        if rule.unit == "day":
            idx = (day - EPOCH_DATE).days
            return day if idx % n == 0 else day + timedelta(days=n - idx % n)
        if rule.unit == "week":
            week = (day - EPOCH_MONDAY).days // 7
            if week % n:
                return EPOCH_MONDAY + timedelta(weeks=week + n - week % n)
            return day if day.weekday() in rule.days else None
        month = (day.year - 1970) * 12 + day.month - 1
        if month % n:
            return _month_start(month + n - month % n)
        last = last_day(day.year, day.month)
        for d in rule.days:
            if d == day.day or (d < 0 and last + 1 + d == day.day):
                return day
        return None

    def next(self, after: datetime) -> Tick | None:
        day = after.astimezone(self.zone).date() - timedelta(days=1)
        for _ in range(400 * 366):
            on = self._on(day)
            if on is None:
                day += timedelta(days=1)
                continue
            if on != day:
                day = on
                continue
            for t in self.rule.times:
                naive = datetime.combine(day, t)
                wall = resolve_wall(naive, self.zone)
                if wall.instant > after:
                    return _tick_from_wall(wall, naive, self.zone)
            day += timedelta(days=1)
        return None  # pragma: no cover - every calendar rule fires within its interval


# --------------------------------------------------------------------------------------------
# once


@register("once")
class OnceRule(Rule, uncompared=("given",)):
    """``once at T[,T...]``: fixed instants."""

    __slots__ = ("given", "instants")
    instants: tuple[datetime, ...]  # UTC, sorted, unique: the ones not past when parsed
    # Every instant given, past ones too (but not `now`): an instance started after some of them
    # passed is still the same job as one started before.
    given: tuple[datetime, ...]

    def __init__(self, instants: tuple[datetime, ...], given: tuple[datetime, ...] = ()) -> None:
        object.__setattr__(self, "instants", instants)
        object.__setattr__(self, "given", given)

    keys: ClassVar[dict[str, frozenset[str]]] = {"once": frozenset()}

    def __str__(self) -> str:
        return "once at " + ",".join(iso(i) for i in self.instants)

    @property
    def kind(self) -> str:
        return "once"

    @property
    def identity(self) -> str:
        return "once at " + ",".join(iso(i) for i in self.given or self.instants)

    def describe(self) -> str:
        at = join_words([iso(i) for i in self.instants])
        return f"once, at {at}" if len(self.instants) == 1 else f"once each at {at}"

    def ticker(self, *, job_id: str, anchor: datetime | None, start_at: datetime | None) -> Ticker:
        return _OnceTicker(self)

    @classmethod
    def from_parts(cls, parts: Parts, zone_name: str, now: datetime | None) -> Rule:
        assert parts.value is not None
        zone = get_zone(zone_name)
        instants = once_instants(parts.value, zone, now)  # first: it reports the bad part
        return cls(instants, fixed_instants(parts.value, zone, now))


class _OnceTicker:
    def __init__(self, rule: OnceRule) -> None:
        self.rule = rule

    def next(self, after: datetime) -> Tick | None:
        for instant in self.rule.instants:
            if instant > after:
                return Tick(instant)
        return None


# --------------------------------------------------------------------------------------------


# The kinds, and the base every user of a schedule needs with them: importing this module is what
# registers the kinds in RULES.
__all__ = [
    "RULES",
    "CalendarRule",
    "CronRule",
    "EveryRule",
    "OnceRule",
    "RandomEveryRule",
    "Rule",
    "Spec",
    "Tick",
    "Ticker",
    "register",
]

"""Schedules: one grammar for every kind, a normalized text form, and pure ``next_tick``.

A schedule is written either as a cron expression or as a phrase, and the command-line options
(``--every 5m --align``) build the same phrases, so there is exactly one parser:

    0 9 * * MON-FRI                  CRON_TZ=Europe/Berlin 0 9 * * *      @daily     @every 90s
    every 5m                         every 1h align offset 15m            every 1m..5m
    daily at 09:00,17:30             weekly on MON,FRI at 08:00 interval 2
    monthly on 1,-1 at 00:00         once at 2026-12-24T18:00
    ... tz Europe/Berlin start-at 2026-12-01T00:00 stop-at 2027-01-01T00:00

``str(spec)`` is the normalized form; ``parse(str(spec)) == spec``. A ``Spec`` is only data; a
``Schedule`` is a spec bound to the run-time facts some kinds need (the job id for ``H`` and
random intervals, the anchor of an unaligned ``every``) and answers ``next_tick(after)``: the
first tick strictly after ``after``, never reading the clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Protocol

from .cron import DESCRIPTORS, CronExpr, CronTicks, parse_cron
from .durations import DAY, format_duration, parse_duration
from .errors import DurationError, InputError, ScheduleError
from .timeparse import format_time_of_day, parse_datetime, parse_time_of_day
from .zones import Wall, get_zone, is_repeated, job_zone_name, local_midnight, resolve_wall

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_DATE = date(1970, 1, 1)
EPOCH_MONDAY = date(1970, 1, 5)  # ISO weeks for `weekly --interval` count from here
_US = timedelta(microseconds=1)
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


def to_us(instant: datetime) -> int:
    """Microseconds since the Unix epoch (exact integer arithmetic for grids)."""
    return (instant - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def iso(instant: datetime, zone: tzinfo | None = None) -> str:
    """ISO 8601 with offset; UTC is written with Z."""
    value = instant.astimezone(zone or UTC)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z") if zone is None else text


# --------------------------------------------------------------------------------------------
# Rules: the kinds of schedule. Each is frozen data with a normalized text and a tick function.


@dataclass(frozen=True)
class CronRule:
    expr: CronExpr
    zone: str

    def __str__(self) -> str:
        return f"CRON_TZ={self.zone} {self.expr}"


@dataclass(frozen=True)
class EveryRule:
    """A fixed duration in elapsed time, from the anchor or on an aligned grid (DESIGN §2)."""

    every: int  # microseconds
    align: bool = False
    offset: int = 0
    zone: str | None = None  # only for grids that restart at local midnight

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


@dataclass(frozen=True)
class RandomEveryRule:
    """A random duration in [lo, hi) after each tick (gocron's DurationRandomJob)."""

    lo: int
    hi: int

    def __str__(self) -> str:
        return f"every {format_duration(self.lo)}..{format_duration(self.hi)}"


@dataclass(frozen=True)
class CalendarRule:
    """daily / weekly / monthly at times of day in a zone."""

    unit: str  # "day", "week", "month"
    days: tuple[int, ...]  # weekly: 0=MON..6=SUN; monthly: 1..31 and -1..-31; daily: ()
    times: tuple[time, ...]
    interval: int
    zone: str

    def __str__(self) -> str:
        head = {"day": "daily", "week": "weekly", "month": "monthly"}[self.unit]
        text = head
        if self.unit == "week":
            text += " on " + ",".join(WEEKDAYS[d] for d in self.days)
        elif self.unit == "month":
            text += " on " + ",".join(str(d) for d in self.days)
        text += " at " + ",".join(format_time_of_day(t) for t in self.times)
        if self.interval != 1:
            text += f" interval {self.interval}"
        return text + f" tz {self.zone}"


@dataclass(frozen=True)
class OnceRule:
    instants: tuple[datetime, ...]  # UTC, sorted, unique

    def __str__(self) -> str:
        return "once at " + ",".join(iso(i) for i in self.instants)


Rule = CronRule | EveryRule | RandomEveryRule | CalendarRule | OnceRule


@dataclass(frozen=True)
class Spec:
    """A parsed schedule: a rule plus its bounds. ``str()`` is the normalized form."""

    rule: Rule
    start_at: datetime | None = None
    stop_at: datetime | None = None

    def __str__(self) -> str:
        text = str(self.rule)
        if self.start_at is not None:
            text += f" start-at {iso(self.start_at)}"
        if self.stop_at is not None:
            text += f" stop-at {iso(self.stop_at)}"
        return text

    @property
    def kind(self) -> str:
        rule = self.rule
        if isinstance(rule, CronRule):
            return "cron"
        if isinstance(rule, EveryRule | RandomEveryRule):
            return "every"
        if isinstance(rule, CalendarRule):
            return {"day": "daily", "week": "weekly", "month": "monthly"}[rule.unit]
        return "once"

    @property
    def zone(self) -> str | None:
        """The zone the ticks depend on, or None when they are zone-free (elapsed time, UTC)."""
        return getattr(self.rule, "zone", None)


# --------------------------------------------------------------------------------------------
# Building specs: the phrase parser and the command-line options both end here.


@dataclass
class Parts:
    """What a schedule says, before validation; keys mirror the command-line options."""

    kind: str | None = None
    value: str | None = None  # cron expression, duration, weekly/monthly days, once date-times
    align: bool = False
    offset: str | None = None
    at: list[str] = field(default_factory=list)
    on: str | None = None
    interval: str | None = None
    tz: str | None = None
    start_at: str | None = None
    stop_at: str | None = None
    prefix_tz: str | None = None  # from a CRON_TZ= / TZ= prefix


def build(
    parts: Parts,
    *,
    tz: str | None = None,
    env: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Spec:
    """Validate ``parts`` into a Spec.

    ``tz`` is the --tz option and wins over the expression's own zone; ``env`` supplies
    PYJOB_TZ/TZ; ``now`` is the reference instant for ``now`` in bounds and for dropping past
    one-time ticks.
    """
    kind = parts.kind
    if kind is None or (parts.value is None and kind in ("cron", "every", "once")):
        raise ScheduleError(
            "no schedule given: give a cron expression or one of --cron, --every, --daily, "
            "--weekly, --monthly, --once"
        )
    if parts.tz and parts.prefix_tz and parts.tz != parts.prefix_tz:
        raise ScheduleError(
            f"two zones in one schedule: CRON_TZ={parts.prefix_tz} and tz {parts.tz}"
        )
    zone_name = job_zone_name(tz, parts.tz or parts.prefix_tz, env)
    zone = get_zone(zone_name)
    _check_keys(parts)
    rule: Rule
    if kind == "cron":
        assert parts.value is not None
        rule = _cron_rule(parts.value, zone_name)
    elif kind == "every":
        assert parts.value is not None
        rule = _every_rule(parts, zone_name)
    elif kind in ("daily", "weekly", "monthly"):
        rule = _calendar_rule(kind, parts, zone_name)
    else:
        assert parts.value is not None
        rule = _once_rule(parts.value, zone, now)
    start_at = parse_datetime(parts.start_at, zone, now) if parts.start_at else None
    stop_at = parse_datetime(parts.stop_at, zone, now) if parts.stop_at else None
    if start_at and stop_at and stop_at < start_at:
        raise ScheduleError(
            f"stop-at {iso(stop_at)} is before start-at {iso(start_at)}",
            source=parts.stop_at,
            pos=0,
        )
    return Spec(rule, start_at, stop_at)


_ALLOWED = {
    "cron": set(),
    "every": {"align", "offset"},
    "daily": {"at", "interval"},
    "weekly": {"at", "interval", "on"},
    "monthly": {"at", "interval", "on"},
    "once": set(),
}


def _check_keys(parts: Parts) -> None:
    given = {
        "align": parts.align,
        "offset": parts.offset is not None,
        "at": bool(parts.at),
        "interval": parts.interval is not None,
        "on": parts.on is not None,
    }
    assert parts.kind is not None
    for key, present in given.items():
        if present and key not in _ALLOWED[parts.kind] and key != "on":  # daily: see below
            raise ScheduleError(f"'{key}' does not apply to a {parts.kind} schedule")
    if parts.offset is not None and not parts.align:
        raise ScheduleError("'offset' needs 'align': it shifts the aligned grid")


def _cron_rule(text: str, zone_name: str) -> Rule:
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
        word = lowered.split()[0]
        if word not in DESCRIPTORS or len(stripped.split()) > 1:
            raise ScheduleError(
                f"unknown descriptor '{stripped.split()[0]}' (one of "
                + ", ".join(sorted(DESCRIPTORS))
                + ", @every DURATION)",
                source=text,
                pos=0,
                length=len(word),
            )
        return CronRule(parse_cron(DESCRIPTORS[word]), zone_name)
    return CronRule(parse_cron(text), zone_name)


def _every_rule(parts: Parts, zone_name: str) -> Rule:
    value = parts.value
    assert value is not None
    if ".." in value:
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
        return RandomEveryRule(lo, hi)
    every = parse_duration(value)
    if not parts.align:
        return EveryRule(every)
    offset = parse_duration(parts.offset, allow_zero=True) % every if parts.offset else 0
    rule = EveryRule(every, True, offset)
    if rule.divides_day:
        rule = EveryRule(every, True, offset, zone_name)
    return rule


def _split_list(text: str) -> list[tuple[str, int]]:
    out = []
    pos = 0
    for item in text.split(","):
        out.append((item.strip(), pos))
        pos += len(item) + 1
    return out


def _calendar_rule(kind: str, parts: Parts, zone_name: str) -> Rule:
    unit = {"daily": "day", "weekly": "week", "monthly": "month"}[kind]
    days: list[int] = []
    days_text = parts.on if parts.on is not None else parts.value
    if kind == "daily":
        if days_text:
            raise ScheduleError(f"daily takes no days (got '{days_text}'); use weekly or monthly")
    elif not days_text:
        example = "MON,FRI" if kind == "weekly" else "1,15,-1"
        raise ScheduleError(f"{kind} needs days, like '{kind} on {example}'")
    elif kind == "weekly":
        days = sorted(set(_weekdays(days_text)))
    else:
        days = _month_days(days_text)
    times: list[time] = []
    for group in parts.at or ["00:00"]:
        for item, pos in _split_list(group):
            try:
                times.append(parse_time_of_day(item))
            except InputError as e:
                raise e.at(group, pos, len(item)) from None
    interval = 1
    if parts.interval is not None:
        text = parts.interval.strip()
        if not text.isdigit() or not 1 <= int(text) <= MAX_INTERVAL:
            raise ScheduleError(
                f"bad interval '{parts.interval}' (a whole number 1-{MAX_INTERVAL})",
                source=parts.interval,
                pos=0,
                length=len(parts.interval),
            )
        interval = int(text)
    return CalendarRule(unit, tuple(days), tuple(sorted(set(times))), interval, zone_name)


def _weekdays(text: str) -> list[int]:
    out: list[int] = []
    for item, pos in _split_list(text):
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


def _month_days(text: str) -> list[int]:
    out: set[int] = set()
    for item, pos in _split_list(text):
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


def _month_day(word: str, source: str, pos: int) -> int:
    try:
        value = int(word)
    except ValueError:
        value = 0
    if 1 <= abs(value) <= 31:
        return value
    raise ScheduleError(
        f"bad day of month '{word}' (1 to 31, or -1 to -31 counting from the month's end)",
        source=source,
        pos=pos,
        length=max(1, len(word)),
    )


def _once_rule(text: str, zone: tzinfo, now: datetime | None) -> Rule:
    instants: set[datetime] = set()
    for item, pos in _split_list(text):
        try:
            instants.add(parse_datetime(item, zone, now))
        except InputError as e:
            raise e.at(text, pos, len(item)) from None
    kept = sorted(i for i in instants if now is None or i > now)
    if not kept:
        raise ScheduleError(
            f"every time in 'once {text}' is in the past", source=text, pos=0, length=len(text)
        )
    return OnceRule(tuple(kept))


# --------------------------------------------------------------------------------------------
# The phrase parser.

_KEYWORDS = {"align", "offset", "at", "on", "interval", "tz", "start-at", "stop-at"}
_HEADS = {"every", "daily", "weekly", "monthly", "once"}


def _tokens(text: str) -> list[tuple[str, int]]:
    out = []
    pos = 0
    for word in text.split():
        pos = text.index(word, pos)
        out.append((word, pos))
        pos += len(word)
    return out


def split(text: str) -> Parts:
    """Split schedule text into Parts (no validation beyond the grammar)."""
    tokens = _tokens(text)
    if not tokens:
        raise ScheduleError("empty schedule", source=text, pos=0)
    parts = Parts()
    first, first_pos = tokens[0]
    for prefix in ("CRON_TZ=", "TZ="):
        if first.upper().startswith(prefix):
            parts.prefix_tz = first[len(prefix) :]
            if not parts.prefix_tz:
                raise ScheduleError(f"{prefix} needs a zone", source=text, pos=first_pos)
            tokens = tokens[1:]
            break
    if not tokens:
        raise ScheduleError("a CRON_TZ= prefix needs an expression after it", source=text, pos=0)
    head, head_pos = tokens[0]
    # Keyword clauses: after the head for phrases; after the fields for cron expressions.
    is_phrase = head.lower() in _HEADS
    body_end = len(tokens)
    for i, (word, _pos) in enumerate(tokens[1:], start=1):
        if word.lower() in _KEYWORDS:
            body_end = i
            break
    if is_phrase:
        parts.kind = head.lower()
        body = tokens[1:body_end]
        if parts.kind == "every":
            if len(body) != 1:
                raise ScheduleError(
                    "every takes one duration, like 'every 5m' or 'every 1m..5m'",
                    source=text,
                    pos=head_pos,
                    length=len(head),
                )
            parts.value = body[0][0]
        elif parts.kind in ("weekly", "monthly"):
            if len(body) > 1:
                raise ScheduleError(
                    f"unexpected '{body[1][0]}'",
                    source=text,
                    pos=body[1][1],
                    length=len(body[1][0]),
                )
            parts.value = body[0][0] if body else None
        elif parts.kind == "once":
            parts.value = ",".join(w for w, _ in body) if body else None
        elif body:
            raise ScheduleError(
                f"unexpected '{body[0][0]}'", source=text, pos=body[0][1], length=len(body[0][0])
            )
    else:
        parts.kind = "cron"
        start = tokens[0][1]
        end = tokens[body_end - 1][1] + len(tokens[body_end - 1][0])
        parts.value = text[start:end]
    _keyword_clauses(parts, tokens[body_end:], text)
    return parts


def _keyword_clauses(parts: Parts, tokens: list[tuple[str, int]], text: str) -> None:
    i = 0
    while i < len(tokens):
        word, pos = tokens[i]
        key = word.lower()
        if key not in _KEYWORDS:
            raise ScheduleError(
                f"unexpected '{word}' (expected one of: {', '.join(sorted(_KEYWORDS))})",
                source=text,
                pos=pos,
                length=len(word),
            )
        if key == "align":
            parts.align = True
            i += 1
            continue
        if i + 1 >= len(tokens):
            raise ScheduleError(f"'{word}' needs a value", source=text, pos=pos, length=len(word))
        value = tokens[i + 1][0]
        if key == "at" and parts.kind == "once":
            parts.value = value if parts.value is None else parts.value + "," + value
        elif key == "at":
            parts.at.append(value)
        else:
            attr = key.replace("-", "_")
            if getattr(parts, attr) is not None:
                raise ScheduleError(f"'{word}' given twice", source=text, pos=pos, length=len(word))
            setattr(parts, attr, value)
        i += 2


def parse(
    text: str,
    *,
    tz: str | None = None,
    env: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Spec:
    """Parse schedule text (cron or phrase). Errors carry ``source``/``pos`` for a caret."""
    parts = split(text)
    try:
        return build(parts, tz=tz, env=env, now=now)
    except InputError as e:
        if e.source is None:
            e.source = text
        elif e.source != text and e.source in text and e.pos is not None:
            e.pos = text.index(e.source) + e.pos
            e.source = text
        raise


# --------------------------------------------------------------------------------------------
# Ticks.


@dataclass(frozen=True)
class Tick:
    """One instant a schedule yields, with what DST did to it."""

    instant: datetime  # aware, UTC
    moved_from: datetime | None = None  # the wall time it was meant for, if a DST gap moved it
    repeated: bool = False  # its wall time occurs twice (a fall-back hour)


class _RuleTicks(Protocol):
    def next(self, after: datetime) -> Tick | None: ...


def _tick_from_wall(wall: Wall, naive: datetime, zone: tzinfo) -> Tick:
    if wall.gap:
        return Tick(wall.instant, moved_from=naive)
    return Tick(wall.instant, repeated=wall.repeated or is_repeated(wall.instant, zone))


class _Cron:
    def __init__(self, rule: CronRule, job_id: str) -> None:
        self.zone = get_zone(rule.zone)
        self.ticks = CronTicks(rule.expr, self.zone, job_id)

    def next(self, after: datetime) -> Tick | None:
        instant, moved_from = self.ticks.next_wall(after)
        if moved_from is not None:
            return Tick(instant, moved_from=moved_from)
        return Tick(instant, repeated=is_repeated(instant, self.zone))


class _Every:
    def __init__(self, rule: EveryRule, anchor: datetime) -> None:
        self.rule = rule
        self.zone = get_zone(rule.zone) if rule.zone else None
        self.anchor = to_us(anchor)

    def next(self, after: datetime) -> Tick | None:
        d = self.rule.every
        a = to_us(after)
        if self.zone is not None:
            return Tick(self._next_daily_grid(after), repeated=False)
        base = self.anchor if not self.rule.align else self.rule.offset
        k = (a - base) // d + 1
        return Tick(from_us(base + k * d))

    def _next_daily_grid(self, after: datetime) -> datetime:
        """Grid restarting at each local midnight: midnight + offset + k·D, before next midnight."""
        assert self.zone is not None
        d = self.rule.every
        day = after.astimezone(self.zone).date()
        for _ in range(8):
            start = to_us(local_midnight(day, self.zone))
            end = to_us(local_midnight(day + timedelta(days=1), self.zone))
            base = start + self.rule.offset
            k = max(0, (to_us(after) - base) // d + 1)
            tick = base + k * d
            if tick < end:
                return from_us(tick)
            day += timedelta(days=1)
        raise ScheduleError(f"no tick found for '{self.rule}'")  # pragma: no cover


class _RandomEvery:
    """Deterministic randomness: the gap after tick T is drawn from a hash of (job, T), so every
    instance that saw tick T computes the same next tick, and ``pyjob next`` is repeatable."""

    def __init__(self, rule: RandomEveryRule, job_id: str) -> None:
        self.rule = rule
        self.seed = job_id.encode()

    def next(self, after: datetime) -> Tick | None:
        a = to_us(after)
        digest = hashlib.sha256(self.seed + a.to_bytes(16, "big", signed=True)).digest()
        span = self.rule.hi - self.rule.lo
        return Tick(from_us(a + self.rule.lo + int.from_bytes(digest[:8], "big") % span))


def _days_in_month(year: int, month: int) -> int:
    nxt = date(year + month // 12, month % 12 + 1, 1)
    return (nxt - date(year, month, 1)).days


class _Calendar:
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
            target = month + n - month % n
            return date(1970 + target // 12, target % 12 + 1, 1)
        last = _days_in_month(day.year, day.month)
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


class _Once:
    def __init__(self, rule: OnceRule) -> None:
        self.rule = rule

    def next(self, after: datetime) -> Tick | None:
        for instant in self.rule.instants:
            if instant > after:
                return Tick(instant)
        return None


class Schedule:
    """A Spec bound to its run-time facts; ``next_tick(after)`` is pure.

    ``job_id`` seeds ``H`` fields and random intervals; ``anchor`` is where an unaligned
    ``every`` counts from (its ``start-at`` when given: then the first tick is start-at itself).
    """

    def __init__(self, spec: Spec, *, job_id: str = "", anchor: datetime | None = None) -> None:
        self.spec = spec
        rule = spec.rule
        self._ticks: _RuleTicks
        if isinstance(rule, CronRule):
            self._ticks = _Cron(rule, job_id)
        elif isinstance(rule, EveryRule):
            start = spec.start_at or anchor
            if start is None and not rule.align:
                raise ValueError("an unaligned 'every' schedule needs an anchor instant")
            self._ticks = _Every(rule, start or EPOCH)
            if spec.start_at is not None and not rule.align:
                self._ticks.anchor -= rule.every  # so that start-at itself is the first tick
        elif isinstance(rule, RandomEveryRule):
            self._ticks = _RandomEvery(rule, job_id)
        elif isinstance(rule, CalendarRule):
            self._ticks = _Calendar(rule)
        else:
            self._ticks = _Once(rule)
        self.zone: tzinfo = get_zone(spec.zone) if spec.zone else UTC

    def next_info(self, after: datetime) -> Tick | None:
        """The first tick strictly after ``after`` within the bounds, or None when exhausted."""
        if after.tzinfo is None:
            raise ValueError("after must be an aware datetime")
        after = after.astimezone(UTC)
        start, stop = self.spec.start_at, self.spec.stop_at
        if start is not None and after < start:
            after = start - _US
        if stop is not None and after >= stop:
            return None
        tick = self._ticks.next(after)
        if tick is None or (stop is not None and tick.instant > stop):
            return None
        assert tick.instant > after, (self.spec, after, tick)
        return tick

    def next_tick(self, after: datetime) -> datetime | None:
        tick = self.next_info(after)
        return None if tick is None else tick.instant

    def ticks(self, after: datetime, limit: int | None = None) -> Iterator[Tick]:
        count = 0
        while limit is None or count < limit:
            tick = self.next_info(after)
            if tick is None:
                return
            yield tick
            after = tick.instant
            count += 1


def derive_job_id(spec: Spec, argv: Sequence[str] = ()) -> str:
    """DESIGN §1: a short stable hash of the normalized schedule (which names the zone whenever the
    zone moves the ticks) and the command, so one one-liner on many hosts is one job."""
    payload = "\0".join([str(spec), *argv]).encode()
    return "job-" + hashlib.sha256(payload).hexdigest()[:12]

"""One-line English descriptions of schedules, and the warnings `pyjob validate` gives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .cron import HOUR, CronExpr, field_values, resolve_hash
from .durations import format_duration
from .schedule import (
    WEEKDAYS,
    CalendarRule,
    CronRule,
    EveryRule,
    OnceRule,
    RandomEveryRule,
    Schedule,
    Spec,
    iso,
)
from .timeparse import format_time_of_day
from .zones import get_zone, transitions

_DAY_NAMES = {
    "MON": "Monday",
    "TUE": "Tuesday",
    "WED": "Wednesday",
    "THU": "Thursday",
    "FRI": "Friday",
    "SAT": "Saturday",
    "SUN": "Sunday",
}
_DOW_NUM = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTH_NUM = [
    "",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_MONTH_ABBR = {m[:3].upper(): m for m in _MONTH_NUM if m}


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _name(token: str, kind: str) -> str:
    if kind == "dow":
        if token.isdigit():
            return _DOW_NUM[int(token)]
        return _DAY_NAMES.get(token, token)
    if kind == "month":
        if token.isdigit():
            return _MONTH_NUM[int(token)]
        return _MONTH_ABBR.get(token, token)
    if kind == "dom":
        if token == "L":
            return "the last day"
        if token.endswith("W"):
            return f"the weekday nearest the {_ordinal(int(token[:-1]))}"
        return f"the {_ordinal(int(token))}" if token.isdigit() else token
    return token


def _field(text: str, unit: str, kind: str = "") -> str:
    """A cron field in words: '*/15' -> 'every 15 minutes'; '1-5' -> 'Monday to Friday'."""
    parts = []
    for item in text.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            parts.append(f"every {step} {unit}s" if step else f"every {unit}")
            continue
        if base.startswith("H"):
            parts.append(f"a hashed {unit}" + (f" every {step} {unit}s" if step else ""))
            continue
        if "#" in base:
            day, nth = base.split("#")
            parts.append(f"the {_ordinal(int(nth))} {_name(day, 'dow')}")
            continue
        if kind == "dow" and base.startswith("L"):
            parts.append(f"the last {_name(base[1:], 'dow')}")
            continue
        lo, dash, hi = base.partition("-")
        phrase = f"{_name(lo, kind)} to {_name(hi, kind)}" if dash else _name(lo, kind)
        parts.append(phrase + (f" every {step}" if step else ""))
    return _join(parts)


def describe_cron(expr: CronExpr) -> str:
    out: list[str] = []
    minute, hour = expr.minute, expr.hour
    plain = all(p.isdigit() for p in minute.split(",") + hour.split(","))
    if plain and len(hour.split(",")) * len(minute.split(",")) <= 4:
        second = expr.fields[0] if expr.has_seconds else "0"
        times = [
            f"{int(h):02d}:{int(m):02d}" + (f":{int(second):02d}" if second != "0" else "")
            for h in hour.split(",")
            for m in minute.split(",")
        ]
        if second.isdigit() or second == "0":
            out.append("at " + _join(times))
        else:
            out.append(f"{_field(second, 'second')} of " + _join(times))
    else:
        if expr.has_seconds and expr.fields[0] != "0":
            out.append(f"at second {_field(expr.fields[0], 'second')}")
        if minute == "*":
            out.append("every minute")
        elif minute.startswith("*/"):
            out.append(f"every {minute[2:]} minutes")
        else:
            out.append(f"at minute {_field(minute, 'minute')}")
        if hour != "*":
            out.append(
                f"past hour {_field(hour, 'hour')}"
                if not hour.startswith("*/")
                else f"of every {hour[2:]} hours"
            )
    dom, month, dow = expr.dom, expr.month, expr.dow
    days = []
    if dom != "*":
        days.append(f"on {_field(dom, 'day', 'dom')}")
    if dow != "*":
        days.append(f"on {_field(dow, 'day', 'dow')}")
    if days:
        out.append((" or " if expr.day_or else " and ").join(days))
    elif month == "*":
        out.append("every day")
    if month != "*":
        out.append(f"in {_field(month, 'month', 'month')}")
    return " ".join(out)


def describe(spec: Spec) -> str:
    rule = spec.rule
    if isinstance(rule, CronRule):
        text = describe_cron(rule.expr) + f" ({rule.zone})"
    elif isinstance(rule, EveryRule):
        text = f"every {format_duration(rule.every)}"
        if rule.align:
            if rule.zone:
                text += f" on the grid from each local midnight ({rule.zone})"
            else:
                text += " on the grid from the Unix epoch"
            if rule.offset:
                text += f", shifted by {format_duration(rule.offset)}"
        else:
            text += " from the start"
    elif isinstance(rule, RandomEveryRule):
        text = (
            f"after a random {format_duration(rule.lo)} to {format_duration(rule.hi)} "
            "after each run"
        )
    elif isinstance(rule, CalendarRule):
        times = _join([format_time_of_day(t) for t in rule.times])
        every = {"day": "day", "week": "week", "month": "month"}[rule.unit]
        period = f"every {rule.interval} {every}s" if rule.interval > 1 else f"every {every}"
        if rule.unit == "day":
            text = f"at {times} {period}"
        elif rule.unit == "week":
            names = _join([_DAY_NAMES[WEEKDAYS[d]] for d in rule.days])
            text = f"at {times} on {names}, {period}"
        else:
            days = _join([_ordinal(d) if d > 0 else _last(d) for d in rule.days])
            text = f"at {times} on the {days} day, {period}"
        text += f" ({rule.zone})"
    else:
        assert isinstance(rule, OnceRule)
        text = "once at " + _join([iso(i) for i in rule.instants])
    if spec.start_at:
        text += f", from {iso(spec.start_at)}"
    if spec.stop_at:
        text += f", until {iso(spec.stop_at)}"
    return text


def _last(d: int) -> str:
    return "last" if d == -1 else f"{_ordinal(-d)}-to-last"


@dataclass(frozen=True)
class Warning_:
    code: str  # "dst-gap", "dst-repeat", "dst-skipped-hour", "day-or"
    message: str


def warnings(schedule: Schedule, now: datetime, horizon_days: int = 400) -> list[Warning_]:
    """What may surprise a user: DST moving or repeating wall-clock ticks, Vixie's day OR."""
    spec = schedule.spec
    rule = spec.rule
    out: list[Warning_] = []
    if isinstance(rule, CronRule) and rule.expr.day_or:
        out.append(
            Warning_(
                "day-or",
                f"day-of-month '{rule.expr.dom}' and day-of-week '{rule.expr.dow}' are both "
                "restricted: it fires on days matching EITHER (Vixie cron); start one with * "
                "to require both",
            )
        )
    wall_clock = isinstance(rule, CalendarRule) or (
        isinstance(rule, CronRule) and not rule.expr.hour.startswith("*")
    )
    if not wall_clock or spec.zone is None:
        return out
    zone = get_zone(spec.zone)
    now = now.astimezone(UTC)
    seen: set[str] = set()
    for tr in transitions(zone, now, now + timedelta(days=horizon_days)):
        window_start = tr.instant - timedelta(hours=3)
        moved = repeated = False
        for tick in schedule.ticks(window_start, limit=2000):
            if tick.instant > tr.instant + timedelta(hours=3):
                break
            moved = moved or tick.moved_from is not None
            repeated = repeated or tick.repeated
        local = tr.instant.astimezone(zone)
        if tr.is_gap:
            gap_start = (tr.instant + tr.before).replace(tzinfo=None)
            gap_end = (tr.instant + tr.after).replace(tzinfo=None)
            skipped_hours = _hours_between(gap_start, gap_end)
            if moved:
                msg = (
                    f"fires at a time that DST skips on {local:%Y-%m-%d} in {spec.zone} "
                    f"({gap_start:%H:%M}-{gap_end:%H:%M}): that run moves to {gap_end:%H:%M}"
                )
                key = "dst-gap"
            elif (
                isinstance(rule, CronRule)
                and rule.expr.minute.startswith("*")
                and _cron_hours_hit(rule.expr, skipped_hours)
            ):
                msg = (
                    f"fires in an hour that DST skips on {local:%Y-%m-%d} in {spec.zone} "
                    f"({gap_start:%H:%M}-{gap_end:%H:%M}): those runs do not happen that day"
                )
                key = "dst-skipped-hour"
            else:
                continue
        else:
            if not repeated:
                continue
            rep_start = (tr.instant + tr.after).replace(tzinfo=None)
            rep_end = (tr.instant + tr.before).replace(tzinfo=None)
            once = isinstance(rule, CalendarRule) or (
                isinstance(rule, CronRule) and rule.expr.fixed_time
            )
            msg = (
                f"fires at a time that DST repeats on {local:%Y-%m-%d} in {spec.zone} "
                f"({rep_start:%H:%M}-{rep_end:%H:%M}): "
                + ("it runs once, at the first occurrence" if once else "it runs in both")
            )
            key = "dst-repeat"
        if key + msg[-40:] not in seen:
            seen.add(key + msg[-40:])
            out.append(Warning_(key, msg))
    return out


def _hours_between(start: datetime, end: datetime) -> set[int]:
    hours = set()
    t = start
    while t < end:
        hours.add(t.hour)
        t += timedelta(minutes=1)
    return hours


def _cron_hours_hit(expr: CronExpr, hours: set[int]) -> bool:
    text = resolve_hash(expr, "validate").split()[2 if expr.has_seconds else 1]
    return bool((field_values(HOUR, text) or set()) & hours)

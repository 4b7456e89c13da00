"""One-line English descriptions of schedules, and the warnings `pyjob validate` gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .cron import CronExpr, resolve_hash
from .crondays import HOUR, field_values
from .cronwords import describe_cron
from .frozen import Frozen
from .instants import iso
from .rules import CalendarRule, CronRule, Spec
from .schedule import Schedule
from .zones import get_zone, transitions

__all__ = ["Warning_", "describe", "describe_cron", "warnings"]


def describe(spec: Spec) -> str:
    """The schedule in words: its rule's own description, then its bounds."""
    text = spec.rule.describe()
    counted = ", counted from when pyjob run starts"
    if spec.start_at and counted in text:  # start-at is then the first tick
        text = text.replace(counted, f", counted from {iso(spec.start_at)}")
    elif spec.start_at:
        text += f", starting {iso(spec.start_at)}"
    if spec.stop_at:
        text += f", until {iso(spec.stop_at)}"
    return text


class Warning_(Frozen):
    """Something about a schedule its author may not expect (DST, Vixie cron's day OR)."""

    __slots__ = ("code", "message")
    code: str  # "dst-gap", "dst-repeat", "dst-skipped-hour", "day-or"
    message: str

    def __init__(self, code: str, message: str) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "message", message)


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

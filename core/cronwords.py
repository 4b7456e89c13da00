"""Schedules in words: the phrases `validate` and `next` print ("at 09:00 on Monday to Friday").

Only text from values: no schedule module is imported here, so every rule kind can describe
itself with these helpers.
"""

from __future__ import annotations

from .cron import CronExpr
from .crondays import DOW, field_values

DAY_NAMES = {
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


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _name(token: str, kind: str) -> str:
    if kind == "dow":
        if token.isdigit():
            return _DOW_NUM[int(token)]
        return DAY_NAMES.get(token, token)
    if kind == "month":
        if token.isdigit():
            return _MONTH_NUM[int(token)]
        return _MONTH_ABBR.get(token, token)
    if kind == "dom":
        if token == "L":
            return "the last day of the month"
        if token == "LW":
            return "the last weekday of the month"
        if token.endswith("W"):
            return f"the weekday nearest the {ordinal(int(token[:-1]))}"
        return f"the {ordinal(int(token))}" if token.isdigit() else token
    return token


_HASHED = "hashed from the job id"


def _nth(n: int, unit: str) -> str:
    """'every 2nd hour', 'every hour' (a step of 1)."""
    return f"every {unit}" if n == 1 else f"every {ordinal(n)} {unit}"


def _every(n: int, unit: str) -> str:
    """'every 10 seconds', 'every second' (a step of 1)."""
    return f"every {unit}" if n == 1 else f"every {n} {unit}s"


def _is_fixed(text: str) -> bool:
    return all(item.isdigit() for item in text.split(","))


def _numbers(text: str, unit: str) -> str:
    """'minute 5', 'minutes 0, 15 and 30'."""
    items = text.split(",")
    return f"{unit}{'s' if len(items) > 1 else ''} {join_words(items)}"


def _time_item(item: str, unit: str, ordinals: bool) -> tuple[str, bool]:
    """One item of a second, minute or hour field as a noun phrase, and whether it recurs."""
    step_of = _nth if ordinals else _every
    base, _, step_text = item.partition("/")
    step = int(step_text) if step_text else 0
    if base == "*":
        return (step_of(step, unit) if step else f"every {unit}"), True
    if base.startswith("H"):
        span = base[2:-1].replace("-", " to ") if base.startswith("H(") else ""
        where = f" from {span}" if span else ""
        if step:
            return f"{step_of(step, unit)}{where}, from a start {_HASHED}", True
        return f"a {unit}{where} {_HASHED}", False
    lo, dash, hi = base.partition("-")
    if dash:
        return f"{step_of(step or 1, unit)} from {lo} to {hi}", True
    if step:
        return f"{step_of(step, unit)} from {unit} {lo}", True
    return f"{unit} {lo}", False


def _time_field(text: str, unit: str, ordinals: bool = False) -> tuple[str, bool]:
    """A whole second, minute or hour field: a noun phrase, and whether it recurs."""
    if _is_fixed(text):
        return _numbers(text, unit), False
    phrases = [_time_item(item, unit, ordinals) for item in text.split(",")]
    return join_words([p for p, _ in phrases]), any(r for _, r in phrases)


def _day_item(item: str, kind: str) -> str:
    """One item of a day-of-month, month or day-of-week field, in words."""
    unit = {"dom": "day of the month", "month": "month", "dow": "day of the week"}[kind]
    base, _, step_text = item.partition("/")
    step = int(step_text) if step_text else 0
    if base == "*":
        return _nth(step, unit)
    if base.startswith("H"):
        span = base[2:-1].split("-") if base.startswith("H(") else []
        where = f" from {_name(span[0], kind)} to {_name(span[1], kind)}" if span else ""
        return f"a {unit}{where} {_HASHED}" if not step else f"{_nth(step, unit)}{where}"
    if "#" in base:
        day, nth = base.split("#")
        return f"the {ordinal(int(nth))} {_name(day, 'dow')} of the month"
    if kind == "dow" and base.startswith("L"):
        return f"the last {_name(base[1:], 'dow')} of the month"
    lo, dash, hi = base.partition("-")
    if step:
        end = _name(hi, kind) if dash else {"dom": "the 31st", "month": "December"}.get(kind, "")
        return f"{_nth(step, unit)} from {_name(lo, kind)} to {end}"
    return f"{_name(lo, kind)} to {_name(hi, kind)}" if dash else _name(lo, kind)


def _day_field(text: str, kind: str) -> str:
    parts: list[str] = []
    for item in text.split(","):
        base, _, step = item.partition("/")
        if step and kind == "dow" and not base.startswith("H"):
            # Weekdays with a step are a few days, not a period: '1/2' is Mon, Wed, Fri and Sun.
            values = field_values(DOW, item) or set()
            parts.extend(_DOW_NUM[v] for v in sorted(values, key=lambda v: (v - 1) % 7))
            continue
        parts.append(_day_item(item, kind))
    return join_words(parts)


def _clock_times(expr: CronExpr) -> str | None:
    """'at 09:00 and 17:30' when the second, minute and hour are a few fixed times."""
    second = expr.fields[0] if expr.has_seconds else "0"
    minute, hour = expr.minute, expr.hour
    if not (_is_fixed(second) and _is_fixed(minute) and _is_fixed(hour)):
        return None
    seconds, minutes, hours = second.split(","), minute.split(","), hour.split(",")
    if len(seconds) * len(minutes) * len(hours) > 4:
        return None
    times = [
        f"{int(h):02d}:{int(m):02d}" + (f":{int(sec):02d}" if int(sec) else "")
        for h in hours
        for m in minutes
        for sec in seconds
    ]
    return "at " + join_words(times)


def _minute_and_hour(minute: str, hour: str) -> str:
    """The minute and hour fields together: 'every 15 minutes during hours 9 to 17'."""
    if minute == "H" and hour == "H":
        return f"once a day, at a minute and hour {_HASHED}"
    hours, _ = _time_field(hour, "hour", ordinals=True)
    if minute == "*":
        return "every minute" if hour == "*" else f"every minute during {hours}"
    minutes, recurs = _time_field(minute, "minute")
    if recurs:
        return minutes if hour == "*" else f"{minutes} during {hours}"
    return f"at {minutes} past {hours}"


def describe_cron(expr: CronExpr) -> str:
    """The expression in words: its times, then its days (Vixie's OR when both are given)."""
    out: list[str] = []
    clock = _clock_times(expr)
    second = expr.fields[0] if expr.has_seconds else "0"
    daily = clock is not None
    if clock is not None:
        out.append(clock)
    elif second == "0":
        out.append(_minute_and_hour(expr.minute, expr.hour))
        daily = _is_fixed(expr.hour) or (expr.hour.startswith("H") and "/" not in expr.hour)
        daily = daily and (_is_fixed(expr.minute) or expr.minute.startswith("H"))
    else:
        seconds, recurs = _time_field(second, "second")
        lead = seconds if recurs else f"at {seconds}"
        if expr.minute == "*" and expr.hour == "*":
            out.append(lead if recurs else f"{lead} of every minute")
        else:
            rest = _minute_and_hour(expr.minute, expr.hour)
            out.append(f"{lead} of {rest.removeprefix('at ')}")
    dom, month, dow = expr.dom, expr.month, expr.dow
    if dom != "*" and dow != "*":
        if expr.day_or:
            out.append(f"on {_day_field(dom, 'dom')} or on {_day_field(dow, 'dow')}")
        else:  # one of them starts with '*': both must match
            out.append(f"on {_day_field(dom, 'dom')} when it is {_day_field(dow, 'dow')}")
    elif dom != "*":
        out.append(f"on {_day_field(dom, 'dom')}")
    elif dow != "*":
        out.append(f"on {_day_field(dow, 'dow')}")
    elif month == "*" and daily and not out[0].startswith("once a day"):
        out.append("every day")
    if month != "*":
        out.append(f"in {_day_field(month, 'month')}")
    return " ".join(out)

"""Schedules in words: the phrases `validate` and `next` print ("at 09:00 on Monday to Friday").

Only text from values: no schedule module is imported here, so every rule kind can describe
itself with these helpers.
"""

from __future__ import annotations

from .cron import DOW, CronExpr, field_values

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
            return "the last day"
        if token == "LW":
            return "the last weekday"
        if token.endswith("W"):
            return f"the weekday nearest the {ordinal(int(token[:-1]))}"
        return f"the {ordinal(int(token))}" if token.isdigit() else token
    return token


def _field(text: str, unit: str, kind: str = "") -> str:
    """A cron field in words: '*/15' -> 'every 15 minutes'; '1-5' -> 'Monday to Friday'."""
    parts: list[str] = []
    for item in text.split(","):
        base, _, step = item.partition("/")
        if step and kind == "dow" and not base.startswith("H"):
            # Weekdays with a step are a few days, not a period: '1/2' is Mon, Wed, Fri and Sun.
            values = field_values(DOW, item) or set()
            parts.extend(_DOW_NUM[v] for v in sorted(values, key=lambda v: (v - 1) % 7))
            continue
        if base == "*":
            parts.append(f"every {step} {unit}s" if step else f"every {unit}")
            continue
        if base.startswith("H"):
            parts.append(f"a hashed {unit}" + (f" every {step} {unit}s" if step else ""))
            continue
        if "#" in base:
            day, nth = base.split("#")
            parts.append(f"the {ordinal(int(nth))} {_name(day, 'dow')}")
            continue
        if kind == "dow" and base.startswith("L"):
            parts.append(f"the last {_name(base[1:], 'dow')}")
            continue
        lo, dash, hi = base.partition("-")
        phrase = f"{_name(lo, kind)} to {_name(hi, kind)}" if dash else _name(lo, kind)
        parts.append(phrase + (f" every {step}" if step else ""))
    return join_words(parts)


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
            out.append("at " + join_words(times))
        else:
            out.append(f"{_field(second, 'second')} of " + join_words(times))
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

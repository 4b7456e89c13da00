"""Durations written like Go's time.ParseDuration ("250ms", "1h30m", "1.5h"), plus "d" for days.

Durations are kept as whole microseconds (``int``): exact arithmetic for grids, no float drift.
"""

from __future__ import annotations

import re

from .errors import DurationError

US = 1
MS = 1_000
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

_UNITS = {
    "ns": None,  # accepted by Go; below pyjob's resolution unless it sums to whole microseconds
    "us": US,
    "µs": US,
    "μs": US,
    "ms": MS,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
    "d": DAY,
}
# ASCII digits only: str.isdigit() and int() also take '٥' and '５'.
# Patterns are compiled on first use (re caches them), not at import: every command imports this.
_PART = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h|d)"
# 100 years: far beyond any useful schedule, and small enough that every tick, claim and deadline
# pyjob computes from a duration stays inside datetime's range (year 9999) for centuries.
MAX_DAYS = 36_525
MAX_US = MAX_DAYS * DAY
# More digits than these cannot be a valid duration: the whole part would exceed MAX_US in
# nanoseconds; a fraction with more significant digits is finer than a microsecond in any unit.
_MAX_WHOLE_DIGITS = len(str(MAX_US * 1000))
_MAX_FRACTION_DIGITS = 18
_HINT = "like 250ms, 90s, 5m, 1h30m or 2d"


def parse_duration(text: str, *, allow_zero: bool = False) -> int:
    """Parse ``text`` into microseconds. Zero is an error unless ``allow_zero``; negatives are."""
    s = text.strip()
    if not s:
        raise DurationError(f"empty duration ({_HINT})", source=text, pos=0)
    if s[0] in "+-":
        if s[0] == "-" and s[1:] and s[1:] != "0":
            raise DurationError(f"negative duration '{text}': must be positive", source=text, pos=0)
        s = s[1:]
    if s == "0":
        if allow_zero:
            return 0
        raise DurationError(f"zero duration '{text}': must be positive", source=text, pos=0)
    pos = 0
    total_ns = 0
    while pos < len(s):
        m = re.compile(_PART).match(s, pos)
        if m is None:
            meant = _meant(s)
            hint = f"did you mean '{meant}'?" if meant else _HINT
            raise DurationError(
                f"bad duration '{text}' at '{s[pos:]}' ({hint})", source=text, pos=pos
            )
        number, unit = m.group(1), m.group(2)
        unit_ns = 1 if unit == "ns" else _UNITS[unit] * 1000  # type: ignore[operator]
        whole, _, frac = number.partition(".")
        whole, frac = whole.lstrip("0"), frac.rstrip("0")
        if len(whole) > _MAX_WHOLE_DIGITS:
            raise _too_large(text)
        if len(frac) > _MAX_FRACTION_DIGITS:
            raise DurationError(
                f"duration '{text}' is finer than a microsecond", source=text, pos=0
            )
        part_ns = int(whole or "0") * unit_ns
        if frac:
            part_ns += int(frac) * unit_ns // 10 ** len(frac)
        total_ns += part_ns
        if total_ns > MAX_US * 1000:
            raise _too_large(text)
        pos = m.end()
    if total_ns % 1000:
        raise DurationError(f"duration '{text}' is finer than a microsecond", source=text, pos=0)
    total = total_ns // 1000
    if total == 0 and not allow_zero:
        raise DurationError(f"zero duration '{text}': must be positive", source=text, pos=0)
    return total


# Units people write out, as pyjob writes them (5mins -> 5m, 2 hours -> 2h, 1sec -> 1s).
_WORDS = {
    "ms": ("msec", "msecs", "millisecond", "milliseconds"),
    "s": ("sec", "secs", "second", "seconds"),
    "m": ("min", "mins", "minute", "minutes"),
    "h": ("hr", "hrs", "hour", "hours"),
    "d": ("day", "days"),
}
_WORD_UNIT = {w: unit for unit, words in _WORDS.items() for w in words}
_WORDY = r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zµμ]+)"


def suggest_duration(text: str) -> str | None:
    """``text`` as pyjob writes a duration, when it is one: '5m' -> '5m', '5mins' -> '5m',
    '2 hours' -> '2h'; None when it is not a duration at all."""
    try:
        parse_duration(text)
        return text.strip()
    except DurationError:
        return _meant(text.strip())


def _meant(text: str) -> str | None:
    """The duration a text with units spelt out means ('5mins' -> '5m'), or None."""
    out, pos = [], 0
    while pos < len(text):
        m = re.compile(_WORDY, re.IGNORECASE).match(text, pos)
        if m is None:
            return None
        word = m.group(2).lower()
        unit = _WORD_UNIT.get(word) or (word if word in _UNITS else None)
        if unit is None:
            return None
        out.append(m.group(1) + unit)
        pos = m.end()
    return "".join(out) or None


def _too_large(text: str) -> DurationError:
    return DurationError(
        f"duration '{text}' is too large (at most {MAX_DAYS}d, 100 years)", source=text, pos=0
    )


def format_duration(us: int) -> str:
    """The normalized text of a duration: largest units first, ``parse_duration`` reads it back."""
    if us == 0:
        return "0s"
    sign = "-" if us < 0 else ""
    us = abs(us)
    out = []
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", SECOND), ("ms", MS)):
        q, us = divmod(us, size)
        if q:
            out.append(f"{q}{unit}")
    if us:
        out.append(f"{us}us")
    return sign + "".join(out)


def to_seconds(us: int | None) -> float | None:
    """Microseconds as the seconds the scheduler and the clock check use; None stays None."""
    return None if us is None else us / 1e6


def format_seconds(seconds: float) -> str:
    """``format_duration`` of a span in seconds, to the microsecond (limits in messages)."""
    return format_duration(round(seconds * 1e6))


# Durations for people are written in the units pyjob reads, the largest first, at most two of
# them and no space: 284µs, 2.3ms, 1.5s, 4m5s, 19h48m, 2d3h. Two precisions:
#
# - precise (logs, messages, how far away a tick is): three significant digits under a minute,
#   then the two largest units, rounded;
# - coarse (how long ago, how long a run took, in the status and history tables): whole
#   milliseconds under a second, whole seconds from 10 s (one decimal under), whole minutes
#   under an hour, then the two largest units, truncated, so a table's ages do not tick.


def human_duration(seconds: float, coarse: bool = False) -> str:
    """A span in seconds for people (see above for the two precisions)."""
    sign, v = ("-", -seconds) if seconds < 0 else ("", seconds)
    if v == 0:
        return "0s"
    return sign + (_coarse(v) if coarse else _precise(v))


def _precise(v: float) -> str:
    if v < 0.0009995:  # (rounds to 1000µs and more: written in ms)
        return f"{v * 1e6:.0f}µs"
    if v < 0.9995:
        return f"{_g3(v * 1e3)}ms"
    if v < 60:
        return f"{_g3(v)}s"
    return _two_units(round(v))


def _coarse(v: float) -> str:
    if v < 1:
        return f"{v * 1000:.0f}ms"
    if v < 60:
        return f"{v:.0f}s" if v >= 10 else f"{v:.1f}s".replace(".0s", "s")
    whole = int(v)
    return _two_units(whole - whole % 60)


def _two_units(whole: int) -> str:
    """Whole seconds, at least 60, in their two largest units (the second left out when 0)."""
    if whole < 3600:
        return _pair(whole // 60, "m", whole % 60, "s")
    if whole < 86400:
        return _pair(whole // 3600, "h", whole % 3600 // 60, "m")
    return _pair(whole // 86400, "d", whole % 86400 // 3600, "h")


def _g3(v: float) -> str:
    return f"{v:.3g}" if v < 100 else str(round(v))


def _pair(a: int, ua: str, b: int, ub: str) -> str:
    return f"{a}{ua}{b}{ub}" if b else f"{a}{ua}"

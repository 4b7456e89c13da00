"""The schedule options into the grammar's Parts: one mapping for the command line (``--cron``,
``--every``, ..., ``--start-at``) and a jobs file's keys of the same names (``cron = "..."``).

A schedule is given by one kind option (or a whole expression), and modifiers that add to it or
bound it. Which kind was given, and how a conflict reads, stays with the caller: the command line
and a TOML table say it in their own words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ScheduleError
from .grammar import split
from .parts import Parts

# The kind options, in the order messages list them.
KINDS = ("cron", "every", "daily", "weekly", "monthly", "once")
# A cron expression's own zone, written before it (as Vixie cron and cronie read CRON_TZ= lines).
_ZONE_PREFIXES = ("CRON_TZ=", "TZ=")


def kind_parts(kind: str, value: Any, name: str | None = None) -> Parts:
    """The Parts of one kind option: ``kind`` is one of KINDS, ``value`` what it was given (for
    ``daily`` a flag; for ``once`` one date-time or several). ``name`` is how messages call the
    option (``--cron``, ``cron``)."""
    if kind == "cron":
        text = str(value)
        if not text.strip().upper().startswith(_ZONE_PREFIXES):
            return Parts(kind="cron", value=text)
        parts = split(text)  # the grammar reads the zone prefix off the expression
        if parts.kind != "cron":
            raise ScheduleError(f"{name or kind} {text!r} is not a cron expression")
        return parts
    if kind == "daily":
        return Parts(kind="daily") if value else Parts()
    if kind == "once":
        return Parts(kind="once", value=value if isinstance(value, str) else ",".join(value))
    return Parts(kind=kind, value=value)


def add_modifiers(parts: Parts, options: Mapping[str, Any], flag: str | None = None) -> None:
    """Apply the modifier options (keys ``align``, ``offset``, ``at``, ``interval``, ``start-at``,
    ``stop-at``; None or absent: not given) to ``parts``: ``align`` and ``at`` add to what the
    schedule says and ``offset`` replaces it. ``interval`` and the bounds, when the schedule's
    text gives them too, are an error naming the option as ``flag`` + key (the command line:
    one value said twice is a mistake), or, with ``flag`` None, replace the text's: a jobs
    file's keys (its [defaults] included) override a job's schedule text."""
    if options.get("align"):
        parts.align = True
    if options.get("offset") is not None:
        parts.offset = options["offset"]
    at: str | Iterable[str] = options.get("at") or ()
    parts.at.extend([at] if isinstance(at, str) else at)
    for key in ("interval", "start-at", "stop-at"):
        value = options.get(key)
        if value is None:
            continue
        attr = key.replace("-", "_")
        if flag is not None and getattr(parts, attr) is not None:
            raise ScheduleError(f"{flag}{key} given twice (in the expression and as an option)")
        setattr(parts, attr, str(value))


__all__ = ["KINDS", "add_modifiers", "kind_parts"]

"""The schedule grammar: text and command-line options into a Spec.

A schedule is written either as a cron expression or as a phrase, and the command-line options
(``--every 5m --align``) build the same Parts, so there is exactly one parser:

    0 9 * * MON-FRI                  CRON_TZ=Europe/Berlin 0 9 * * *      @daily     @every 90s
    every 5m                         every 1h align offset 15m            every 1m..5m
    daily at 09:00,17:30             weekly on MON,FRI at 08:00 interval 2
    monthly on 1,-1 at 00:00         once at 2026-12-24T18:00
    ... tz Europe/Berlin start-at 2026-12-01T00:00 stop-at 2027-01-01T00:00

``split`` knows only the words; ``build`` hands the Parts to the rule kind registered under the
head (core/rules.py), which validates its own values. ``str(spec)`` is the normalized form and
``parse(str(spec)) == spec``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from .errors import InputError, ScheduleError
from .instants import iso
from .parts import Parts
from .rules import RULES, Spec
from .timeparse import is_relative, parse_datetime
from .zones import get_zone, job_zone_name


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
    rule_class = RULES[kind]
    _check_keys(parts, rule_class.keys[kind])
    rule = rule_class.from_parts(parts, zone_name, now)
    start_at = parse_datetime(parts.start_at, zone, now) if parts.start_at else None
    stop_at = parse_datetime(parts.stop_at, zone, now) if parts.stop_at else None
    if start_at and stop_at and stop_at < start_at:
        raise ScheduleError(
            f"stop-at {iso(stop_at)} is before start-at {iso(start_at)}",
            source=parts.stop_at,
            pos=0,
        )
    return Spec(
        rule,
        start_at,
        stop_at,
        start_relative=bool(parts.start_at and is_relative(parts.start_at)),
        stop_relative=bool(parts.stop_at and is_relative(parts.stop_at)),
    )


def _check_keys(parts: Parts, allowed: frozenset[str]) -> None:
    given = {
        "align": parts.align,
        "offset": parts.offset is not None,
        "at": bool(parts.at),
        "interval": parts.interval is not None,
        "on": parts.on is not None,
    }
    assert parts.kind is not None
    for key, present in given.items():
        if present and key not in allowed and key != "on":  # daily: see below
            raise ScheduleError(f"'{key}' does not apply to a {parts.kind} schedule")
    if parts.offset is not None and not parts.align:
        raise ScheduleError("'offset' needs 'align': it shifts the aligned grid")


# --------------------------------------------------------------------------------------------
# The phrase parser.

_KEYWORDS = {"align", "offset", "at", "on", "interval", "tz", "start-at", "stop-at"}
_HEADS = set(RULES) - {"cron"}  # the phrase heads: every, daily, weekly, monthly, once


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
        _phrase_body(parts, head, head_pos, tokens[1:body_end], text)
    else:
        parts.kind = "cron"
        start = tokens[0][1]
        end = tokens[body_end - 1][1] + len(tokens[body_end - 1][0])
        parts.value = text[start:end]
    _keyword_clauses(parts, tokens[body_end:], text)
    # '@every 4s align' is 'every 4s align' (a crontab line cannot take --align)
    words = (parts.value or "").split()
    aligned = parts.align or parts.offset is not None
    if parts.kind == "cron" and aligned and len(words) == 2 and words[0].lower() == "@every":
        parts.kind, parts.value = "every", words[1]
    return parts


def _phrase_body(
    parts: Parts, head: str, head_pos: int, body: list[tuple[str, int]], text: str
) -> None:
    """The words between a phrase's head (every, daily, …) and its keyword clauses."""
    if parts.kind == "every":
        if len(body) != 1:
            from .durations import suggest_duration

            meant = suggest_duration(" ".join(w for w, _ in body)) if body else None
            raise ScheduleError(
                f"every takes one duration: did you mean 'every {meant}'?"
                if meant
                else "every takes one duration, like 'every 5m' or 'every 1m..5m'",
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

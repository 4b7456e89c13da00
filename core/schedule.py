"""Schedules: a Spec bound to its run-time facts, answering the pure ``next_tick(after)``.

The layers, each in its own module:

- core/rules.py: the rule kinds (cron, every, random every, calendar, once), each one class with
  its normalized text, description, properties (``unshared_reason``) and ticker; ``Spec``.
- core/grammar.py: text and command-line options into a Spec (``split``, ``build``, ``parse``).
- here: ``Schedule``, which applies a spec's bounds around its rule's ticker, and the job identity
  (``derive_job_id``) that seeds ``H`` fields and random waits.

The names callers have always imported from here are re-exported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, tzinfo

from .grammar import build, parse, split
from .instants import EPOCH, US, from_us, iso, to_us
from .names import sha256
from .parts import Parts
from .rules import (
    EPOCH_DATE,
    EPOCH_MONDAY,
    RULES,
    CalendarRule,
    CronRule,
    EveryRule,
    OnceRule,
    RandomEveryRule,
    Rule,
    Spec,
    Tick,
    Ticker,
)
from .values import MAX_INTERVAL, WEEKDAYS
from .zones import get_zone

__all__ = [
    "EPOCH",
    "EPOCH_DATE",
    "EPOCH_MONDAY",
    "MAX_INTERVAL",
    "RULES",
    "WEEKDAYS",
    "CalendarRule",
    "CronRule",
    "EveryRule",
    "OnceRule",
    "Parts",
    "RandomEveryRule",
    "Rule",
    "Schedule",
    "Spec",
    "Tick",
    "Ticker",
    "build",
    "derive_job_id",
    "from_us",
    "iso",
    "job_identity",
    "parse",
    "split",
    "to_us",
]


class Schedule:
    """A Spec bound to its run-time facts; ``next_tick(after)`` is pure.

    ``job_id`` seeds ``H`` fields and random intervals; ``anchor`` is where an unaligned
    ``every`` counts from (its ``start-at`` when given: then the first tick is start-at itself).
    """

    __slots__ = ("_ticks", "spec", "zone")

    def __init__(self, spec: Spec, *, job_id: str = "", anchor: datetime | None = None) -> None:
        self.spec = spec
        self._ticks: Ticker = spec.rule.ticker(job_id=job_id, anchor=anchor, start_at=spec.start_at)
        self.zone: tzinfo = get_zone(spec.local_zone) if spec.local_zone else UTC

    def next_info(self, after: datetime) -> Tick | None:
        """The first tick strictly after ``after`` within the bounds, or None when exhausted."""
        if after.tzinfo is None:
            raise ValueError("after must be an aware datetime")
        after = after.astimezone(UTC)
        start, stop = self.spec.start_at, self.spec.stop_at
        if start is not None and after < start:
            after = start - US
        if stop is not None and after >= stop:
            return None
        try:
            tick = self._ticks.next(after)
            if tick is not None:  # its wall time is shown too (`next`, PYJOB_TICK)
                tick.instant.astimezone(self.zone)
        except OverflowError:  # the next tick, or its wall time, would be after year 9999
            return None
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


def job_identity(
    spec: Spec, command: Sequence[str] = (), *, shell: bool = False, name: str | None = None
) -> str:
    """The id of the job ``--name`` (when given), or else the job of ``spec`` running ``command``
    (through /bin/sh -c with ``shell``): what `run` claims under and what seeds ``H`` fields and
    random waits, so `next` and `validate` given the same options preview the same ticks."""
    if name:
        return name
    return derive_job_id(spec, (["--shell"] if shell else []) + list(command))


def derive_job_id(spec: Spec, argv: Sequence[str] = ()) -> str:
    """DESIGN §1: a short stable hash of the normalized schedule (which names the zone whenever the
    zone moves the ticks) and the command, so one one-liner on many hosts is one job. The
    schedule's ``identity`` leaves out what depends on when it was parsed (``--start-at now``)."""
    payload = "\0".join([spec.identity, *argv]).encode()
    return "job-" + sha256(payload).hexdigest()[:12]

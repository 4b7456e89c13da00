"""What a schedule says before it is validated: the grammar (core/grammar.py) splits text and
command-line options into Parts, and each rule kind (core/rules.py) validates its own. A module of
its own so that neither of the two imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass, field


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


__all__ = ["Parts"]

"""What every rule kind of a schedule is (DESIGN §2): a ``Rule`` (frozen data with its text, its
description, its properties and its pure ticker), the ``Tick`` it yields, the registry of kinds
by phrase head, and the ``Spec`` (a rule plus its bounds). The kinds are in core/rules.py."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import ClassVar, Protocol, TypeVar

from .frozen import Frozen
from .instants import iso
from .parts import Parts


class Tick(Frozen):
    """One instant a schedule yields, with what DST did to it."""

    __slots__ = ("instant", "moved_from", "repeated")
    instant: datetime  # aware, UTC
    moved_from: datetime | None  # the wall time it was meant for, if a DST gap moved it
    repeated: bool  # its wall time occurs twice (a fall-back hour)

    def __init__(
        self, instant: datetime, moved_from: datetime | None = None, repeated: bool = False
    ) -> None:
        object.__setattr__(self, "instant", instant)
        object.__setattr__(self, "moved_from", moved_from)
        object.__setattr__(self, "repeated", repeated)


class Ticker(Protocol):
    """A rule bound to its run-time facts: the first tick strictly after ``after`` (UTC)."""

    def next(self, after: datetime) -> Tick | None: ...


class Rule(Frozen, ABC):
    """A kind of schedule. Subclasses are frozen records registered under their heads."""

    __slots__ = ()

    #: The option keys (besides tz and the bounds) each phrase head accepts.
    keys: ClassVar[dict[str, frozenset[str]]] = {}

    @property
    @abstractmethod
    def kind(self) -> str:
        """cron, every, daily, weekly, monthly or once."""

    @property
    def tick_zone(self) -> str | None:
        """The zone the ticks depend on, or None when they are zone-free (elapsed time, UTC)."""
        return None

    @property
    def local_zone(self) -> str | None:
        """The zone its ticks are shown in (`next`'s Local column, PYJOB_TICK); None is UTC."""
        return self.tick_zone

    @property
    def unshared_reason(self) -> str | None:
        """Why instances on other hosts compute other ticks for this rule, or None when every
        instance that runs it computes the same ticks whenever it started."""
        return None

    @property
    def identity(self) -> str:
        """The rule's part of the job id (DESIGN §1): its normalized form, less anything that
        depends on when it was parsed, so every instance of one job has the same id."""
        return str(self)

    @abstractmethod
    def describe(self) -> str:
        """The rule in words, for `validate` and `next`."""

    @abstractmethod
    def ticker(self, *, job_id: str, anchor: datetime | None, start_at: datetime | None) -> Ticker:
        """The pure tick function; ``job_id`` seeds H and random waits, ``anchor`` is where an
        unaligned interval counts from (``start_at`` wins: then start-at is the first tick)."""

    @classmethod
    @abstractmethod
    def from_parts(cls, parts: Parts, zone_name: str, now: datetime | None) -> Rule:
        """Validate the grammar's Parts of this kind into a rule."""


R = TypeVar("R", bound=type[Rule])
RULES: dict[str, type[Rule]] = {}  # phrase head (or "cron") -> the class that builds it


def register(*heads: str) -> Callable[[R], R]:
    def add(cls: R) -> R:
        for head in heads:
            RULES[head] = cls
        return cls

    return add


class Spec(Frozen, uncompared=("start_relative", "stop_relative")):
    """A parsed schedule: a rule plus its bounds. ``str()`` is the normalized form."""

    __slots__ = ("rule", "start_at", "start_relative", "stop_at", "stop_relative")
    rule: Rule
    start_at: datetime | None
    stop_at: datetime | None
    # A bound given as `now`: each instance reads it as the moment it starts.
    start_relative: bool
    stop_relative: bool

    def __init__(
        self,
        rule: Rule,
        start_at: datetime | None = None,
        stop_at: datetime | None = None,
        start_relative: bool = False,
        stop_relative: bool = False,
    ) -> None:
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "start_at", start_at)
        object.__setattr__(self, "stop_at", stop_at)
        object.__setattr__(self, "start_relative", start_relative)
        object.__setattr__(self, "stop_relative", stop_relative)

    def __str__(self) -> str:
        return self._text(str(self.rule), True, True)

    @property
    def identity(self) -> str:
        """What the job id is a hash of (DESIGN §1): the normalized form less what depends on
        when the schedule was parsed (a bound given as `now`, `once` times already past), so the
        instances of one job agree on its id, its H values and its claims whenever they start."""
        return self._text(self.rule.identity, not self.start_relative, not self.stop_relative)

    def _text(self, rule: str, start: bool, stop: bool) -> str:
        if start and self.start_at is not None:
            rule += f" start-at {iso(self.start_at)}"
        if stop and self.stop_at is not None:
            rule += f" stop-at {iso(self.stop_at)}"
        return rule

    @property
    def kind(self) -> str:
        return self.rule.kind

    @property
    def zone(self) -> str | None:
        """The zone the ticks depend on, or None when they are zone-free (elapsed time, UTC)."""
        return self.rule.tick_zone

    @property
    def local_zone(self) -> str | None:
        """The zone its ticks are shown in; None is UTC."""
        return self.rule.local_zone

"""What a schedule says before it is validated: the grammar (core/grammar.py) splits text and
command-line options into Parts, and each rule kind (core/rules.py) validates its own. A module of
its own so that neither of the two imports the other for it."""

from __future__ import annotations


class Parts:
    """What a schedule says, before validation; keys mirror the command-line options. A plain
    class, not a dataclass: `pyjob next` and `validate` import it, and making a dataclass costs
    their start-up about a millisecond."""

    __slots__ = (
        "align",
        "at",
        "interval",
        "kind",
        "offset",
        "on",
        "prefix_tz",
        "start_at",
        "stop_at",
        "tz",
        "value",
    )

    def __init__(
        self,
        kind: str | None = None,
        value: str | None = None,  # cron expression, duration, weekly/monthly days, once times
        align: bool = False,
        offset: str | None = None,
        at: list[str] | None = None,
        on: str | None = None,
        interval: str | None = None,
        tz: str | None = None,
        start_at: str | None = None,
        stop_at: str | None = None,
        prefix_tz: str | None = None,  # from a CRON_TZ= / TZ= prefix
    ) -> None:
        self.kind = kind
        self.value = value
        self.align = align
        self.offset = offset
        self.at: list[str] = [] if at is None else at
        self.on = on
        self.interval = interval
        self.tz = tz
        self.start_at = start_at
        self.stop_at = stop_at
        self.prefix_tz = prefix_tz

    def _values(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Parts):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass's

    def __repr__(self) -> str:
        return f"Parts({', '.join(f'{k}={v!r}' for k, v in self._values().items())})"


__all__ = ["Parts"]

"""Each rule kind owns its properties: kind, zone, whether every host computes the same ticks,
its description and its ticker (core/rules.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pyjob.core.describe import describe
from pyjob.core.grammar import parse
from pyjob.core.rules import RULES, Rule
from pyjob.core.schedule import Schedule

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "kind", "zone", "unshared"),
    [
        ("0 * * * *", "cron", "Asia/Tokyo", None),
        ("H * * * *", "cron", "Asia/Tokyo", None),
        ("@every 90s", "every", None, "counts from this instance's start"),
        ("every 5m", "every", None, "counts from this instance's start"),
        ("every 5m align", "every", "Asia/Tokyo", None),
        ("every 7m align", "every", None, None),
        ("every 1m..5m", "every", None, "draws each wait at random"),
        ("daily at 09:00", "daily", "Asia/Tokyo", None),
        ("weekly on MON at 09:00", "weekly", "Asia/Tokyo", None),
        ("monthly on -1 at 09:00", "monthly", "Asia/Tokyo", None),
        ("once at 2026-06-01T00:00", "once", None, None),
    ],
)
def test_rule_properties(text: str, kind: str, zone: str | None, unshared: str | None) -> None:
    spec = parse(text, tz="Asia/Tokyo", env={}, now=NOW)
    assert spec.kind == spec.rule.kind == kind
    assert spec.zone == spec.rule.tick_zone == zone
    assert spec.rule.unshared_reason == unshared
    assert describe(spec) == spec.rule.describe()
    assert parse(str(spec), env={}, now=NOW) == spec


def test_every_head_is_a_rule_that_builds_itself() -> None:
    assert set(RULES) == {"cron", "every", "daily", "weekly", "monthly", "once"}
    for head, cls in RULES.items():
        assert issubclass(cls, Rule)
        assert head in cls.keys, head


def test_unaligned_interval_needs_an_anchor() -> None:
    spec = parse("every 5m", env={}, now=NOW)
    with pytest.raises(ValueError):
        Schedule(spec)
    assert Schedule(spec, anchor=NOW).next_tick(NOW) == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)

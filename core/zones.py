"""Time zones and the rules for wall-clock times that DST skips or repeats.

Every zone comes from the tzdata package pyjob depends on, never from the OS's zone files
(DESIGN §3): two hosts of one fleet whose OS ships other zone rules would otherwise compute ticks
an hour apart, and no lock can tell they are the same tick. ``zoneinfo.ZoneInfo(key)`` reads the
TZPATH directories first, and ``zoneinfo.reset_tzpath`` would change that for the whole program
pyjob runs in, so zones are loaded here from the package's files, once per process and key.

pyjob follows Debian cron's rule for times of day (DESIGN §3): a wall time inside a spring-forward
gap happens once, at the first instant after the gap (02:30 -> 03:00); a wall time that occurs
twice at fall-back happens once, at its first occurrence. Instants are always compared in UTC:
Python ignores ``fold`` when it compares two aware datetimes of the same zone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from typing import IO, Any
from zoneinfo import ZoneInfo

import tzdata

from .errors import ZoneError
from .frozen import Frozen

_ONE_SECOND = timedelta(seconds=1)


def tzdata_version() -> str:
    """The release of the IANA zone database every zone comes from (``2026f``)."""
    return str(tzdata.IANA_VERSION)


class BundledZone(ZoneInfo):
    """A zone of the tzdata package. A copy or unpickled one is loaded by ``get_zone`` again:
    ``ZoneInfo`` itself would look its key up in the OS's zone files first."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (get_zone, (self.key,))


@cache
def _package_dir() -> str | None:
    """The package's directory when its files are plain files (os.path: pathlib and
    importlib.resources would cost every command's start-up a few milliseconds of imports)."""
    root = os.path.dirname(tzdata.__file__)
    return root if os.path.isfile(os.path.join(root, "zones")) else None


def _open(*parts: str) -> IO[bytes]:
    """A file of the package, read through importlib.resources when it is not plain files (a
    zip)."""
    root = _package_dir()
    if root is not None:
        return open(os.path.join(root, *parts), "rb")
    from importlib import resources

    return resources.files("tzdata").joinpath(*parts).open("rb")


@cache
def _bundled_names() -> frozenset[str]:
    """The keys the package has (its list, so no key can name a directory or leave the package)."""
    with _open("zones") as f:
        text = f.read().decode("utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


@cache
def _load(key: str) -> BundledZone:
    """One object per key and process: datetimes in one zone then share their tzinfo."""
    with _open("zoneinfo", *key.split("/")) as f:
        return BundledZone.from_file(f, key=key)


def get_zone(name: str) -> ZoneInfo:
    """The zone called ``name`` (an IANA name such as Europe/Berlin) as the tzdata package has
    it, or a ZoneError. Every zone pyjob uses comes from here."""
    key = name.strip()
    if not key:
        raise ZoneError("empty time zone name", source=name, pos=0)
    if key in _bundled_names():
        try:
            return _load(key)
        except (OSError, ValueError):
            pass  # a damaged installation: reported as an unknown zone, with the names meant
    meant = similar_zones(key)
    hint = (
        f"did you mean {' or '.join(meant)}?"
        if meant
        else "use an IANA name like Europe/Berlin or UTC"
    )
    raise ZoneError(
        f"unknown time zone '{name}' ({hint})",
        source=name,
        pos=0,
        length=len(name),
    )


def similar_zones(name: str, limit: int = 3) -> list[str]:
    """IANA names the user may have meant: the zones whose city is ``name`` (Berlin ->
    Europe/Berlin), else the closest spellings (Europe/Berln -> Europe/Berlin)."""
    import difflib

    names = zone_names()
    wanted = name.strip().lower().replace(" ", "_")
    if not wanted:
        return []
    exact = [n for n in names if n.lower() == wanted]
    if exact:  # only the case was wrong
        return exact[:limit]
    city = [n for n in names if n.rsplit("/", 1)[-1].lower() == wanted and "/" in n]
    if city:
        return sorted(city, key=lambda n: (n.startswith(("Etc/", "posix/", "right/")), n))[:limit]
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(wanted, list(lowered), n=limit, cutoff=0.8)
    return [lowered[c] for c in close]


def zone_names() -> list[str]:
    """Every zone name pyjob knows: the tzdata package's, whatever the OS has."""
    return sorted(_bundled_names())


def system_zone_name(env: Mapping[str, str] | None = None) -> str:
    """The host's zone as an IANA name: $TZ, /etc/timezone, the /etc/localtime link, else UTC.

    Only the name is taken from the OS; its rules come from the tzdata package (``get_zone``).
    """
    env = os.environ if env is None else env
    tz = env.get("TZ", "").lstrip(":")
    if tz:
        if tz.startswith("/"):
            name = _name_in_zone_path(tz)
            if name:
                return name
        else:
            return tz
    try:
        with open("/etc/timezone") as f:
            name = f.read().strip()
        if name:
            return name
    except OSError:
        pass
    try:
        name = _name_in_zone_path(os.readlink("/etc/localtime"))
        if name:
            return name
    except OSError:
        pass
    return "UTC"


def _name_in_zone_path(path: str) -> str | None:
    """The zone name of a path into an OS zone directory (/usr/share/zoneinfo/Europe/Berlin).
    The posix/ and right/ trees hold the same civil rules (right/ counts leap seconds, which
    pyjob's POSIX time does not), so their names are the plain ones."""
    marker = "zoneinfo/"
    if marker not in path:
        return None
    name = path.split(marker, 1)[1]
    for tree in ("posix/", "right/"):
        if name.startswith(tree):
            name = name[len(tree) :]
    return name or None


def job_zone_name(
    explicit: str | None, from_expression: str | None, env: Mapping[str, str] | None = None
) -> str:
    """DESIGN §3: --tz, else CRON_TZ= in the expression, else $PYJOB_TZ, else the system zone."""
    env = os.environ if env is None else env
    for candidate in (explicit, from_expression, env.get("PYJOB_TZ")):
        if candidate:
            return candidate
    return system_zone_name(env)


def offset_at(instant: datetime, zone: tzinfo) -> timedelta:
    off = instant.astimezone(zone).utcoffset()
    assert off is not None
    return off


class Wall(Frozen):
    """Where a wall-clock time lands: its instant (UTC) and what DST did to it."""

    __slots__ = ("gap", "instant", "repeated")
    instant: datetime
    gap: bool  # the wall time does not exist; ``instant`` is the end of the gap
    repeated: bool  # the wall time exists twice; ``instant`` is the first occurrence

    def __init__(self, instant: datetime, gap: bool = False, repeated: bool = False) -> None:
        object.__setattr__(self, "instant", instant)
        object.__setattr__(self, "gap", gap)
        object.__setattr__(self, "repeated", repeated)


def resolve_wall(naive: datetime, zone: tzinfo) -> Wall:
    """The instant of a wall-clock time under Debian cron's DST rule (see module doc)."""
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return Wall(first)
    lo, hi = min(first, second), max(first, second)
    if lo.astimezone(zone).replace(tzinfo=None) == naive:
        return Wall(lo, repeated=True)
    # In a gap: the transition lies between the two readings. Find its first whole second.
    return Wall(_first_second_with_offset(lo, hi, offset_at(hi, zone), zone), gap=True)


def _first_second_with_offset(
    lo: datetime, hi: datetime, target: timedelta, zone: tzinfo
) -> datetime:
    """Smallest whole-second instant in (lo, hi] whose offset is ``target`` (bisection)."""
    lo = lo.replace(microsecond=0)
    while hi - lo > _ONE_SECOND:
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if offset_at(mid, zone) == target:
            hi = mid
        else:
            lo = mid
    return hi


def is_repeated(instant: datetime, zone: tzinfo) -> bool:
    """Whether the wall time of ``instant`` occurs twice in ``zone`` (a fall-back hour)."""
    local = instant.astimezone(zone)
    other = local.replace(fold=1 - local.fold)
    return other.astimezone(UTC) != instant.astimezone(UTC)


class Transition(Frozen):
    """A change of a zone's UTC offset."""

    __slots__ = ("after", "before", "instant")
    instant: datetime  # first instant with the new offset
    before: timedelta
    after: timedelta

    def __init__(self, instant: datetime, before: timedelta, after: timedelta) -> None:
        object.__setattr__(self, "instant", instant)
        object.__setattr__(self, "before", before)
        object.__setattr__(self, "after", after)

    @property
    def is_gap(self) -> bool:
        return self.after > self.before


def next_transition(
    zone: tzinfo, after: datetime, until: datetime, step: timedelta = timedelta(hours=6)
) -> Transition | None:
    """The first change of UTC offset in (after, until], or None."""
    before = offset_at(after, zone)
    probe = after
    while probe < until:
        # (not min(probe + step, until): the sum overflows within a step of 9999-12-31)
        nxt = until if until - probe <= step else probe + step
        off = offset_at(nxt, zone)
        if off != before:
            at = _first_second_with_offset(probe, nxt, off, zone)
            # Seconds are the resolution of the tz database; make sure we got the first change.
            if offset_at(at - _ONE_SECOND, zone) == before or at - _ONE_SECOND <= after:
                return Transition(at, before, offset_at(at, zone))
            return next_transition(zone, probe, at, timedelta(minutes=1))
        probe = nxt
    return None


def transitions(zone: tzinfo, start: datetime, end: datetime) -> list[Transition]:
    out: list[Transition] = []
    cursor = start
    while (t := next_transition(zone, cursor, end)) is not None:
        out.append(t)
        cursor = t.instant
    return out

"""`pyjob check-clock`: this host's NTP offset, the skew to peers and to the lock backend, judged
against a limit (for CI pipelines) or against warning/critical levels (for monitoring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from pyjob.core.durations import format_seconds
from pyjob.core.settings import DEFAULT_LIMIT, DEFAULT_SERVERS, MIN_LIMIT

from .env import get_env
from .exitcodes import ExitCode
from .options import DURATION, LOCK_URL, NTP_SERVER, AsciiIntRange, server_list

if TYPE_CHECKING:
    from pyjob.core.clockcheck import ClockReport
    from pyjob.core.ntp import Measurement

_LEAP = {0: "none", 1: "+1s", 2: "-1s", 3: "alarm"}


def _secs(seconds: float) -> str:
    """Plain seconds as check_ntp_time prints them, without exponent: 0.0012, 2.500009."""
    text = f"{seconds:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _s(seconds: float | None, sign: bool = False) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:+.6f}s" if sign else f"{seconds:.6f}s"


@click.command("check-clock")
@click.option(
    "--server",
    "servers",
    multiple=True,
    type=NTP_SERVER,
    metavar="HOST[:PORT]",
    envvar="PYJOB_NTP_SERVERS",
    help="NTP server to measure against; repeat for several "
    f"(default: $PYJOB_NTP_SERVERS, else {', '.join(DEFAULT_SERVERS)}).",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    type=NTP_SERVER,
    metavar="HOST[:PORT]",
    help="Another instance's host, asked over NTP (it must serve NTP, as chronyd with "
    "'allow' does); repeat for several. Reports each one's offset and the largest skew.",
)
@click.option(
    "--lock",
    type=LOCK_URL,
    metavar="URL",
    envvar="PYJOB_LOCK",
    help="Also measure the lock backend's clock: Redis TIME, PostgreSQL clock_timestamp(), "
    "etcd's HTTP Date headers (to the second, narrowed by probes timed at its edges), "
    "or a probe file's mtime for file: and nfs:. Warns when the instances registered there "
    "and this host run different tzdata releases.",
)
@click.option(
    "--max-offset",
    type=DURATION,
    metavar="DURATION",
    help=f"The largest acceptable offset (default {format_seconds(DEFAULT_LIMIT)}).",
)
@click.option(
    "--interval",
    type=DURATION,
    metavar="DURATION",
    help="Derive the limit from a job interval instead: 1/60 of it, at least "
    f"{format_seconds(MIN_LIMIT)} (1s: 100ms, 1m: 1s, 5m: 5s, 1h: 1m).",
)
@click.option(
    "--max-skew",
    type=DURATION,
    metavar="DURATION",
    help="The largest acceptable skew between any two of this host and the peers "
    "(default: the offset limit).",
)
@click.option(
    "--warn",
    type=DURATION,
    default="100ms",
    show_default=True,
    metavar="DURATION",
    help="--format nagios: WARNING above this offset or skew.",
)
@click.option(
    "--crit",
    type=DURATION,
    default="1s",
    show_default=True,
    metavar="DURATION",
    help="--format nagios: CRITICAL above this offset or skew.",
)
@click.option(
    "--samples",
    type=AsciiIntRange(1, 32),
    default=4,
    show_default=True,
    metavar="N",
    help="Queries per server; the one with the smallest round trip wins.",
)
@click.option(
    "--timeout",
    type=DURATION,
    default="1s",
    show_default=True,
    metavar="DURATION",
    help="How long to wait for each reply.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "nagios"]),
    default="table",
    show_default=True,
    help="table (rich on a terminal), json, or nagios (a monitoring plugin's line and "
    "perfdata, exit 0/1/2/3).",
)
def check_clock_cmd(
    servers: tuple[str, ...],
    peers: tuple[str, ...],
    lock: str | None,
    max_offset: int | None,
    interval: int | None,
    max_skew: int | None,
    warn: int,
    crit: int,
    samples: int,
    timeout: int,
    fmt: str,
) -> None:
    """Measure this host's clock against NTP servers and judge the offset.

    Each reply is checked before it is believed (mode, stratum, kiss-o'-death code, leap,
    origin timestamp, source address, root distance) and a rejected one names its reason. Of
    several samples the one with the smallest round trip wins; its offset is reported with an
    error bound of half that round trip. Offsets follow NTP's sign: +2.5s means this host is
    2.5s behind. On Linux the kernel's own synchronisation state is shown too.

    Exit 0 when everything is within its limit, 1 when an offset or skew is over it, 2 on bad
    usage, 3 when nothing usable answered. With --format nagios: 0 OK, 1 WARNING, 2 CRITICAL,
    3 UNKNOWN, by --warn and --crit.

    \b
    Examples:
      pyjob check-clock --interval 5m              # in CI: fail when skew hurts 5-minute jobs
      pyjob check-clock --server ntp1 --peer app2 --peer app3 --max-skew 200ms
      pyjob check-clock --lock redis://redis:6379/0
      pyjob check-clock --format nagios --warn 100ms --crit 1s
    """
    from pyjob.core.backends import open_backend
    from pyjob.core.clockcheck import check_clock, offset_limit

    env = get_env()
    if max_offset is not None and interval is not None:
        raise click.UsageError("--max-offset and --interval both set the limit: give one")
    if warn > crit:
        raise click.BadParameter("is above --crit", param_hint="'--warn'")
    chosen = server_list(servers) or list(DEFAULT_SERVERS)
    limit, reason = offset_limit(
        None if max_offset is None else max_offset / 1e6,
        None if interval is None else interval / 1e6,
    )
    if interval is not None:
        from pyjob.core.durations import format_duration

        reason = f"--interval {format_duration(interval)}"
    backend = None
    if lock is not None:
        backend = open_backend(lock, env.environ, env.clock)
        backend.check()
    try:
        report = check_clock(
            chosen,
            env.clock,
            limit=limit,
            limit_reason=reason,
            peers=server_list(peers),
            max_skew=None if max_skew is None else max_skew / 1e6,
            backend=backend,
            samples=samples,
            timeout=timeout / 1e6,
        )
        fleet_warning = None if backend is None else _zone_database_warning(backend, env)
    finally:
        if backend is not None:
            backend.close()
    if fleet_warning:
        click.echo(f"warning: {fleet_warning}", err=True)
    if fmt == "nagios":
        code = _nagios(report, warn / 1e6, crit / 1e6)
    elif fmt == "json":
        _json(report)
        code = _exit_code(report)
    else:
        _table(report)
        code = _exit_code(report)
    raise click.exceptions.Exit(int(code))


def _zone_database_warning(backend: Any, env: Any) -> str | None:
    """This host and the instances registered in ``backend`` compute ticks with different zone
    databases (DESIGN §3): a warning, since the clocks may still be fine."""
    from pyjob.core.errors import BackendError
    from pyjob.core.instants import to_us
    from pyjob.core.records import zone_database_warning
    from pyjob.core.zones import tzdata_version

    store = backend.records()
    if store is None:
        return None
    try:
        instances = store.instances()
    except BackendError:  # the clock report stands without the registry
        return None
    return zone_database_warning(instances, to_us(env.clock.now()), here=tzdata_version())


def _exit_code(report: ClockReport) -> ExitCode:
    return {
        "ok": ExitCode.OK,
        "over": ExitCode.FAILED,
        "unknown": ExitCode.CLOCK_UNMEASURED,
    }[report.status]


# ---------------------------------------------------------------------------------- formats


def _measurement_doc(m: Measurement, best: bool = False, wrong: bool = False) -> dict[str, Any]:
    s = m.best
    doc: dict[str, Any] = {"address": m.server, "usable": s is not None}
    if wrong:
        doc["falseticker"] = True
    if s is not None:
        doc.update(
            offset=round(s.offset, 6),
            error=round(s.error, 6),
            delay=round(s.delay, 6),
            stratum=s.stratum,
            ref_id=s.ref_id,
            leap=_LEAP[s.leap],
            root_distance=round(s.root_distance, 6),
        )
        if best:
            doc["best"] = True
    doc["samples"] = len(m.samples)
    doc["rejected"] = list(m.rejected)
    return doc


def _json(report: ClockReport) -> None:
    from pyjob.core.backends.protocol import SKEW_LIMIT
    from pyjob.core.clockcheck import impact

    from .render import echo_json

    best = report.best
    wrong = report.falsetickers
    doc: dict[str, Any] = {
        "status": report.status,
        "limit": round(report.limit, 6),
        "limit_reason": report.limit_reason,
        "offset": None if best is None else round(best.offset, 6),
        "error": None if best is None else round(best.error, 6),
        "server": None if best is None else best.server,
        "impact": None if best is None else impact(best.offset).name,
        "advice": None if best is None else impact(best.offset).advice,
        "problems": report.over(),
        "unknown": report.unknown(),
        "servers": [
            _measurement_doc(m, m.best is not None and m.best is best, m.server in wrong)
            for m in report.servers
        ],
    }
    if report.peers:
        skew = report.skew
        doc["peers"] = [_measurement_doc(m) for m in report.peers]
        skew_limit = report.skew_limit
        doc["skew"] = (
            None
            if skew is None
            else {
                "value": round(skew.value, 6),
                "error": round(skew.error, 6),
                "between": list(skew.between),
                "limit": round(skew_limit, 6),
                "impact": impact(skew.value).name,
            }
        )
    if report.backend_url is not None:
        b = report.backend
        doc["backend"] = {
            "url": report.backend_url,
            "offset": None if b is None else round(b.offset, 6),
            "error": None if b is None else round(b.error, 6),
            "impact": None if b is None else impact(b.offset).name,
            # claims hold (no tick runs twice, none refused) only within this skew
            "skew_limit": SKEW_LIMIT,
            "within_skew_limit": None if b is None else abs(b.offset) <= SKEW_LIMIT,
        }
    if report.kernel is not None:
        k = report.kernel
        doc["kernel"] = {
            "synchronised": k.synchronised,
            "state": k.state,
            "est_error": k.est_error,
            "max_error": k.max_error,
        }
    echo_json(doc)


def _row(kind: str, m: Measurement, best: bool, wrong: bool = False) -> list[str]:
    s = m.best
    if s is None:
        why = m.rejected[-1] if m.rejected else "no samples"
        return [m.server, kind, "-", "-", "-", "-", "-", "-", f"unusable: {why}"]
    note = f"{len(m.samples)}/{len(m.samples) + len(m.rejected)} samples"
    if m.rejected:
        note += f"; rejected: {m.rejected[-1]}"
    if best:
        note = "best; " + note
    if wrong:
        note = "falseticker: disagrees with the other servers; " + note
    return [
        m.server,
        kind,
        _s(s.offset, sign=True),
        _s(s.error),
        _s(s.delay),
        str(s.stratum),
        s.ref_id,
        _LEAP[s.leap],
        note,
    ]


def _table(report: ClockReport) -> None:
    from pyjob.core.clockcheck import impact
    from pyjob.core.durations import format_seconds

    from .render import table

    env = get_env()
    best = report.best
    wrong = report.falsetickers
    rows = [_row("server", m, m.best is best, m.server in wrong) for m in report.servers]
    rows += [_row("peer", m, False) for m in report.peers]
    if report.backend_url is not None:
        b = report.backend
        if b is None:
            rows.append([report.backend_url, "backend", "-", "-", "-", "-", "-", "-", "no clock"])
        else:
            rows.append(
                [report.backend_url, "backend", _s(b.offset, True), _s(b.error)] + ["-"] * 4 + [""]
            )
    table(
        env,
        ["Source", "Kind", "Offset", "±Error", "Delay", "Stratum", "Ref ID", "Leap", "Note"],
        rows,
    )
    lines: list[tuple[str, str]] = []
    if best is not None:
        cls = impact(best.offset)
        within = "over" if abs(best.offset) > report.limit else "within"
        lines.append(
            (
                "Offset",
                f"{_s(best.offset, True)} ±{_s(best.error)} ({best.server}): {cls.name}, "
                f"{within} {format_seconds(report.limit)} ({report.limit_reason})",
            )
        )
        if cls.advice:
            lines.append(("Advice", cls.advice))
    skew = report.skew
    if skew is not None:
        limit = report.skew_limit
        within = "over" if skew.value > limit else "within"
        lines.append(
            (
                "Skew",
                f"{_s(skew.value)} ±{_s(skew.error)} between {skew.between[0]} and "
                f"{skew.between[1]}: {impact(skew.value).name}, {within} {format_seconds(limit)}",
            )
        )
    k = report.kernel
    if k is not None:
        text = (
            f"synchronised, estimated error {_s(k.est_error)}"
            if k.synchronised
            else f"not synchronised ({k.state}); no NTP daemon disciplines this clock"
        )
        lines.append(("Kernel", text))
    for problem in report.unknown():
        lines.append(("Unknown", problem))
    status = {"ok": "OK", "over": "OVER LIMIT", "unknown": "UNKNOWN"}[report.status]
    lines.append(("Verdict", status + "".join(f"; {p}" for p in report.over())))
    for key, value in lines:
        click.echo(f"{key + ':':<9}{value}")


def _nagios(report: ClockReport, warn: float, crit: float) -> ExitCode:
    """monitoring-plugins' check_ntp_time line: `NTP OK: Offset 0.0012 secs|offset=...`."""
    best = report.best
    if best is None:
        click.echo(f"NTP UNKNOWN: {report.unknown()[0]}")
        return ExitCode.CLOCK_UNMEASURED

    def level(value: float) -> int:
        return 2 if abs(value) > crit else 1 if abs(value) > warn else 0

    state = level(best.offset)
    text = f"Offset {_secs(best.offset)} secs"
    perf = f"offset={best.offset:.6f}s;{warn:.6f};{crit:.6f};"
    skew = report.skew
    if skew is not None:
        state = max(state, level(skew.value))
        text += f", skew {_secs(skew.value)} secs"
        perf += f" skew={skew.value:.6f}s;{warn:.6f};{crit:.6f};"
    if report.backend is not None:
        state = max(state, level(report.backend.offset))
        text += f", backend {_secs(report.backend.offset)} secs"
        perf += f" backend={report.backend.offset:.6f}s;{warn:.6f};{crit:.6f};"
    unknown = report.unknown()
    if unknown and state == 0:
        click.echo(f"NTP UNKNOWN: {text}; {unknown[0]}|{perf}")
        return ExitCode.CLOCK_UNMEASURED
    name = ("OK", "WARNING", "CRITICAL")[state]
    click.echo(f"NTP {name}: {text}|{perf}")
    return ExitCode(state)

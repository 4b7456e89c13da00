"""Click parameter types and the schedule options every schedule-taking command shares.

Validation happens at the edge (a ParamType's ``convert`` calls ``self.fail``), and every type
calls the same core parser the schedule text goes through, so errors read the same everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pyjob.core.durations import parse_duration
from pyjob.core.errors import InputError

if TYPE_CHECKING:
    from datetime import datetime

    from pyjob.core.parts import Parts
    from pyjob.core.rules import Spec

    # Click 8.4 made ParamType generic in the value it converts to; the Clicks before it, which
    # pyjob also runs with, cannot be subscripted at run time.
    IntParamType = click.ParamType[int]
    StrParamType = click.ParamType[str]
else:
    IntParamType = StrParamType = click.ParamType

from .env import get_env

F = TypeVar("F", bound=Callable[..., Any])


class DurationType(IntParamType):
    name = "duration"

    def __init__(self, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value), allow_zero=self.allow_zero)
        except InputError as e:
            self.fail(e.message, param, ctx)


class ZoneType(StrParamType):
    name = "zone"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from pyjob.core.zones import get_zone

        try:
            get_zone(str(value))
        except InputError as e:
            self.fail(e.message, param, ctx)
        return str(value).strip()

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[Any]:
        from click.shell_completion import CompletionItem
        from pyjob.core.zones import zone_names

        return [CompletionItem(n) for n in zone_names() if n.startswith(incomplete)]


class LockURLType(StrParamType):
    """A lock backend URL; completes the schemes pyjob supports."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from pyjob.core.backends.urls import check_lock_url

        try:
            check_lock_url(str(value))  # as a jobs file's lock key is checked
        except InputError as e:
            self.fail(e.message, param, ctx)
        return str(value)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[Any]:
        from click.shell_completion import CompletionItem
        from pyjob.core.backends import COMPLETIONS

        for scheme in ("file:", "nfs:"):
            if incomplete.startswith(scheme):
                return complete_directory_url(scheme, incomplete)
        return [
            CompletionItem(u, type="nospace" if u.endswith((":", "/")) else "plain")
            for u in COMPLETIONS
            if u.startswith(incomplete)
        ]


class HttpURLType(StrParamType):
    """An http:// or https:// URL (--ping)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from pyjob.core.pings import url_problem

        problem = url_problem(str(value))
        if problem:
            self.fail(f"'{_shown(str(value))}' {problem}", param, ctx)
        return str(value)


class NtpServerType(StrParamType):
    """HOST, HOST:PORT or [IPv6]:PORT; a comma-separated list is split (PYJOB_NTP_SERVERS)."""

    name = "server"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from pyjob.core.ntp import parse_server

        items = [v.strip() for v in str(value).split(",") if v.strip()]
        for item in items:
            try:
                parse_server(item)
            except InputError as e:
                self.fail(e.message, param, ctx)
        return ",".join(items)


def _shown(text: str, limit: int = 120) -> str:
    """``text`` for a one-line message: escaped, and cut when long."""
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


class AsciiIntRange(click.IntRange):
    """An integer written in ASCII digits: Python's int() also reads '٣' (Arabic-Indic three)
    and '1_000', which no one means on a command line."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            self.fail(f"{_shown(value)!r} is not a whole number in digits 0-9", param, ctx)
        return super().convert(value, param, ctx)


def jobs_file_option(help_text: str) -> Callable[[F], F]:
    """--file PATH: a crontab or TOML jobs file (run, next and validate take one)."""
    return click.option(
        "--file",
        "jobs_file",
        type=click.Path(dir_okay=False),
        metavar="PATH",
        help=help_text,
    )


# --------------------------------------------------------------------------------------------
# The job's identity: --name, --shell and -- CMD [ARGS]... (run, next, validate)

_AFTER_DASHES = "pyjob.job-command"
_DASHES = "pyjob.dashes-given"


class CommandAfterDashes(click.Command):
    """A command whose job command is everything after the first ``--``, so that it can follow
    positional arguments of the command's own: ``pyjob next EXPR -- CMD``, ``pyjob validate
    EXPR... -- CMD``, ``pyjob run SCHEDULE -- CMD``."""

    # run: without ``--``, every positional is the command (``pyjob run --every 5m ./x -v``).
    only_with_dashes = False

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        tail: tuple[str, ...] = ()
        if "--" in args:
            i = args.index("--")
            args, tail = args[:i], tuple(args[i + 1 :])
            # The job command is cut off already: options may follow the schedule words
            # (`pyjob run "0 9 * * *" --tz Europe/Berlin -- ./report`).
            ctx.allow_interspersed_args = True
            ctx.meta[_DASHES] = True  # TAB now completes the command (complete_schedule)
        elif self.only_with_dashes:
            return super().parse_args(ctx, args)
        ctx.meta[f"{_AFTER_DASHES}.{self.name}"] = tail
        return super().parse_args(ctx, args)


class RunCommand(CommandAfterDashes):
    only_with_dashes = True


class ScheduleBeforeDashes(click.Argument):
    """``pyjob run [SCHEDULE] -- CMD``: the words before ``--`` are the schedule (joined, so
    that an unquoted ``every 5m`` works). Without ``--`` there is no such argument: every
    positional is the command."""

    def _key(self, ctx: click.Context) -> str:
        return f"{_AFTER_DASHES}.{ctx.command.name}"

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        if self._key(ctx) in ctx.meta:
            super().add_to_parser(parser, ctx)

    def consume_value(self, ctx: click.Context, opts: Any) -> tuple[Any, Any]:
        from click.core import ParameterSource

        if self._key(ctx) not in ctx.meta:
            return (), ParameterSource.DEFAULT
        return super().consume_value(ctx, opts)


class JobCommandArgument(click.Argument):
    """``-- CMD [ARGS]...``: taken from after ``--`` by a CommandAfterDashes, else parsed as a
    plain variadic argument."""

    def _key(self, ctx: click.Context) -> str:
        return f"{_AFTER_DASHES}.{ctx.command.name}"

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        if self._key(ctx) not in ctx.meta:
            super().add_to_parser(parser, ctx)

    def consume_value(self, ctx: click.Context, opts: Any) -> tuple[Any, Any]:
        from click.core import ParameterSource

        if self._key(ctx) in ctx.meta:
            return ctx.meta[self._key(ctx)], ParameterSource.COMMANDLINE
        return super().consume_value(ctx, opts)


def job_identity_options(f: F) -> F:
    """--name, --shell and ``-- CMD [ARGS]...``: what makes a job's id (core
    ``job_identity``), shared by run, next and validate so all three see the same job. The
    function receives ``name``, ``shell`` and ``command``."""
    f = click.argument(
        "command",
        nargs=-1,
        required=False,
        metavar="[-- CMD [ARGS]...]",
        cls=JobCommandArgument,
        shell_complete=complete_command,
    )(f)
    f = click.option(
        "--shell",
        is_flag=True,
        default=False,
        help="Run the command through /bin/sh -c (default: executed directly); part of the job id.",
    )(f)
    f = click.option(
        "--name",
        metavar="JOB",
        help="Job id: what claims are keyed by and what seeds H fields and random intervals "
        "(default: a hash of the normalized schedule, --shell and the command, so the same "
        "one-liner on several hosts is one job).",
    )(f)
    return f


def server_list(values: tuple[str, ...] | None) -> list[str]:
    """The servers of a repeatable NTP server option, commas split, order kept."""
    return [item for v in values or () for item in v.split(",") if item]


SCHEDULE_STARTS = (
    "every ",
    "daily at ",
    "weekly on ",
    "monthly on ",
    "once at ",
    "CRON_TZ=",
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
    "@every ",
)


def complete_schedule(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """TAB on a schedule argument offers the schedule kinds (a cron expression is typed as is).
    A start of several words stays one argument: bash gets it with its opening quote
    (``'weekly on ``); zsh and fish escape its spaces themselves."""
    import os

    from click.shell_completion import CompletionItem

    if ctx.meta.get(_DASHES):  # Click offers the first argument; after -- it is the command's
        command = next(p for p in ctx.command.params if p.name == "command")
        return complete_command(ctx, command, incomplete)
    quote = "'" if os.environ.get("_PYJOB_COMPLETE", "bash").startswith("bash") else ""
    out = []
    for k in SCHEDULE_STARTS:
        if not k.startswith(incomplete):
            continue
        if " " in k:
            out.append(CompletionItem(quote + k, type="nospace"))
        else:
            out.append(CompletionItem(k, type="nospace" if k.endswith("=") else "plain"))
    return out


def complete_command(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """TAB after ``--``: the programs on PATH for the command's first word (or a path, when it
    has a /), then files for its arguments."""
    import os

    from click.shell_completion import CompletionItem

    if ctx.params.get(param.name or "") or "/" in incomplete or incomplete.startswith("."):
        return [CompletionItem(incomplete, type="file")]
    names: set[str] = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        try:
            entries = os.listdir(folder or ".")
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(incomplete) and os.access(os.path.join(folder, entry), os.X_OK):
                names.add(entry)
    return [CompletionItem(n) for n in sorted(names)]


def complete_directory_url(scheme: str, incomplete: str) -> list[Any]:
    """``file:/tm`` -> ``file:/tmp/``: the directories under the path typed after ``scheme``."""
    import os

    from click.shell_completion import CompletionItem

    path = incomplete[len(scheme) :]
    head, _, tail = path.rpartition("/")
    folder = (head or "/") if path.startswith("/") else (head or ".")
    try:
        entries = sorted(os.listdir(os.path.expanduser(folder)))
    except OSError:
        return []
    out = []
    for entry in entries:
        full = os.path.join(os.path.expanduser(folder), entry)
        if entry.startswith(tail) and os.path.isdir(full) and (tail or not entry.startswith(".")):
            shown = f"{head}/{entry}/" if head or path.startswith("/") else f"{entry}/"
            out.append(CompletionItem(f"{scheme}{shown}", type="nospace"))
    return out


DURATION = DurationType()
DURATION_OR_ZERO = DurationType(allow_zero=True)
ZONE = ZoneType()
LOCK_URL = LockURLType()
NTP_SERVER = NtpServerType()


def schedule_flags_given(kw: dict[str, Any], also: tuple[str, ...] = ()) -> list[str]:
    """The schedule kinds (and the ``also`` options) set in ``kw``: for commands that take the
    schedule from a file instead."""
    from pyjob.core.schedule_options import KINDS

    return [f"--{name}" for name in (*KINDS, *also) if kw.get(name)]


def schedule_options(f: F) -> F:
    """The schedule options of DESIGN §2, shared by run, next and validate."""
    options = [
        click.option(
            "--cron", metavar="EXPR", help="Cron expression (5 fields, or 6 with seconds first)."
        ),
        click.option(
            "--every",
            metavar="DURATION",
            help="Fixed interval like 5m or 1h30m, or a random one MIN..MAX like 1m..5m.",
        ),
        click.option(
            "--align",
            is_flag=True,
            default=False,
            help="With --every: fire on grid boundaries, the same on every host. An interval "
            "that divides 24h is on the local wall clock (--every 6h --align: 00:00, 06:00, 12:00, "
            "18:00 local, DST days included, like cron); others count from the Unix epoch.",
        ),
        click.option(
            "--offset",
            metavar="DURATION",
            help="With --every --align: shift the grid, e.g. --every 1h --align --offset 15m.",
        ),
        click.option("--daily", is_flag=True, default=False, help="Every day at the --at times."),
        click.option(
            "--weekly",
            metavar="DAYS",
            help="On these weekdays at the --at times, e.g. MON,FRI or MON-FRI.",
        ),
        click.option(
            "--monthly",
            metavar="DAYS",
            help="On these days of the month at the --at times; negative counts from the end "
            "(-1 is the last day). A day a month lacks is skipped that month.",
        ),
        click.option(
            "--at",
            "at",
            metavar="HH:MM[:SS]",
            multiple=True,
            help="Times of day for --daily/--weekly/--monthly (repeatable, or comma-separated). "
            "Default 00:00.",
        ),
        click.option(
            "--interval",
            metavar="N",
            help="Every N days/weeks/months, counted from 1970-01-01 (weeks from Monday "
            "1970-01-05), so all hosts agree which are on.",
        ),
        click.option(
            "--once",
            metavar="DATETIME",
            multiple=True,
            help="Run once at this ISO 8601 date-time (repeatable); naive means the job's zone.",
        ),
        click.option(
            "--tz",
            type=ZONE,
            metavar="ZONE",
            help="The job's time zone (IANA name). Default: CRON_TZ= in the expression, else "
            "$PYJOB_TZ, else the system zone.",
        ),
        click.option("--start-at", metavar="DATETIME", help="No tick before this instant."),
        click.option(
            "--stop-at",
            metavar="DATETIME",
            help="No tick after this instant (a tick may equal it).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def schedule_parts(expr: str | None, kw: dict[str, Any]) -> tuple[Parts, str | None]:
    """Parts from a positional expression and/or the schedule options; the --tz override."""
    from pyjob.core.grammar import split
    from pyjob.core.schedule_options import KINDS, add_modifiers, kind_parts

    given = []
    if expr is not None:
        given.append("EXPR")
    for name in KINDS:
        value = kw.get(name)
        if value:
            given.append(f"--{name}")
    if len(given) > 1:
        raise click.UsageError(
            f"conflicting schedules: {' and '.join(given)} (give exactly one schedule)"
        )
    if not given:
        raise click.UsageError(
            "no schedule: give an expression like '0 * * * *' or 'every 5m', or one of "
            "--cron, --every, --daily, --weekly, --monthly, --once"
        )
    if expr is not None:
        parts = split(expr)
    else:
        kind = given[0].removeprefix("--")
        parts = kind_parts(kind, kw[kind], given[0])
    add_modifiers(parts, {k.replace("_", "-"): v for k, v in kw.items()}, flag="--")
    return parts, kw.get("tz")


def build_spec(
    expr: str | None, kw: dict[str, Any], from_text: str | None = None
) -> tuple[Spec, datetime]:
    """The schedule and the reference instant (``--from``, read in the job's zone; else now)."""
    from pyjob.core.grammar import build
    from pyjob.core.timeparse import parse_datetime
    from pyjob.core.zones import get_zone, job_zone_name

    env = get_env()
    parts, tz = schedule_parts(expr, kw)
    own = parts.prefix_tz or parts.tz
    if tz and own and tz.strip() != own.strip():
        said = f"CRON_TZ={own}" if parts.prefix_tz else f"tz {own}"
        click.echo(f"warning: --tz {tz} overrides {said} of the schedule", err=True)
    now = env.clock.now()
    if from_text is not None:
        zone = get_zone(job_zone_name(tz, parts.tz or parts.prefix_tz, env.environ))
        try:
            now = parse_datetime(from_text, zone, now)
        except InputError as e:
            raise click.BadParameter(e.message, param_hint="'--from'") from None
    return build(parts, tz=tz, env=env.environ, now=now), now


class CheckedText(StrParamType):
    """Text checked by the core's parser of a setting kind (factor, codes)."""

    name = "text"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from pyjob.core.settings import parse_codes, parse_factor

        try:
            (parse_factor if self.kind == "factor" else parse_codes)(str(value))
        except InputError as e:
            self.fail(e.message, param, ctx)
        return str(value)


def _setting_type(setting: Any) -> Any:
    kind = setting.kind
    if kind == "duration":
        return DURATION
    if kind == "duration0":
        return DURATION_OR_ZERO
    if kind == "count":
        return AsciiIntRange(1, 10**6)
    if kind == "count0":
        return AsciiIntRange(0, 10**6)
    if kind in ("factor", "codes"):
        return CheckedText(kind)
    if kind == "choice":
        return click.Choice([c.value for c in setting.choices])
    if kind == "lock":
        return LOCK_URL
    if kind == "server":
        return NTP_SERVER
    if kind == "url":
        return HttpURLType()
    return click.STRING


def settings_options(f: F) -> F:
    """The options of `pyjob run`, one per setting of pyjob.core.settings.SETTINGS (the only
    place they are declared: name, kind, default, choices and help come from there)."""
    from pyjob.core.settings import SETTINGS

    for s in reversed(SETTINGS):
        kwargs: dict[str, Any] = {"help": s.help, "envvar": s.envvar}
        if s.kind == "flag":
            kwargs.update(is_flag=True, default=bool(s.default))
        else:
            kwargs.update(type=_setting_type(s), default=s.default, metavar=s.metavar)
            if s.default is not None:
                kwargs["show_default"] = True
            if s.kind == "server":
                kwargs["multiple"] = True
        if s.kind == "choice":
            kwargs.pop("metavar")
        f = click.option(f"--{s.name}", s.field, **kwargs)(f)
    return f


def catch_up_option(f: F) -> F:
    """--catch-up WINDOW on next and validate: run's setting, shown with the schedule."""
    return click.option(
        "--catch-up",
        "catch_up",
        type=DURATION,
        metavar="DURATION",
        help="Show the schedule with run's --catch-up: a tick the whole fleet missed within "
        "this window of now runs once when an instance comes back.",
    )(f)


def catch_up_text(us: int | None) -> str | None:
    """How next and validate state a --catch-up window (microseconds), or None."""
    if us is None:
        return None
    from pyjob.core.durations import format_duration

    return (
        f"a tick the fleet missed within {format_duration(us)} of now runs once when an "
        "instance starts or the backend answers again"
    )

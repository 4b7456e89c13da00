"""Jobs files: many jobs for one `pyjob run --file` process.

Two formats, chosen by the file name:

- a crontab (any name but ``*.toml``): lines of ``SCHEDULE COMMAND``, where SCHEDULE is 5 cron
  fields, 6 with seconds first, or a descriptor (``@hourly``, ``@every 5m``, ...) and COMMAND is the
  rest of the line, run by ``/bin/sh -c`` (``%`` is not special, as in supercronic). ``KEY=VALUE``
  lines set the environment of the jobs below them; ``CRON_TZ=ZONE`` sets their zone; ``SHELL``
  is the shell that runs their lines (Vixie cron's habit; ``TZ`` and ``MAILTO`` are only passed to
  the commands: pyjob sends no mail); ``#`` starts a comment line. A system crontab
  (``/etc/crontab``, ``/etc/cron.d/*``) has a user field after the schedule; so does a line copied
  from one (its first word a user and no command): the job runs as that user when pyjob runs as
  root or as that user, and is an error otherwise. A line is read as 6 fields when its sixth
  word is a valid day-of-week field (a command rarely is), else as 5.
- TOML (``*.toml``): a ``[defaults]`` table and one ``[jobs.NAME]`` table per job, whose keys are
  `pyjob run`'s long options without the dashes (``every``, ``align``, ``cron``, ``tz``,
  ``timeout``, ``overlap``, ``lock``, ...), plus ``command = [argv...]`` or ``shell = "line"`` and
  ``env = {KEY = "value"}``. Unknown keys are errors.

Every problem of a file is collected and reported together, each with ``file:line`` (crontab) or
the job's table (TOML). A job's identity is its TOML name, else derived from its schedule and
command as for a one-liner (DESIGN §1), so the same file on several hosts coordinates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .durations import parse_duration
from .errors import InputError
from .process import Command
from .schedule import Parts, Spec, build, derive_job_id, split
from .schedule_options import KINDS, add_modifiers, kind_parts
from .settings import JOB_SETTINGS, Setting, problem


class JobsFileError(InputError):
    """A jobs file with problems: ``problems`` lists each one, located."""

    def __init__(self, path: str, problems: list[str]) -> None:
        first = problems[0] if problems else "empty"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)
        self.path = path
        self.problems = problems


# Options a job may set, with their kind: the long options of `pyjob run`.
SCHEDULE_KEYS = {
    "schedule": str,
    "cron": str,
    "every": str,
    "align": bool,
    "offset": str,
    "daily": bool,
    "weekly": str,
    "monthly": str,
    "at": list,
    "interval": int,
    "once": list,
    "tz": str,
    "start-at": str,
    "stop-at": str,
}
# The run settings a job may set: every job-scope setting of pyjob.core.settings (declared there).
RUN_KEYS: dict[str, Setting] = {s.name: s for s in JOB_SETTINGS}
JOB_KEYS = {"command", "shell", "env", "name"}
_KINDS = ("schedule", *KINDS)


@dataclass(frozen=True, slots=True)
class JobDef:
    """One job of a file, validated."""

    name: str
    where: str  # file:line or file[jobs.NAME], for messages
    spec: Spec
    command: Command
    env: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # RUN_KEYS values, converted (durations in µs)
    line: str = ""  # a crontab job's command as written (its readable name comes from it)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.options)

    def fingerprint(self) -> tuple[Any, ...]:
        """Equal for two definitions that would run the same way (a reload keeps such a job)."""
        return (self.name, self.spec.identity, self.command, self.env, self.options)


@dataclass
class _Ctx:
    path: str
    env: Mapping[str, str]
    now: datetime
    problems: list[str] = field(default_factory=list)
    # Looked up once per distinct value while one file loads: a crontab of thousands of lines
    # names the same few users and programs, and each lookup reads /etc/passwd or walks PATH.
    users: dict[str, Any] = field(default_factory=dict)  # name -> pwd entry, or None
    on_path: dict[str, bool] = field(default_factory=dict)  # program -> found on PATH

    def user(self, name: str) -> Any:
        """The passwd entry of ``name``, or None when there is no such user."""
        if name not in self.users:
            import pwd

            try:
                self.users[name] = pwd.getpwnam(name)
            except KeyError:
                self.users[name] = None
        return self.users[name]

    zone_env: dict[str, str] | None = None  # what build() reads of env: the default zone, once

    def zones(self) -> dict[str, str]:
        """``env`` as build() reads it (PYJOB_TZ, else the system zone), the system's zone found
        once per file rather than read from /etc/timezone for each line."""
        if self.zone_env is None:
            from .zones import system_zone_name

            self.zone_env = {"PYJOB_TZ": self.env.get("PYJOB_TZ") or system_zone_name(self.env)}
        return self.zone_env

    def found(self, program: str) -> bool:
        """Whether ``program`` is a command on the file's PATH."""
        if program not in self.on_path:
            import shutil

            self.on_path[program] = shutil.which(program, path=self.env.get("PATH")) is not None
        return self.on_path[program]


def load(
    path: str | Path, env: Mapping[str, str] | None = None, now: datetime | None = None
) -> list[JobDef]:
    """Read and validate a jobs file; JobsFileError lists every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise JobsFileError(str(p), [f"{p}: cannot read: {reason}"]) from e
    if p.suffix == ".toml":
        return parse_toml(text, str(p), env, now)
    return parse_crontab(text, str(p), env, now)


def _finish(ctx: _Ctx, jobs: list[JobDef]) -> list[JobDef]:
    seen: dict[str, str] = {}
    for job in jobs:
        if job.name in seen:
            ctx.problems.append(
                f"{job.where}: the same job as {seen[job.name]} (same schedule and command): "
                "give one of them a different command, or remove it"
            )
        seen.setdefault(job.name, job.where)
    if not jobs and not ctx.problems:
        ctx.problems.append(f"{ctx.path}: no jobs")
    if ctx.problems:
        raise JobsFileError(ctx.path, ctx.problems)
    return jobs


def _build(ctx: _Ctx, where: str, parts: Parts, tz: str | None) -> Spec | None:
    try:
        return build(parts, tz=tz, env=ctx.zones(), now=ctx.now)
    except InputError as e:
        ctx.problems.append(f"{where}: {e.message}")
        return None


# ---------------------------------------------------------------------------------- crontab

_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_crontab(
    text: str, path: str, env: Mapping[str, str] | None = None, now: datetime | None = None
) -> list[JobDef]:
    from .clock import SystemClock

    ctx = _Ctx(path, env or {}, now or SystemClock().now())
    jobs: list[JobDef] = []
    job_env: dict[str, str] = {}
    zone: str | None = None
    system = _is_system_crontab(path)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line or line.startswith("#"):
            continue
        assignment = _ENV_LINE.match(line)
        if assignment:
            key, value = assignment.group(1), _unquote(assignment.group(2))
            if key == "CRON_TZ":
                zone = value or None
                if (
                    zone is not None
                    and _build(ctx, where, Parts(kind="every", value="1h"), zone) is None
                ):
                    zone = None  # reported once; the jobs below are checked in the default zone
            else:
                bad = _nul_problem(value)
                if bad:
                    ctx.problems.append(f"{where}: the value of {key} {bad}")
                    continue
                job_env[key] = value
            continue
        if "\0" in line:
            ctx.problems.append(f"{where}: the line {_nul_problem(line)}")
            continue
        schedule, command = _split_line(line)
        try:
            parts = split(schedule)
        except InputError as e:
            ctx.problems.append(f"{where}: {e.message}")
            continue
        spec = _build(ctx, where, parts, None if parts.prefix_tz else zone)
        if spec is None:
            continue
        if not command:
            ctx.problems.append(f"{where}: no command after the schedule '{schedule}'")
            continue
        user, command = _user_field(ctx, where, command, system)
        if user is _BAD or not command:
            if not command:
                ctx.problems.append(f"{where}: no command after the user field")
            continue
        shell = job_env.get("SHELL", "/bin/sh") or "/bin/sh"
        argv = ["--shell", command]
        if shell != "/bin/sh":  # Vixie cron runs the line with $SHELL
            argv.append(f"SHELL={shell}")
        if user is not None:
            argv.append(f"user={user}")
        run_env = dict(job_env)
        if user is not None:  # as cron sets them for the user's jobs
            entry = ctx.user(user)
            run_env.update(HOME=entry.pw_dir, LOGNAME=user, USER=user)
        jobs.append(
            JobDef(
                name=derive_job_id(spec, argv),
                where=where,
                spec=spec,
                command=_crontab_command(command, shell, user),
                env=tuple(sorted(run_env.items())),
                line=command,
            )
        )
    return _finish(ctx, _readable_names(jobs))


_BAD = "\0bad"  # _user_field: a problem was reported


def _is_system_crontab(path: str) -> bool:
    """/etc/crontab and /etc/cron.d/* have a user field between the schedule and the command."""
    p = Path(path).absolute()
    return str(p) == "/etc/crontab" or str(p.parent) == "/etc/cron.d"


def _user_field(ctx: _Ctx, where: str, command: str, system: bool) -> tuple[str | None, str]:
    """(the user a line runs as, or None; its command). A system crontab line always names a
    user; in any other file a first word that is a user and no command on PATH is read as one
    too (a line copied from /etc/crontab), rather than run as a command that cannot exist."""
    import os
    import pwd

    first, _, rest = command.partition(" ")
    rest = rest.strip()
    is_user = ctx.user(first) is not None
    if not system and (not is_user or "/" in first or ctx.found(first)):
        return None, command
    if not is_user:
        ctx.problems.append(
            f"{where}: '{first}' is not a user: a line of a system crontab ({ctx.path}) is "
            "SCHEDULE USER COMMAND"
        )
        return _BAD, command
    me = pwd.getpwuid(os.geteuid()).pw_name
    if first == me:
        return None, rest
    if os.geteuid() != 0:
        ctx.problems.append(
            f"{where}: the job runs as user '{first}' (the user field of a system crontab), but "
            f"pyjob runs as '{me}': only root can run a job as another user; drop '{first}' to "
            f"run it as {me}"
        )
        return _BAD, rest
    return first, rest


def _crontab_command(line: str, shell: str, user: str | None) -> Command:
    """How a crontab line runs: by $SHELL -c (default /bin/sh), as ``user`` when given (pyjob
    runs as root: runuser switches to the user, as cron does, without asking a password)."""
    if user is not None:
        return Command(("runuser", "-u", user, "--", shell, "-c", line))
    if shell != "/bin/sh":
        return Command((shell, "-c", line))
    return Command((line,), shell=True)


_HEAD = 4096  # the characters of a crontab line in which its program's name is looked for
_QUOTING = frozenset("'\"\\")  # what makes shlex.split differ from a split at its whitespace
_SHLEX_SPACE = re.compile(r"[ \t\r\n]+")  # shlex's whitespace


def _program(command: str) -> str:
    """A short readable name from a shell line: its program's base name (after any leading
    ``KEY=value`` assignments), in letters, digits, ``.``, ``_`` and ``-``."""
    import shlex

    # The program is among the first words: only they are split, as shlex takes time quadratic
    # in the length of a word (a 1 MB line took 25 s to validate).
    head = command[:_HEAD]
    if _QUOTING.isdisjoint(head):  # no quotes or escapes: shlex would split at its whitespace
        words = _SHLEX_SPACE.split(head)
    else:
        try:
            words = shlex.split(head)
        except ValueError:
            words = head.split()
    words = [w for w in words if w] or ["job"]
    i = 0
    while i < len(words) - 1 and _ENV_LINE.match(words[i]):
        i += 1
    base = words[i].rstrip("/").rsplit("/", 1)[-1]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")[:40]
    return slug or "job"


def _readable_names(jobs: list[JobDef]) -> list[JobDef]:
    """Crontab jobs named after their program (``backup.sh``); where two jobs of the file share
    it, each gets a part of its hash (``backup.sh-5f0df2``), so every name stays unique, and the
    same on every host that reads the same file."""
    from dataclasses import replace

    slugs = [_program(j.line or j.command.argv[0]) for j in jobs]
    groups: dict[str, list[str]] = {}
    for j, slug in zip(jobs, slugs, strict=True):
        groups.setdefault(slug, []).append(j.name.removeprefix("job-"))
    # Six hex digits of the hash where they tell the group's jobs apart, else all twelve: with
    # thousands of jobs of one program, six collide (a 10,000-line crontab had four pairs).
    width = {
        slug: 6 if len({h[:6] for h in hashes}) == len(set(hashes)) else 12
        for slug, hashes in groups.items()
    }

    def named(j: JobDef, slug: str) -> str:
        if len(groups[slug]) == 1:
            return slug
        return f"{slug}-{j.name.removeprefix('job-')[: width[slug]]}"

    return [replace(j, name=named(j, slug)) for j, slug in zip(jobs, slugs, strict=True)]


_DOW = re.compile(
    r"^(\*|\?|H|[0-7]|SUN|MON|TUE|WED|THU|FRI|SAT)([-,/#LH()0-9*?]|SUN|MON|TUE|WED|THU|FRI|SAT)*$",
    re.IGNORECASE,
)


# The words that may follow '@every DURATION' in a crontab line, with the number of values each
# takes: they belong to the schedule, as in 'every 4s align' (a command named 'align' would
# otherwise run, unaligned).
_EVERY_WORDS = {"align": 0, "offset": 1}


def _split_line(line: str) -> tuple[str, str]:
    """(schedule text, command) of a crontab job line."""
    words = line.split()
    if words[0].startswith("@"):
        count = 2 if words[0].lower() == "@every" else 1
        if count == 2:  # '@every 4s align offset 1s CMD': the phrase's words, not the command
            while count < len(words) and words[count].lower() in _EVERY_WORDS:
                count += 1 + _EVERY_WORDS[words[count].lower()]
    elif len(words) >= 7 and _DOW.match(words[5]):
        count = 6
    else:
        count = 5
    pieces = line.split(None, count)
    return " ".join(pieces[:count]), (pieces[count].strip() if len(pieces) > count else "")


# ---------------------------------------------------------------------------------- TOML


def parse_toml(
    text: str, path: str, env: Mapping[str, str] | None = None, now: datetime | None = None
) -> list[JobDef]:
    import tomllib

    from .clock import SystemClock

    ctx = _Ctx(path, env or {}, now or SystemClock().now())
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise JobsFileError(path, [f"{path}: not valid TOML: {e}"]) from e
    except RecursionError as e:  # tomllib recurses once per level of nested arrays and tables
        raise JobsFileError(path, [f"{path}: not valid TOML: nested too deeply"]) from e
    for key in doc:
        if key not in ("defaults", "jobs"):
            ctx.problems.append(f"{path}: unknown table [{key}] (only [defaults] and [jobs.NAME])")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        ctx.problems.append(f"{path}: [defaults] must be a table")
        defaults = {}
    table = doc.get("jobs", {})
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        ctx.problems.append(f"{path}: jobs must be tables, like [jobs.backup]")
        table = {}
    _check_keys(ctx, f"{path}[defaults]", defaults, defaults=True)
    jobs: list[JobDef] = []
    for name, body in table.items():
        where = f"{path}[jobs.{name}]"
        if not _check_keys(ctx, where, body, defaults=False):
            continue
        merged = {**{k: v for k, v in defaults.items() if k != "env"}, **body}
        job_env = {**defaults.get("env", {}), **body.get("env", {})}
        job = _toml_job(ctx, where, str(name), merged, job_env)
        if job is not None:
            jobs.append(job)
    return _finish(ctx, jobs)


def _check_keys(ctx: _Ctx, where: str, body: dict[str, Any], defaults: bool) -> bool:
    ok = True
    allowed = set(SCHEDULE_KEYS) | set(RUN_KEYS) | {"env"} | (set() if defaults else JOB_KEYS)
    for key, value in body.items():
        norm = key.replace("_", "-")
        if norm not in allowed:
            if norm in JOB_KEYS:
                hint = " (a job's own key: put it in [jobs.NAME])"
            else:
                import difflib

                squashed = {k.replace("-", ""): k for k in allowed}
                close = squashed.get(norm.replace("-", "")) or next(
                    iter(difflib.get_close_matches(norm, sorted(allowed), n=1, cutoff=0.75)), None
                )
                hint = f" (did you mean '{close}'?)" if close else ""
            ctx.problems.append(f"{where}: unknown key '{key}'{hint}")
            ok = False
            continue
        problem = _type_problem(norm, value)
        if problem:
            ctx.problems.append(f"{where}: '{key}' {problem}")
            ok = False
    if not defaults:
        kinds = [k for k in _KINDS if k in {x.replace("_", "-") for x in body}]
        if "command" in body and "shell" in body:
            ctx.problems.append(f"{where}: give 'command' or 'shell', not both")
            ok = False
        elif "command" not in body and "shell" not in body:
            ctx.problems.append(f'{where}: no command: add command = [...] or shell = "..."')
            ok = False
        if len(kinds) > 1:
            ctx.problems.append(f"{where}: conflicting schedules: {' and '.join(kinds)}")
            ok = False
    return ok


def _type_problem(key: str, value: Any) -> str | None:
    """What is wrong with the type of ``value`` for ``key`` of a TOML job, or None."""
    if key == "command":
        return _command_problem(value)
    if key in ("shell", "name"):
        if not (isinstance(value, str) and value.strip()):
            return "must be a non-empty string"
        if key == "name" and not value.isprintable():
            return "must be printable, without newlines or control characters"
        return _nul_problem(value)
    if key == "env":
        if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            return 'must be a table of strings, like { KEY = "value" }'
        for name, text in value.items():
            bad = env_problem(name, text)
            if bad:
                return bad
        return None
    if key in RUN_KEYS:
        return problem(RUN_KEYS[key], value)
    return _schedule_value_problem(SCHEDULE_KEYS.get(key), value)


def _command_problem(value: Any) -> str | None:
    """``command`` is a list of arguments; a string gets the list it may have meant, and the
    ``shell`` key that takes a line."""
    if isinstance(value, str) and value.strip():
        import json
        import shlex

        try:
            if len(value) > _HEAD:  # shlex is quadratic; a hint this long helps no one
                raise ValueError(value)
            argv = ", ".join(json.dumps(w) for w in shlex.split(value))
        except ValueError:
            argv = '"./backup.sh", "--fast"'
        return (
            f"is a list of arguments, like command = [{argv}]; a string is a shell line: "
            f"write it as shell = {json.dumps(value)}"
        )
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        return 'must be a non-empty list of strings, like ["./backup.sh", "--fast"]'
    if not value[0]:
        return "starts with an empty program name"
    return next(filter(None, map(_nul_problem, value)), None)


def _nul_problem(text: str) -> str | None:
    """An argument or environment value cannot hold a NUL: the kernel takes them as C strings,
    and the spawn of every run would fail."""
    if "\0" in text:
        where = text.index("\0")
        return f"has a NUL character (\\0) at position {where}, which no command can take"
    return None


def env_problem(name: str, value: str) -> str | None:
    """Why ``name=value`` cannot be in a command's environment, or None."""
    shown = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    if not name:
        return "has an empty variable name"
    if "=" in name:
        return f"has a variable name with '=' in it ('{shown}'): a name ends at its first '='"
    if "\0" in name:
        return f"has a NUL character in the variable name '{shown}'"
    bad = _nul_problem(value)
    return f"value of {shown} {bad}" if bad else None


def _schedule_value_problem(kind: Any, value: Any) -> str | None:
    """``value`` against the type of a schedule key (SCHEDULE_KEYS), None for an unknown key."""
    if kind is bool and not isinstance(value, bool):
        return "must be true or false"
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        return "must be a whole number of at least 1"
    strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is list and not (isinstance(value, str) or strings):
        return "must be a string or a list of strings"
    if kind is str and not isinstance(value, str):
        return 'must be a string, like "5m"'
    return None


def _toml_job(
    ctx: _Ctx, where: str, name: str, body: dict[str, Any], job_env: dict[str, str]
) -> JobDef | None:
    get = {k.replace("_", "-"): v for k, v in body.items()}
    kind = next((k for k in _KINDS if k in get), None)
    if kind is None:
        ctx.problems.append(f"{where}: no schedule: add one of {', '.join(_KINDS)}")
        return None
    try:
        parts = split(get["schedule"]) if kind == "schedule" else kind_parts(kind, get[kind])
    except InputError as e:
        ctx.problems.append(f"{where}: {e.message}")
        return None
    if parts.kind is None:
        ctx.problems.append(f"{where}: daily = false is not a schedule")
        return None
    add_modifiers(parts, get)
    spec = _build(ctx, where, parts, get.get("tz"))
    if spec is None:
        return None
    if "command" in get:
        command = Command(tuple(get["command"]), shell=False)
    else:
        command = Command((get["shell"],), shell=True)
    options = []
    for key, setting in RUN_KEYS.items():
        if key in get:
            value = get[key]
            if setting.kind in ("duration", "duration0"):
                value = parse_duration(value, allow_zero=setting.kind == "duration0")
            options.append((key, value))
    return JobDef(
        name=str(get.get("name", name)),
        where=where,
        spec=spec,
        command=command,
        env=tuple(sorted(job_env.items())),
        options=tuple(options),
    )


__all__ = ["JobDef", "JobsFileError", "load", "parse_crontab", "parse_toml"]

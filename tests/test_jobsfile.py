"""Jobs files (issue #7): parsing, validate/next --file, and real `pyjob run --file` processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import Result
from hypothesis import given
from hypothesis import strategies as st
from pyjob.core.jobsfile import JobsFileError, parse_crontab, parse_toml
from pyjob.core.schedule import derive_job_id, parse

from .conftest import NOW, pyjob_exe
from .runproc import PyjobRun

ENV = {"TZ": "UTC"}


def crontab(text: str) -> list:  # type: ignore[type-arg]
    return parse_crontab(text, "jobs.cron", ENV, NOW)


def problems(text: str, toml: bool = False) -> list[str]:
    with pytest.raises(JobsFileError) as info:
        if toml:
            parse_toml(text, "jobs.toml", ENV, NOW)
        else:
            crontab(text)
    return info.value.problems


# ------------------------------------------------------------------------------ crontab


def test_crontab_lines() -> None:
    jobs = crontab(
        "# comment\n"
        "\n"
        "MAILTO=''\n"
        'GREETING="hello world"\n'
        "*/5 * * * * echo five fields\n"
        "*/2 * * * * * echo six  fields   kept\n"
        "CRON_TZ=Europe/Berlin\n"
        "0 3 * * MON-FRI ./nightly.sh --flag\n"
        "@hourly echo hourly\n"
        "@every 90s echo every\n"
        "30 2 * * * 5 is the sixth word of the command\n"
    )
    assert [str(j.spec) for j in jobs] == [
        "CRON_TZ=UTC */5 * * * *",
        "CRON_TZ=UTC */2 * * * * *",
        "CRON_TZ=Europe/Berlin 0 3 * * MON-FRI",
        "CRON_TZ=Europe/Berlin 0 * * * *",
        "every 1m30s",
        "CRON_TZ=Europe/Berlin 30 2 * * * 5",
    ]
    assert jobs[1].command.argv == ("echo six  fields   kept",) and jobs[1].command.shell
    assert dict(jobs[0].env) == {"MAILTO": "", "GREETING": "hello world"}
    assert [j.where for j in jobs] == [f"jobs.cron:{n}" for n in (5, 6, 8, 9, 10, 11)]


def test_a_sixth_word_that_is_not_a_weekday_starts_the_command() -> None:
    (job,) = crontab("0 * * * * echo hi there\n")
    assert str(job.spec) == "CRON_TZ=UTC 0 * * * *" and job.command.argv == ("echo hi there",)
    (job,) = crontab("0 * * * * MON echo monday\n")
    assert str(job.spec) == "CRON_TZ=UTC 0 * * * * MON"


def test_crontab_jobs_are_named_after_their_program_with_a_hash_only_where_shared(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "crontab"
    path.write_text(
        "*/5 * * * * /usr/bin/backup.sh --fast\n"
        "0 3 * * * ./backup.sh --full\n"
        "@hourly LC_ALL=C ./rotate-logs --keep 3\n"
    )
    fast = derive_job_id(
        parse("*/5 * * * *", env=ENV, now=NOW), ["--shell", "/usr/bin/backup.sh --fast"]
    )
    full = derive_job_id(parse("0 3 * * *", env=ENV, now=NOW), ["--shell", "./backup.sh --full"])
    result = invoke(["next", "--file", str(path), "-n", "3", "--format", "plain"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"2026-11-27T22:05:00+00:00 backup.sh-{fast[4:10]}",
        f"2026-11-27T22:10:00+00:00 backup.sh-{fast[4:10]}",
        f"2026-11-27T22:15:00+00:00 backup.sh-{fast[4:10]}",
    ]
    result = invoke(["validate", "--file", str(path)])
    assert [
        line.split(":")[1].strip() for line in result.stdout.splitlines() if line.startswith("ok")
    ] == [
        f"backup.sh-{fast[4:10]}",
        f"backup.sh-{full[4:10]}",
        "rotate-logs",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("61 * * * * x\n", ["jobs.cron:1: bad minute '61' (0-59)"]),
        ("* * * * *\n", ["jobs.cron:1: no command after the schedule '* * * * *'"]),
        (
            "# header\nbad line\n",
            [
                "jobs.cron:2: a cron expression has 5 fields (minute hour day-of-month month "
                "day-of-week) or 6 with seconds first; got 2 in 'bad line'"
            ],
        ),
        (
            "CRON_TZ=Mars/Base\n* * * * * x\n",
            [
                "jobs.cron:1: unknown time zone 'Mars/Base' (use an IANA name like "
                "Europe/Berlin or UTC)"
            ],
        ),
        (
            "* * * * * x\n\n* * * * * x\n",
            [
                "jobs.cron:3: the same job as jobs.cron:1 (same schedule and command): give one "
                "of them a different command, or remove it"
            ],
        ),
        ("# only comments\n", ["jobs.cron: no jobs"]),
        (
            "0 0 31 2 * x\n@every 0s y\n",
            [
                "jobs.cron:1: '0 0 31 2 *' can never fire: no date matches its day-of-month, "
                "month and day-of-week fields",
                "jobs.cron:2: zero duration '0s': must be positive",
            ],
        ),
    ],
)
def test_crontab_problems(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


# ------------------------------------------------------------------------------ TOML

GOOD_TOML = """
[defaults]
tz = "Europe/Berlin"
timeout = "30s"
overlap = "queue"
env = { STAGE = "prod", KEEP = "1" }

[jobs.backup]
every = "5m"
align = true
command = ["./backup.sh", "--fast"]

[jobs.report]
cron = "0 9 * * MON-FRI"
shell = "./report.sh | mail ops"
overlap = "skip"
misfire_grace = "0s"
env = { STAGE = "test" }

[jobs.monthly]
monthly = "-1"
at = ["23:00", "23:30"]
shell = "./close-books"
"""


def test_toml_jobs_defaults_and_env() -> None:
    backup, report, monthly = parse_toml(GOOD_TOML, "jobs.toml", ENV, NOW)
    assert backup.name == "backup" and str(backup.spec) == "every 5m align tz Europe/Berlin"
    assert backup.command.argv == ("./backup.sh", "--fast") and not backup.command.shell
    assert backup.settings == {"timeout": 30_000_000, "overlap": "queue"}
    assert dict(backup.env) == {"STAGE": "prod", "KEEP": "1"}
    assert str(report.spec) == "CRON_TZ=Europe/Berlin 0 9 * * MON-FRI"
    assert report.command.shell and report.command.argv == ("./report.sh | mail ops",)
    assert report.settings["overlap"] == "skip" and report.settings["misfire-grace"] == 0
    assert dict(report.env) == {"STAGE": "test", "KEEP": "1"}
    assert str(monthly.spec).startswith("monthly on -1 at 23:00,23:30")


def test_toml_problems_are_all_reported() -> None:
    text = """
[defaults]
command = ["x"]
colour = "blue"

[jobs.a]
every = "5m"
align = "yes"
shell = "true"

[jobs.b]
cron = "* * *"
shell = "true"

[jobs.c]
every = "1m"

[jobs.d]
every = "1m"
daily = true
command = ["a"]
timeout = "soon"

[jobs.e]
shell = "true"
"""
    assert problems(text, toml=True) == [
        "jobs.toml[defaults]: unknown key 'command' (a job's own key: put it in [jobs.NAME])",
        "jobs.toml[defaults]: unknown key 'colour'",
        "jobs.toml[jobs.a]: 'align' must be true or false",
        "jobs.toml[jobs.b]: a cron expression has 5 fields (minute hour day-of-month month "
        "day-of-week) or 6 with seconds first; got 3 in '* * *'",
        'jobs.toml[jobs.c]: no command: add command = [...] or shell = "..."',
        "jobs.toml[jobs.d]: 'timeout' is not a duration: bad duration 'soon' at 'soon' (like "
        "250ms, 90s, 5m, 1h30m or 2d)",
        "jobs.toml[jobs.d]: conflicting schedules: every and daily",
        "jobs.toml[jobs.e]: no schedule: add one of schedule, cron, every, daily, weekly, "
        "monthly, once",
    ]


def test_toml_syntax_error() -> None:
    (problem,) = problems("[jobs.a\nevery = 1", toml=True)
    assert problem.startswith("jobs.toml: not valid TOML: ")


# ------------------------------------------------------------------------------ validate / next


def test_validate_file(invoke: Callable[..., Result], tmp_path: Path) -> None:
    good = tmp_path / "jobs.toml"
    good.write_text(GOOD_TOML)
    result = invoke(["validate", "--file", str(good)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "ok: backup: every 5m align tz Europe/Berlin -- ./backup.sh --fast"
    )
    bad = tmp_path / "crontab"
    bad.write_text("* * * * * ok\n61 * * * * x\nbad\n")
    result = invoke(["validate", "--file", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: {bad}:2: bad minute '61' (0-59)",
        f"Error: {bad}:3: a cron expression has 5 fields (minute hour day-of-month month "
        "day-of-week) or 6 with seconds first; got 1 in 'bad'",
    ]
    doc = json.loads(invoke(["validate", "--file", str(bad), "--format", "json"]).stdout)
    assert doc["valid"] is False and len(doc["errors"]) == 2
    missing = invoke(["validate", "--file", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "cannot read: No such file or directory" in missing.stderr


def test_next_file_merges_jobs_in_time_order(invoke: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "crontab"
    path.write_text("*/20 * * * * a\n*/30 * * * * b\n")
    result = invoke(["next", "--file", str(path), "-n", "5", "--format", "plain"])
    assert result.exit_code == 0, result.output
    a, b = "a", "b"  # crontab jobs are named after their program
    assert result.stdout.splitlines() == [
        f"2026-11-27T22:20:00+00:00 {a}",
        f"2026-11-27T22:30:00+00:00 {b}",
        f"2026-11-27T22:40:00+00:00 {a}",
        f"2026-11-27T23:00:00+00:00 {a}",
        f"2026-11-27T23:00:00+00:00 {b}",
    ]
    table = invoke(["next", "--file", str(path), "-n", "2"]).stdout
    assert "Job" in table.splitlines()[2] and a in table


def test_next_file_json_writes_instants_as_next_does(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "crontab"
    path.write_text("*/20 * * * * a\n")
    args = ["--from", "2026-11-27T22:00Z", "-n", "1", "--format", "json"]
    of_file = json.loads(invoke(["next", "--file", str(path), *args]).stdout)["ticks"][0]
    of_expr = json.loads(invoke(["next", "*/20 * * * *", "--tz", "UTC", *args]).stdout)["ticks"][0]
    assert of_file == {
        "job": "a",
        "local": "2026-11-27T22:20:00+00:00",
        "utc": "2026-11-27T22:20:00Z",
        "unix": 1795818000,
        "in_seconds": 1200.0,
    }
    assert type(of_file["unix"]) is int  # whole seconds are written as an integer
    assert {k: of_expr[k] for k in ("local", "utc", "unix", "in_seconds")} == {
        k: v for k, v in of_file.items() if k != "job"
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "--file", "x.cron", "--", "true"],
            "--file takes its jobs from the file: drop CMD",
        ),
        (["run", "--file", "x.cron", "--every", "5m"], "drop --every"),
        (["run", "--every", "5m"], "missing the command"),
        (["next", "--file", "x.cron", "0 * * * *"], "--file previews the file's jobs"),
    ],
)
def test_file_usage_errors(args: list[str], message: str) -> None:
    proc = subprocess.run([*pyjob_exe(), *args], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1


# ------------------------------------------------------------------------------ pyjob run --file


RECORD = 'echo "$PYJOB_TICK_UNIX $PYJOB_JOB $PYJOB_INSTANCE" >> "$OUT"'


def _rows(path: Path) -> list[tuple[float, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        tick, job, instance = line.split()
        out.append((float(tick), job, instance))
    return out


@pytest.mark.slow
@pytest.mark.long
def test_crontab_jobs_each_tick_once_across_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    (tmp_path / "crontab").write_text(
        f"OUT={out}\n"
        f"* * * * * * {RECORD}\n"
        f"*/2 * * * * * {RECORD}\n"
        f"* * * * * * sleep 3; {RECORD}\n"  # slow: overlaps itself, delays nobody
    )
    args = ["--file", "crontab", "--lock", f"file:{tmp_path / 'locks'}"]
    runs = [PyjobRun([*args, "--instance-id", f"p{n}"], tmp_path, name=f"p{n}") for n in (1, 2)]
    time.sleep(12)
    for run in runs:
        assert run.stop() == 0
    rows = _rows(out)
    starts = [e for run in runs for e in run.events("run-started")]
    by_job: dict[str, set[float]] = {}
    for tick, job, _ in rows:
        by_job.setdefault(job, set()).add(tick)
    counts = Counter((tick, job) for tick, job, _ in rows)
    assert all(c == 1 for c in counts.values()), [k for k, c in counts.items() if c > 1]
    assert len(by_job) == 3
    every_second, every_two, slow = sorted(by_job.values(), key=len, reverse=True)
    # every tick from the first to the last ran, for both fast jobs
    first, last = min(every_second), max(every_second)
    assert every_second == {float(t) for t in range(int(first), int(last) + 1)}
    assert len(every_second) >= 9 and len(every_two) >= 4
    # the slow job (overlap skip) ran about every 4 s; the fast jobs were never held up by it
    assert 2 <= len(slow) <= 4
    fast = [e for e in starts if "sleep" not in e.get("command", "")]
    # Held up by the slow one would be a second or more (its tick skipped): a loaded machine's
    # spawn delays stay well under that.
    assert max(e["lateness"] for e in fast) < 0.5, max(e["lateness"] for e in fast)
    instances = {instance for _, _, instance in rows}
    assert instances <= {"p1", "p2"}


@pytest.mark.slow
def test_toml_jobs_run_with_their_settings(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "jobs.toml").write_text(
        f"""
[defaults]
env = {{ OUT = "{out}", STAGE = "prod" }}

[jobs.argv]
every = "250ms"
align = true
command = ["sh", "-c", "echo argv $STAGE $PYJOB_JOB >> $OUT"]

[jobs.shell]
every = "500ms"
align = true
shell = "echo shell $STAGE $EXTRA $PYJOB_JOB >> $OUT"
env = {{ EXTRA = "x" }}
max-runs = 2
"""
    )
    run = PyjobRun(["--file", "jobs.toml", "--lock", "none"], tmp_path)
    # Until argv ran 8 times (however slowly the machine starts pyjob): its ticks then span
    # 1.75 s, in which shell had at least three ticks, so its max-runs was put to the test.
    deadline = time.monotonic() + 60
    while sum(1 for e in run.events("run-finished") if e["job"] == "argv") < 8:
        assert time.monotonic() < deadline, run.events("run-finished")
        time.sleep(0.1)
    assert run.stop() == 0
    lines = Counter(out.read_text().splitlines())
    assert lines["shell prod x shell"] == 2  # max-runs from the job's own table
    assert lines["argv prod argv"] >= 8


@pytest.mark.slow
def test_reload_adds_changes_and_removes_jobs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = tmp_path / "crontab"
    keep = f'* * * * * * echo "keep $PYJOB_TICK_UNIX" >> {out}'
    slow = f'* * * * * * sleep 1.6; echo "slow-done $PYJOB_TICK_UNIX" >> {out}'
    change = f'* * * * * * echo "v1 $PYJOB_TICK_UNIX" >> {out}'
    path.write_text(f"{keep}\n{slow}\n{change}\n")
    run = PyjobRun(["--file", "crontab", "--lock", "none"], tmp_path)
    run.wait_for("run-started", 3)
    started = run.events("run-started")
    time.sleep(1.1 - (time.time() % 1) + 0.3)  # 300 ms into a second: the slow job is running
    changed = change.replace("v1", "v2")
    added = f'*/2 * * * * * echo "added $PYJOB_TICK_UNIX" >> {out}'
    path.write_text(f"{keep}\n{changed}\n{added}\n")
    run.signal(signal.SIGHUP)
    (reloaded,) = run.wait_for("reloaded")
    assert len(reloaded["added"]) == 2 and len(reloaded["removed"]) == 2
    assert len(reloaded["kept"]) == 1 and reloaded["changed"] == []
    time.sleep(2.5)
    path.write_text("this is not a crontab\n")
    run.signal(signal.SIGHUP)
    (failed,) = run.wait_for("reload-failed")
    assert failed["problems"] == ["crontab:1: bad minute 'this' (0-59)"]
    time.sleep(1.5)
    assert run.stop() == 0
    text = out.read_text().split("\n")
    at_reload = datetime.fromisoformat(reloaded["time"]).timestamp()
    kinds = Counter(line.split()[0] for line in text if line)
    assert kinds["added"] >= 2 and kinds["v2"] >= 3 and kinds["keep"] >= 6
    # removed and replaced jobs stop scheduling at the reload...
    assert all(float(line.split()[1]) <= at_reload for line in text if line.startswith("v1"))
    # ...but the slow run that was going on at the reload finished: drained, not killed
    drained = [e for e in run.events("stopping") if e.get("drain")]
    assert any(e["running"] == 1 for e in drained), drained
    assert any(float(line.split()[1]) < at_reload for line in text if line.startswith("slow-done"))
    finished = [e for e in run.events("run-finished") if e["job"] == drained[0]["job"]]
    assert finished and all(e["exit_code"] == 0 and "terminated" not in e for e in finished)
    # kept jobs kept their state: one started event for the kept job, before the reload
    kept = reloaded["kept"][0]
    assert [e["job"] for e in run.events("started")].count(kept) == 1
    assert started  # the file ran before the reload
    # and after the failed reload the jobs went on
    assert max(float(line.split()[1]) for line in text if line.startswith("keep")) > (
        datetime.fromisoformat(failed["time"]).timestamp()
    )


def test_a_file_with_problems_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "crontab"
    path.write_text("61 * * * * x\n")
    run = PyjobRun(["--file", str(path)], tmp_path)
    assert run.wait() == 2
    assert run.log_path.read_text() == f"Error: {path}:1: bad minute '61' (0-59)\n"


@pytest.mark.slow
def test_reload_of_a_named_job_that_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = tmp_path / "jobs.toml"
    body = """
[jobs.steady]
every = "250ms"
align = true
shell = "echo steady >> {out}"

[jobs.moving]
every = "250ms"
align = true
shell = "echo {word} >> {out}"
"""
    path.write_text(body.format(out=out, word="before"))
    run = PyjobRun(["--file", "jobs.toml", "--lock", "none"], tmp_path)
    run.wait_for("run-finished", 4)
    path.write_text(body.format(out=out, word="after"))
    run.signal(signal.SIGHUP)
    (reloaded,) = run.wait_for("reloaded")
    assert reloaded["changed"] == ["moving"] and reloaded["kept"] == ["steady"]
    assert reloaded["added"] == [] and reloaded["removed"] == []
    time.sleep(1)
    assert run.stop() == 0
    words = out.read_text().split()
    assert words.count("after") >= 3 and "before" in words
    last_before = max(i for i, w in enumerate(words) if w == "before")
    first_after = words.index("after")
    assert last_before < first_after  # the old definition stopped when the new one started
    assert [e["job"] for e in run.events("started")].count("steady") == 1


def test_settings_precedence_command_line_then_file_defaults_then_job() -> None:
    from pyjob.core.jobsettings import JobSettings
    from pyjob.core.settings import Overlap

    backup, report, _ = parse_toml(GOOD_TOML, "jobs.toml", ENV, NOW)
    cli = {"timeout": 5_000_000, "jitter": 1_000_000, "overlap": "allow", "kill-after": 2_000_000}
    config = JobSettings.from_values(cli, report.settings)
    assert config.timeout == 30.0  # [defaults] beats the command line
    assert config.overlap is Overlap.SKIP  # the job's own key beats [defaults]
    assert config.jitter == 1.0 and config.kill_after == 2.0  # only the command line set these
    assert config.misfire_grace == 0.0 and config.stop_timeout == 10.0
    assert JobSettings.from_values({}, backup.settings).overlap is Overlap.QUEUE


def test_a_jobs_environment_is_the_process_one_plus_its_own(tmp_path: Path) -> None:
    from pyjob.cli.cmd_run import jobs_from_file
    from pyjob.cli.env import Env
    from pyjob.core.clock import FakeClock

    path = tmp_path / "jobs.toml"
    path.write_text(GOOD_TOML)
    env = Env(clock=FakeClock(NOW), environ={**ENV, "PATH": "/bin", "STAGE": "host"})
    report = {j.job_id: j for j in jobs_from_file(str(path), env, {})}["report"]
    # A job keeps only its own variables; the scheduler adds them to the process environment at
    # each spawn, so 10,000 jobs do not hold 10,000 copies of it.
    assert "PATH" not in report.env and report.env["STAGE"] == "test"
    from pyjob.core.scheduler import Scheduler

    from .fakes import FakeRunner

    clock = FakeClock(NOW)
    runner = FakeRunner(clock)
    s = Scheduler(clock, runner, lambda e: None, instance="i", env=env.environ, threaded=False)
    state = type("S", (), {"job": report, "id": "report"})()
    spawned = s._env(state, NOW, "rid", None)  # type: ignore[arg-type]
    assert spawned["STAGE"] == "test" and spawned["PATH"] == "/bin"


_WORDS = st.sampled_from(
    [
        "*",
        "*/5",
        "0",
        "61",
        "1-5",
        "MON",
        "@hourly",
        "@every",
        "5m",
        "0s",
        "echo",
        "x",
        "H",
        "CRON_TZ=UTC",
        "CRON_TZ=Nope/Zone",
        "A=1",
        "#",
        "L",
        "?",
        "'q'",
        "\t",
        "é",
    ]
)
_LINES = st.lists(st.lists(_WORDS, max_size=9).map(" ".join), max_size=6).map("\n".join)


@given(st.one_of(_LINES, st.text(max_size=80)))
def test_crontab_parser_only_raises_jobs_file_errors(text: str) -> None:
    try:
        jobs = crontab(text)
    except JobsFileError as e:
        assert e.problems and all(p and "\n" not in p for p in e.problems)
    else:
        assert jobs and all(re.fullmatch(r"[A-Za-z0-9._-]+", j.name) for j in jobs)
        assert len({j.name for j in jobs}) == len(jobs)


@given(
    st.dictionaries(
        st.sampled_from(["every", "cron", "align", "shell", "command", "tz", "timeout", "bogus"]),
        st.one_of(
            st.text(max_size=12), st.booleans(), st.integers(), st.lists(st.text(max_size=5))
        ),
        max_size=5,
    )
)
def test_toml_job_checks_only_raise_jobs_file_errors(body: dict) -> None:  # type: ignore[type-arg]
    import json as _json

    lines = ["[jobs.j]"] + [f"{k} = {_json.dumps(v, ensure_ascii=False)}" for k, v in body.items()]
    try:
        parse_toml("\n".join(lines), "jobs.toml", ENV, NOW)
    except JobsFileError as e:
        assert e.problems and all(p and "\n" not in p for p in e.problems)


# ------------------------------------------------------------------------------ from elsewhere


def test_crontab_shell_runs_the_lines_and_mailto_is_only_environment(tmp_path: Path) -> None:
    path = tmp_path / "crontab"
    path.write_text(
        "SHELL=/bin/bash\nMAILTO=ops@example.com\n"
        '* * * * * * echo "bash=${BASH_VERSION:+yes} mailto=$MAILTO"\n'
    )
    done = subprocess.run(
        [*pyjob_exe(), "run", "--file", str(path), "--max-runs", "1", "--no-clock-check"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
    )
    assert (done.returncode, done.stdout) == (0, "bash=yes mailto=ops@example.com\n"), done.stderr


def test_validate_shows_the_shell_a_crontab_line_runs_with(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "crontab"
    path.write_text("SHELL=/bin/bash\n0 3 * * * ./nightly --all\n")
    result = invoke(["validate", "--file", str(path)])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == (
        "ok: nightly: CRON_TZ=UTC 0 3 * * * -- /bin/bash -c './nightly --all'"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="running a job as another user needs root")
def test_a_system_crontab_user_field_runs_the_job_as_that_user(tmp_path: Path) -> None:
    path = tmp_path / "crontab"  # a line copied from /etc/crontab: 'nobody' is a user, no command
    path.write_text("* * * * * * nobody id -un\n* * * * * * root id -un\n")
    shown = subprocess.run(
        [*pyjob_exe(), "validate", "--file", str(path)], capture_output=True, text=True
    )
    lines = shown.stdout.splitlines()
    assert lines[0].endswith(" -- runuser -u nobody -- /bin/sh -c 'id -un'")
    assert lines[2].endswith(" -- id -un")  # root, as pyjob runs: as is
    names = [line.split(": ")[1] for line in (lines[0], lines[2])]
    done = subprocess.run(
        [*pyjob_exe(), "run", "--file", str(path), "--max-runs", "1", "--no-clock-check"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(
        [f"{names[0]} | nobody", f"{names[1]} | root"]
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may run a job as any user")
def test_a_user_field_for_another_user_is_an_error_naming_the_line(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "crontab"
    path.write_text("0 3 * * * root id -un\n")
    result = invoke(["validate", "--file", str(path)])
    assert result.exit_code == 2
    import pwd

    me = pwd.getpwuid(os.geteuid()).pw_name
    assert result.output == (
        f"Error: {path}:1: the job runs as user 'root' (the user field of a system crontab), but "
        f"pyjob runs as '{me}': only root can run a job as another user; drop 'root' to run it "
        f"as {me}\n"
    )


def test_toml_hints_point_to_shell_and_to_the_key_meant(
    invoke: Callable[..., Result], tmp_path: Path
) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(
        '[jobs.backup]\nevery = "5m"\ncommand = "./backup.sh --fast"\ntime-out = "1m"\n'
        '[jobs.report]\ncron = "0 9 * * *"\ncomand = ["./report"]\n'
    )
    result = invoke(["validate", "--file", str(path)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"Error: {path}[jobs.backup]: 'command' is a list of arguments, like command = "
        '["./backup.sh", "--fast"]; a string is a shell line: write it as shell = '
        '"./backup.sh --fast"',
        f"Error: {path}[jobs.backup]: unknown key 'time-out' (did you mean 'timeout'?)",
        f"Error: {path}[jobs.report]: unknown key 'comand' (did you mean 'command'?)",
        f'Error: {path}[jobs.report]: no command: add command = [...] or shell = "..."',
    ]


def test_thousands_of_jobs_of_one_program_keep_unique_readable_names() -> None:
    lines = "\n".join(f"0 0 1 1 * ./task.sh {i}" for i in range(10_000))
    jobs = parse_crontab(lines + "\n", "crontab", ENV, NOW)
    names = [j.name for j in jobs]
    assert len(set(names)) == 10_000
    assert all(n.startswith("task.sh-") for n in names)


@given(st.text(alphabet=st.sampled_from(list("ab/.=_-#$;|&*~é \t\r\n\x0b\x0c\xa0")), max_size=40))
def test_a_line_without_quotes_is_named_as_shlex_splits_it(line: str) -> None:
    """Lines without quotes or escapes skip shlex (10,000 lines took seconds); the name is the
    one shlex's words give, whatever the whitespace and symbols."""
    import shlex

    from pyjob.core import jobsfile

    words = [w for w in shlex.split(line) if w] or ["job"]
    i = 0
    while i < len(words) - 1 and jobsfile._ENV_LINE.match(words[i]):
        i += 1
    base = words[i].rstrip("/").rsplit("/", 1)[-1]
    expected = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")[:40] or "job"
    assert jobsfile._program(line) == expected


def test_each_user_program_and_zone_of_a_crontab_is_looked_up_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pwd
    import shutil

    users: Counter[str] = Counter()
    programs: Counter[str] = Counter()
    real_getpwnam, real_which = pwd.getpwnam, shutil.which

    def getpwnam(name: str) -> pwd.struct_passwd:
        users[name] += 1
        return real_getpwnam(name)

    def which(name: str, *args: object, **kw: object) -> str | None:
        programs[name] += 1
        return real_which(name, *args, **kw)  # type: ignore[arg-type]

    from pyjob.core import zones

    zone_reads = Counter[str]()
    real_zone = zones.system_zone_name

    def system_zone_name(env: object = None) -> str:
        zone_reads["system"] += 1
        return real_zone(env)  # type: ignore[arg-type]

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(shutil, "which", which)
    monkeypatch.setattr(zones, "system_zone_name", system_zone_name)
    me = real_getpwnam(os.environ.get("USER") or "root").pw_name
    text = "".join(f"{k} * * * * true {k}\n{k} * * * * {me} echo {k}\n" for k in range(50))
    jobs = parse_crontab(text, "crontab", {"PATH": os.environ["PATH"]}, NOW)
    assert len(jobs) == 100
    assert users == {"true": 1, me: 1}
    assert programs == {me: 1}
    assert zone_reads == {"system": 1}  # no TZ given: /etc/timezone is read once, not per line

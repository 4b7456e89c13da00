"""The same job everywhere (issue 13 item 6): `next` and `validate` take the job identity options
of `run` (--name, --shell, -- CMD [ARGS]...) and preview exactly the ticks `run` fires, H fields
and random intervals included."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyjob.core.grammar import parse
from pyjob.core.schedule import derive_job_id, job_identity

from .conftest import pyjob_exe
from .runproc import PyjobRun


def pyjob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pyjob_exe(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TZ": "UTC", "NO_COLOR": "1"},
    )


def next_json(*args: str) -> dict[str, Any]:
    proc = pyjob("next", "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.mark.slow
@pytest.mark.parametrize(
    ("schedule", "identity"),
    [
        ("H * * * *", ["--", "true"]),
        ("H * * * *", ["--", "true", "x"]),
        ("H/7 H * * *", ["--shell", "--", "echo hi"]),
        ("H H(0-11) * * *", ["--name", "nightly", "--", "true"]),
        ("every 1m..1h", ["--", "true"]),
    ],
)
def test_next_and_validate_preview_the_tick_run_fires(
    tmp_path: Path, schedule: str, identity: list[str]
) -> None:
    options, command = identity[: identity.index("--")], identity[identity.index("--") :]
    run = PyjobRun(
        ["-s", schedule, "--no-clock-check", "--lock", "none", *options, *command], tmp_path
    )
    try:
        started = run.wait_for("started")[0]
        fired = run.wait_for("next-tick")[0]
    finally:
        run.stop()
    # `run` computed its first tick from its start instant; preview from the same instant.
    preview = next_json(schedule, "--from", started["time"], "-n", "1", *identity)
    assert preview["job"] == fired["job"]
    if schedule.startswith("every"):  # a random wait counts from the start: compare the job only
        return
    assert preview["ticks"][0]["utc"] == fired["tick"]
    proc = pyjob("validate", "--format", "json", schedule, *identity)
    assert proc.returncode == 0, proc.stderr
    checked = json.loads(proc.stdout)["schedules"][0]
    assert checked["job"] == fired["job"]


def test_the_command_moves_h_fields() -> None:
    minutes = {
        next_json("H * * * *", "--from", "2026-01-01T00:00Z", "-n", "1", "--", cmd)["ticks"][0][
            "utc"
        ]
        for cmd in ["./backup.sh", "./report.sh", "./sync.sh", "./clean.sh", "./mail.sh", "true"]
    }
    assert len(minutes) > 1, minutes
    without = next_json("H * * * *", "--from", "2026-01-01T00:00Z")
    with_shell = next_json("H * * * *", "--from", "2026-01-01T00:00Z", "--shell", "--", "true")
    plain = next_json("H * * * *", "--from", "2026-01-01T00:00Z", "--", "true")
    assert len({without["job"], with_shell["job"], plain["job"]}) == 3


@pytest.mark.parametrize(
    ("kwargs", "argv"),
    [
        ({}, []),
        ({"command": ["./backup.sh", "--fast"]}, ["./backup.sh", "--fast"]),
        ({"command": ["./backup.sh --fast"], "shell": True}, ["--shell", "./backup.sh --fast"]),
    ],
)
def test_job_identity_is_derive_job_id_of_the_run_argv(
    kwargs: dict[str, Any], argv: list[str]
) -> None:
    spec = parse("H * * * *", env={"TZ": "UTC"})
    assert job_identity(spec, **kwargs) == derive_job_id(spec, argv)
    assert job_identity(spec, **kwargs, name="nightly") == "nightly"


def test_validate_text_names_the_job(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["validate", "H * * * *", "--name", "nightly", "--", "true"])
    assert result.exit_code == 0
    assert result.output == (
        "ok: CRON_TZ=UTC H * * * *\n"
        "  means: at a minute hashed from the job id past every hour (UTC)\n"
        "  next:  2026-11-27T22:07:00+00:00\n"
        "  job:   nightly\n"
    )


def test_next_table_names_the_job(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke(["next", "H * * * *", "-n", "1", "--", "./backup.sh"])
    assert result.exit_code == 0
    assert "Job:       job-" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["next", "--file", "x.cron", "--", "true"], "--file previews the file's jobs"),
        (["validate", "--file", "x.cron", "--shell"], "--file checks the file's jobs"),
        (["next", "H * * * *", "./backup.sh"], "a command goes after -- (pyjob run"),
    ],
)
def test_identity_usage_errors(args: list[str], message: str) -> None:
    proc = pyjob(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("Error:") == 1


# ------------------------------------------------ what the id is made of (issue 27 item 3)
# A schedule read relative to the moment it is read (--start-at now, `once` times that have
# passed) must not move the job id: instances started at different moments are one job.


def test_start_at_now_does_not_change_the_job(invoke) -> None:  # type: ignore[no-untyped-def]
    def preview(*args: str) -> dict[str, Any]:
        result = invoke(["next", "H * * * *", *args, "-n", "1", "--format", "json", "--", "true"])
        assert result.exit_code == 0, result.output
        doc: dict[str, Any] = json.loads(result.output)
        return doc

    plain = preview("--from", "2026-12-01T00:00Z")
    for moment in ("2026-12-01T00:00Z", "2026-12-01T07:13:05.123456Z", "2027-03-01T12:00Z"):
        got = preview("--start-at", "now", "--from", moment)
        assert got["job"] == plain["job"], moment
        assert got["ticks"][0]["utc"][14:] == plain["ticks"][0]["utc"][14:]  # the same H minute
        assert got["schedule"].endswith(f" start-at {got['from']}")  # still bounded by it
    # An absolute start-at is part of the job: it is the same on every host.
    fixed = preview("--start-at", "2026-12-01T00:00Z", "--from", "2026-12-01T00:00Z")
    assert fixed["job"] != plain["job"]


def test_once_times_already_past_do_not_change_the_job() -> None:
    text = "once at 2026-12-24T18:00Z,2026-12-31T18:00Z"
    before = parse(text, env={}, now=datetime(2026, 12, 1, tzinfo=UTC))
    after = parse(text, env={}, now=datetime(2026, 12, 25, tzinfo=UTC))
    assert str(after) == "once at 2026-12-31T18:00:00Z"  # what is left to run
    assert derive_job_id(before, ["true"]) == derive_job_id(after, ["true"])
    other = parse("once at 2026-12-31T18:00Z", env={}, now=datetime(2026, 12, 1, tzinfo=UTC))
    assert derive_job_id(other, ["true"]) != derive_job_id(before, ["true"])


def test_a_jobs_file_reload_keeps_a_job_that_starts_now(tmp_path: Path) -> None:
    from pyjob.core.jobsfile import load

    path = tmp_path / "jobs.toml"
    path.write_text('[jobs.report]\nschedule = "every 1h"\nstart-at = "now"\ncommand = ["true"]\n')
    first = load(path, {}, datetime(2026, 12, 1, tzinfo=UTC))[0]
    second = load(path, {}, datetime(2026, 12, 1, 0, 5, tzinfo=UTC))[0]
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.slow
def test_instances_started_now_at_different_moments_are_one_job(tmp_path: Path) -> None:
    args = ["-s", "H * * * *", "--start-at", "now", "--lock", "none", "--", "true"]
    runs = [PyjobRun(args, tmp_path, name=f"i{n}") for n in range(2)]
    try:
        fired = [run.wait_for("next-tick")[0] for run in runs]
        started = [run.wait_for("started")[0] for run in runs]
    finally:
        for run in runs:
            run.stop()
    assert started[0]["schedule"] != started[1]["schedule"]  # each read `now` as its own start
    assert fired[0]["job"] == fired[1]["job"]
    assert fired[0]["tick"][14:] == fired[1]["tick"][14:]  # the same H minute
    preview = next_json("H * * * *", "--start-at", "now", "-n", "1", "--", "true")
    assert preview["job"] == fired[0]["job"]

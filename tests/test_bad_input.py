"""Issue 14 item 7, the run options' part: input that crashed or was taken though wrong gives one
`Error:` line and exit 2, through the real CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import pyjob_exe


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pyjob_exe(), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_a_toml_file_nested_5000_arrays_deep_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    for command in ("run", "validate", "next"):
        out = _run(command, "--file", str(path))
        assert out.returncode == 2, (command, out.stderr[-500:])
        assert out.stderr == f"Error: {path}: not valid TOML: nested too deeply\n"


@pytest.mark.parametrize("option", ["--name", "--instance-id"])
@pytest.mark.parametrize("value", ["two\nlines", "tab\there", "bell\x07", "  "])
def test_names_that_would_split_log_lines_are_refused(option: str, value: str) -> None:
    out = _run("run", "--every", "1m", option, value, "--lock", "none", "--", "true")
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[-1].startswith("Error: Invalid value for '" + option + "'"), out.stderr
    assert "printable" in lines[-1] and "Traceback" not in out.stderr


# Issue 28, item 13: input that passed `validate` and crashed `run`, or crashed both.

_JOB = '[jobs.a]\nevery = "1s"\ncommand = ["true"]\nmax-runs = 1\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('env = {"A=B" = "x"}', "'env' has a variable name with '=' in it ('A=B')"),
        ('env = {"" = "x"}', "'env' has an empty variable name"),
        ('env = {"A" = "x\\u0000y"}', "'env' value of A has a NUL character (\\0) at position 1"),
        ('command = ["echo", "a\\u0000"]', "'command' has a NUL character"),
        ('ping = "http://[::1"', "'ping' is not a URL: Invalid IPv6 URL"),
        ('lock = "redis://h:99999/0"', "'lock' is not a lock URL: bad port '99999'"),
        ('lock = "ftp://h/"', "'lock' is not a lock URL: unknown lock backend 'ftp:'"),
        ('lock = "postgresql://u@h/db?sslmode=bogus"', "bad sslmode 'bogus'"),
        ('name = "tab\\there"', "'name' must be printable"),
        ('on-success = "echo \\u0000x"', "'on-success' has a NUL character (\\0) at position 5"),
    ],
)
def test_a_toml_job_that_run_would_refuse_validate_refuses_too(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = tmp_path / "jobs.toml"
    body = _JOB.replace('command = ["true"]\n', "") if extra.startswith("command") else _JOB
    path.write_text(body + extra + "\n")
    for command in ("validate", "run"):
        args = [command, "--file", str(path)]
        out = _run(*args, *(["--lock", "none", "--no-clock-check"] if command == "run" else []))
        assert out.returncode == 2, (command, out.returncode, out.stderr[-800:])
        assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"Error: {path}[jobs.a]: ")
        assert message in out.stderr, out.stderr


def test_a_crontab_line_with_a_nul_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "crontab"
    path.write_bytes(b"* * * * * * echo \0a\n")
    for command in ("validate", "run"):
        args = [command, "--file", str(path)]
        out = _run(*args, *(["--lock", "none", "--no-clock-check"] if command == "run" else []))
        assert out.returncode == 2, (command, out.stderr[-800:])
        assert out.stderr == (
            f"Error: {path}:1: the line has a NUL character (\\0) at position 17, which no "
            "command can take\n"
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--ping", "http://[::1"], "Invalid value for '--ping'"),
        (["run", "--ping", "http://h:99999/"], "Port out of range"),
        (["run", "--lock", "redis://" + "a" * 70_000 + "/0"], "at most 253 characters"),
        (["run", "--lock", "redis://" + "a" * 64 + ".example/0"], "label empty or too long"),
        (["run", "--lock", "postgresql://u@127.0.0.1:1/db?sslmode=bogus"], "bad sslmode"),
        (["run", "--max-runs", "٣"], "'٣' is not a whole number in digits 0-9"),
        (["run", "--max-runs", "1_0"], "'1_0' is not a whole number"),
        (["check-clock", "--server", "[::1"], "an IPv6 address is written [ADDRESS]"),
        (["check-clock", "--server", "[::1]x"], "an IPv6 address is written [ADDRESS]"),
        (["check-clock", "--server", "a" * 300], "at most 253 characters"),
    ],
)
def test_bad_urls_hosts_and_numbers_are_one_error_line(args: list[str], message: str) -> None:
    if args[0] == "run":
        args = [*args, "--every", "1s", "--no-clock-check", "--", "true"]
    out = _run(*args)
    assert out.returncode == 2, (out.returncode, out.stderr[-800:])
    assert out.stderr.startswith("Error: ") and out.stderr.count("\n") == 1, out.stderr[-800:]
    assert message in out.stderr


def test_an_8_mb_crontab_line_validates(tmp_path: Path) -> None:
    """Parsing is linear: shlex, which took the program's name out of the line, is quadratic
    in a word's length (1 MB: 25 s); 8 MB would take it many minutes, linear parsing about a
    second. The 60 s timeout of _run only guards against a hang."""
    path = tmp_path / "crontab"
    path.write_text("* * * * * echo " + "a" * 8_000_000 + "\n")
    out = _run("validate", "--file", str(path), "--format", "json")
    assert out.returncode == 0, out.stderr[-500:]
    assert '"name": "echo"' in out.stdout

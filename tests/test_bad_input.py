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

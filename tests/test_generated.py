"""Completions, man pages and the reference in docs/ are generated from the CLI and kept in step;
start-up paths stay light (DESIGN: keep --help, docs, man/ and completions/ in step)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from pyjob.cli import docgen

from .conftest import ROOT, pyjob_exe

CI = os.environ.get("CI") == "true"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if CI:
            pytest.fail(f"{tool} is missing; .ci/run installs it")
        pytest.skip(f"{tool} is not installed on this machine")
    return path


def _env() -> dict[str, str]:
    bindir = str(Path(pyjob_exe()[0]).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def test_generated_files_are_up_to_date() -> None:
    assert docgen.main(["--check", "--root", str(ROOT)]) == 0, "run: python -m pyjob.cli.docgen"


def test_every_command_and_option_has_help() -> None:
    for name, command in docgen.commands():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"


@pytest.mark.parametrize("name", ["", *(n for n, _ in docgen.commands())])
def test_man_page_lists_every_option_and_renders_clean(name: str) -> None:
    page = ROOT / "man" / (f"pyjob-{name}.1" if name else "pyjob.1")
    text = page.read_text()
    command = dict(docgen.commands())[name] if name else docgen.cli
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                assert docgen.literal(opt) in text, f"{opt} missing from {page.name}"
    for section in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "EXAMPLES",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SEE ALSO",
    ):
        assert f".SH {section}" in text
    groff = _need("groff")
    proc = subprocess.run([groff, "-man", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def _bash_words(line: str) -> list[str]:
    """COMP_WORDS as bash makes them: split at blanks and at ':' (in COMP_WORDBREAKS), a quote
    still open kept in its word."""
    words = re.findall(r"'[^']*'?|\"[^\"]*\"?|:|[^\s:'\"]+", line)
    return words + ([""] if line.endswith(" ") and not re.search(r"'[^']*$", line) else [])


def bash_complete(line: str) -> list[str]:
    """TAB at the end of ``line`` in bash, through completions/pyjob.bash: the COMPREPLY."""
    words = _bash_words(line)
    script = (
        f"source {ROOT}/completions/pyjob.bash\n"
        "complete -p pyjob >/dev/null || exit 3\n"
        f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "_pyjob_completion pyjob 2>/dev/null\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    proc = subprocess.run(
        [_need("bash"), "-c", script], capture_output=True, text=True, env=_env(), timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return [x for x in proc.stdout.split("\n") if x]


def completion_reply(line: str) -> list[str]:
    """What pyjob answers the bash script (type,value lines), for the items bash then handles
    itself (type file: its own file-name completion)."""
    words = _bash_words(line)
    proc = subprocess.run(
        pyjob_exe(),
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **_env(),
            "_PYJOB_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join(words),
            "COMP_CWORD": str(len(words) - 1),
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "COMP_CUR": words[-1],
        },
    )
    return proc.stdout.splitlines()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "pyjob ",
            [
                "align",
                "check-clock",
                "history",
                "next",
                "pause",
                "resume",
                "run",
                "status",
                "trigger",
                "validate",
            ],
        ),
        ("pyjob check-clock --format ", ["table", "json", "nagios"]),
        ("pyjob check-clock --lock re", ["redis://", "rediss://"]),
        ("pyjob run --clock ", ["system", "ntp"]),
        ("pyjob validate --fi", ["--file"]),
        ("pyjob run --ntp", ["--ntp-server"]),
        ("pyjob run --clock-policy ", ["refuse", "warn"]),
        ("pyjob run --ov", ["--overlap"]),
        ("pyjob run --overlap ", ["skip", "queue", "allow", "replace"]),
        ("pyjob run --log-format ", ["text", "json"]),
        ("pyjob next --format ", ["table", "plain", "json"]),
        ("pyjob next --tz Europe/Ber", ["Europe/Berlin"]),
        (
            "pyjob run --lock ",
            ["file:", "nfs:", "redis://", "rediss://", "postgresql://", "etcd://", "none"],
        ),
        # multi-word schedules come quoted, so they stay one argument
        ("pyjob next ev", ["'every "]),
        ("pyjob validate wee", ["'weekly on "]),
        ("pyjob validate 'wee", ["'weekly on "]),
        ("pyjob run '@ev", ["'@every "]),
        ("pyjob validate @da", ["@daily"]),
        ("pyjob align --format ", ["iso", "unix", "json"]),
    ],
)
def test_bash_completion(line: str, expected: list[str]) -> None:
    assert bash_complete(line) == expected


def test_after_dashes_tab_completes_commands_then_files() -> None:
    got = bash_complete("pyjob run --every 5m -- pyjo")
    assert "pyjob" in got and all(g.startswith("pyjo") for g in got)
    assert bash_complete("pyjob next 'H * * * *' -- pyjo") == got
    # a path, or an argument of the command: bash's own file-name completion
    assert completion_reply("pyjob run --every 5m -- ./scr") == ["file,./scr"]
    assert completion_reply("pyjob run --every 5m -- tar -x") == ["file,-x"]


def test_lock_file_completes_directories(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "logs.txt").write_text("")
    # bash breaks the word at ':', and replaces only the part after it
    assert bash_complete(f"pyjob run --lock file:{tmp_path}/lo") == [f"{tmp_path}/locks/"]
    assert bash_complete(f"pyjob check-clock --lock nfs:{tmp_path}/") == [f"{tmp_path}/locks/"]


def test_zsh_completion_loads() -> None:
    zsh = _need("zsh")
    path = ROOT / "completions" / "_pyjob"
    assert subprocess.run([zsh, "-n", str(path)]).returncode == 0
    proc = subprocess.run(
        [
            zsh,
            "-fc",
            f"autoload -Uz compinit && compinit -u -D && source {path} && "
            "print -r -- ${_comps[pyjob]}",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "_pyjob_completion", proc.stderr


def test_fish_completion_loads_and_completes() -> None:
    fish = _need("fish")
    path = ROOT / "completions" / "pyjob.fish"
    assert subprocess.run([fish, "-n", str(path)]).returncode == 0
    proc = subprocess.run(
        [fish, "--no-config", "-c", f"source {path}; complete -C 'pyjob run --overlap '"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    got = sorted(line.split("\t")[0] for line in proc.stdout.splitlines())
    assert got == ["allow", "queue", "replace", "skip"]  # fish sorts them
    # a schedule of several words: fish escapes its spaces itself, so no quote is sent
    proc = subprocess.run(
        [fish, "--no-config", "-c", f"source {path}; complete -C 'pyjob validate wee'"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert proc.stdout.splitlines() == ["weekly on "], proc.stderr


_REPORT = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('HEAVY=' + ','.join(m for m in ('rich', 'croniter', 'ntplib', "
    "'filelock') "
    "if m in sys.modules), file=sys.stderr))\n"
    "sys.argv = ['pyjob', *sys.argv[1:]]\n"
    "from pyjob.cli.main import main\n"
    "main()\n"
)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--version"], {}),
        (["--help"], {}),
        (["align", "5m"], {}),
        (
            [],
            {
                "_PYJOB_COMPLETE": "bash_complete",
                "COMP_WORDS": "pyjob check-clock --format ",
                "COMP_CWORD": "3",
            },
        ),
        (
            [],
            {
                "_PYJOB_COMPLETE": "bash_complete",
                "COMP_WORDS": "pyjob run --overlap ",
                "COMP_CWORD": "3",
            },
        ),
        (
            [],
            {
                "_PYJOB_COMPLETE": "bash_complete",
                "COMP_WORDS": "pyjob next --tz Eur",
                "COMP_CWORD": "3",
            },
        ),
    ],
)
def test_start_up_paths_do_not_import_heavy_modules(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _REPORT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    heavy = re.search(r"HEAVY=(.*)", proc.stderr)
    assert heavy is not None, proc.stderr
    assert heavy.group(1) == "", f"{args or env['COMP_WORDS']} imported {heavy.group(1)}"

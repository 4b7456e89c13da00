"""The README, --help and CI agree."""

from __future__ import annotations

import re

from .conftest import ROOT


def test_readme_has_exactly_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- main-command -->") == 1
    assert readme.count("<!-- test-command -->") == 1
    for marker in ("main-command", "test-command"):
        block = re.search(rf"<!-- {marker} -->\n```sh\n(.+?)\n```", readme, re.S)
        assert block is not None and "\n" not in block.group(1), marker


def test_ci_runs_the_readme_test_command_and_linters() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and 'eval "$test_command"' in ci
    for tool in (
        "ruff check .",
        "ruff format --check .",
        "mypy core cli",
        "radon cc",
        "docgen --check",
    ):
        assert tool in ci


def test_every_package_directory_is_in_the_distribution() -> None:
    """A subpackage missing from pyproject works editable but breaks a plain `pip install .`."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for top, name in (("core", "pyjob.core"), ("cli", "pyjob.cli")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    assert found == listed

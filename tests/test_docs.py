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
        ".ci/sizes.py",
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


def test_readme_is_short_and_the_manual_is_in_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in ("schedules", "running", "fleets", "monitoring", "clocks", "reference", "design"):
        assert f"(docs/{page}.md)" in readme, page


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    anchors, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def test_every_relative_link_of_the_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken

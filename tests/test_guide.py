"""docs/distributed.md cannot rot: every shell block marked runnable is run, in order, against a
real chronyd and a real Redis on loopback; every other block must say why it cannot run here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT
from .servers import ChronyServer, RedisServer, start_chronyd, start_redis

GUIDE = ROOT / "docs" / "distributed.md"
MARKER = re.compile(r"<!-- (runnable|not runnable: [^>]+) -->")

pytestmark = [pytest.mark.slow, pytest.mark.long]


def blocks(text: str) -> list[tuple[int, str, str | None, str]]:
    """(line, language, marker, body) of every fenced block; marker from the line above it."""
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)$", lines[i])
        if fence and fence.group(1):
            start = i
            j = i + 1
            while lines[j] != "```":
                j += 1
            above = lines[start - 1] if start > 0 else ""
            match = MARKER.fullmatch(above.strip())
            out.append(
                (
                    start + 1,
                    fence.group(1),
                    match.group(1) if match else None,
                    "\n".join(lines[start + 1 : j]),
                )
            )
            i = j + 1
        else:
            i += 1
    return out


def test_every_shell_block_says_whether_it_runs() -> None:
    found = blocks(GUIDE.read_text())
    shell = [b for b in found if b[1] in ("sh", "console")]
    assert len(shell) >= 10
    unmarked = [line for line, _, marker, _ in shell if marker is None]
    assert not unmarked, f"shell blocks without a runnable/not runnable marker at lines {unmarked}"
    runnable = [b for b in found if b[2] == "runnable"]
    assert all(lang == "sh" for _, lang, _, _ in runnable)


def test_the_readme_links_the_guide() -> None:
    assert "(docs/distributed.md)" in (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChronyServer, RedisServer]]:
    chrony = start_chronyd(tmp_path_factory.mktemp("guide-chrony"))
    redis = start_redis(tmp_path_factory.mktemp("guide-redis"))
    yield chrony, redis
    redis.stop()
    chrony.stop()


def test_runnable_blocks_run(tmp_path: Path, servers: tuple[ChronyServer, RedisServer]) -> None:
    chrony, redis = servers
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYJOB_") and k != "NO_COLOR"}
    env.update(
        PATH=f"{bindir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        HOME=str(tmp_path),
        TZ="UTC",
        PYJOB_NTP_SERVERS=chrony.address,
        PYJOB_LOCK=redis.url,
    )
    ran = 0
    for line, _, marker, body in blocks(GUIDE.read_text()):
        if marker != "runnable":
            continue
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (
            f"docs/distributed.md:{line}\n{body}\n{proc.stdout}{proc.stderr}"
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        ran += 1
    assert ran >= 9

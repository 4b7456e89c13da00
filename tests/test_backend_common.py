"""What every backend module shares: no import of the package ``__init__`` (no import circle),
and the helpers in ``core/backends/common.py``."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyjob.core.backends.common import safe_name
from pyjob.core.instants import to_us

BACKENDS = Path(__file__).resolve().parent.parent / "core" / "backends"


@pytest.mark.parametrize("module", sorted(p.name for p in BACKENDS.glob("*.py")))
def test_backend_modules_never_import_the_package(module: str) -> None:
    tree = ast.parse((BACKENDS / module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            assert node.module is not None, f"{module}:{node.lineno}: 'from . import' of __init__"


def test_to_us_is_exact() -> None:
    t = datetime(2026, 6, 1, 12, 0, tzinfo=UTC) + timedelta(microseconds=7)
    assert to_us(t) == 1_780_315_200_000_007
    assert to_us(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1


def test_safe_name_keeps_unique_names() -> None:
    assert safe_name("backup") == "backup"
    assert safe_name("a/b") != safe_name("a_b") and "/" not in safe_name("a/b")

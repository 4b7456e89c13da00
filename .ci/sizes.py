"""No module over 700 lines and no class over 400 lines in core/ or cli/ (a module that grows past
it holds more than one job; split it along what its parts own)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MODULE_MAX = 700
CLASS_MAX = 400


def problems(root: Path) -> list[str]:
    found = []
    for top in ("core", "cli"):
        for path in sorted((root / top).rglob("*.py")):
            text = path.read_text()
            lines = len(text.splitlines())
            if lines > MODULE_MAX:
                found.append(f"{path.relative_to(root)}: {lines} lines (at most {MODULE_MAX})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                    size = node.end_lineno - node.lineno + 1
                    if size > CLASS_MAX:
                        found.append(
                            f"{path.relative_to(root)}: class {node.name} is {size} lines "
                            f"(at most {CLASS_MAX})"
                        )
    return found


if __name__ == "__main__":
    bad = problems(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    for line in bad:
        print(line, file=sys.stderr)
    sys.exit(1 if bad else 0)

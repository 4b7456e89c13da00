"""What a schedule that did not parse was probably meant to be: the hints `run` and `validate`
give for the usual ways a schedule gets mangled before pyjob sees it."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

# A schedule is at most a dozen words ('every 1h align offset 15m start-at … tz …'): longer
# prefixes are not tried, so a hint costs the same for a command of 100,000 arguments.
_MOST_WORDS = 16


def longest_schedule(words: Sequence[str]) -> int:
    """How many of ``words`` the longest schedule they start with has (0: none)."""
    from pyjob.core.errors import InputError
    from pyjob.core.grammar import parse

    for n in range(min(len(words), _MOST_WORDS), 0, -1):
        try:
            parse(" ".join(words[:n]))
        except InputError:
            continue
        return n
    return 0


def unglobbed(words: Sequence[str], directory: str = ".") -> list[str] | None:
    """``words`` with each run of the names of ``directory``'s files put back as the ``*`` the
    shell expanded into them (an unquoted ``*/5 * * * *``), or None when there is none."""
    names = directory_names(directory)
    if not names:
        return None
    n, out, i, found = len(names), [], 0, False
    while i < len(words):
        block = words[i : i + n]
        if words[i] in names and len(block) == n and set(block) == names:
            out.append("*")
            i += n
            found = True
        else:
            out.append(words[i])
            i += 1
    return out if found else None


def glob_hint(words: Sequence[str], program: str, dashes: bool = True) -> str | None:
    """The error for schedule words the shell expanded: which, and how to quote them (the
    words may go on with the command)."""
    restored = unglobbed(words)
    if restored is None:
        return None
    n = longest_schedule(restored)
    if n == 0:
        example = f'{program} "*/5 * * * *"' + (" -- CMD" if dashes else "")
    else:
        rest = restored[n:]
        example = f"{program} {quoted(' '.join(restored[:n]))}"
        if rest or dashes:
            example += " -- " + (shlex.join(rest) if rest else "CMD")
    return (
        "the shell replaced each unquoted * of the schedule with the names of the files here "
        f"({_few(sorted(directory_names()))}): quote the schedule, like {example}"
    )


def directory_names(directory: str = ".") -> set[str]:
    """What an unquoted ``*`` expands to there: the names not starting with a dot."""
    try:
        return {e for e in os.listdir(directory) if not e.startswith(".")}
    except OSError:
        return set()


def quoted(text: str) -> str:
    """``text`` as one shell word, in double quotes where they do: single quotes in an error
    line read as the bad token's (pyjob.core.errors.tidy)."""
    if not any(c in text for c in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def unquoted_hint(words: Sequence[str], program: str) -> str | None:
    """Schedule words given unquoted before the command (``pyjob run 0 9 '*' '*' '*' ./x``):
    the schedule they start with, quoted, then the command."""
    n = longest_schedule(words)
    if n < 2 or n == len(words):
        return None
    return (
        "the schedule is one argument: quote it "
        f"({program} {quoted(' '.join(words[:n]))} -- {shlex.join(words[n:])})"
    )

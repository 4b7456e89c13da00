"""Shell completion: Click's machinery, with templates that also honour "nospace" items.

Click's own bash and zsh scripts drop items of type "nospace", which pyjob uses where the user goes
on typing in the same word (``--lock file:`` then a path). These subclasses keep everything else
from Click and add that one case; they are registered under Click's names, so both the generated
scripts (docgen) and the run-time completion requests use them.
"""

from __future__ import annotations

from click.shell_completion import (
    _SOURCE_BASH,
    _SOURCE_ZSH,
    BashComplete,
    ZshComplete,
    add_completion_class,
)

_BASH_PLAIN = """        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)"""
_BASH_NOSPACE = (
    _BASH_PLAIN
    + """
        elif [[ $type == 'nospace' ]]; then
            COMPREPLY+=($value)
            compopt -o nospace"""
)

_ZSH_DIR = """        elif [[ "$type" == "dir" ]]; then"""
_ZSH_NOSPACE = (
    """        elif [[ "$type" == "nospace" ]]; then
            nospace+=("$key")
"""
    + _ZSH_DIR
)


class PyjobBashComplete(BashComplete):
    source_template = _SOURCE_BASH.replace(_BASH_PLAIN, _BASH_NOSPACE)


class PyjobZshComplete(ZshComplete):
    source_template = (
        _SOURCE_ZSH.replace(_ZSH_DIR, _ZSH_NOSPACE)
        .replace("    local -a response\n", "    local -a response\n    local -a nospace\n")
        .replace(
            '    if [ -n "$completions" ]; then',
            "    if [ -n \"$nospace\" ]; then\n        compadd -S '' -U -V unsorted -a nospace\n"
            '    fi\n\n    if [ -n "$completions" ]; then',
        )
    )


def register() -> None:
    add_completion_class(PyjobBashComplete, "bash")
    add_completion_class(PyjobZshComplete, "zsh")


# The templates must really have changed: fail loudly if a Click release rewrites them.
assert "nospace" in PyjobBashComplete.source_template
assert "compadd -S ''" in PyjobZshComplete.source_template

"""Shell completion: Click's machinery, with templates that also honour "nospace" items.

Click's own bash and zsh scripts drop items of type "nospace", which pyjob uses where the user goes
on typing in the same word (``--lock file:`` then a path). These subclasses keep everything else
from Click and add that one case; they are registered under Click's names, so both the generated
scripts (docgen) and the run-time completion requests use them.
"""

from __future__ import annotations

from typing import Any

from click.shell_completion import (
    _SOURCE_BASH,
    _SOURCE_FISH,
    _SOURCE_ZSH,
    BashComplete,
    CompletionItem,
    FishComplete,
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


# bash splits the line into COMP_WORDS at COMP_WORDBREAKS (':' and '=' too), and keeps a quote
# that is still open as part of the word: the script also passes the line itself and the word
# under the cursor, so that Python reads what the user typed and bash replaces only its own word.
_BASH_ENV = 'env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD'
_BASH_LINE_ENV = (
    _BASH_ENV
    + ' COMP_LINE="$COMP_LINE" COMP_POINT=$COMP_POINT COMP_CUR="${COMP_WORDS[COMP_CWORD]}"'
)


class PyjobBashComplete(BashComplete):
    source_template = _SOURCE_BASH.replace(_BASH_PLAIN, _BASH_NOSPACE).replace(
        _BASH_ENV, _BASH_LINE_ENV
    )
    _strip = ""

    def get_completion_args(self) -> tuple[list[str], str]:
        import os
        import shlex

        # Where Click defines it from 8.2 on, and imports it in 8.1 (click.parser keeps only a
        # deprecated, untyped alias).
        from click.shell_completion import split_arg_string

        line = os.environ.get("COMP_LINE")
        if line is None:  # an older script: Click's own reading
            return super().get_completion_args()
        line = line[: int(os.environ.get("COMP_POINT", len(line)))]
        words = split_arg_string(line)
        try:
            shlex.split(line)
            open_quote = False
        except ValueError:
            open_quote = True
        if line[-1:].isspace() and not open_quote:
            args, incomplete = words[1:], ""
        else:
            args, incomplete = words[1:-1], (words[-1] if len(words) > 1 else "")
        cur = os.environ.get("COMP_CUR", incomplete)
        if not cur.startswith(("'", '"')) and incomplete.endswith(cur) and cur != incomplete:
            self._strip = incomplete[: len(incomplete) - len(cur)]  # 'file' of 'file:/tm'
        return args, incomplete

    def format_completion(self, item: CompletionItem[Any]) -> str:
        value = item.value
        if self._strip and value.startswith(self._strip):
            value = value[len(self._strip) :]
        return f"{item.type},{value}"


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


_FISH_PLAIN = """        else if test $metadata[1] = "plain";"""


class PyjobFishComplete(FishComplete):
    # fish has no per-item nospace: offer those items as plain ones (fish adds no space after
    # one that ends in / or =, and escapes the spaces inside one itself).
    source_template = _SOURCE_FISH.replace(
        _FISH_PLAIN,
        """        else if test $metadata[1] = "plain"; or test $metadata[1] = "nospace";""",
    )


def register() -> None:
    add_completion_class(PyjobBashComplete, "bash")
    add_completion_class(PyjobZshComplete, "zsh")
    add_completion_class(PyjobFishComplete, "fish")


# The templates must really have changed: fail loudly if a Click release rewrites them.
assert "nospace" in PyjobBashComplete.source_template
assert "COMP_LINE" in PyjobBashComplete.source_template
assert '"nospace"' in PyjobFishComplete.source_template
assert "compadd -S ''" in PyjobZshComplete.source_template

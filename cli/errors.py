"""Turning core errors into one clean line on stderr and the right exit code."""

from __future__ import annotations

import functools
from typing import IO, Any

import click
from pyjob.core.errors import InputError, PyjobError

from .exitcodes import ExitCode, exit_code_for


def caret_lines(error: InputError) -> list[str]:
    """The bad text with a caret under the bad part (for terminals)."""
    if error.source is None or error.pos is None or "\n" in error.source:
        return []
    return ["  " + error.source, "  " + " " * error.pos + "^" * error.length]


class CliError(click.ClickException):
    """A core error on its way out: ``Error: message`` and the exit code of DESIGN §7. Made by
    ``cli_error``: Click reads the exit code from the class, so each code has a subclass."""

    def __init__(self, error: PyjobError, terminal: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.terminal = terminal

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.message}", err=True)
        if self.terminal and isinstance(self.error, InputError):
            for line in caret_lines(self.error):
                click.echo(line, err=True)


@functools.cache
def _error_class(code: ExitCode) -> type[CliError]:
    class CodedError(CliError):
        exit_code = int(code)

    return CodedError


def cli_error(error: PyjobError, terminal: bool = False) -> CliError:
    """The ClickException for ``error``, with its exit code."""
    return _error_class(exit_code_for(error))(error, terminal)

"""What the CLI takes from the outside world, in one object tests can replace (like httpie's)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import click
from pyjob.core.clock import Clock, SystemClock


class Env:
    """What a command reads of its surroundings: the clock, the environment, the terminals. A
    plain class: a dataclass would cost every command's start-up the making of one."""

    def __init__(
        self,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        stdout_terminal: bool | None = None,  # None: ask the stream
        stderr_terminal: bool | None = None,
    ) -> None:
        self.clock: Clock = SystemClock() if clock is None else clock
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.stdout_terminal = stdout_terminal
        self.stderr_terminal = stderr_terminal

    def out_is_terminal(self) -> bool:
        if self.stdout_terminal is not None:
            return self.stdout_terminal
        return sys.stdout is not None and sys.stdout.isatty()  # None: closed at start

    def err_is_terminal(self) -> bool:
        if self.stderr_terminal is not None:
            return self.stderr_terminal
        return sys.stderr is not None and sys.stderr.isatty()

    @property
    def color(self) -> bool:
        return "NO_COLOR" not in self.environ


def get_env() -> Env:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, Env):
        root.obj = Env() if root.obj is None else root.obj
    assert isinstance(root.obj, Env)
    return root.obj

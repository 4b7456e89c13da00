"""The `pyjob` command group: global options, and core errors mapped to exit codes."""

from __future__ import annotations

import sys
from typing import Any

import click
from pyjob.core import __version__
from pyjob.core.errors import PyjobError

from .errors import cli_error
from .exitcodes import ExitCode

# Subcommands are imported only when invoked, so `pyjob --version` and shell completion stay fast.
_COMMANDS = {
    "next": ("pyjob.cli.cmd_next", "next_cmd"),
    "validate": ("pyjob.cli.cmd_validate", "validate_cmd"),
    "align": ("pyjob.cli.cmd_align", "align_cmd"),
    "run": ("pyjob.cli.cmd_run", "run_cmd"),
    "check-clock": ("pyjob.cli.cmd_check_clock", "check_clock_cmd"),
    "status": ("pyjob.cli.cmd_status", "status_cmd"),
    "history": ("pyjob.cli.cmd_history", "history_cmd"),
    "pause": ("pyjob.cli.cmd_control", "pause_cmd"),
    "resume": ("pyjob.cli.cmd_control", "resume_cmd"),
    "trigger": ("pyjob.cli.cmd_control", "trigger_cmd"),
}


class PyjobGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        import importlib

        module, attr = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name in _COMMANDS or name.startswith("-") or ctx.resilient_parsing:
            return super().resolve_command(ctx, args)
        import difflib

        close = difflib.get_close_matches(name, list(_COMMANDS), n=2, cutoff=0.6)
        if close:
            ctx.fail(f"No such command {name!r}: did you mean {' or '.join(map(repr, close))}?")
        ctx.fail(f"No such command {name!r} (pyjob --help lists them)")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:  # `pyjob` alone: the help, not an error
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PyjobError as e:
            from .env import get_env

            raise cli_error(e, terminal=get_env().err_is_terminal()) from None
        except KeyboardInterrupt:
            # Ctrl-C anywhere is 130 (128 + SIGINT), as shells report it; not Click's "Aborted!" 1.
            raise click.exceptions.Exit(int(ExitCode.INTERRUPTED)) from None


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "PYJOB"}


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """pyjob's version and that of the zone database it computes every tick with (DESIGN §3):
    instances of one fleet agree on ticks only when both are the same."""
    if not value or ctx.resilient_parsing:
        return
    from pyjob.core.zones import tzdata_version

    click.echo(f"pyjob, version {__version__} (tzdata {tzdata_version()})")
    ctx.exit()


@click.group(cls=PyjobGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "-V",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the versions of pyjob and of its zone database (tzdata).",
)
def cli() -> None:
    """Run commands on schedules across one or many machines, exactly once per tick.

    Schedules are cron expressions ('0 * * * *', '0 30 9 * * MON-FRI' with seconds first,
    '@daily') or phrases ('every 5m', 'every 1h align', 'daily at 09:00', 'weekly on MON at
    08:00', 'monthly on -1 at 23:00', 'once at 2026-12-24T18:00'). The same text, or the
    equivalent options (--every 5m --align), works in every command.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one `Error:` line for every error (no usage block), the exit
    codes of DESIGN §7."""
    import os

    from .outputs import fill_closed_std_fds

    fill_closed_std_fds()
    if "_PYJOB_COMPLETE" in os.environ:  # a completion request: pyjob's own shell classes
        from .completion import register

        register()
    try:
        rv = cli.main(args=argv, prog_name="pyjob", standalone_mode=False)
    except click.UsageError as e:
        from pyjob.core.errors import tidy

        click.echo(f"Error: {tidy(e.format_message())}", err=True)
        sys.exit(int(ExitCode.USAGE))
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        sys.exit(int(ExitCode.INTERRUPTED))
    sys.exit(rv if isinstance(rv, int) else 0)

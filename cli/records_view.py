"""What `pyjob status` and `pyjob history` share: opening the record store, and the words for
times ("2h ago", "in 5m"), results and durations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .options import LOCK_URL

if TYPE_CHECKING:
    from pyjob.core.records import RecordStore

    from .env import Env

RESULT_STYLE = {
    "success": "green",
    "failure": "bold red",
    "timeout": "bold red",
    "start-failed": "bold red",
    "lost": "red",
    "running": "cyan",
    "stopped": "yellow",
    "skipped": "yellow",
    "missed": "yellow",
}


def lock_option(f: Any) -> Any:
    return click.option(
        "--lock",
        type=LOCK_URL,
        metavar="URL",
        envvar="PYJOB_LOCK",
        help="The lock backend whose records to read, as for `pyjob run` (default: this host's "
        "file: directory).",
    )(f)


def format_option(f: Any) -> Any:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="A table for people, or JSON.",
    )(f)


def open_store(lock: str | None, env: Env) -> tuple[RecordStore, Any]:
    """The record store of ``lock`` and its backend (BackendError: exit 5)."""
    from pyjob.core.backends import open_backend
    from pyjob.core.errors import BackendError
    from pyjob.core.records import RetryingReader

    backend = open_backend(lock, env.environ, env.clock)
    try:
        backend.check()
    except BackendError:
        backend.check()  # once more, as every read: one dropped connection is not an outage
    store = backend.records()
    if store is None:
        backend.close()
        raise BackendError(f"{backend.url} keeps no run records: give the --lock of the jobs")
    return RetryingReader(store), backend


def ago(us: int | None, now_us: int) -> str:
    """'2h ago', 'in 5m', 'now'."""
    if us is None:
        return "-"
    from pyjob.core.durations import human_duration

    delta = (us - now_us) / 1e6
    text = human_duration(abs(delta), coarse=True)
    return f"in {text}" if delta > 0 else f"{text} ago"


def local(us: int | None, zone: Any) -> str:
    from pyjob.core.instants import from_us

    if us is None:
        return "-"
    return from_us(us).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def styled(text: str, style: str | None, terminal: bool) -> str:
    if not terminal or not style:
        return text.replace("[", "\\[") if terminal else text
    from rich.markup import escape

    return f"[{style}]{escape(text)}[/{style}]"

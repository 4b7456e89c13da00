"""What `pyjob status` and `pyjob history` share: opening the record store, and the words for
times ("2h ago", "in 5m"), results and durations."""

from __future__ import annotations

from datetime import UTC, datetime
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
    delta = (us - now_us) / 1e6
    text = span(abs(delta))
    return f"in {text}" if delta > 0 else f"{text} ago"


def span(seconds: float) -> str:
    """A duration for people: 850ms, 12s, 5m, 2h 5m, 3d 4h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s".replace(".0s", "s")
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def local(us: int | None, zone: Any) -> str:
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def styled(text: str, style: str | None, terminal: bool) -> str:
    if not terminal or not style:
        return text.replace("[", "\\[") if terminal else text
    from rich.markup import escape

    return f"[{style}]{escape(text)}[/{style}]"

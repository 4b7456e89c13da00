"""Rendering for data on stdout: rich on a terminal, plain aligned text otherwise, JSON."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any

import click

from .env import Env


def instant_fields(instant: datetime, zone: tzinfo, now: datetime | None = None) -> dict[str, Any]:
    """One vocabulary for an instant in every JSON output (next, align): ``local`` (ISO 8601 in
    the job's zone), ``utc`` (ISO 8601, Z), ``unix`` (seconds; an integer when whole) and, from
    the reference instant, ``in_seconds``."""
    from pyjob.core.instants import iso, to_us, unix

    doc: dict[str, Any] = {
        "local": iso(instant, zone),
        "utc": iso(instant),
        "unix": unix(to_us(instant)),
    }
    if now is not None:
        doc["in_seconds"] = round((instant - now).total_seconds(), 6)
    return doc


def echo_json(document: Any) -> None:
    import json  # only --format json pays for it

    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def table(
    env: Env,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    title_lines: Sequence[tuple[str, str]] = (),
) -> None:
    """A table: rich (with colour unless NO_COLOR) on a terminal, aligned text otherwise."""
    if env.out_is_terminal():
        from rich.console import Console
        from rich.table import Table

        console = Console(no_color=not env.color, highlight=False)
        for key, value in title_lines:
            console.print(f"[bold]{key}:[/bold] {value}", markup=True, soft_wrap=True)
        t = Table(*headers, show_edge=False, header_style="bold")
        for row in rows:
            t.add_row(*row)
        console.print(t)
        return
    for key, value in title_lines:
        click.echo(f"{key + ':':<11}{value}")
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

"""Rendering the events of `pyjob run` on stderr: readable lines (rich on a terminal), or JSON."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from pyjob.core.events import Event
from pyjob.core.rules import iso

_STYLE = {
    "run-started": "bold",
    "run-finished": "green",
    "lost": "dim",
    "skipped": "yellow",
    "missed": "yellow",
    "timeout": "red",
    "backend-error": "bold red",
    "stopping": "bold",
    "output": "",
}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return ",".join(map(str, v)) or "-"
    text = str(v)
    return json.dumps(text) if (" " in text or not text) else text


class EventLog:
    """Thread-safe: output readers log from their own threads."""

    def __init__(self, fmt: str, terminal: bool, color: bool) -> None:
        self.fmt = fmt
        self._lock = threading.Lock()
        self._console = None
        if fmt == "text" and terminal:
            from rich.console import Console

            self._console = Console(stderr=True, no_color=not color, highlight=False)

    def __call__(self, event: Event) -> None:
        if self.fmt == "json":
            doc = {
                "time": iso(event.at),
                "event": event.kind,
                "level": event.level,
                "job": event.job,
                "tick": iso(event.tick) if event.tick else None,
                "instance": event.instance,
                **event.fields,
            }
            line = json.dumps(doc, default=str)
            with self._lock:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            return
        head = f"{iso(event.at)} {event.kind:<13} job={event.job}"
        if event.tick is not None:
            head += f" tick={iso(event.tick)}"
        head += f" instance={event.instance}"
        if event.kind == "output":
            text = f"{head} {event.fields.get('stream')}: {event.fields.get('line')}"
        else:
            text = head + "".join(f" {k}={_value(v)}" for k, v in event.fields.items())
        with self._lock:
            if self._console is not None:
                from rich.text import Text

                self._console.print(Text(text, style=_STYLE.get(event.kind, "")), soft_wrap=True)
            else:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()

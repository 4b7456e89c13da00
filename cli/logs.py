"""Rendering the events of `pyjob run` on stderr: readable lines (rich on a terminal), or JSON.

Both keep only the events at ``--log-level`` and above (each event's level comes from the
catalogue in pyjob.core.events). JSON carries the exact values; a text line is for people, in
logfmt: the level, durations as ``2.3ms`` or ``19h48m``, the tick in the job's own zone, nothing
that is absent (``None``, false, an empty list), values quoted where logfmt needs it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, tzinfo
from typing import TYPE_CHECKING, Any

from pyjob.core.durations import human_duration
from pyjob.core.events import LEVELS, SECONDS, Event, may_reach
from pyjob.core.instants import iso, iso_ms, to_us

from .outputs import Outputs

if TYPE_CHECKING:
    from rich.console import Console

# json.dumps(doc, default=str) makes an encoder at every call; one does for every line.
_JSON = json.JSONEncoder(default=str)
# By level; an info event may have a style of its own.
_LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "bold red"}
_INFO_STYLE = {"run-started": "bold", "run-finished": "green", "stopping": "bold"}
# Field names shortened in text (the JSON keeps the catalogue's); run_id is left out of text
# (it is the job and the tick, both on the line), and so is a first attempt.
_TEXT_NAME = {"in_seconds": "in"}
_TEXT_SKIP = {"run_id"}


def style_of(event: Event) -> str:
    level = event.level
    if level == "info":
        return _INFO_STYLE.get(event.kind, "")
    return _LEVEL_STYLE[level]


def logfmt(text: str) -> str:
    """``text`` as a logfmt value: bare when it can be, else double-quoted with escapes."""
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text, ensure_ascii=False)


def text_value(name: str, value: Any) -> str | None:
    """How a field reads in a text line; None: leave it out."""
    if value is None or value is False or (isinstance(value, list | tuple) and not value):
        return None
    if value is True:
        return "true"
    if isinstance(value, int | float) and name in SECONDS:
        return human_duration(float(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
        sep = "; " if any(" " in i or "," in i for i in items) else ","
        return logfmt(sep.join(items))
    return logfmt(str(value))


def _at(event: Event) -> str:
    return iso_ms(to_us(event.at))


def _output_head(event: Event, zone: tzinfo | None) -> str:
    """What an output line says before the line itself: the same for every line of a run."""
    parts = [f"{event.level:<7}", f"{event.kind:<13}", f"job={logfmt(event.job)}"]
    if event.tick is not None:
        parts.append(f"tick={iso(event.tick, None if zone is UTC else zone)}")
    parts.append(f"instance={logfmt(event.instance)}")
    hook = event.fields.get("hook")
    if hook:  # a hook's answer, not the job's (`fail | OK` read as the job's)
        parts.append(f"hook={logfmt(hook)}")
    parts.append(f"{event.fields.get('stream')}:")
    return " ".join(parts)


def text_line(event: Event, zone: tzinfo | None = None) -> str:
    """The text line of ``event`` (without colour); ``zone``: the job's zone, for the tick."""
    at = _at(event)
    if event.kind == "output":
        return f"{at} {_output_head(event, zone)} {event.fields.get('line')}"
    parts = [at, f"{event.level:<7}", f"{event.kind:<13}", f"job={logfmt(event.job)}"]
    if event.tick is not None:
        parts.append(f"tick={iso(event.tick, None if zone is UTC else zone)}")
    parts.append(f"instance={logfmt(event.instance)}")
    for name, value in event.fields.items():
        if name in _TEXT_SKIP or (name == "attempt" and value == 1):  # 1: no retries so far
            continue
        shown = text_value(name, value)
        if shown is not None:
            parts.append(f"{_TEXT_NAME.get(name, name)}={shown}")
    return " ".join(parts)


class EventLog:
    """Thread-safe: output readers log from their own threads. ``zone_of`` gives a job's zone
    (the tick of a text line is written in it). Lines go to stderr through ``outputs``, which
    drops those it cannot write; the event that says stderr failed (output-closed) goes to
    stdout, if that is still open."""

    def __init__(
        self,
        fmt: str,
        terminal: bool,
        color: bool,
        level: str = "info",
        zone_of: Callable[[str], tzinfo | None] | None = None,
        outputs: Outputs | None = None,
    ) -> None:
        self.fmt = fmt
        self.level = level
        self.min_level = LEVELS.index(level)
        self._wanted: dict[str, bool] = {}
        self._tick: tuple[Any, str | None] = (None, None)  # the last tick and its text
        self.zone_of = zone_of
        self.outputs = outputs or Outputs()
        self._head: tuple[Any, Any] = (None, "")  # the last output line's key and head
        self._console: Console | None = None
        if fmt == "text" and terminal:
            import io

            from rich.console import Console

            # Rich renders, outputs writes: rich's own answer to a broken pipe is to exit. Its
            # colours come from the environment (TERM, COLORTERM), as they would on stderr.
            self._console = Console(
                file=io.StringIO(),
                force_terminal=True,
                width=Console(stderr=True).width,
                no_color=not color,
                highlight=False,
            )

    def _output_json(self, event: Event) -> str:
        """The JSON line of an output event, as json.dumps writes the document, with what
        every line of a run shares serialised once (see __call__)."""
        items = list(event.fields.items())
        at = [k for k, _ in items].index("line")
        key = ("json", event.job, event.tick, event.instance, *items[:at], *items[at + 1 :])
        cached = self._head
        if cached[0] != key:
            head = {
                "event": event.kind,
                "level": event.level,
                "job": event.job,
                "tick": iso(event.tick) if event.tick else None,
                "instance": event.instance,
                **dict(items[:at]),
            }
            tail = json.dumps(dict(items[at + 1 :]), default=str)[1:-1]
            parts = (json.dumps(head, default=str)[1:-1], f", {tail}" if tail else "")
            cached = self._head = (key, parts)
        head_text, tail_text = cached[1]
        time, line = json.dumps(iso(event.at)), _JSON.encode(items[at][1])
        return f'{{"time": {time}, {head_text}, "line": {line}{tail_text}}}\n'

    def wants(self, kind: str) -> bool:
        """Whether an event of ``kind`` can be logged at this --log-level."""
        wanted = self._wanted.get(kind)
        if wanted is None:
            wanted = self._wanted[kind] = may_reach(kind, self.level)
        return wanted

    def _tick_text(self, event: Event) -> str | None:
        """The event's tick in JSON: the runs of one tick share it, made once."""
        last = self._tick  # one tuple, replaced whole: other threads log too
        if last[0] != event.tick:
            last = self._tick = (event.tick, iso(event.tick) if event.tick else None)
        return last[1]

    def _zone(self, event: Event) -> tzinfo | None:
        return self.zone_of(event.job) if self.zone_of and event.tick is not None else None

    def __call__(self, event: Event) -> None:
        if LEVELS.index(event.level) < self.min_level:
            return
        stream = "stderr"
        if event.kind == "output-closed" and event.fields.get("stream") == "stderr":
            stream = "stdout"  # the one place left to say that the log is gone
        if self.fmt == "json" and event.kind == "output" and "line" in event.fields:
            self.outputs.write(stream, self._output_json(event))
            return
        if self.fmt == "json":
            doc = {
                "time": iso(event.at),
                "event": event.kind,
                "level": event.level,
                "job": event.job,
                "tick": self._tick_text(event),
                "instance": event.instance,
                **event.fields,
            }
            self.outputs.write(stream, _JSON.encode(doc) + "\n")
            return
        if event.kind == "output":
            # A chatty run's lines share their head: made once per run and stream (the
            # lines waiting to be logged are logged sooner, and fewer are dropped).
            f = event.fields
            key = (event.job, event.tick, event.instance, f.get("stream"), f.get("hook"))
            cached = self._head  # one tuple, replaced whole: other threads log too
            if cached[0] != key:
                cached = self._head = (key, _output_head(event, self._zone(event)))
            text = f"{_at(event)} {cached[1]} {f.get('line')}"
        else:
            text = text_line(event, self._zone(event))
        if self._console is not None and stream == "stderr":
            from rich.text import Text

            with self._console.capture() as captured:
                self._console.print(Text(text, style=style_of(event)), soft_wrap=True)
            text = captured.get().removesuffix("\n")
        self.outputs.write(stream, text + "\n")

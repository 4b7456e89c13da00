"""A run's captured output between its pipes and the log: lines cut at LINE_MAX, a bounded
backlog whose oldest lines are dropped (and counted) when the log falls behind, so a command is
never held back by pyjob formatting its lines."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

# Captured output (--log-output, and the prefixed output of several jobs or of a hook) goes
# through a bounded backlog between the pipes and ``on_line``, so that the command never waits
# for the log: logging a line costs pyjob some 10-20 µs, while `seq` writes one in 50 ns, and a
# command blocked on a full pipe ran 80 times slower. Each turn reads what the pipes hold and
# hands at most TURN_LINES lines on; when more than BACKLOG_LINES lines (or BACKLOG_BYTES bytes)
# wait, the oldest waiting ones are dropped, and one line of the stream "pyjob" says how many, in
# their place. The newest lines are kept, so the tail of the output (the run record's,
# PYJOB_OUTPUT_TAIL) is whole, and a run is reported ended at most BACKLOG_LINES lines after its
# command ended. A line is cut at LINE_MAX bytes and says so; the rest of it is counted as it
# comes and not kept, so a command that never writes a newline costs bounded memory.
LINE_MAX = 64 * 1024
BACKLOG_LINES = 10_000
BACKLOG_BYTES = 4 * 1024 * 1024
TURN_LINES = 128  # lines handed on per turn, all runs together: they are logged at its end
READ_MAX = 1024 * 1024  # bytes read from one run per turn: a torrent cannot hold the loop
SLICE = 16  # lines handed on between two reads of the run's pipes
HOT = 16 * 1024  # read in one turn, a run writes faster than its lines can be logged


def _cut_notice(skipped: int) -> bytes:
    return f" [pyjob: line cut at {LINE_MAX} bytes, {skipped} more bytes dropped]".encode()


def dropped_notice(count: int) -> str:
    """The line (stream "pyjob") that stands for lines dropped from the backlog."""
    return (
        f"{count} lines of output dropped here: the log fell behind "
        f"(at most {BACKLOG_LINES} lines wait to be logged)"
    )


class Capture:
    """A run's output between its pipes and ``on_line``: the unfinished line of each stream,
    and the complete lines waiting to be handed on, oldest first, as entries
    [stream, lines, index of the next, bytes left]."""

    __slots__ = ("count", "dropped", "on_line", "partial", "size", "skipped", "waiting")

    def __init__(self, on_line: Callable[[str, str], None]) -> None:
        self.on_line = on_line
        self.partial: dict[str, bytearray] = {}
        self.skipped: dict[str, int] = {}  # bytes cut from the unfinished line
        self.waiting: deque[list[Any]] = deque()
        self.count = 0  # lines waiting
        self.size = 0  # their bytes
        self.dropped = 0  # lines dropped since the last one handed on

    def feed(self, stream: str, data: bytes) -> None:
        first = data.find(b"\n")
        if first < 0:
            self._grow(stream, data)
            return
        self._grow(stream, data[:first])
        self._push(stream, [self._end_line(stream)])
        last = data.rfind(b"\n")
        if last > first:
            self._push(stream, self._lines(data[first + 1 : last]))
        if last + 1 < len(data):
            self._grow(stream, data[last + 1 :])

    def close(self, stream: str) -> None:
        """The stream's end: its unfinished line, if any, is a line."""
        if self.partial.get(stream) or self.skipped.get(stream):
            self._push(stream, [self._end_line(stream)])

    def _grow(self, stream: str, data: bytes) -> None:
        buf = self.partial.setdefault(stream, bytearray())
        room = LINE_MAX - len(buf)
        if len(data) > room:
            self.skipped[stream] = self.skipped.get(stream, 0) + len(data) - room
            data = data[:room]
        buf += data

    def _end_line(self, stream: str) -> bytes:
        line = bytes(self.partial.pop(stream, b""))
        skipped = self.skipped.pop(stream, 0)
        return line + _cut_notice(skipped) if skipped else line

    def _lines(self, block: bytes) -> list[bytes]:
        """The lines of ``block`` (no final newline) worth keeping: of more than BACKLOG_LINES,
        the older ones are counted as dropped without being split apart."""
        n = block.count(b"\n") + 1
        if n > BACKLOG_LINES:
            pos = len(block)
            for _ in range(BACKLOG_LINES):
                pos = block.rfind(b"\n", 0, pos)
            self.dropped += n - BACKLOG_LINES
            block = block[pos + 1 :]
        lines = block.split(b"\n")
        if len(block) > LINE_MAX and max(map(len, lines)) > LINE_MAX:
            lines = [
                x if len(x) <= LINE_MAX else x[:LINE_MAX] + _cut_notice(len(x) - LINE_MAX)
                for x in lines
            ]
        return lines

    def _push(self, stream: str, lines: list[bytes]) -> None:
        size = sum(map(len, lines))
        self.waiting.append([stream, lines, 0, size])
        self.count += len(lines)
        self.size += size
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest waiting lines beyond the bounds (never the newest one)."""
        while self.count > BACKLOG_LINES or (self.size > BACKLOG_BYTES and self.count > 1):
            entry = self.waiting[0]
            _, lines, head, size = entry
            left = len(lines) - head
            excess = max(self.count - BACKLOG_LINES, 1)  # past the byte bound: one at a time
            if excess >= left:
                self.waiting.popleft()
                self.count -= left
                self.size -= size
                self.dropped += left
                continue
            gone = sum(map(len, lines[head : head + excess]))
            entry[2], entry[3] = head + excess, size - gone
            self.count -= excess
            self.size -= gone
            self.dropped += excess

    def deliver(self, budget: int) -> int:
        """Hand on up to ``budget`` waiting lines, oldest first; how many."""
        on_line = self.on_line
        done = 0
        while done < budget and (self.waiting or self.dropped):
            if self.dropped:
                on_line("pyjob", dropped_notice(self.dropped))
                self.dropped = 0
                done += 1
                continue
            entry = self.waiting[0]
            stream, lines, head, size = entry
            end = min(len(lines), head + budget - done)
            for raw in lines[head:end]:
                size -= len(raw)
                on_line(stream, raw.decode(errors="replace"))
            self.size -= entry[3] - size
            self.count -= end - head
            done += end - head
            if end == len(lines):
                self.waiting.popleft()
            else:
                entry[2], entry[3] = end, size
        return done

    def idle(self) -> bool:
        return not self.waiting and not self.dropped

"""A witness of pauses of the whole machine, for the tests that count every tick of a real fleet.

A busy CI host sometimes freezes every process for seconds at once (its hypervisor, memory
pressure). The ticks such a pause covers are lost by design: a tick later than `--misfire-grace`
is logged as missed, never run late (docs/design.md, "Late ticks"). A test excuses a lost tick
only when this witness, a thread of the test process, saw a pause over it *and* pyjob itself
logged the tick as missed; on a machine that does not pause, the tests stay as strict as before.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runproc import PyjobRun


class Stalls:
    def __init__(self, gap: float = 0.5, step: float = 0.02) -> None:
        self.gap = gap
        self.step = step
        self.seen: list[tuple[float, float]] = []  # (wall time before, wall time after) a pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Stalls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        wall, mono = time.time(), time.monotonic()
        while not self._stop.wait(self.step):
            now_wall, now_mono = time.time(), time.monotonic()
            if max(now_wall - wall, now_mono - mono) > self.gap:
                self.seen.append((wall, now_wall))
            wall, mono = now_wall, now_mono

    def near(self, tick: float, margin: float = 1.0) -> bool:
        """Whether a pause came within ``margin`` seconds of ``tick``: its run could have been
        due then, or be the first one after it, when every instance wakes late at once."""
        return any(start - margin <= tick <= end + margin for start, end in self.seen)

    def last_end(self) -> float | None:
        return max((end for _, end in self.seen), default=None)


def missed_ticks(events: list[dict[str, Any]], period: int = 1) -> set[int]:
    """The ticks (Unix seconds) that `missed` events of one job say passed without running."""
    out: set[int] = set()
    for e in events:
        first = int(datetime.fromisoformat(e["first"]).timestamp())
        out.update(first + n * period for n in range(int(e["count"])))
    return out


def assert_each_once(
    counts: Counter[Any], ticks: Iterable[int], stalls: Stalls, runs: list[PyjobRun]
) -> None:
    """Each of ``ticks`` ran once (``counts`` by tick), but a tick that a pause of the whole
    machine made late and that an instance logged as missed; none ran twice."""
    missed = missed_ticks([e for r in runs for e in r.events("missed")])
    excused = {t for t in missed if stalls.near(t)}
    lost = [t for t in ticks if counts[t] != 1 and t not in excused]
    assert lost == [], (lost, stalls.seen, sorted(missed))
    assert max(counts.values(), default=1) == 1, counts

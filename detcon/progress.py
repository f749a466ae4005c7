"""Progress of long work as plain lines, for logs that are not a terminal.

A tqdm bar redraws itself with carriage returns several times a second: right on a terminal,
thousands of lines in a SLURM ``.out`` or a ``nohup`` log. Where the output is not a terminal
the long commands (``detcon pretrain``, ``detcon masks precompute``) write instead one line a
minute, with the count, the rate, the time spent and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["ProgressLines", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``5h02m``: two units at most."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressLines:
    """One line every ``every_s`` seconds (and none before the first ``every_s``) through
    ``write``: ``label: done/total unit (pct), rate unit/s, elapsed, ETA``, plus ``extra``.

    ``initial`` is what was done before this process started (a resumed run): the rate and the
    time left count only this process's work.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        *,
        initial: int = 0,
        every_s: float = 60.0,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit, self.initial = label, total, unit, initial
        self.every_s, self.clock = every_s, clock
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.start = clock()
        self.next = self.start + every_s

    def update(self, done: int, extra: str = "") -> None:
        """Record that ``done`` of ``total`` are done; write a line if one is due."""
        now = self.clock()
        if now < self.next:
            return
        self.next = now + self.every_s
        self.write(self.line(done, now - self.start, extra))

    def line(self, done: int, elapsed: float, extra: str = "") -> str:
        pct = 100 * done / self.total if self.total else 100.0
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = format_duration((self.total - done) / rate) if rate > 0 else "unknown"
        text = (
            f"{self.label}: {done}/{self.total} {self.unit} ({pct:.1f}%), "
            f"{rate:.3g} {self.unit}/s, {format_duration(elapsed)} elapsed, ETA {eta}"
        )
        return f"{text}; {extra}" if extra else text

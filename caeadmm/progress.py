"""Progress of long runs: a tqdm bar on a terminal, a plain line now and then in a log.

A bar redrawn into a file (a job log, `ray job logs`, a pipe) is noise; a line such as
"[compress] 120/500 files (24%)" every `interval_s` seconds, and one at the end, is not.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

INTERVAL_S = 30.0


class Progress:
    """Count finished items out of `total`; `enabled` False shows nothing at all."""

    def __init__(self, total: int, desc: str, unit: str, *, enabled: bool = True,
                 stream: TextIO | None = None, interval_s: float = INTERVAL_S):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.done = 0
        terminal = self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream,
                        disable=not (enabled and terminal))
        self.lines = enabled and not terminal and total > 0
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.lines and time.monotonic() - self.last >= self.interval_s:
            self._line()

    def close(self, *, summary: bool = True) -> None:
        """Close the bar; summary: print a last plain line (off for an interrupted run)."""
        self.bar.close()
        if self.lines and summary:
            self._line()
        self.lines = False

    def _line(self) -> None:
        self.last = time.monotonic()
        percent = 100 * self.done // max(self.total, 1)
        print(f"[{self.desc}] {self.done}/{self.total} {self.unit}s ({percent}%)",
              file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Progress of long runs: a tqdm bar on a terminal, a plain line now and then in a log.

A bar redrawn into a file (a job log, `ray job logs`, a pipe) is noise; a line such as
"[compress] 120/500 files (24%), 2m00s elapsed, about 6m20s left" every `interval_s` seconds,
and one at the end, is not. The time left assumes the remaining items take as long on
average as the finished ones.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

INTERVAL_S = 30.0


class Progress:
    """Count finished items out of `total`; `enabled` False shows nothing at all."""

    def __init__(self, total: int, desc: str, unit: str, *, enabled: bool = True,
                 stream: TextIO | None = None, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.clock = clock
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.done = 0
        terminal = self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream,
                        disable=not (enabled and terminal))
        self.lines = enabled and not terminal and total > 0
        self.start = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.lines and self.clock() - self.last >= self.interval_s:
            self._line()

    def close(self, *, summary: bool = True) -> None:
        """Close the bar; summary: print a last plain line (off for an interrupted run)."""
        self.bar.close()
        if self.lines and summary:
            self._line()
        self.lines = False

    def _line(self) -> None:
        self.last = self.clock()
        elapsed = self.last - self.start
        percent = 100 * self.done // max(self.total, 1)
        line = (f"[{self.desc}] {self.done}/{self.total} {self.unit}s ({percent}%), "
                f"{duration(elapsed)} elapsed")
        if 0 < self.done < self.total:
            line += f", about {duration(elapsed / self.done * (self.total - self.done))} left"
        print(line, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def duration(seconds: float) -> str:
    """A duration for people: "45s", "3m05s", "2h07m"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def throughput(images: int, seconds: float, pixels: int, stream_bytes: int) -> str:
    """`N images in T s: X images/s, Y MB/s of pixels (...)`, the line that compress,
    decompress and the batch job end with. MB/s counts the uncompressed pixels (3 bytes each,
    as RGB; 10^6 bytes a MB), the same for both directions, so that the figures compare
    across codecs and formats."""
    seconds = max(seconds, 1e-9)
    return (f"{images} images in {seconds:.1f} s: {images / seconds:.2f} images/s, "
            f"{3 * pixels / 1e6 / seconds:.2f} MB/s of pixels "
            f"({pixels / 1e6:.1f} Mpx, {stream_bytes / 1e6:.2f} MB of streams)")

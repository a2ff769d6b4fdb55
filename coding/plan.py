"""Choosing a stream's coding parameters: the run cap R and the direct range D.

Both trade table size against payload size. A larger R makes long zero runs cheaper (fewer
zero-run tokens, and no Huffman code is shorter than one bit); a larger D avoids the raw bits
of escapes. Both grow the token alphabet and so the table, which matters most for short
streams. The planner measures the real coded size of candidates, table included, from one
joint histogram of runs and values (no pass over the symbols per candidate): a local search
over R, then D, then R again, each walk stopping after two steps without improvement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from coding.format import MAX_ALPHABET, MAX_CODE_LENGTH, MAX_DIRECT, MAX_LOG2_RUN

DIRECT_CANDIDATES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 63)
FIRST_DIRECT = 8
HISTOGRAM_MAGNITUDES = 64  # magnitudes the planner's histogram resolves exactly
LARGE_MAGNITUDE_BINS = 64  # larger ones: one bin per (bit length, sign)
PATIENCE = 2  # steps without improvement before a walk stops
# Fewer tokens code and decode faster: the planner gives up at most this many bits per token
# saved (e.g. at 50 % zeros, folding zeros into runs rather than coding each on its own).
TOKEN_COST_BITS = 1 / 64


@dataclass(frozen=True)
class Plan:
    log2_run: int  # R = 1 << log2_run
    direct: int  # D
    classes: int  # K, the escape classes D needs to reach the largest magnitude
    counts: np.ndarray | None  # the token counts of this choice, if the histogram was exact
    extra_bits: int  # raw bits of the escapes, with `counts`


def escape_classes(max_magnitude: int, direct: int) -> int:
    """K: escape class k covers magnitudes D + [2**k, 2**(k+1))."""
    return (max_magnitude - direct).bit_length() if max_magnitude > direct else 0


def _walk(options: Sequence[int], start: int, score: Callable[[int], float]) -> int:
    """The best option found walking both ways from options[start] (a local search)."""
    best = start
    for step in (1, -1):
        i, misses = start, 0
        while 0 <= i + step < len(options) and misses < PATIENCE:
            i += step
            if score(options[i]) < score(options[best]):
                best, misses = i, 0
            else:
                misses += 1
    return options[best]


def choose(runs: np.ndarray, values: np.ndarray, trailing: int, backend: ModuleType) -> Plan:
    """The (R, D) that code these tokens in the fewest bits, table included."""
    max_run, max_magnitude = (int(x) for x in backend.token_extent(runs, values, trailing))
    log2_rows = min(MAX_LOG2_RUN, max_run.bit_length())  # R beyond the longest run is useless
    magnitudes = min(max_magnitude, HISTOGRAM_MAGNITUDES)
    columns = 2 * magnitudes + (LARGE_MAGNITUDE_BINS if max_magnitude > magnitudes else 0)
    hist, long_runs = backend.run_value_histogram(runs, values, log2_rows, magnitudes, columns)
    rows, cols = np.nonzero(hist)
    cells = np.column_stack([rows, cols, hist[rows, cols]])  # the non-zero cells

    evaluated: dict[tuple[int, int], tuple[float, np.ndarray | None, int]] = {}

    def evaluate(log2_run: int, direct: int) -> tuple[float, np.ndarray | None, int]:
        if (log2_run, direct) not in evaluated:
            classes = escape_classes(max_magnitude, direct)
            width = 2 * direct + 2 * classes
            if (width << log2_run) + 1 > MAX_ALPHABET:
                evaluated[log2_run, direct] = (float("inf"), None, 0)
            else:
                counts, extra_bits = backend.approx_token_counts(
                    cells, log2_rows, long_runs, trailing, magnitudes, log2_run, direct, classes
                )
                lengths = backend.code_lengths(counts, MAX_CODE_LENGTH)
                bits = backend.table_bits(lengths, width) + np.dot(counts, lengths) + extra_bits
                score = int(bits) + TOKEN_COST_BITS * int(counts.sum())
                evaluated[log2_run, direct] = (score, counts, int(extra_bits))
        return evaluated[log2_run, direct]

    run_options = range(log2_rows + 1)
    top = min(max_magnitude, MAX_DIRECT)
    directs = sorted({d for d in DIRECT_CANDIDATES if d <= top} | {top})
    direct = min(FIRST_DIRECT, top)
    log2_run = _walk(run_options, 0, lambda r: evaluate(r, direct)[0])
    direct = _walk(directs, directs.index(direct), lambda d: evaluate(log2_run, d)[0])
    log2_run = _walk(run_options, log2_run, lambda r: evaluate(r, direct)[0])

    _, counts, extra_bits = evaluate(log2_run, direct)
    exact = max_magnitude <= HISTOGRAM_MAGNITUDES  # then the derived counts are the true ones
    return Plan(
        log2_run,
        direct,
        escape_classes(max_magnitude, direct),
        counts if exact else None,
        extra_bits,
    )

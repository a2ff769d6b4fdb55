"""Choosing a stream's coding parameters: the run cap R and the direct range D.

Both trade table size against payload size. A larger R makes long zero runs cheaper (fewer
zero-run tokens, and no Huffman code is shorter than one bit); a larger D avoids the raw bits
of escapes. Both grow the token alphabet and so the table, which matters most for short
streams. The planner measures the real coded size of each candidate, table included, from one
joint histogram of runs and values (no pass over the symbols per candidate), and keeps the
smallest: a coordinate search over R, then D, then R again.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from coding.format import MAX_ALPHABET, MAX_CODE_LENGTH, MAX_DIRECT, MAX_LOG2_RUN

DIRECT_CANDIDATES = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 63)
FIRST_DIRECT = 8
HISTOGRAM_MAGNITUDES = 64  # magnitudes the planner's histogram resolves exactly
LARGE_MAGNITUDE_BINS = 64  # larger ones: one bin per (bit length, sign)


@dataclass(frozen=True)
class Params:
    log2_run: int  # R = 1 << log2_run
    direct: int  # D
    classes: int  # K, the escape classes D needs to reach the largest magnitude


def escape_classes(max_magnitude: int, direct: int) -> int:
    """K: escape class k covers magnitudes D + [2**k, 2**(k+1))."""
    return (max_magnitude - direct).bit_length() if max_magnitude > direct else 0


def choose(runs: np.ndarray, values: np.ndarray, trailing: int, backend: ModuleType) -> Params:
    """The (R, D) that code these tokens in the fewest bits, table included."""
    max_run, max_magnitude = (int(x) for x in backend.token_extent(runs, values, trailing))
    log2_rows = min(MAX_LOG2_RUN, max_run.bit_length())  # R beyond the longest run is useless
    magnitudes = min(max_magnitude, HISTOGRAM_MAGNITUDES)
    columns = 2 * magnitudes + (LARGE_MAGNITUDE_BINS if max_magnitude > magnitudes else 0)
    hist, long_runs = backend.run_value_histogram(runs, values, log2_rows, magnitudes, columns)

    top = min(max_magnitude, MAX_DIRECT)
    directs = sorted({d for d in DIRECT_CANDIDATES if d <= top} | {top})
    costs: dict[tuple[int, int], float] = {}

    def cost(log2_run: int, direct: int) -> float:
        if (log2_run, direct) not in costs:
            classes = escape_classes(max_magnitude, direct)
            width = 2 * direct + 2 * classes
            if (width << log2_run) + 1 > MAX_ALPHABET:
                costs[log2_run, direct] = float("inf")
            else:
                counts, extra_bits = backend.approx_token_counts(
                    hist, long_runs, trailing, magnitudes, log2_run, direct, classes
                )
                lengths = backend.code_lengths(counts, MAX_CODE_LENGTH)
                table = backend.table_bits(lengths, width)
                costs[log2_run, direct] = int(table + np.dot(counts, lengths) + extra_bits)
        return costs[log2_run, direct]

    run_choices = range(log2_rows + 1)
    direct = min(FIRST_DIRECT, top)
    log2_run = min(run_choices, key=lambda r: cost(r, direct))
    direct = min(directs, key=lambda d: cost(log2_run, d))
    log2_run = min(run_choices, key=lambda r: cost(r, direct))
    return Params(log2_run, direct, escape_classes(max_magnitude, direct))
